"""Where each pixel's ray first meets the terrain: a front-to-back sweep of the height field per azimuth.

The terrain is sampled on a polar grid around the camera (rows: distances growing by a fixed
ratio, columns: azimuths about a pixel apart). Along one column, a ray of elevation tangent t
first meets the ground at the first distance where the running maximum of (height - lens)/distance
reaches t, so one cumulative maximum and one binary search give every pixel its hit; a linear
step between the two samples around the crossing places it between them. Rays that never meet
the ground within terrain.FAR are sky.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lunar_cli.data.camera import Camera
from lunar_cli.data.terrain import FAR, CraterShadow, PolarGrid, Terrain, relief_polar

MOON_RADIUS = 1_737_400.0  # metres: the ground drops d**2 / 2R below a tangent plane, so far hills sink
TAN_LIMIT = 1e3  # elevation tangents are clipped to +-this so each column's keys stay in their own band


@dataclass(frozen=True)
class TerrainHit:
    """Per pixel: ray length to the ground (inf: sky), the hit point, the ground's slopes, the crater-shadow margin."""

    t: np.ndarray  # (H, W) float32
    points: np.ndarray  # (H, W, 3) float32, world coordinates (sky pixels: far along the ray)
    slope_x: np.ndarray  # (H, W) d height / dx
    slope_y: np.ndarray  # (H, W) d height / dy
    crater_margin: np.ndarray  # (H, W) metres; positive = in a crater rim's shadow

    @property
    def sky(self) -> np.ndarray:
        return ~np.isfinite(self.t)


@dataclass(frozen=True)
class RayFan:
    """The camera's unit rays (H, W, 3) with each ray's azimuth (from +y toward +x), elevation tangent and
    horizontal length."""

    rays: np.ndarray
    azimuth: np.ndarray
    tangent: np.ndarray
    horizontal: np.ndarray


def ray_fan(rays: np.ndarray) -> RayFan:
    """Return the rays with their azimuths, elevation tangents and horizontal lengths."""
    horizontal = np.maximum(np.hypot(rays[..., 0], rays[..., 1]), 1e-6)
    return RayFan(rays, np.arctan2(rays[..., 0], rays[..., 1]), rays[..., 2] / horizontal, horizontal)


def polar_grid(camera: Camera, fan: RayFan, step: float, column: float = 1.0) -> PolarGrid:
    """Return a polar grid covering every ray: columns `column` rays apart, distances growing by 1 + step.

    When every ray points well below the horizon (a rover looking down) the grid stops at a few times
    the distance where the highest ray would meet flat ground, instead of at terrain.FAR.
    """
    lo, hi = float(fan.azimuth.min()), float(fan.azimuth.max())
    spacing = column / (camera.focal * fan.rays.shape[1] / camera.width)  # in rays at the image centre
    columns = min(int(math.ceil((hi - lo) / spacing)) + 3, 4096)
    steepest, highest = float(fan.tangent.min()), float(fan.tangent.max())
    nearest = camera.above_ground / -steepest if steepest < 0 else 1.0
    d_min = float(np.clip(0.5 * nearest, 0.05, 5.0))  # the ground may rise toward the camera
    d_max = FAR if highest > -0.05 else min(FAR, 4 * camera.above_ground / -highest)
    rows = int(math.ceil(math.log(d_max / d_min) / math.log1p(step))) + 1
    phis = np.linspace(lo - spacing, hi + spacing, columns)
    return PolarGrid(phis, d_min * np.exp(np.arange(rows) * math.log1p(step)))


def cast_terrain(camera: Camera, terrain: Terrain, fan: RayFan, grid: PolarGrid, sun: CraterShadow) -> TerrainHit:
    """Return where every ray meets the terrain seen from the camera (see the module docstring).

    On a grid cut short of terrain.FAR (see polar_grid) a ray still above the ground at its end meets
    the ground there: only rays that pass beyond FAR are sky.
    """
    relief, margin = relief_polar(terrain, grid, sun)
    dist = grid.dist.astype(np.float64)
    height = relief[..., 0] - (dist * dist / (2 * MOON_RADIUS))[:, None]
    tangent = (height - camera.z) / dist[:, None]  # (D, W), float64
    reach = np.maximum.accumulate(np.clip(tangent, -TAN_LIMIT, TAN_LIMIT), axis=0)
    n_rows, n_cols = tangent.shape
    band = 2 * TAN_LIMIT + 1
    keys = (reach + band * np.arange(n_cols)[None, :]).T.ravel()  # sorted: each column in its own band
    col_f = (fan.azimuth - grid.phi[0]) / (grid.phi[1] - grid.phi[0])
    col = np.clip(np.rint(col_f).astype(np.int64), 0, n_cols - 1)
    tan64 = np.clip(fan.tangent.astype(np.float64), -TAN_LIMIT, TAN_LIMIT)
    row = np.searchsorted(keys, tan64 + band * col, side="left") - col * n_rows
    ground = row < n_rows if grid.dist[-1] >= FAR * 0.999 else np.ones(row.shape, bool)
    j1 = np.clip(row, 1, n_rows - 1)
    flat = tangent.astype(np.float32).ravel()
    d0, d1 = grid.dist.astype(np.float32)[j1 - 1], grid.dist.astype(np.float32)[j1]
    f0 = d0 * (flat[(j1 - 1) * n_cols + col] - fan.tangent)  # below zero: the ray is still above the ground
    f1 = d1 * (flat[j1 * n_cols + col] - fan.tangent)
    frac = np.where(row >= 1, np.clip(-f0 / np.maximum(f1 - f0, 1e-12), 0, 1), 0).astype(np.float32)
    d_hit = d0 + (d1 - d0) * frac
    t = np.where(ground, d_hit / fan.horizontal, np.float32(np.inf))
    points = camera.position.astype(np.float32) + np.where(ground, t, np.float32(FAR * 2))[..., None] * fan.rays
    fields = np.dstack([relief[..., 1], relief[..., 2], margin]).astype(np.float32)
    sampled = cv2.remap(fields, col_f.astype(np.float32), (j1 - 1).astype(np.float32) + frac, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    return TerrainHit(t, points, sampled[..., 0], sampled[..., 1], sampled[..., 2])
