"""How each surface looks under the sun: regolith with grain and albedo at every scale, mottled rough rock.

Textures live on the surfaces (the ground's world x, y; each rock's own frame), so the grain
shrinks with distance and moves with the rock; mip levels from each pixel's footprint keep far
ground a smooth average of the grain that is sharp at the camera's feet.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from lunar_cli.data.regolith import fractal_fields, lit_relief, remap_points, sample_tiled, slopes
from lunar_cli.data.shading import bumped, lunar_lambert
from lunar_cli.data.vectors import normalized

FINE_TILE = 1.0  # metres: regolith grain, from the texel (4 mm, or 2 mm in fine quality) to 50 cm
PATCH_TILE, PATCH_TEXELS = 200.0, 128  # albedo patches, metres across
ROUGH_TILE, ROUGH_TEXELS = 24.0, 64  # where the regolith is rougher (clods, pebbles) or smoother
ROCK_TILE, ROCK_TEXELS = 0.5, 128  # rock grain and mottling
GRAIN_BANK = 8  # regolith height fields a process keeps (drawn per scene, turned and shifted)


@dataclass(frozen=True)
class Looks:
    """The textures of one scene: lit regolith relief, albedo patches, roughness patches, rock grain."""

    fine: np.ndarray  # (n, n) brightness of lit relief, flat ground = 1
    patches: np.ndarray  # (p, p) ground albedo, mean 1, smooth (beta 3) so it needs no mip levels
    roughness: np.ndarray  # (q, q) how strongly the relief shows, 1 on average (smooth too)
    rock: np.ndarray  # (r, r, 3) rock mottling (zero mean, unit std) and its slopes
    rock_bump: float
    offset: np.ndarray  # (2,) metres: where the ground textures start


@functools.lru_cache(maxsize=2 * GRAIN_BANK)
def _grain(index: int, texels: int) -> tuple[np.ndarray, np.ndarray]:
    """Return regolith (height, albedo) fields number `index`: the same in every process, made once per process."""
    beta = 2.3 + 0.6 * index / (GRAIN_BANK - 1)
    return fractal_fields(np.random.default_rng([7, index, texels]), texels, beta, lowest=2.0)


def sample_looks(rng: np.random.Generator, sun: np.ndarray, view: str, fine_texels: int = 256) -> Looks:
    """Return random textures for one scene lit by the sun (unit vector toward it).

    Rover views look at the ground from close by, where the photos show rough, clodded regolith.
    """
    height, albedo = _grain(int(rng.integers(GRAIN_BANK)), fine_texels)
    turns = int(rng.integers(4))  # a quarter turn of the texture is another texture under the same sun
    slope = rng.uniform(0.06, 0.15) if view == "horizon" else rng.uniform(0.3, 0.5)
    fine = lit_relief(np.rot90(height, turns), np.rot90(albedo, turns), slope=slope,
                      albedo=rng.uniform(0.03, 0.08), sun=sun)
    patches = np.maximum(1 + rng.uniform(0.04, 0.14) * fractal_fields(rng, PATCH_TEXELS, 3.0)[0], 0.5)
    # real regolith is rough in places (clods, pebble strewn) and smooth in others: the relief's strength varies
    roughness = np.exp(rng.uniform(0.2, 0.6) * fractal_fields(rng, ROUGH_TEXELS, 3.0)[0]).astype(np.float32)
    grain = fractal_fields(rng, ROCK_TEXELS, rng.uniform(1.6, 2.4))[0]
    gx, gy = slopes(grain, 1.0)
    norm = math.sqrt(float((gx ** 2 + gy ** 2).mean()))
    rock = np.dstack([grain, gx / norm, gy / norm]).astype(np.float32)
    return Looks(fine, patches.astype(np.float32), roughness / roughness.mean(), rock, rng.uniform(0.25, 0.6),
                 rng.uniform(0, 1000, size=2))


def ground_light(looks: Looks, points: np.ndarray, normal: np.ndarray, view: np.ndarray, footprint: np.ndarray,
                 sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (direct sunlight reflected, albedo) of ground points (M, 3) given normals, view vectors and footprints."""
    x, y = points[:, 0] + float(looks.offset[0]), points[:, 1] + float(looks.offset[1])
    per_metre = looks.fine.shape[0] / FINE_TILE
    relief = sample_tiled(looks.fine, x * per_metre, y * per_metre, np.log2(np.maximum(footprint * per_metre, 1e-3)))
    per_metre = ROUGH_TEXELS / ROUGH_TILE
    relief = 1 + (relief - 1) * remap_points(looks.roughness, x * per_metre - 0.5, y * per_metre - 0.5, border="wrap")
    per_metre = PATCH_TEXELS / PATCH_TILE
    albedo = remap_points(looks.patches, x * per_metre - 0.5, y * per_metre - 0.5, border="wrap")
    return lunar_lambert(normal, sun, view, 0.0) * relief, albedo


def rock_light(looks: Looks, unit_point: np.ndarray, unit_normal: np.ndarray, to_world, view: np.ndarray,
               scale: np.ndarray, footprint: np.ndarray, sun: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (direct sunlight reflected, mottling factor, world normal) of rock points (M, 3) in their unit frames.

    to_world maps unit-frame normals to world unit normals; scale (M,) is each rock's half size in metres,
    so the grain keeps its physical size on rocks of every size. Grain and bumps are projected on the
    three planes of the rock frame and blended by the normal (tri-planar mapping).
    """
    n = normalized(unit_normal)
    weight = n ** 4
    weight /= weight.sum(axis=1, keepdims=True)
    per_metre = ROCK_TEXELS / ROCK_TILE
    q = unit_point * (scale * per_metre)[:, None]
    level = np.log2(np.maximum(footprint * per_metre, 1e-3))
    bump = np.zeros_like(n)
    mottle = np.zeros(len(n), np.float32)
    for axis, (a, b) in enumerate(((1, 2), (0, 2), (0, 1))):
        s = sample_tiled(looks.rock, q[:, a] + 37.0 * axis, q[:, b], level)
        mottle += weight[:, axis] * s[:, 0]
        bump[:, a] += weight[:, axis] * s[:, 1]
        bump[:, b] += weight[:, axis] * s[:, 2]
    normal = to_world(bumped(n, bump, looks.rock_bump))
    return lunar_lambert(normal, sun, view, 0.45), 1 + 0.18 * mottle, normal
