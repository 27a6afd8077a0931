"""The pinhole camera of a synthetic scene: where it stands, where it looks, the ray of every pixel.

World axes: x to the right of the camera's heading, y along it, z up (metres). The camera
stands at (0, 0, z) and looks along +y, pitched down or up and rolled about its axis.
Two kinds of view are drawn: "horizon" views like the dataset's renders (wide lens, the
horizon in the frame, often tilted) and "rover" views like the Chang'e-3 photos (narrower
lens on a mast, looking down at the ground, sometimes a thin band of sky at the top).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from lunar_cli.data.vectors import dot

VIEWS = ("horizon", "rover")
ROVER_SKY_SHARE = 0.35  # rover photos with a band of sky at the top (5 of the 14 labelled photos)


@dataclass(frozen=True)
class Camera:
    """Lens, pose and height of one view (angles in radians, lengths in metres, focal length in pixels)."""

    width: int
    height: int
    focal: float
    pitch: float  # negative looks down
    roll: float  # positive turns the picture clockwise
    above_ground: float  # lens height over the ground beneath it
    view: str  # "horizon" or "rover"
    z: float = 0.0  # world height of the lens, set once the terrain under it is known

    @property
    def position(self) -> np.ndarray:
        return np.array([0.0, 0.0, self.z])


def sample_camera(rng: np.random.Generator, width: int, height: int, view: str) -> Camera:
    """Return a random camera of the given kind of view (see the module docstring)."""
    if view == "horizon":
        hfov = math.radians(rng.uniform(50.0, 75.0))
        focal = width / 2 / math.tan(hfov / 2)
        horizon_row = rng.uniform(0.1, 0.5) * height  # before relief and roll move it
        pitch = -math.atan((height / 2 - horizon_row) / focal)
        roll = math.radians(float(np.clip(rng.normal(0.0, 6.0), -15.0, 15.0)))
        above = rng.uniform(0.7, 2.5)
    else:
        hfov = math.radians(rng.uniform(22.0, 45.0))
        focal = width / 2 / math.tan(hfov / 2)
        half_v = math.atan(height / 2 / focal)
        if rng.random() < ROVER_SKY_SHARE:  # the top rows just above the horizon
            top = math.atan(rng.uniform(0.01, 0.12) * height / focal)
        else:
            top = -math.radians(rng.uniform(1.0, 28.0))
        pitch = top - half_v
        roll = math.radians(rng.uniform(-4.0, 4.0))
        above = rng.uniform(1.2, 1.8)
    return Camera(width, height, focal, pitch, roll, above, view)


def placed(camera: Camera, ground_z: float) -> Camera:
    """Return the camera standing on ground of height ground_z."""
    return dataclasses.replace(camera, z=ground_z + camera.above_ground)


def axes(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the camera's (right, up, forward) unit vectors in world coordinates."""
    cp, sp = math.cos(camera.pitch), math.sin(camera.pitch)
    forward = np.array([0.0, cp, sp])
    up0 = np.array([0.0, -sp, cp])
    right0 = np.array([1.0, 0.0, 0.0])
    cr, sr = math.cos(camera.roll), math.sin(camera.roll)
    return right0 * cr + up0 * sr, up0 * cr - right0 * sr, forward


def pixel_rays(camera: Camera, oversample: int = 1) -> np.ndarray:
    """Return the (H*k, W*k, 3) float32 unit ray directions through the pixel centres (k = oversample)."""
    right, up, forward = (v.astype(np.float32) for v in axes(camera))
    k = oversample
    x = (np.arange(camera.width * k, dtype=np.float32) + 0.5) / k - camera.width / 2
    y = (np.arange(camera.height * k, dtype=np.float32) + 0.5) / k - camera.height / 2
    rays = (forward * np.float32(camera.focal))[None, None, :] + x[None, :, None] * right - y[:, None, None] * up
    rays *= (1 / np.sqrt(dot(rays, rays)))[..., None]
    return rays


def project(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (columns, rows, depth along the view axis) of world points (N, 3); pixel centres are integers."""
    right, up, forward = axes(camera)
    v = points - camera.position
    depth = dot(v, forward)
    safe = np.where(depth > 1e-6, depth, 1e-6)
    cols = camera.width / 2 + camera.focal * dot(v, right) / safe - 0.5
    rows = camera.height / 2 - camera.focal * dot(v, up) / safe - 0.5
    return cols, rows, depth
