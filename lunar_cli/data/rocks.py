"""Rocks as 3-D bodies on the terrain: where they lie, their shape, which pixels see them, what they shade.

A rock is a convex body: an ellipsoid (half axes a >= b along the ground, c up) cut by a few
random planes, so it has rounded sides and flat, angular facets like the blocks on real
regolith. It sits partly buried at its place on the terrain. Camera rays and rays toward the
sun meet it analytically (sphere and slab intersections in its own unit frame), vectorised
over every (pixel, rock) pair whose screen box could touch, so hundreds of rocks cost a few
NumPy passes.

Sizes follow power laws: N(diameter > D) = density * (D / 0.3 m)**-slope per square metre, one for
the rock field and a steeper one for gravel; each distance band only gets the rocks that would
cover MIN_PIXELS or more there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lunar_cli.data.camera import Camera, project
from lunar_cli.data.terrain import Terrain, relief_at
from lunar_cli.data.vectors import dot, mat_t_vec, mat_vec, normalized

FACETS = 6  # cutting planes per rock
PEBBLE = 0.025  # metres: the smallest rock diameter made near the camera
BOULDER = 2.5  # metres: the largest
GRAVEL = 0.08  # metres: the largest gravel
AMBIGUOUS = (0.2, 1.5)  # rocks expected to cover this many times the clean mask's smallest rock are not made
MIN_PIXELS = 4.0  # rocks narrower than this on screen are not made


@dataclass(frozen=True)
class Rocks:
    """N rocks: world centre, the map into each rock's unit frame, its cutting planes, size, class and albedo."""

    centre: np.ndarray  # (N, 3) float64
    to_unit: np.ndarray  # (N, 3, 3): world offset -> unit-ellipsoid frame (A = S^-1 R^T)
    facets: np.ndarray  # (N, FACETS, 3) unit normals in the unit frame; the body is n . p <= offset
    offsets: np.ndarray  # (N, FACETS)
    reach: np.ndarray  # (N,) bounding-sphere radius, metres
    diameter: np.ndarray  # (N,) metres, along the longest axis
    base: np.ndarray  # (N,) terrain height under the centre
    albedo: np.ndarray  # (N,) rock albedo / ground albedo

    def __len__(self) -> int:
        return len(self.reach)


def _sizes_in_bands(rng: np.random.Generator, density: float, slope: float, largest: float, focal: float,
                    azimuths: tuple[float, float], near: float, far: float) -> tuple[np.ndarray, ...]:
    """Return (diameter, distance, azimuth) of the rocks over the ground in view, band by band."""
    lo, hi = azimuths[0] - 0.05, azimuths[1] + 0.05
    parts = []
    d0 = near
    while d0 < far:
        d1 = d0 * 1.3
        smallest = max(PEBBLE, MIN_PIXELS * d1 / focal)
        if smallest < largest:
            area = (hi - lo) / 2 * (d1 * d1 - d0 * d0)
            expected = density * area * ((smallest / 0.3) ** -slope - (largest / 0.3) ** -slope)
            count = min(rng.poisson(expected), 250)
            u = rng.random((count, 3))
            top = 1 - (largest / smallest) ** -slope  # Pareto sizes between smallest and largest
            diameter = smallest * (1 - u[:, 0] * top) ** (-1 / slope)
            parts.append((diameter, np.sqrt(d0 * d0 + u[:, 1] * (d1 * d1 - d0 * d0)), lo + u[:, 2] * (hi - lo)))
        d0 = d1
    if not parts:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(col) for col in zip(*parts))


