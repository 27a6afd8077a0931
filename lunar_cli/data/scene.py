"""Physically lit lunar scenes with masks taken from the geometry that made the pixels.

A scene is a height-field terrain (hills, swell, craters) strewn with rocks that are 3-D convex
bodies, seen by a pinhole camera and lit by the sun. Each pixel's ray finds the first surface
it meets (terrain sweep, then rocks in front of it), which gives the pixel its object id, point,
normal and depth; rays toward the sun from those points give the cast shadows. The masks are
the class of each pixel's object: a shadow is ground because the shaded surface is ground.

Views come in two kinds (``camera.VIEWS``): "horizon" views like the dataset's renders and
"rover" views like the Chang'e-3 photos (the real-like set uses rover views only). A scene
depends only on the random generator it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lunar_cli.console import LunarError
from lunar_cli.data.camera import Camera, pixel_rays, placed, sample_camera
from lunar_cli.data.raycast import TerrainHit, cast_terrain, polar_grid, ray_fan
from lunar_cli.data.rock_rays import NO_ROCK, RockHit, cast_rocks, rock_shadows
from lunar_cli.data.rocks import Rocks, sample_rocks, world_normals
from lunar_cli.data.shading import Sun, ground_normals, sample_sun
from lunar_cli.data.surface import Looks, ground_light, rock_light, sample_looks
from lunar_cli.data.terrain import CraterShadow, Terrain, relief_at, sample_terrain
from lunar_cli.data.vectors import dot

GROUND, SKY, SMALL, LARGE = 0, 1, 2, 3
SKY_ID, GROUND_ID = 0, 1  # object ids; rock k is object 2 + k
FLOOR = 0.035  # darkest ground/rock value; the sky stays below it so masks and pixels agree
SKY_MAX = 3  # sky pixels are 0..SKY_MAX (8-bit)
HORIZON_SHARE = 0.6  # rendered scenes with horizon views; the rest are rover views, like the photos
HERO_SHARE = 0.45  # rover views with one boulder placed in the lower middle of the frame
# rays per pixel side, terrain distance step, polar grid columns in rays (a ray's ground hit comes from the
# nearest column, its shading from its own direction)
QUALITY = {"fast": (1, 0.02, 1.5), "fine": (2, 0.005, 1.0)}


@dataclass(frozen=True)
class Frame:
    """One rendered scene: the picture, its masks and the geometry both come from.

    Per-ray arrays have one entry per ray: per pixel in "fast" quality, per sub-pixel (2x2 a pixel) in "fine".
    """

    image: np.ndarray  # (H, W, 3) uint8, grey
    raw: np.ndarray  # (H, W) class of every pixel's object
    clean: np.ndarray  # (H, W) the same with rocks too small on screen counted as ground
    object_id: np.ndarray  # (H, W) int32: SKY_ID, GROUND_ID or 2 + rock: the object the pixel's ray (most rays) meets
    object_class: np.ndarray  # (2 + rocks,) uint8 class of each object id
    object_kept: np.ndarray  # (2 + rocks,) bool: the object keeps its class in the clean mask
    ray_object: np.ndarray  # per ray: the first surface the ray meets (object id)
    depth: np.ndarray  # per ray: ray length to that surface, metres (inf on the sky)
    shadow: np.ndarray  # per ray: the surface point does not see the sun (a rock or a crater rim is in the way)
    incidence: np.ndarray  # per ray: cosine between the surface normal and the sun (0 on the sky)
    view: str
    camera: Camera
    terrain: Terrain
    rocks: Rocks  # rock k is object 2 + k
    sun: Sun


@dataclass(frozen=True)
class _Labels:
    """How a scene's objects are labelled: boulder size, smallest rock kept, size on screen of a large rock."""

    large_from: float  # metres: rocks at least this wide are large
    min_share: float  # of the frame: rocks covering less are ground in the clean mask
    big_share: float  # of the frame: rocks covering more are large whatever their size


