"""Sunlight on regolith and rock: where the sun stands, how bright a lit or shaded surface looks.

Regolith scatters light the lunar way (Lunar-Lambert: Lommel-Seeliger's mu0 / (mu0 + mu) mixed with
Lambert's mu0 by phase angle, so the ground looks flat-lit and brightens toward opposition); rock
is closer to Lambert and brighter (higher albedo), so a rock face turned to the sun outshines the
ground and the face turned away falls dark. Shadows get only the light scattered by the lit
ground around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lunar_cli.data.vectors import dot, normalized

# Where the sun stands relative to the camera's heading, per kind of view: (share, lowest, highest) of the
# angle between the heading and the direction toward the sun, in degrees (180 = behind the camera).
LIGHTING = {
    # the photos show the rocks lit on the side the camera sees
    "rover": ((0.75, 120.0, 180.0), (0.20, 60.0, 120.0), (0.05, 0.0, 60.0)),
    "horizon": ((0.45, 120.0, 180.0), (0.35, 60.0, 120.0), (0.20, 20.0, 60.0)),
}
ELEVATION = {"rover": (12.0, 50.0), "horizon": (5.0, 40.0)}  # degrees


@dataclass(frozen=True)
class Sun:
    """Unit vector toward the sun (world axes) and the light the shadows still get."""

    toward: np.ndarray  # (3,)
    ambient: float  # brightness of shaded regolith relative to lit, flat regolith

    @property
    def elevation(self) -> float:
        return math.asin(float(self.toward[2]))


def sample_sun(rng: np.random.Generator, view: str) -> Sun:
    """Return a sun for the view: mostly behind or beside the camera, now and then in front of it."""
    pick = rng.random()
    for share, lo, hi in LIGHTING[view]:
        if pick < share:
            break
        pick -= share
    relative = math.radians(rng.uniform(lo, hi)) * (1 if rng.random() < 0.5 else -1)
    elevation = math.radians(rng.uniform(*ELEVATION[view]))
    toward = np.array([math.cos(elevation) * math.sin(relative), math.cos(elevation) * math.cos(relative),
                       math.sin(elevation)])
    ambient = rng.uniform(0.04, 0.14) if view == "horizon" else rng.uniform(0.2, 0.45)
    return Sun(toward, ambient)


def lunar_lambert(normal: np.ndarray, sun: np.ndarray, view: np.ndarray, lambert_share: float) -> np.ndarray:
    """Return the reflected light (flat ground under a zenith sun = about 1) of surfaces with unit normals (..., 3).

    view points from the surface to the camera; lambert_share is added to the phase-dependent Lambert share.
    """
    sun = np.asarray(sun, np.float32)
    mu0 = np.maximum(dot(normal, sun), 0)
    mu = np.maximum(dot(normal, view), 0.02)
    phase = np.arccos(np.clip(dot(view, sun), -1, 1))
    lam = np.clip(0.2 + (0.6 * 2 / math.pi) * phase + lambert_share, 0, 1)  # McEwen's L(phase) falls with phase
    surge = 1 + 0.35 * np.exp(phase * (-1 / 0.08))  # opposition effect: the ground around the camera's shadow glows
    return ((1 - lam) * 2 * mu0 / (mu0 + mu) + lam * mu0) * np.exp(phase * (-1 / 2.2)) * surge


def ground_normals(slope_x: np.ndarray, slope_y: np.ndarray) -> np.ndarray:
    """Return unit normals (..., 3) of ground with height slopes d/dx, d/dy."""
    n = np.stack([-slope_x, -slope_y, np.ones_like(slope_x)], axis=-1)
    return normalized(n)


def bumped(normal: np.ndarray, bump: np.ndarray, strength: float) -> np.ndarray:
    """Return unit normals tilted by a bump vector (..., 3), kept on the surface's side."""
    return normalized(normal + strength * (bump - dot(bump, normal)[..., None] * normal), 1e-12)