def sample_rocks(rng: np.random.Generator, camera: Camera, terrain: Terrain, azimuths: tuple[float, float],
                 near: float, labelled_from: float, hero: tuple[float, float, float] | None = None) -> Rocks:
    """Return the rocks of a scene: a rock field, a carpet of gravel, plus one `hero` rock (diameter, distance,
    azimuth) if given.

    Rock fields range from nearly bare plains to boulder fields (density and size slope drawn per scene);
    the gravel (under GRAVEL metres, a steep size slope) lies near the camera, where it shows. Rocks
    the masks will call rock cover at least `labelled_from` pixels; rocks that would look about that size
    (AMBIGUOUS times it) are left out, so a pebble and a labelled rock differ as they do to the people
    who drew the photos' masks, who label distinct rocks and leave the grain of the ground alone.
    """
    density = math.exp(rng.uniform(math.log(0.02), math.log(0.25)))
    far = 400.0 if camera.view == "horizon" else 120.0
    rocks = _sizes_in_bands(rng, density, rng.uniform(1.5, 2.2), BOULDER, camera.focal, azimuths, near, far)
    # of gravel over 0.3 m (there is none: it sets the level of the slope); renders' ground is smoother
    gravel_density = math.exp(rng.uniform(math.log(0.002), math.log(0.025)) - (1.5 if camera.view == "horizon" else 0))
    gravel = _sizes_in_bands(rng, gravel_density, 3.0, GRAVEL, camera.focal, azimuths, near, 20.0)
    diameter, dist, phi = (np.concatenate(pair) for pair in zip(rocks, gravel))
    looks = 0.45 * (diameter * camera.focal / dist) ** 2  # pixels of a partly buried body seen from the side
    clear = (looks < AMBIGUOUS[0] * labelled_from) | (looks > AMBIGUOUS[1] * labelled_from)
    diameter, dist, phi = diameter[clear], dist[clear], phi[clear]
    if hero is not None:
        diameter, dist, phi = (np.append(a, v) for a, v in zip((diameter, dist, phi), hero))
    albedo = rng.uniform(1.5, 2.2) if camera.view == "rover" else rng.uniform(1.2, 1.7)  # rock over regolith
    return build_rocks(rng, diameter, dist * np.sin(phi), dist * np.cos(phi), terrain, albedo)


def _rotation(yaw: np.ndarray, tilt_x: np.ndarray, tilt_y: np.ndarray) -> np.ndarray:
    """Return (N, 3, 3) rotations: yaw about z, then small tilts about x and y."""
    n = len(yaw)
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(tilt_x), np.sin(tilt_x), np.cos(tilt_y), np.sin(tilt_y)
    z = np.zeros((n, 3, 3))
    rz, rx, ry = z.copy(), z.copy(), z.copy()
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = cz, -sz, sz, cz, 1
    rx[:, 0, 0], rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = 1, cx, -sx, sx, cx
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 1, 1], ry[:, 2, 0], ry[:, 2, 2] = cy, sy, 1, -sy, cy
    return rz @ rx @ ry


def build_rocks(rng: np.random.Generator, diameter: np.ndarray, x: np.ndarray, y: np.ndarray,
                terrain: Terrain, albedo: float) -> Rocks:
    """Return rock bodies of the given diameters standing on the terrain at (x, y), of about `albedo` x the ground's."""
    n = len(diameter)
    u = rng.random((n, 9))
    a = diameter / 2 * (0.85 + 0.3 * u[:, 0])
    axes = np.stack([a, a * (0.55 + 0.45 * u[:, 1]), a * (0.5 + 0.4 * u[:, 2])], axis=1)
    rotation = _rotation(u[:, 3] * 2 * np.pi, (u[:, 4] - 0.5) * 0.5, (u[:, 5] - 0.5) * 0.5)
    to_unit = np.transpose(rotation, (0, 2, 1)) / axes[:, :, None]  # rows of R^T divided by the half axes
    base = relief_at(terrain, x, y)[:, 0] if n else np.zeros(0)
    centre = np.stack([x, y, base + axes[:, 2] * (0.25 - 0.45 * u[:, 6])], axis=1)  # partly buried
    facets = rng.normal(size=(n, FACETS, 3))
    facets /= np.linalg.norm(facets, axis=2, keepdims=True)
    offsets = rng.uniform(0.55, 0.92, size=(n, FACETS))
    return Rocks(centre, to_unit.astype(np.float32), facets.astype(np.float32), offsets.astype(np.float32),
                 axes.max(axis=1), 2 * a, base, albedo * (0.8 + 0.4 * u[:, 7]))