def render_scene(rng: np.random.Generator, width: int, height: int, *, real: bool = False,
                 quality: str = "fast") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (RGB uint8 image, raw class mask, clean class mask) of one random scene.

    real=True draws rover views only (the real-like set); otherwise HORIZON_SHARE of the scenes are
    horizon views. quality "fine" casts 2x2 rays per pixel and steps the terrain finer (slower).
    """
    frame = render_frame(rng, width, height, view=pick_view(rng, real), quality=quality)
    return frame.image, frame.raw, frame.clean


def pick_view(rng: np.random.Generator, real: bool) -> str:
    """Return the kind of view of a scene: always "rover" for the real-like set, else HORIZON_SHARE "horizon"."""
    return "rover" if real or rng.random() >= HORIZON_SHARE else "horizon"


def render_frame(rng: np.random.Generator, width: int, height: int, *, view: str, quality: str = "fast") -> Frame:
    """Return one random scene of the given kind of view with all of its geometry (see Frame)."""
    if view not in ("horizon", "rover") or quality not in QUALITY:
        raise LunarError(f"scene: view must be horizon or rover and quality fast or fine, got {view!r}, {quality!r}")
    oversample, step, column = QUALITY[quality]
    camera = sample_camera(rng, width, height, view)
    rays = pixel_rays(camera, oversample)
    fan = ray_fan(rays)
    azimuths = (float(fan.azimuth.min()), float(fan.azimuth.max()))
    focal = camera.focal * oversample
    terrain = sample_terrain(rng, view, focal, azimuths, camera.above_ground)
    camera = placed(camera, float(relief_at(terrain, np.zeros(1), np.zeros(1))[0, 0]))
    sun = sample_sun(rng, view)
    horizontal = math.hypot(sun.toward[0], sun.toward[1])
    grid = polar_grid(camera, fan, step, column)
    rim_shadow = CraterShadow(sun.toward[2] / horizontal, (sun.toward[0] / horizontal, sun.toward[1] / horizontal))
    ground = cast_terrain(camera, terrain, fan, grid, rim_shadow)
    near = float(grid.dist[0])
    hero = _hero_rock(rng, camera, rays, ground) if view == "rover" and rng.random() < HERO_SHARE else None
    min_share = rng.uniform(5e-4, 9e-4)
    rocks = sample_rocks(rng, camera, terrain, azimuths, near, min_share * width * height, hero)
    rock = cast_rocks(rocks, camera, rays, ground.t)
    looks = sample_looks(rng, sun.toward, view, 256 * oversample)
    # the renders' masks keep "large" for boulders; the photos' also for any rock filling a good part of the frame
    labels = _Labels(rng.uniform(0.5, 0.8) if view == "horizon" else rng.uniform(0.3, 0.45), min_share, 20 * min_share)
    exposure = rng.uniform(0.55, 0.72) if view == "horizon" else rng.uniform(0.36, 0.52)
    on_rock = rock.index != NO_ROCK
    ray_object = np.where(on_rock, rock.index + 2, np.where(ground.sky, SKY_ID, GROUND_ID)).astype(np.int32)
    depth = np.where(on_rock, rock.t, ground.t)
    hit = np.where(on_rock, rock.t, 0)[..., None]  # rays that miss every rock have t = inf: inf * 0 would warn
    points = np.where(on_rock[..., None], camera.position.astype(np.float32) + hit * rays, ground.points)
    shadow = rock_shadows(rocks, camera, points, np.where(on_rock, rock.index, np.where(ground.sky, -2, NO_ROCK)),
                          sun.toward)
    shadow |= (ground.crater_margin > 0) & ~on_rock & ~ground.sky
    radiance, incidence = _shade(camera, rays, oversample, ground, rock, rocks, sun, looks, shadow, depth)
    image, object_id = _to_pixels(rng, radiance, ray_object, oversample, exposure)
    object_class, kept = _classes(object_id, rocks, labels)
    raw = object_class[object_id]
    clean = np.where(kept[object_id], raw, GROUND).astype(np.uint8)
    return Frame(image, raw, clean, object_id, object_class, kept, ray_object, depth, shadow, incidence, view, camera,
                 terrain, rocks, sun)


def _classes(object_id: np.ndarray, rocks: Rocks, labels: _Labels) -> tuple[np.ndarray, np.ndarray]:
    """Return (class of each object id, whether the clean mask keeps it) from rock sizes in metres and on screen."""
    counts = np.bincount(object_id.ravel(), minlength=len(rocks) + 2)
    large = (rocks.diameter >= labels.large_from) | (counts[2:] >= labels.big_share * object_id.size)
    object_class = np.concatenate([[SKY, GROUND], np.where(large, LARGE, SMALL)]).astype(np.uint8)
    kept = (counts >= labels.min_share * object_id.size) | (np.arange(len(object_class)) < 2)
    return object_class, kept


def _hero_rock(rng: np.random.Generator, camera: Camera, rays: np.ndarray, ground: TerrainHit):
    """Return (diameter, distance, azimuth) of a boulder whose foot is at a random lower-middle pixel."""
    h, w = ground.t.shape
    row, col = int(rng.uniform(0.5, 0.92) * h), int(rng.uniform(0.2, 0.8) * w)
    if not np.isfinite(ground.t[row, col]):
        return None
    x, y = ground.points[row, col, :2]
    dist = math.hypot(x, y)
    size = min(rng.uniform(0.25, 0.45) * camera.width / camera.focal * dist, 3.0)
    return size, dist + size * 0.3, math.atan2(x, y)


def _shade(camera: Camera, rays, oversample: int, ground: TerrainHit, rock: RockHit, rocks: Rocks, sun: Sun,
           looks: Looks, shadow: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (radiance, cos incidence) of every ray's surface; the upper quartile of lit ground comes out at 1."""
    focal = camera.focal * oversample
    lit = ~shadow
    is_ground = (rock.index == NO_ROCK) & ~ground.sky
    # the whole frame at once (sky and rock pixels are dropped at the end): cheaper than gathering the ground
    normal = ground_normals(ground.slope_x, ground.slope_y).reshape(-1, 3)
    view = -rays.reshape(-1, 3)
    cos_view = np.maximum(dot(normal, view), 0.05)
    footprint = np.minimum(ground.t.ravel(), 1e4) / focal / np.sqrt(cos_view)
    direct, albedo = ground_light(looks, ground.points.reshape(-1, 3), normal, view, footprint, sun.toward)
    direct = direct.reshape(depth.shape) * (lit & is_ground)
    albedo = albedo.reshape(depth.shape)
    sample = direct[::3, ::3]  # a median of a ninth of the frame is as good and cheaper
    lit_ground = sample > 0
    # the upper quartile, not the median: under a low sun much lit ground is barely lit and would blow out the rest
    reference = float(np.percentile(sample[lit_ground] / albedo[::3, ::3][lit_ground], 75)) if lit_ground.sum() > 20 \
        else float(sun.toward[2])
    radiance = np.where(is_ground, albedo * (direct + sun.ambient * reference), 0).astype(np.float32)
    sun_dir = sun.toward.astype(np.float32)
    incidence = np.where(is_ground, dot(normal, sun_dir).reshape(depth.shape), 0).astype(np.float32)
    on_rock = rock.index != NO_ROCK
    if on_rock.any():
        k = rock.index[on_rock]
        view = -rays[on_rock]
        direct, mottle, normal = rock_light(looks, rock.unit_point[on_rock], rock.unit_normal[on_rock],
                                            lambda n: world_normals(rocks, k, n), view, rocks.diameter[k] / 2,
                                            depth[on_rock] / focal, sun.toward)
        bounce = sun.ambient * reference * (0.7 + 0.3 * (1 - normal[:, 2]))  # faces turned down see lit ground
        radiance[on_rock] = rocks.albedo[k] * mottle * (direct * lit[on_rock] + bounce)
        incidence[on_rock] = dot(normal, sun.toward.astype(np.float32))
    return radiance / (reference * (1 + sun.ambient)), incidence


