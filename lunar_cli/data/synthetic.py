"""The embedded default dataset: procedural lunar scenes written in the Artificial Lunar Landscape layout.

No download, deterministic by seed, seconds to make. The scenes come from ``lunar_cli.data.scene``
(physically lit terrain and rocks, masks from the geometry); this module draws each image's kind of
view, writes it with its masks and gives rover views the look of a rover camera's photos
(``real_look``: tint, exposure, blur, noise, JPEG). Every image depends only on (seed, kind, index,
width, height) and the quality, so the output is the same whatever the number of worker processes.

Layout under ``out_dir`` (like the Kaggle dataset):
  images/render/render0001.png   rendered scene: HORIZON_SHARE horizon views (grey, black sky, like the
      dataset's renders), the rest rover views with the photo look
  images/clean/clean0001.png     mask without rocks too small on screen (under 0.02-0.05% of the frame)
  images/ground/ground0001.png   raw mask: every rock, pebbles included
  real_moon_images/PCAM1.png, g_PCAM1.png   "real-like" photos + masks (synthetic, a stand-in for the real
      photos): rover views only, with the photo look
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from lunar_cli.classes import CLASS_NAMES, NUM_CLASSES, encode_mask, write_png_atomic
from lunar_cli.console import LunarError, track
from lunar_cli.data.scene import QUALITY, pick_view, render_frame
from lunar_cli.parallel import cpu_cores, map_in_processes

KINDS = {"render": 0, "real": 1}  # part of each image's seed: the two sets never share scenes


def generate_synthetic(out_dir: Path, *, count: int, real_count: int, width: int, height: int, seed: int,
                       workers: int | None = None, progress: bool = True, quality: str = "fast") -> dict:
    """Write `count` rendered scenes and `real_count` real-like photos under out_dir; return a summary dict.

    Image i depends only on (seed, kind, i, width, height, quality), so every `workers` value gives the
    same bytes. quality "fine" (2x2 rays per pixel, finer terrain steps) is about 4x slower, for
    building datasets. Each file is written atomically; files of an earlier, larger set are left in place.
    workers > 1 renders in that many processes (``parallel.map_in_processes``; default: one per
    core this process may use), so a script calling this needs the usual ``if __name__ == "__main__":`` guard. The
    summary holds the counts per folder, the size, the seed, the pixel share of each class and
    the share of images where each class appears.
    """
    _validate(count, real_count, width, height, seed, workers, quality)
    out_dir = Path(out_dir)
    for sub in ("images/render", "images/clean", "images/ground", "real_moon_images"):
        try:
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LunarError(f"{out_dir / sub}: cannot create folder ({exc.strerror}); "
                             "choose another data_dir") from exc
    jobs = [(str(out_dir), "render", i, width, height, seed, quality) for i in range(1, count + 1)]
    jobs += [(str(out_dir), "real", i, width, height, seed, quality) for i in range(1, real_count + 1)]
    workers = min(workers or cpu_cores(), len(jobs))
    start = time.perf_counter()
    clean_pixels, ground_pixels, presence = (np.zeros(NUM_CLASSES, np.int64) for _ in range(3))
    for kind, clean_counts, ground_counts in _run_jobs(jobs, workers, progress):
        if kind == "render":  # statistics describe the rendered set, as for the real dataset
            clean_pixels += clean_counts
            ground_pixels += ground_counts
            presence += clean_counts > 0
    return {
        "out_dir": str(out_dir),
        "counts": {"images/render": count, "images/clean": count, "images/ground": count,
                   "real_moon_images": real_count},  # real: PCAMn.png + g_PCAMn.png pairs
        "width": width,
        "height": height,
        "seed": seed,
        "quality": quality,
        "class_share": _per_class(clean_pixels / clean_pixels.sum()),  # pixel share over images/clean
        "class_share_ground": _per_class(ground_pixels / ground_pixels.sum()),  # over images/ground
        "class_presence": _per_class(presence / count),  # share of images/clean masks with the class
        "seconds": round(time.perf_counter() - start, 2),
    }


def _per_class(values: np.ndarray) -> dict[str, float]:
    return {name: round(float(v), 4) for name, v in zip(CLASS_NAMES, values)}


def _validate(count: int, real_count: int, width: int, height: int, seed: int, workers: int | None,
              quality: str) -> None:
    checks = [(count >= 1, f"count must be at least 1, got {count}"),
              (quality in QUALITY, f"quality must be one of {', '.join(QUALITY)}, got {quality!r}"),
              (real_count >= 0, f"real_count must be 0 or more, got {real_count}"),
              (width >= 32 and height >= 32, f"image size must be at least 32x32, got {width}x{height}"),
              (seed >= 0, f"seed must be 0 or more, got {seed}"),
              (workers is None or workers >= 1, f"workers must be at least 1, got {workers}")]
    for ok, message in checks:
        if not ok:
            raise LunarError(f"synthetic data: {message}")


def _run_jobs(jobs: list, workers: int, progress: bool):
    """Yield each job's result, in order, from this process or a pool of `workers` processes."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # single-threaded like the pool's workers: each image renders the same in any process
    try:
        results = map_in_processes(_render_job, jobs, workers, max_chunk=4)
        yield from track(results, f"generating {len(jobs)} synthetic images", total=len(jobs), quiet=not progress)
    finally:
        cv2.setNumThreads(threads)