def screen_boxes(camera: Camera, centres: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Return (N, 4) int column and row ranges [c0, c1) x [r0, r1) of spheres on screen, clipped (empty if unseen)."""
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    pts = centres[:, None, :] + corners[None] * reach[:, None, None]
    cols, rows, depth = project(camera, pts.reshape(-1, 3))
    cols, rows, depth = cols.reshape(-1, 8), rows.reshape(-1, 8), depth.reshape(-1, 8)
    behind = (depth < 0.02).any(axis=1)
    box = np.stack([np.floor(cols.min(1)), np.ceil(cols.max(1)) + 1, np.floor(rows.min(1)), np.ceil(rows.max(1)) + 1],
                   axis=1)
    box = np.where(behind[:, None], [0, camera.width, 0, camera.height], np.nan_to_num(box))
    lim = np.array([camera.width, camera.width, camera.height, camera.height])
    return np.clip(box, 0, lim).astype(np.int64)


def pairs_in_boxes(boxes: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (rock index, flat pixel index) of every pixel in every box."""
    w, h = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    n = np.maximum(w, 0) * np.maximum(h, 0)
    rock = np.repeat(np.arange(len(boxes)), n)
    offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    wk = w[rock]
    return rock, (boxes[rock, 2] + offset // wk) * width + boxes[rock, 0] + offset % wk


def intersect(rocks: Rocks, k: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return (t_in, t_out, hit, facet) of rays origin + t * direction (M, 3) with rocks k (M,).

    facet is the cutting plane the ray enters through, or -1 for the ellipsoid; t is in world units.
    Rays that miss the ellipsoid, or meet it only behind their origin, are misses without the planes.
    """
    a_mat = rocks.to_unit[k]
    o = mat_vec(a_mat, (origin - rocks.centre[k]).astype(np.float32))
    d = mat_vec(a_mat, np.broadcast_to(direction, o.shape).astype(np.float32))
    qa, qb, qc = dot(d, d), dot(o, d), dot(o, o) - 1
    disc = qb * qb - qa * qc
    root = np.sqrt(np.maximum(disc, 0))
    t_in, t_out = (-qb - root) / qa, (-qb + root) / qa
    hit = (disc > 0) & (t_out > 0)
    facet = np.full(len(k), -1, np.int8)
    idx = np.flatnonzero(hit)  # the planes only cut what the ellipsoid lets through
    ki, oi, di, t0, t1, f = k[idx], o[idx], d[idx], t_in[idx], t_out[idx], facet[idx]
    inside = np.ones(len(idx), bool)
    for i in range(FACETS):
        n = rocks.facets[ki, i]
        num = rocks.offsets[ki, i] - dot(n, oi)
        den = dot(n, di)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = num / den
        enters = (den < 0) & (ratio > t0)
        f = np.where(enters, i, f)
        t0 = np.where(enters, ratio, t0)
        t1 = np.where((den > 0) & (ratio < t1), ratio, t1)
        inside &= (den != 0) | (num >= 0)
    t_in[idx], t_out[idx], facet[idx] = t0, t1, f
    hit[idx] = inside & (t0 < t1)
    return t_in, t_out, hit, facet


def unit_normals(rocks: Rocks, k: np.ndarray, unit_point: np.ndarray, facet: np.ndarray) -> np.ndarray:
    """Return the normals (M, 3) at points of rocks k given in their unit frames (in those frames, not unit length)."""
    return np.where(facet[:, None] >= 0, rocks.facets[k, np.maximum(facet, 0)], unit_point)


def world_normals(rocks: Rocks, k: np.ndarray, unit_normal: np.ndarray) -> np.ndarray:
    """Return world unit normals (M, 3) of normals given in the unit frames of rocks k."""
    return normalized(mat_t_vec(rocks.to_unit[k], unit_normal))  # A^T n: normals map by the inverse transpose
