"""Procedural lunar scenes with exact masks: camera, sky, regolith, craters, rocks and their shadows.

A pinhole camera looks at a flat, fractal regolith plane (craters included) under a low
sun; rocks are shaded blobs with cast shadows, drawn far to near so the mask follows the
same occlusion as the pixels. A scene depends only on the random generator it is given.

Real-like scenes (``real=True``) add the views of rover photos that renders lack: a camera
looking down with no sky in the frame, a large rock right in front of the lens. Those extra
draws come after the usual ones and only when real=True, so renders stay as they were.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

GROUND, SKY, SMALL, LARGE = 0, 1, 2, 3
FAR = 300.0  # metres: the ground beyond (and the distant hills) shows the coarsest texture level
FLOOR = 0.035  # darkest ground/rock value; the sky stays below it so masks and pixels agree
SKY_MAX = 3  # sky pixels are 0..SKY_MAX (8-bit)
NO_SKY_SHARE = 0.35  # real-like views looking down at the ground: Chang'e-3 photos often show no sky
CLOSE_ROCK_SHARE = 0.35  # real-like views with a large rock or two right in front of the camera


@dataclass(frozen=True)
class Scene:
    """Camera and sun of one image (lengths in metres, angles in radians, pixels for the rest)."""

    width: int
    height: int
    horizon: float  # row of the horizon at the image centre, before roll
    roll: float  # camera roll, tilts the horizon
    focal: float  # focal length in pixels
    cam_height: float  # camera height above the ground
    sun_azimuth: float  # direction the light comes from, in the ground plane (0 = +x, pi/2 = away)
    sun_elevation: float
    exposure: float  # brightness of flat, lit ground


@dataclass(frozen=True)
class Rock:
    """One rock on the ground plane, seen from the camera."""

    x: float  # image column of the base centre
    y: float  # image row of the base centre
    radius: float  # projected radius in pixels
    depth: float  # distance from the camera in metres
    cls: int  # SMALL or LARGE


def render_scene(rng: np.random.Generator, width: int, height: int, *,
                 real: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (RGB uint8 image, raw class mask, clean class mask) of one random scene.

    real=True samples the wider range of views of the real-like photos (no sky, close rocks).
    """
    scene = sample_scene(rng, width, height, real=real)
    sky = sky_mask(rng, scene)
    gray = np.where(sky, 0.0, project_ground(rng, scene, ground_view(scene))).astype(np.float32)
    raw = np.where(sky, SKY, GROUND).astype(np.uint8)
    tiny = np.zeros_like(sky)
    for rock in sample_rocks(rng, scene, real=real):
        draw_rock(rng, scene, rock, gray, raw, tiny)
    clean = np.where(tiny, GROUND, raw).astype(np.uint8)
    pixels = np.where(raw == SKY, 0.0, np.maximum(gray, FLOOR))  # rocks may hide the sky, never the reverse
    image = np.round(pixels * 255).astype(np.uint8)
    image[raw == SKY] = rng.integers(0, SKY_MAX + 1, size=int((raw == SKY).sum()), dtype=np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2), raw, clean


def sample_scene(rng: np.random.Generator, width: int, height: int, *, real: bool = False) -> Scene:
    """Return a random camera and sun; the horizon leaves roughly 10-30% of the frame to the sky.

    With real=True, NO_SKY_SHARE of the cameras look down: the horizon lies above the frame, no sky shows.
    """
    scene = Scene(width=width, height=height,
                  horizon=height * rng.uniform(0.10, 0.28),
                  roll=math.radians(rng.uniform(-4.0, 4.0)),
                  focal=width * rng.uniform(0.9, 1.3),
                  cam_height=rng.uniform(0.8, 1.6),
                  sun_azimuth=rng.uniform(0.0, 2 * np.pi),
                  sun_elevation=math.radians(rng.uniform(7.0, 40.0)),
                  exposure=rng.uniform(0.36, 0.52))
    if real and rng.random() < NO_SKY_SHARE:
        # above the top edge at every column whatever the roll, by 10-80% of the height (steeper views)
        above = abs(math.tan(scene.roll)) * width / 2 + height * rng.uniform(0.1, 0.8)
        scene = dataclasses.replace(scene, horizon=-above)
    return scene