def _render_job(job: tuple) -> tuple[str, np.ndarray, np.ndarray]:
    """Render and write one image and its masks; return (kind, clean pixel counts, raw pixel counts)."""
    out_dir, kind, index, width, height, seed, quality = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, KINDS[kind], index, width, height]))
    view = pick_view(rng, real=kind == "real")
    frame = render_frame(rng, width, height, view=view, quality=quality)
    image, raw, clean = frame.image, frame.raw, frame.clean
    if view == "rover":  # rover views get a camera's colour; the real-like photos its flaws too
        image = real_look(rng, image, flaws=kind == "real")
    out = Path(out_dir)
    if kind == "render":
        write_png_atomic(out / "images/render" / f"render{index:04d}.png", image)
        write_png_atomic(out / "images/clean" / f"clean{index:04d}.png", encode_mask(clean))
        write_png_atomic(out / "images/ground" / f"ground{index:04d}.png", encode_mask(raw))
    else:
        write_png_atomic(out / "real_moon_images" / f"PCAM{index}.png", image)
        write_png_atomic(out / "real_moon_images" / f"g_PCAM{index}.png", encode_mask(clean))
    counts = lambda m: np.bincount(m.ravel(), minlength=NUM_CLASSES)  # noqa: E731
    return kind, counts(clean), counts(raw)


def real_look(rng: np.random.Generator, image: np.ndarray, flaws: bool = True) -> np.ndarray:
    """Return the image as a rover camera takes it: tone curve, vignette, tint, exposure, and with `flaws` also
    blur, sensor noise and JPEG compression.

    Rendered rover views get the colour only: training augments blur, noise and JPEG by itself, and
    the images keep the sharp detail the model learns rocks from.
    """
    h, w = image.shape[:2]
    curve = 0.04 + 0.8 * (np.arange(256, dtype=np.float32) / 255) ** rng.uniform(0.75, 0.95)  # lifted blacks
    x = curve[image]
    if flaws:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 0.9))
    yy, xx = np.ogrid[0:h, 0:w]
    r2 = ((xx.astype(np.float32) - w / 2) / (w / 2)) ** 2 + ((yy.astype(np.float32) - h / 2) / (h / 2)) ** 2
    gain = camera_tint(rng) * np.float32(exposure_gain(rng))  # before the noise: a dark photo is a noisy one
    x = x * (1 - np.float32(rng.uniform(0.2, 0.4) / 2) * r2)[:, :, None] * gain
    if not flaws:
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    x += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(0.015, 0.03))
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.008)
    out = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    quality = int(rng.integers(55, 80))
    _, jpeg = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def camera_tint(rng: np.random.Generator) -> np.ndarray:
    """Return (R, G, B) gains: a brownish cast of random strength, or now and then a slightly cool one.

    Red/blue gain ratios run from about 0.89 (cool) to 1.7 (strong brown); most photos are mildly warm.
    """
    if rng.random() < 0.15:
        warmth = rng.uniform(-0.12, -0.03)  # white balance set for a warmer light
    else:
        warmth = 0.04 + 0.46 * rng.random() ** 2  # squared: mild casts are common, strong ones happen
    return np.array([1 + 0.4 * warmth, 1 + 0.1 * warmth, 1 - 0.6 * warmth], np.float32)


def exposure_gain(rng: np.random.Generator) -> float:
    """Return the photo's brightness gain: mostly near the metered exposure, now and then under or over.

    Under (15%): -1.2 to -0.4 stops (x0.44-0.76); over (15%): +0.4 to +1.0 stops (x1.3-2, highlights clip);
    else -0.3 to +0.3 stops. The labelled Chang'e-3 photos vary less (their ground's median luma spans
    82-114 from the 10th to the 90th percentile, bench/RESULTS.md), the wider range keeps models robust.
    """
    kind = rng.random()
    if kind < 0.15:
        return float(2.0 ** rng.uniform(-1.2, -0.4))
    if kind < 0.3:
        return float(2.0 ** rng.uniform(0.4, 1.0))
    return float(2.0 ** rng.uniform(-0.3, 0.3))
