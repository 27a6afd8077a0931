"""Image statistics of labelled lunar sets: what the scenes contain and how they look, set against set.

For each folder in the Kaggle layout (``images/render`` + ``images/clean`` and/or
``real_moon_images/PCAMn.png`` + ``g_PCAMn.png``) it measures, per set of images:

- geometry: pixel share of each class, share of images with sky, rocks per image and their sizes
  (connected components of the mask, area as a share of the frame, so resized copies compare);
- appearance: the brightness of rocks against the ground around them and against the darkest
  ground beside them (their shadow), which class the darkest and brightest pixels belong to,
  the ground's brightness and colour, and its texture (power-spectrum slope and contrast of
  32x32 ground tiles after resizing the frame to 256x256).

    python bench/bench_scenes.py real=/work/shared/real-reference/labelled new=/tmp/d_new --write
    python bench/bench_scenes.py ours=data --fps 40     # also time render_scene at 480x320

Figures are printed as markdown tables; ``--write`` puts them in the "## Scene statistics" section of
bench/RESULTS.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
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
    """Return {"renders": [(image, mask), ...], "photos": [...]} for a folder in the Kaggle layout."""
    found = {"renders": [], "photos": []}
    for image in sorted((root / "images/render").glob("render*.png")):
        mask = root / "images/clean" / image.name.replace("render", "clean")
        if mask.is_file():
            found["renders"].append((image, mask))
    for image in sorted((root / "real_moon_images").glob("PCAM*.png"), key=lambda p: int(re.sub(r"\D", "", p.stem))):
        mask = image.with_name("g_" + image.name)
        if mask.is_file():
            found["photos"].append((image, mask))
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
    if not areas:
        return "-"
    counts = np.bincount(np.digitize(areas, AREA_BINS), minlength=len(AREA_BINS) + 1)
    return "/".join(f"{100 * c / len(areas):.0f}" for c in counts)


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


def time_renderer(frames: int, width: int, height: int, real: bool, **options) -> float:
    """Return frames per second of render_scene in this process (one core: OpenCV held to one thread)."""
    import cv2

    from lunar_cli.data.scene import render_scene

    cv2.setNumThreads(1)  # as in generate_synthetic's workers
    render_scene(np.random.default_rng(10_000), width, height, real=real, **options)  # warm caches
    start = time.perf_counter()
    for i in range(frames):
        render_scene(np.random.default_rng(i), width, height, real=real, **options)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", metavar="LABEL=FOLDER", help="folders in the Kaggle layout")
    parser.add_argument("--fps", type=int, default=0, metavar="FRAMES", help="also time render_scene on FRAMES frames")
    parser.add_argument("--size", default="480x320", help="frame size for --fps (default 480x320)")
    parser.add_argument("--write", action="store_true", help="write the tables into bench/RESULTS.md")
    args = parser.parse_args()
    from bench_results import machine

    geometry, appearance = [], []
    for spec in args.sets:
        label, _, folder = spec.rpartition("=")
        for kind, items in pairs(Path(folder)).items():
            stats = measure_set(items)
            geometry.append(geometry_row(f"{label or folder} {kind}", stats))
            appearance.append(appearance_row(f"{label or folder} {kind}", stats))
    text = [f"## Scene statistics (bench/bench_scenes.py, {date.today().isoformat()})", "",
            f"Machine: {machine()}. Sets: {', '.join(args.sets)}.", "", "What the scenes contain:", "",
            GEOMETRY_HEAD, *geometry, "", "How they look:", "", APPEARANCE_HEAD, *appearance, "", NOTES]
    if args.fps:
        w, h = (int(v) for v in args.size.split("x"))
        text += ["", f"render_scene speed, {w}x{h}, one process, one OpenCV thread ({args.fps} frames each):", "",
                 "| scenes | frames / s |", "| --- | ---: |"]
        text += [f"| {'real-like views' if real else 'renders'} | {time_renderer(args.fps, w, h, real):.1f} |"
                 for real in (False, True)]
    print("\n".join(text))
    if args.write:
        update_section(REPO / "bench/RESULTS.md", "## Scene statistics", "\n".join(text))


if __name__ == "__main__":
    main()
