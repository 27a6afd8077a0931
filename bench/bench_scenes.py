"""Image statistics of labelled lunar sets: what the scenes contain and how they look, set against set.

For each folder in the Kaggle layout (``images/render`` + ``images/clean`` and/or
``real_moon_images/PCAMn.png`` + ``g_PCAMn.png``) it measures, per set of images:

- geometry: pixel share of each class, share of images with sky, rocks per image and their sizes
  (connected components of the mask, area as a share of the frame, so resized copies compare);
- appearance: rocks against the ground around them and against its darkest part (their shadow), the
  class of the darkest and brightest pixels, the ground's level, colour and texture (NOTES below).

    python bench/bench_scenes.py real=/work/shared/real-reference/labelled new=/tmp/d_new --write
    python bench/bench_scenes.py ours=data --fps 40     # also time render_scene at 480x320
    python bench/bench_scenes.py --mitsuba /tmp/mts     # Mitsuba 3 renders of lunar's scenes (pip install mitsuba)

Markdown tables are printed; --write puts them in bench/RESULTS.md's "## Scene statistics" with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from bench_results import REPO, update_section

GROUND, SKY, SMALL, LARGE = 0, 1, 2, 3
AREA_BINS = (0.0001, 0.001, 0.01, 0.1)  # component area as a share of the frame: <0.01%, 0.01-0.1%, ..., >10%
TILE = 32  # texture tiles, on frames resized to 256x256


def pairs(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    """Return {"images/render": [(image, mask), ...], "real_moon_images": [...]} for a folder in the Kaggle layout.

    The folders' names, not "renders" and "photos": a synthetic set's real_moon_images are synthetic too.
    """
    found = {"images/render": [], "real_moon_images": []}
    for image in sorted((root / "images/render").glob("render*.png")):
        mask = root / "images/clean" / image.name.replace("render", "clean")
        if mask.is_file():
            found["images/render"].append((image, mask))
    for image in sorted((root / "real_moon_images").glob("PCAM*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem))):
        mask = image.with_name("g_" + image.name)
        if mask.is_file():
            found["real_moon_images"].append((image, mask))
    return {k: v for k, v in found.items() if v}


@dataclass
class SetStats:
    """Per-image and per-rock measurements of one set, summarised by ``row``."""

    images: int = 0
    share: list = field(default_factory=list)  # per image: class pixel shares (4,)
    counts: list = field(default_factory=list)  # per image: (small, large) components
    areas: dict = field(default_factory=lambda: {SMALL: [], LARGE: []})  # component area / frame area
    rock_vs_ground: list = field(default_factory=list)  # per rock: median rock / median ground ring
    lit_vs_ground: list = field(default_factory=list)  # per rock: 90th percentile rock / median ground ring
    shadow_vs_ground: list = field(default_factory=list)  # per rock: 10th percentile ring / median ring
    dark_rock: list = field(default_factory=list)  # per image: rock share of the darkest 5% non-sky pixels
    bright_rock: list = field(default_factory=list)  # per image: rock share of the brightest 5%
    ground_level: list = field(default_factory=list)  # per image: median ground luminance (0-255)
    ground_rgb: list = field(default_factory=list)  # per image: mean ground (R, G, B)
    clipped: list = field(default_factory=list)  # per image: share of non-sky pixels at 250 or more
    slopes: list = field(default_factory=list)  # per ground tile: log-log power spectrum slope
    contrast: list = field(default_factory=list)  # per ground tile: std / mean luminance


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 luma of an RGB uint8 image (Rec. 601 weights)."""
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def measure_image(stats: SetStats, rgb: np.ndarray, mask: np.ndarray) -> None:
    """Add one image's measurements to ``stats``."""
    import cv2

    if rgb.shape[:2] != mask.shape:  # a few copies differ by a pixel or two from their mask
        rgb = cv2.resize(rgb, mask.shape[::-1], interpolation=cv2.INTER_AREA)
    lum = luminance(rgb)
    stats.images += 1
    stats.share.append(np.bincount(mask.ravel(), minlength=4) / mask.size)
    stats.counts.append([measure_rocks(stats, lum, mask, cls) for cls in (SMALL, LARGE)])
    land = mask != SKY
    if land.sum() > 100:
        values, rock = lum[land], np.isin(mask[land], (SMALL, LARGE))
        order = np.argsort(values, kind="stable")
        k = max(1, len(order) // 20)
        stats.dark_rock.append(rock[order[:k]].mean())
        stats.bright_rock.append(rock[order[-k:]].mean())
        stats.clipped.append((values >= 250).mean())
    ground = mask == GROUND
    if ground.any():
        stats.ground_level.append(float(np.median(lum[ground])))
        stats.ground_rgb.append(rgb[ground].reshape(-1, 3).mean(axis=0))
    measure_texture(stats, lum, mask)


def measure_rocks(stats: SetStats, lum: np.ndarray, mask: np.ndarray, cls: int) -> int:
    """Measure each rock of class ``cls`` (size, brightness against its surround); return how many there are."""
    import cv2

    n, labels, boxes, _ = cv2.connectedComponentsWithStats((mask == cls).astype(np.uint8), connectivity=8)
    min_area = max(4, 5e-5 * mask.size)  # anti-aliased masks leave specks of a pixel or two
    count = 0
    for k in range(1, n):
        x, y, w, h, area = boxes[k]
        if area < min_area:
            continue
        count += 1
        stats.areas[cls].append(area / mask.size)
        grow = int(max(2, round(0.6 * np.sqrt(area))))
        r0, r1 = max(y - grow, 0), min(y + h + grow, mask.shape[0])
        c0, c1 = max(x - grow, 0), min(x + w + grow, mask.shape[1])
        rock = labels[r0:r1, c0:c1] == k
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        ring = cv2.dilate(rock.astype(np.uint8), kernel).astype(bool) & (mask[r0:r1, c0:c1] == GROUND)
        if ring.sum() < 8:
            continue
        inside, around = lum[r0:r1, c0:c1][rock], lum[r0:r1, c0:c1][ring]
        level = max(float(np.median(around)), 1.0)
        stats.rock_vs_ground.append(np.median(inside) / level)
        stats.lit_vs_ground.append(np.percentile(inside, 90) / level)
        stats.shadow_vs_ground.append(np.percentile(around, 10) / level)
    return count


def measure_texture(stats: SetStats, lum: np.ndarray, mask: np.ndarray) -> None:
    """Add the spectrum slope and contrast of every all-ground 32x32 tile of the frame resized to 256x256."""
    import cv2

    small = cv2.resize(lum, (256, 256), interpolation=cv2.INTER_AREA)
    ground = cv2.resize((mask == GROUND).astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
    fy, fx = np.meshgrid(np.fft.fftfreq(TILE), np.fft.fftfreq(TILE), indexing="ij")
    radius = np.round(np.hypot(fx, fy) * TILE).astype(int)
    window = np.outer(np.hanning(TILE), np.hanning(TILE))
    bins = np.arange(2, 13)  # 2-12 cycles per tile: wavelengths of 2.7-16 px at 256x256
    for r in range(0, 256, TILE):
        for c in range(0, 256, TILE):
            tile = small[r:r + TILE, c:c + TILE]
            if not ground[r:r + TILE, c:c + TILE].all() or tile.mean() < 2:
                continue
            power = np.abs(np.fft.fft2((tile - tile.mean()) * window)) ** 2
            radial = np.array([power[radius == b].mean() for b in bins])
            if (radial > 0).all():
                stats.slopes.append(np.polyfit(np.log(bins), np.log(radial), 1)[0])
                stats.contrast.append(tile.std() / tile.mean())


def measure_set(items: list[tuple[Path, Path]]) -> SetStats:
    """Return the measurements of a list of (image, mask) files."""
    from lunar_cli.classes import read_image_rgb, read_mask

    stats = SetStats()
    for image, mask in items:
        measure_image(stats, read_image_rgb(image), read_mask(mask)[0])
    return stats


def _med(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def size_histogram(areas: list) -> str:
    """Return the share of components in each AREA_BINS bin, as 'a/b/c/d/e' percentages."""
    counts = np.bincount(np.digitize(areas, AREA_BINS), minlength=len(AREA_BINS) + 1) if areas else []
    return "/".join(f"{100 * c / len(areas):.0f}" for c in counts) or "-"


def geometry_row(label: str, s: SetStats) -> str:
    """Return one markdown row of what a set contains: class shares, rock counts and sizes."""
    share = np.mean(s.share, axis=0)
    sky_images = np.mean([sh[SKY] > 0 for sh in s.share])
    small_n, large_n = np.mean(s.counts, axis=0)
    return (f"| {label} | {s.images} | {100 * share[SKY]:.1f} | {100 * sky_images:.0f} | {100 * share[SMALL]:.2f} | "
            f"{100 * share[LARGE]:.2f} | {small_n:.1f} | {large_n:.1f} | {100 * _med(s.areas[SMALL]):.3f} | "
            f"{100 * _med(s.areas[LARGE]):.2f} | {size_histogram(s.areas[SMALL])} | {size_histogram(s.areas[LARGE])} |")


def appearance_row(label: str, s: SetStats) -> str:
    """Return one markdown row of how a set looks: rocks against ground and shadow, colour, texture."""
    rgb = np.mean(s.ground_rgb, axis=0) if s.ground_rgb else np.full(3, np.nan)
    brighter = np.mean(np.array(s.rock_vs_ground) > 1) if s.rock_vs_ground else float("nan")
    return (f"| {label} | {len(s.rock_vs_ground)} | {_med(s.rock_vs_ground):.2f} | {100 * brighter:.0f} | "
            f"{_med(s.lit_vs_ground):.2f} | {_med(s.shadow_vs_ground):.2f} | {100 * np.mean(s.dark_rock):.0f} | "
            f"{100 * np.mean(s.bright_rock):.0f} | {_med(s.ground_level):.0f} "
            f"({np.percentile(s.ground_level, 10):.0f}-{np.percentile(s.ground_level, 90):.0f}) | "
            f"{rgb[0] / rgb[1]:.3f} | {rgb[2] / rgb[1]:.3f} | {100 * np.mean(s.clipped):.2f} | "
            f"{_med(s.slopes):.2f} | {_med(s.contrast):.3f} |")


GEOMETRY_HEAD = (
    "| set | images | sky % px | images with sky % | small % px | large % px | small rocks / image | "
    "large rocks / image | small median area % | large median area % | small sizes % | large sizes % |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
APPEARANCE_HEAD = (
    "| set | rocks | rock / ground | rocks brighter % | lit (p90) / ground | shadow (p10 ring) / ground | "
    "rock share of darkest 5% | of brightest 5% | ground level (p10-p90) | ground R/G | ground B/G | clipped % | "
    "spectrum slope | tile contrast |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
NOTES = (
    "Sizes: connected components of a class of at least max(4 px, 0.005% of the frame); 'sizes %' is the share "
    "of components with an area of <0.01 / 0.01-0.1 / 0.1-1 / 1-10 / >10% of the frame. Brightness is luma; "
    "'ground' is the median of the ground ring around each rock (0.6 x sqrt(area) wide), 'shadow' its 10th "
    "percentile, 'lit' the rock's 90th percentile; medians over rocks. 'rock share of darkest 5%': of the "
    "darkest 5% of non-sky pixels of an image, the share labelled rock (mean over images). Texture: ground-only "
    "32x32 tiles of the frame resized to 256x256, power spectrum slope over 2-12 cycles per tile (wavelengths "
    "2.7-16 px) and std / mean.")


def time_renderer(frames: int, width: int, height: int, real: bool, quality: str) -> tuple[float, float]:
    """Return (frames per wall second, per CPU second) of render_scene in this process, OpenCV on one thread."""
    import cv2

    from lunar_cli.data.scene import render_scene

    cv2.setNumThreads(1)  # as in generate_synthetic's workers
    render_scene(np.random.default_rng(10_000), width, height, real=real, quality=quality)  # warm caches
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(frames):
        render_scene(np.random.default_rng(i), width, height, real=real, quality=quality)
    return frames / (time.perf_counter() - wall), frames / (time.process_time() - cpu)


def mitsuba_scenes(out: Path, frames: int, spp: int, width: int = 480, height: int = 320) -> list[tuple[float, ...]]:
    """Render `frames` scenes with Mitsuba 3 (scalar_rgb path tracer) into out/images/{render,clean}; return
    (build, render, label) seconds per frame. Lunar's geometry (its samplers; terrain a 400x400 polar mesh,
    rocks spheres cut by their planes), Lambertian surfaces (rock albedo 0.5 x its ratio, ground the regolith
    texture on a 1 m bitmap), a directional sun; labels: the aov shape/primitive index of a ray per pixel."""
    import drjit as dr
    import mitsuba as mi

    from lunar_cli.classes import encode_mask, write_png_atomic

    mi.set_variant("scalar_rgb")

    _ = [(out / sub).mkdir(parents=True, exist_ok=True) for sub in ("images/render", "images/clean")]
    aov, times = mi.load_dict({"type": "aov", "aovs": "dd:depth,si:shape_index,pi:prim_index"}), []
    for i in range(1, frames + 1):
        start = time.perf_counter()
        scene, rocks, owner = _mitsuba_scene(mi, dr, np.random.default_rng([99, i]), "horizon" if i % 5 < 3 else "rover",
                                             width, height, spp)
        built = time.perf_counter()
        radiance = np.array(mi.render(scene))[..., :3]
        rendered = time.perf_counter()
        ids = np.array(mi.render(scene, integrator=aov, spp=1))
        index = [shape.id() for shape in scene.shapes()].index("rocks") + 1 if len(rocks) else -1  # counts from 1
        on_rock = (np.rint(ids[..., 1]) == index) & (ids[..., 0] > 0)
        rock = np.where(on_rock, owner[np.clip(np.rint(ids[..., 2]).astype(int), 0, len(owner) - 1)], -1)
        counts = np.bincount(rock[rock >= 0], minlength=len(rocks))
        mask = np.where(on_rock, np.where(rocks.diameter[rock.clip(0)] >= 0.5, 3, 2), 0).astype(np.uint8)
        mask[on_rock & (counts[rock.clip(0)] < 7e-4 * width * height)] = 0
        mask[ids[..., 0] <= 0] = 1  # no hit: sky
        lit = radiance.mean(-1)
        scale = 0.6 / max(float(np.percentile(lit[lit > 0], 75)), 1e-6)
        write_png_atomic(out / "images/render" / f"render{i:04d}.png", np.round(np.clip(radiance * scale, 0, 1) * 255)
                         .astype(np.uint8))
        write_png_atomic(out / "images/clean" / f"clean{i:04d}.png", encode_mask(mask))
        times.append((built - start, rendered - built, time.perf_counter() - rendered))
    return times


def _mitsuba_scene(mi, dr, rng: np.random.Generator, view: str, width: int, height: int, spp: int):
    """Return (Mitsuba scene, rocks, rock of each rock-mesh triangle) of one scene drawn by lunar's samplers."""
    from lunar_cli.data.camera import axes, pixel_rays, placed, sample_camera
    from lunar_cli.data.raycast import polar_grid, ray_fan
    from lunar_cli.data.rocks import FACETS, sample_rocks
    from lunar_cli.data.shading import sample_sun
    from lunar_cli.data.surface import sample_looks
    from lunar_cli.data.terrain import CraterShadow, PolarGrid, relief_at, relief_polar, sample_terrain

    def mesh(name, verts, faces, uv=None):
        shape = mi.Mesh(name, len(verts), len(faces), has_vertex_texcoords=uv is not None)
        params = mi.traverse(shape)
        params["vertex_positions"] = dr.ravel(mi.TensorXf(verts.astype(np.float32)))
        params["faces"] = dr.ravel(mi.TensorXu(faces.astype(np.uint32)))
        if uv is not None:
            params["vertex_texcoords"] = dr.ravel(mi.TensorXf(uv.astype(np.float32)))
        params.update()
        return shape

    camera = sample_camera(rng, width, height, view)
    fan = ray_fan(pixel_rays(camera))
    azimuths = (float(fan.azimuth.min()), float(fan.azimuth.max()))
    terrain = sample_terrain(rng, view, camera.focal, azimuths, camera.above_ground)
    camera = placed(camera, float(relief_at(terrain, np.zeros(1), np.zeros(1))[0, 0]))
    sun = sample_sun(rng, view)
    fine = polar_grid(camera, fan, 0.02, 1.5)
    grid = PolarGrid(np.linspace(fine.phi[0], fine.phi[-1], 400), np.geomspace(fine.dist[0], fine.dist[-1], 400))
    x, y = grid.xy
    z = relief_polar(terrain, grid, CraterShadow(1.0, (0.0, 1.0)))[0][..., 0] - grid.dist[:, None] ** 2 / 3474800.0
    idx = np.arange(x.size).reshape(x.shape)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    ground = mesh("terrain", np.stack([x, y, z], -1).reshape(-1, 3), faces, np.stack([x, y], -1).reshape(-1, 2))
    looks = sample_looks(rng, sun.toward, view)
    texture = np.clip(looks.fine * 0.5, 0, 1)[:, :, None].repeat(3, 2)
    ground.set_bsdf(mi.load_dict({"type": "diffuse", "reflectance": {
        "type": "bitmap", "data": mi.TensorXf(texture.astype(np.float32)), "raw": True, "wrap_mode": "repeat"}}))
    rocks = sample_rocks(rng, camera, terrain, azimuths, float(fine.dist[0]), 7e-4 * width * height)
    sphere_v, sphere_f = _icosphere(3)
    verts, tris, owner = [], [], []
    for k in range(len(rocks)):
        v = sphere_v.copy()
        for i in range(FACETS):  # cut by the rock's planes, in its unit frame
            n = rocks.facets[k, i].astype(float)
            v -= np.maximum(v @ n - float(rocks.offsets[k, i]), 0)[:, None] * n
        verts.append(v @ np.linalg.inv(rocks.to_unit[k].astype(float)).T + rocks.centre[k])
        tris, owner = tris + [sphere_f + k * len(sphere_v)], owner + [np.full(len(sphere_f), k)]
    (_, up, forward), pos = axes(camera), camera.position
    parts = {"type": "scene", "integrator": {"type": "path", "max_depth": 3}, "terrain": ground,
             "sensor": {"type": "perspective", "fov": float(np.degrees(2 * np.arctan(width / 2 / camera.focal))),
                        "fov_axis": "x", "to_world": mi.ScalarTransform4f().look_at(
                            origin=pos.tolist(), target=(pos + forward).tolist(), up=up.tolist()),
                        "film": {"type": "hdrfilm", "width": width, "height": height, "rfilter": {"type": "box"}},
                        "sampler": {"type": "independent", "sample_count": spp}},
             "sun": {"type": "directional", "direction": (-sun.toward).tolist(),
                     "irradiance": {"type": "rgb", "value": 3.0}}}
    if len(rocks):
        parts["rocks"] = mesh("rocks", np.concatenate(verts), np.concatenate(tris))
        parts["rocks"].set_bsdf(mi.load_dict({"type": "diffuse", "reflectance": {
            "type": "rgb", "value": float(min(0.5 * np.median(rocks.albedo), 0.95))}}))
    return mi.load_dict(parts), rocks, np.concatenate(owner) if owner else np.zeros(1, int)


def _icosphere(levels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Return (vertices, triangles) of a unit sphere: an octahedron subdivided `levels` times (8 * 4**levels faces)."""
    verts = [np.array(v, float) for v in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))]
    faces = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]
    for _ in range(levels):
        middle: dict = {}

        def mid(i: int, j: int) -> int:
            key = (min(i, j), max(i, j))
            if key not in middle:
                verts.append((verts[i] + verts[j]) / np.linalg.norm(verts[i] + verts[j]))
                middle[key] = len(verts) - 1
            return middle[key]

        faces = [f for a, b, c in faces for f in ((a, mid(a, b), mid(c, a)), (b, mid(b, c), mid(a, b)),
                                                  (c, mid(c, a), mid(b, c)), (mid(a, b), mid(b, c), mid(c, a)))]
    v, f = np.array(verts), np.array(faces)  # one-sided surfaces: turn every face outward
    outward = (np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]) * v[f[:, 0]]).sum(1) > 0
    return v, np.where(outward[:, None], f, f[:, ::-1])


def _machine() -> str:
    try:
        from bench_results import machine
        return machine()
    except ImportError:  # a scratch venv with mitsuba and no torch: the processor and its cores will do
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.machine())
        return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="*", metavar="LABEL=FOLDER", help="folders in the Kaggle layout")
    parser.add_argument("--fps", type=int, default=0, metavar="FRAMES", help="also time render_scene on FRAMES frames")
    parser.add_argument("--size", default="480x320", help="frame size for --fps (default 480x320)")
    parser.add_argument("--mitsuba", type=Path, metavar="OUT", help="render --mitsuba-frames scenes with Mitsuba 3 into OUT")
    parser.add_argument("--mitsuba-frames", type=int, default=8)
    parser.add_argument("--mitsuba-spp", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md")
    args = parser.parse_args()
    text = [f"## Scene statistics (bench/bench_scenes.py, {date.today().isoformat()})", "", f"Machine: {_machine()}."]
    if args.mitsuba:
        times = np.array(mitsuba_scenes(args.mitsuba, args.mitsuba_frames, args.mitsuba_spp))
        text += ["", f"Mitsuba 3 (scalar_rgb path tracer, {args.mitsuba_spp} samples per pixel, 480x320, "
                 f"{args.mitsuba_frames} scenes into {args.mitsuba}): seconds per frame, build {times[:, 0].mean():.2f}, "
                 f"render {times[:, 1].mean():.2f}, labels {times[:, 2].mean():.2f}: "
                 f"{1 / times.sum(axis=1).mean():.2f} frames/s."]
    measured = [(f"{spec.rpartition('=')[0] or spec} {kind}", measure_set(items)) for spec in args.sets
                for kind, items in pairs(Path(spec.rpartition("=")[2])).items()]
    geometry, appearance = [geometry_row(*m) for m in measured], [appearance_row(*m) for m in measured]
    if args.sets:
        text += ["", f"Sets: {', '.join(args.sets)}.", "", "What the scenes contain:", "", GEOMETRY_HEAD, *geometry,
                 "", "How they look:", "", APPEARANCE_HEAD, *appearance, "", NOTES]
    if args.fps:
        w, h = (int(v) for v in args.size.split("x"))
        text += ["", f"render_scene speed, {w}x{h}, one process, one OpenCV thread ({args.fps} frames each):", "",
                 "| scenes | quality | frames / wall s | frames / CPU s |", "| --- | --- | ---: | ---: |"]
        for real in (False, True):
            for quality in ("fast", "fine"):
                wall, cpu = time_renderer(args.fps, w, h, real, quality)
                text.append(f"| {'real-like (rover) views' if real else 'renders'} | {quality} | {wall:.1f} | {cpu:.1f} |")
    print("\n".join(text))
    if args.write:
        update_section(REPO / "bench/RESULTS.md", "## Scene statistics", "\n".join(text))


if __name__ == "__main__":
    main()