def _to_pixels(rng, radiance: np.ndarray, object_id: np.ndarray, oversample: int,
               exposure: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (grey RGB uint8 image, per-pixel object id) at the camera's resolution, exposed and with a black sky."""
    if oversample > 1:
        h, w = object_id.shape[0] // oversample, object_id.shape[1] // oversample
        radiance = cv2.resize(radiance, (w, h), interpolation=cv2.INTER_AREA)
        object_id = _majority(object_id, oversample)
    sky = object_id == SKY_ID
    pixels = np.clip(radiance * exposure, FLOOR, 1.0)  # the upper quartile of lit ground comes out at `exposure`
    image = np.round(pixels * 255).astype(np.uint8)
    image[sky] = rng.integers(0, SKY_MAX + 1, size=int(sky.sum()), dtype=np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2), object_id


def _majority(ids: np.ndarray, k: int) -> np.ndarray:
    """Return the object id most of each k x k block of rays meet (ties: the lower id)."""
    h, w = ids.shape[0] // k, ids.shape[1] // k
    blocks = np.sort(ids[:h * k, :w * k].reshape(h, k, w, k).transpose(0, 2, 1, 3).reshape(h, w, k * k), axis=2)
    runs = np.zeros(blocks.shape, np.int32)  # length of the run of equal ids ending at each position
    for i in range(1, k * k):
        runs[..., i] = np.where(blocks[..., i] == blocks[..., i - 1], runs[..., i - 1] + 1, 0)
    best = np.argmax(runs, axis=2)  # the first position where the longest run ends
    return np.take_along_axis(blocks, best[..., None], axis=2)[..., 0]