def _rotated_rows_cols(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Return (column, row) of every pixel in the camera frame with the roll taken out."""
    cx, cy = scene.width / 2, scene.height / 2
    y, x = np.mgrid[0:scene.height, 0:scene.width].astype(np.float32)
    c, s = math.cos(scene.roll), math.sin(scene.roll)  # Python floats keep the arrays float32
    return c * (x - cx) + s * (y - cy) + cx, -s * (x - cx) + c * (y - cy) + cy


def _to_image(scene: Scene, xr: float, yr: float) -> tuple[float, float]:
    """Return the image (column, row) of a point given in the roll-free frame."""
    cx, cy = scene.width / 2, scene.height / 2
    c, s = math.cos(scene.roll), math.sin(scene.roll)
    return c * (xr - cx) - s * (yr - cy) + cx, s * (xr - cx) + c * (yr - cy) + cy


def sky_mask(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """Return the sky as a boolean (H, W) array: above a tilted horizon with distant hills."""
    xr, yr = _rotated_rows_cols(scene)
    t = np.linspace(0.0, 1.0, 256)
    hills = sum(rng.uniform(0, 1) / k * np.sin(2 * np.pi * (k * t + rng.uniform())) for k in (1, 2, 3, 5, 8, 13))
    hills = np.maximum(hills, 0) * scene.height * rng.uniform(0.0, 0.05)  # hills only rise, some frames are flat
    profile = np.interp(xr, np.linspace(-0.2, 1.2, 256) * scene.width, hills)
    return yr < scene.horizon - profile


@functools.lru_cache(maxsize=32)
def _amplitude(n: int, beta: float, lowest: float) -> np.ndarray:
    """Return the (n, n) FFT filter 1/f**(beta/2), zero below `lowest` cycles per tile (cached: a worker reuses it)."""
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    amplitude = np.where(f < lowest / n, 0.0, f ** (-beta / 2))
    return amplitude.astype(np.float32)[:, :, None]


def fractal_fields(rng: np.random.Generator, n: int, beta: float, lowest: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return two independent (n, n) tileable fractal noise fields (power 1/f**beta), zero mean, unit std.

    Wavelengths longer than n / lowest texels are left out; beta is rounded to 0.1 so filters can be reused.
    """
    white = rng.random((n, n, 2), dtype=np.float32) - 0.5  # uniform, 4x cheaper than normal; sums are Gaussian
    field = cv2.idft(white * _amplitude(n, round(beta, 1), lowest))  # complex in: real, imag parts independent
    return field[:, :, 0] / field[:, :, 0].std(), field[:, :, 1] / field[:, :, 1].std()


def lit_relief(rng: np.random.Generator, scene: Scene, n: int, *, beta: float, slope: float, albedo: float,
               sun_azimuth: float, lowest: float = 1.0) -> np.ndarray:
    """Return an (n, n) tileable brightness of fractal relief under the sun (flat ground = 1)."""
    height, patches = fractal_fields(rng, n, beta, lowest)
    gx = (np.roll(height, -1, 1) - np.roll(height, 1, 1)) / 2
    gy = (np.roll(height, -1, 0) - np.roll(height, 1, 0)) / 2
    scale = slope / np.sqrt((gx ** 2 + gy ** 2).mean())  # typical slope, whatever the resolution
    return (1 + albedo * patches) * ground_light(gx * scale, gy * scale, scene.sun_elevation, sun_azimuth)


def ground_light(gx, gy, elevation: float, azimuth: float):
    """Return the brightness of ground with height slopes (gx, gy), relative to flat ground (Lambert + ambient)."""
    light = (-gx * math.cos(elevation) * math.cos(azimuth) - gy * math.cos(elevation) * math.sin(azimuth)
             + math.sin(elevation)) / np.sqrt(1 + gx * gx + gy * gy)
    return (0.06 + np.maximum(light, 0)) / (0.06 + math.sin(elevation))


def sample_tiled(texture: np.ndarray, tu: np.ndarray, tv: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Return a tileable square texture sampled at texel coordinates (tu, tv), blended between mip levels."""
    levels = [texture]
    while levels[-1].shape[0] > 8:
        levels.append(cv2.resize(levels[-1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    level = np.clip(level, 0, len(levels) - 1)
    low, high = level.min(axis=1), level.max(axis=1)
    out = np.zeros(tu.shape, np.float32)
    for i, tex in enumerate(levels):
        rows = np.flatnonzero((low < i + 1) & (high > i - 1))  # a level is only used on a band of rows
        if rows.size == 0:
            continue
        band = slice(rows[0], rows[-1] + 1)
        size, step = tex.shape[0], 2 ** i
        mapx = _wrap((tu[band] + 0.5) / step - 0.5, size) + 1  # +1: the wrapped border added below
        mapy = _wrap((tv[band] + 0.5) / step - 0.5, size) + 1
        weight = np.maximum(1 - np.abs(level[band] - i), 0)
        out[band] += weight * cv2.remap(np.pad(tex, 1, mode="wrap"), mapx, mapy, cv2.INTER_LINEAR)
    return out


def _wrap(x: np.ndarray, size: int) -> np.ndarray:
    return x - np.floor(x * (1 / size)) * size  # np.mod, but many times faster on float32


@dataclass(frozen=True)
class GroundView:
    """Where each pixel hits the ground plane: lateral offset and depth in metres, and texture mip level."""

    u: np.ndarray
    depth: np.ndarray
    level: np.ndarray  # texture mip level: log2 of the texels one pixel covers


def ground_view(scene: Scene) -> GroundView:
    """Return the ground-plane coordinates of every pixel; rows at and above the horizon go very far."""
    xr, yr = _rotated_rows_cols(scene)
    fh = scene.focal * scene.cam_height
    below = yr - scene.horizon
    depth = fh / np.maximum(below, fh / FAR)
    depth = depth + np.maximum(fh / FAR - below, 0) * 2.0  # on the hills: 2 m a row, so no frozen rows
    u = (xr - scene.width / 2) * depth / scene.focal
    texels = _texels_per_metre(scene)
    rows = texels * depth**2 / fh  # texels per pixel down the image
    level = np.log2(np.maximum(rows, 1.0)) - 0.5  # mip level: blur where the ground is squeezed
    return GroundView(u.astype(np.float32), depth.astype(np.float32), level.astype(np.float32))


def _texels_per_metre(scene: Scene) -> float:
    return (scene.height - scene.horizon) / scene.cam_height  # about a texel per pixel at the bottom edge


def project_ground(rng: np.random.Generator, scene: Scene, view: GroundView) -> np.ndarray:
    """Return the (H, W) lit ground seen by the camera: fine regolith, broad undulations, craters.

    The fine texture tiles every few metres; its longest wavelengths are cut out and a second,
    coarse texture with an 80 m tile supplies them, so no repeat shows toward the horizon.
    """
    n = int(min(max(2 ** np.ceil(np.log2(scene.width)), 64), 1024))
    theta = rng.uniform(0, 2 * np.pi)  # turn the tiles so their repeat is not lined up with the frame
    sun = scene.sun_azimuth - theta
    fine = lit_relief(rng, scene, n, beta=rng.uniform(2.6, 3.2), slope=rng.uniform(0.06, 0.14), albedo=0.05,
                      sun_azimuth=sun, lowest=4.0)
    coarse = lit_relief(rng, scene, 64, beta=3.5, slope=rng.uniform(0.03, 0.08), albedo=0.1, sun_azimuth=sun)
    texels = _texels_per_metre(scene)
    cos, sin = math.cos(theta) * texels, math.sin(theta) * texels  # Python floats keep float32 maps
    tu, tv = cos * view.u + sin * view.depth, -sin * view.u + cos * view.depth
    ratio = 64 / 80.0 / texels  # coarse texels per fine texel
    ground = sample_tiled(fine, tu, tv, view.level)
    ground *= sample_tiled(coarse, tu * ratio, tv * ratio, view.level + math.log2(ratio))
    return ground * crater_shading(rng, scene, view) * scene.exposure


def crater_shading(rng: np.random.Generator, scene: Scene, view: GroundView) -> np.ndarray:
    """Return an (H, W) brightness factor for a few bowl craters with raised rims (1 = no crater).

    Craters live at fixed places on the ground plane, so perspective makes them ellipses.
    """
    factor = np.ones(view.u.shape, np.float32)
    near = scene.focal * scene.cam_height / (scene.height - scene.horizon)
    for _ in range(rng.integers(0, 7)):
        radius = min(0.15 + 0.2 * rng.pareto(1.3), 3.0)
        depth = np.sqrt(rng.uniform(near ** 2, 20.0 ** 2))
        u = (rng.uniform(-0.2, 1.2) - 0.5) * scene.width * depth / scene.focal
        du, dd = (view.u - u) / radius, (view.depth - depth) / radius
        near_crater = (np.abs(du) < 2) & (np.abs(dd) < 2)
        if not near_crater.any():
            continue
        du, dd = du[near_crater], dd[near_crater]
        r = np.maximum(np.hypot(du, dd), 1e-6)
        # slope of the profile h(r) = 0.18 (r^2 - 1) inside + 0.06 exp(-((r - 1) / 0.3)^2), per metre
        slope = np.where(r < 1, 0.36 * r, 0.0) - 0.06 * np.exp(-(((r - 1) / 0.3) ** 2)) * 2 * (r - 1) / 0.09
        gu, gd = slope * du / r, slope * dd / r
        factor[near_crater] *= np.minimum(ground_light(gu, gd, scene.sun_elevation, scene.sun_azimuth), 2.0)
    return factor


def sample_rocks(rng: np.random.Generator, scene: Scene, *, real: bool = False) -> list[Rock]:
    """Return the rocks of a scene sorted far to near; size shrinks with distance.

    Most scenes have small rocks (~90%) and large rocks (~75%); every scene has gravel,
    which shows up as small rocks in the raw mask only (below the clean size threshold).
    With real=True, CLOSE_ROCK_SHARE of the scenes also get one or two large rocks near the
    camera, 15-35% of the width in radius, their base at or below the bottom edge.
    """
    kinds = [(SMALL, 0.003, 0.01, 20 + rng.poisson(60), 10.0)]  # gravel: (class, radius range, count, max depth)
    if rng.random() < 0.9:
        kinds.append((SMALL, 0.015, 0.07, 20 + rng.poisson(60), 12.0))
    if rng.random() < 0.75:
        kinds.append((LARGE, 0.09, 0.4, 1 + rng.poisson(4.0), 9.0))
    fh = scene.focal * scene.cam_height
    near = fh / (scene.height - scene.horizon)  # depth of the bottom row
    top = -scene.horizon - abs(math.sin(scene.roll)) * scene.width / 2  # fewest rows from the horizon to the top edge
    seen = fh / top if top > 0 else math.inf  # with the horizon above the frame, rocks beyond would not show
    rocks = []
    for cls, r_min, r_max, number, max_depth in kinds:
        # depth by area: a band of ground farther away is wider, so it holds more rocks
        depth = np.sqrt(rng.uniform(near ** 2 * 0.8, max(min(max_depth, seen), 2 * near) ** 2, size=number))
        radius = r_min * (r_max / r_min) ** rng.power(0.6, size=number)  # more small than big
        xr = rng.uniform(-0.1, 1.1, size=number) * scene.width  # uniform on screen = uniform on the ground
        for d, r, x in zip(depth, radius, xr):
            yr = scene.horizon + scene.focal * scene.cam_height / d
            x_img, y_img = _to_image(scene, x, yr)
            if -50 < x_img < scene.width + 50 and r * scene.focal / d > 0.4:  # smaller would not show
                rocks.append(Rock(x_img, y_img, r * scene.focal / d, d, cls))
    if real and rng.random() < CLOSE_ROCK_SHARE:
        for _ in range(rng.integers(1, 3)):
            base = scene.height * rng.uniform(0.8, 1.15)  # roll-free row of the base, up to below the frame
            x_img, y_img = _to_image(scene, rng.uniform(0.05, 0.95) * scene.width, base)
            rocks.append(Rock(x_img, y_img, scene.width * rng.uniform(0.15, 0.35), fh / (base - scene.horizon), LARGE))
    return sorted(rocks, key=lambda rock: rock.y)


def rock_outline(rng: np.random.Generator, rock: Rock) -> np.ndarray:
    """Return the rock's silhouette as an (N, 2) polygon: an irregular ellipse with a buried, flat base."""
    n = int(min(max(rock.radius * 1.2, 7), 24))
    u = rng.random(2 * n + 5)  # one call for all of the rock's randomness: hundreds of rocks per image
    angles = (np.arange(n) + 0.6 * u[:n] - 0.3) * (2 * np.pi / n)
    wobble = 0.9 + 0.2 * u[n:2 * n] + 0.2 * (u[-5] - 0.5) * np.cos(2 * angles + 6.3 * u[-4]) \
        + 0.2 * (u[-3] - 0.5) * np.cos(3 * angles + 6.3 * u[-2])
    rx, ry = rock.radius, rock.radius * (0.55 + 0.35 * u[-1])
    px, py = rx * wobble * np.cos(angles), np.minimum(ry * wobble * np.sin(angles), 0.5 * ry)
    return np.stack([rock.x + px, rock.y - 0.5 * ry + py], axis=1)


def _fill(polygon: np.ndarray, shape: tuple[int, int]):
    """Return (rows, cols, local, crop) for a filled polygon, or None when it is off the image.

    local is the polygon's 0/1 mask over its bounding box; rows, cols select the part of the
    image it covers and crop = (r0, r1, c0, c1) the same part of local. Working on the box only
    keeps hundreds of rocks per image cheap.
    """
    (x0, y0), (x1, y1) = np.floor(polygon.min(axis=0)).astype(int) - 1, np.ceil(polygon.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(local, [np.round(polygon - (x0, y0)).astype(np.int32)], 1)
    r0, r1, c0, c1 = max(y0, 0), min(y1, shape[0]), max(x0, 0), min(x1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1), local, (r0 - y0, r1 - y0, c0 - x0, c1 - x0)


def draw_rock(rng: np.random.Generator, scene: Scene, rock: Rock, gray: np.ndarray, raw: np.ndarray,
              tiny: np.ndarray) -> None:
    """Paint one rock and its cast shadow into the image and the masks (in place)."""
    if rock.radius < 1.5:
        return draw_gravel(rng, scene, rock, gray, raw, tiny)
    cast_shadow(scene, rock, gray, raw)
    filled = _fill(rock_outline(rng, rock), raw.shape)
    if filled is None:
        return None
    rows, cols, local, (a, b, c, d) = filled
    shade = rock_shading(rng, scene, local) * rng.uniform(0.8, 1.25)
    inside = local[a:b, c:d].astype(bool)
    gray[rows, cols][inside] = np.minimum(shade[a:b, c:d][inside], 1.0)
    raw[rows, cols][inside] = rock.cls
    tiny[rows, cols][inside] = rock.radius < max(1.5, 0.005 * scene.height)  # clean masks leave these out
    return None


def draw_gravel(rng: np.random.Generator, scene: Scene, rock: Rock, gray: np.ndarray, raw: np.ndarray,
                tiny: np.ndarray) -> None:
    """Paint a rock of a pixel or two as one flat block (no outline or shadow would show); it counts as tiny."""
    w, h = max(1, round(2 * rock.radius)), max(1, round(1.2 * rock.radius))
    c0, r0 = round(rock.x - w / 2), round(rock.y - h)
    rows, cols = slice(max(r0, 0), max(r0 + h, 0)), slice(max(c0, 0), max(c0 + w, 0))
    gray[rows, cols] = min(float(rock_light(scene, 0.0, -0.6)) * rng.uniform(0.5, 1.4), 1.0)
    raw[rows, cols] = rock.cls
    tiny[rows, cols] = True


def rock_light(scene: Scene, gx, gy):
    """Return the brightness of rock surface with image-space height slopes (gx, gy) (arrays or floats)."""
    e, az = scene.sun_elevation, scene.sun_azimuth
    # view axes: x right, y up, z toward the camera; the sun's ground direction (cos az, sin az) is (x, -z)
    light = (-gx * math.cos(e) * math.cos(az) + gy * math.sin(e) - math.cos(e) * math.sin(az)) \
        / np.sqrt(1 + gx * gx + gy * gy)
    return (0.08 + np.maximum(light, 0)) / (0.06 + math.sin(e)) * scene.exposure


def rock_shading(rng: np.random.Generator, scene: Scene, local: np.ndarray) -> np.ndarray:
    """Return the brightness over a rock's bounding box: a lumpy dome lit by the sun."""
    dist = cv2.distanceTransform(local, cv2.DIST_L2, 3)
    top = float(dist.max())
    if top < 2.5:  # a few pixels: one tone, as if facing the camera and tilted up a little
        return np.full(local.shape, rock_light(scene, 0.0, -0.6), np.float32)
    dome = top * np.sqrt(1 - (1 - dist / top) ** 2)  # rounded relief that follows the outline
    bumps = cv2.GaussianBlur(rng.random(dome.shape, dtype=np.float32) - 0.5, (0, 0), 1.0)
    gy, gx = np.gradient(dome + 2.8 * bumps)
    return rock_light(scene, gx, gy)


def cast_shadow(scene: Scene, rock: Rock, gray: np.ndarray, raw: np.ndarray) -> None:
    """Darken the ground behind the rock, away from the sun (never the sky)."""
    length = min(0.7 / math.tan(scene.sun_elevation), 5.0) * rock.radius  # in pixels across the ground
    foreshorten = scene.cam_height / rock.depth  # ground lengths shrink along the view direction
    offset = (-math.cos(scene.sun_azimuth) * length, math.sin(scene.sun_azimuth) * length * foreshorten)
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    foot = np.stack([rock.x + rock.radius * np.cos(angles),
                     rock.y + rock.radius * foreshorten * (np.sin(angles) - 0.5)], axis=1)
    hull = cv2.convexHull(np.concatenate([foot, foot + offset]).astype(np.float32))[:, 0, :]
    filled = _fill(hull, raw.shape)
    if filled is None:
        return
    rows, cols, local, (a, b, c, d) = filled
    area = local[a:b, c:d].astype(bool) & (raw[rows, cols] != SKY)
    gray[rows, cols][area] *= 0.25
