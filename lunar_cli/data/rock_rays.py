"""Which pixels see which rock (a z-buffer over the terrain) and which points the rocks hide from the sun."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from lunar_cli.data.camera import Camera
from lunar_cli.data.rocks import Rocks, intersect, pairs_in_boxes, screen_boxes, unit_normals
from lunar_cli.data.vectors import dot, mat_vec

NO_ROCK = -1


@dataclass(frozen=True)
class RockHit:
    """Per pixel: the nearest rock in front of the terrain (NO_ROCK if none), its ray length, hit point and normal.

    Point and normal are in the rock's unit frame (where its ellipsoid is the unit sphere).
    """

    index: np.ndarray  # (H, W) int32
    t: np.ndarray  # (H, W) float32, inf where no rock
    unit_point: np.ndarray  # (H, W, 3)
    unit_normal: np.ndarray  # (H, W, 3), not unit length


def _near_sphere(rocks: Rocks, k: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Return which rays (origin + t direction, t > 0) pass within each rock's bounding sphere (cheap first test)."""
    w = (rocks.centre[k] - origin).astype(np.float32)
    along = dot(w, direction)
    reach = rocks.reach[k].astype(np.float32)
    return (along > -reach) & (dot(w, w) - along * along < reach * reach)


def cast_rocks(rocks: Rocks, camera: Camera, rays: np.ndarray, t_ground: np.ndarray) -> RockHit:
    """Return the rocks each pixel sees in front of the ground at ray length t_ground (H, W)."""
    h, w = t_ground.shape
    index = np.full(h * w, NO_ROCK, np.int32)
    t_best = np.full(h * w, np.inf, np.float32)
    normal = np.zeros((h * w, 3), np.float32)
    normal[:, 2] = 1
    unit_point = np.zeros((h * w, 3), np.float32)
    if len(rocks):
        scaled = _scaled_camera(camera, w)
        k, pix = pairs_in_boxes(screen_boxes(scaled, rocks.centre, rocks.reach), w)
        flat_rays = rays.reshape(-1, 3)
        origin = camera.position[None, :]
        keep = _near_sphere(rocks, k, origin, flat_rays[pix])
        k, pix = k[keep], pix[keep]
        t_in, _, hit, facet = intersect(rocks, k, origin, flat_rays[pix])
        hit &= (t_in > 0) & (t_in < t_ground.ravel()[pix])
        k, pix, t_in, facet = k[hit], pix[hit], t_in[hit], facet[hit]
        order = np.lexsort((t_in, pix))  # per pixel, nearest first
        _, first = np.unique(pix[order], return_index=True)
        win = order[first]
        k, pix, t_in, facet = k[win], pix[win], t_in[win], facet[win]
        offset = origin + t_in[:, None] * flat_rays[pix] - rocks.centre[k]
        local = mat_vec(rocks.to_unit[k], offset.astype(np.float32))
        index[pix], t_best[pix] = k, t_in
        unit_point[pix] = local
        normal[pix] = unit_normals(rocks, k, local, facet)
    return RockHit(index.reshape(h, w), t_best.reshape(h, w), unit_point.reshape(h, w, 3), normal.reshape(h, w, 3))


def _scaled_camera(camera: Camera, width: int) -> Camera:
    """Return the camera with its image scaled to `width` pixels (oversampled rays)."""
    k = width / camera.width
    return dataclasses.replace(camera, width=width, height=round(camera.height * k), focal=camera.focal * k)


def shadow_boxes(rocks: Rocks, camera: Camera, sun: np.ndarray, pieces: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Return (rock of each box, screen boxes) covering each rock and the ground its shadow can reach.

    The shadow's reach is cut in `pieces` along the sun's direction, so a long diagonal shadow gets
    a few tight boxes instead of one wide one.
    """
    tan_e = max(sun[2] / math.hypot(sun[0], sun[1]), 0.05)
    height = rocks.centre[:, 2] + rocks.reach - rocks.base  # of the bounding sphere's top over the ground
    length = np.minimum(height / tan_e, 30 * rocks.reach)  # along the ground
    horizontal = np.array([sun[0], sun[1], 0.0]) / math.hypot(sun[0], sun[1])
    drop = (rocks.centre[:, 2] - rocks.base)[:, None] * np.array([0.0, 0.0, 1.0])
    offset = length[:, None] * horizontal + drop
    ends = [screen_boxes(camera, rocks.centre - i / pieces * offset, rocks.reach) for i in range(pieces + 1)]
    boxes = np.stack([_union(ends[i], ends[i + 1]) for i in range(pieces)])  # (pieces, N, 4)
    whole = _union(ends[0], ends[-1])
    area = lambda b: np.maximum(b[..., 1] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 2], 0)  # noqa: E731
    single = area(whole) <= area(boxes).sum(axis=0)  # small rocks: one box is cheaper than overlapping pieces
    boxes[0][single] = whole[single]
    boxes[1:, single] = 0
    return np.tile(np.arange(len(rocks)), pieces), boxes.reshape(-1, 4)


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the boxes (N, 4) holding both boxes of each pair; an empty box counts for nothing."""
    empty_a = (a[:, 1] <= a[:, 0]) | (a[:, 3] <= a[:, 2])
    empty_b = (b[:, 1] <= b[:, 0]) | (b[:, 3] <= b[:, 2])
    both = np.stack([np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1]),
                     np.minimum(a[:, 2], b[:, 2]), np.maximum(a[:, 3], b[:, 3])], axis=1)
    return np.where(empty_a[:, None], b, np.where(empty_b[:, None], a, both))


def rock_shadows(rocks: Rocks, camera: Camera, points: np.ndarray, owner: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Return (H, W) bool: which surface points (H, W, 3) see a rock between them and the sun.

    owner (H, W) is the rock each point lies on (NO_ROCK for ground, -2 for sky): a convex rock never
    shades itself (its far side is dark by its own shading).
    """
    h, w = owner.shape
    shadow = np.zeros(h * w, bool)
    if not len(rocks):
        return shadow.reshape(h, w)
    box_rock, boxes = shadow_boxes(rocks, _scaled_camera(camera, w), sun)
    box, pix = pairs_in_boxes(boxes, w)
    k = box_rock[box]
    own = owner.ravel()[pix]
    keep = (own != -2) & (own != k)
    k, pix = k[keep], pix[keep]
    origin = points.reshape(-1, 3)[pix].astype(np.float64)
    direction = sun.astype(np.float32)
    keep = _near_sphere(rocks, k, origin, direction[None, :])
    k, pix, origin = k[keep], pix[keep], origin[keep]
    _, t_out, hit, _ = intersect(rocks, k, origin, direction)
    shadow[pix[hit & (t_out > 1e-4)]] = True  # a pixel in two boxes of a rock is simply set twice
    return shadow.reshape(h, w)
