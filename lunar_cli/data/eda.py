"""Exploratory analysis of a dataset: class balance, where classes sit in the frame, sizes, palette.

It repeats the exploration of the original study of the Artificial Lunar Landscape
dataset. Every pair is decoded once, in worker processes, into a few small numbers
(class pixel counts, a downsized mask, sizes, off-palette share); the main process only
adds them up, so 10 000 full-size pairs need little memory. Everything lands in
``out_dir``: figures (PNG), ``eda.json`` with all the numbers, two CSV tables and the
heatmaps as arrays (``heatmaps.npz``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from lunar_cli.classes import CLASS_NAMES, NUM_CLASSES, read_image_rgb, read_mask
from lunar_cli.config import Config
from lunar_cli.console import LunarError, info, track, warn
from lunar_cli.data.fetch import read_dataset_info
from lunar_cli.data.split import scan_pairs
from lunar_cli.files import atomic_path, write_json_atomic, write_text_atomic
from lunar_cli.parallel import cpu_cores, map_in_processes
from lunar_cli.plots import plot_bar_comparison, plot_examples_grid, plot_heatmaps

SETS = ("rendered", "real")
EXAMPLES = {"rendered": 3, "real": 2}  # rows of examples.png per set
ROW_BANDS = 10  # eda.json summarises each heatmap as class frequency in this many horizontal bands
WORST = 5  # masks listed with the most off-palette pixels
HEATMAP_HW = (60, 90)  # (height, width) every mask is resized to (nearest) for the class heatmaps
# The wording of split.scan_pairs for a mask whose size is not its image's.
_MISMATCH = re.compile(r"^(?P<mask>.+): mask is (?P<mask_size>\d+x\d+) but its image is (?P<image_size>\d+x\d+)$")


@dataclass
class SetTotals:
    """Running sums over the analysed pairs of one set (rendered or real)."""

    heat_hw: tuple[int, int]
    images: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    presence: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    heat: np.ndarray | None = None  # (C, h, w) count of masks with that class at that spot
    sizes: Counter = field(default_factory=Counter)  # "WxH" of images -> count
    off_palette: list[tuple[str, float]] = field(default_factory=list)  # (mask, share) per mask
    good: list[tuple[str, str]] = field(default_factory=list)  # pairs that decoded

    def add(self, pair: tuple[str, str], stats: tuple) -> None:
        """Add the statistics of one decoded pair."""
        image_wh, _mask_wh, pixels, small, off = stats
        if self.heat is None:
            self.heat = np.zeros((NUM_CLASSES, *self.heat_hw), np.int64)
        self.images += 1
        self.class_pixels += pixels
        self.presence += pixels > 0
        self.heat += small[None, :, :] == np.arange(NUM_CLASSES)[:, None, None]
        self.sizes[f"{image_wh[0]}x{image_wh[1]}"] += 1
        self.off_palette.append((pair[1], off))
        self.good.append(pair)

    def heatmap(self) -> np.ndarray:
        """Return the (C, h, w) share of masks that have each class at each spot (zeros if none)."""
        if self.heat is None:
            return np.zeros((NUM_CLASSES, *self.heat_hw), np.float32)
        return (self.heat / self.images).astype(np.float32)


def eda_command(cfg: Config, progress: bool = True) -> dict:
    """Do what ``lunar eda`` was asked: analyse ``cfg.data_dir`` into ``eda.out`` (default <runs_dir>/eda)."""
    return run_eda(cfg.data_dir, cfg.eda.out or Path(cfg.runs_dir) / "eda", sample=cfg.eda.sample, seed=cfg.seed,
                   mask_source=cfg.split.mask_source, workers=cfg.data.workers, progress=progress)  # fmt: skip


def run_eda(
    data_dir: Path,
    out_dir: Path,
    *,
    sample: int | None = None,
    seed: int = 42,
    mask_source: str = "clean",
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Analyse the dataset under data_dir, write figures + numbers into out_dir, return the numbers.

    ``sample`` N analyses a seeded random N of the rendered pairs and min(N, count) of the
    real ones (None: all). ``workers`` processes decode (None: all cores; 0 or 1: here).
    Unreadable pairs are skipped with one warning and listed in the result.
    """
    start = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if sample is not None and (isinstance(sample, bool) or int(sample) < 1):
        raise LunarError(f"sample {sample!r}: give a number of images of at least 1, or leave it out for all")
    read_dataset_info(data_dir)
    scan = scan_pairs(data_dir, mask_source)
    rng = np.random.default_rng(seed)
    chosen = {"rendered": _choose(scan.rendered, sample, rng), "real": _choose(scan.real, sample, rng)}
    jobs = [(s, pair) for s in SETS for pair in chosen[s]]
    if not jobs:
        bad = len(scan.problems)
        raise LunarError(f"no usable image/mask pairs under {data_dir} ({bad} bad): run lunar fetch again")

    workers = max(0, min(int(cpu_cores() if workers is None else workers), len(jobs)))
    mismatches = [m.groupdict() for m in map(_MISMATCH.match, scan.problems) if m]
    totals, bad = _analyse(data_dir, jobs, workers, mismatches, progress)
    problems = list(scan.problems)
    if problems or bad:
        first = (problems + bad)[0]
        warn(f"skipped {len(problems) + len(bad)} bad image/mask pair(s), first: {first}")
    if not any(t.images for t in totals.values()):
        raise LunarError(f"none of the {len(jobs)} pairs under {data_dir} could be read, first: {bad[0]}")

    result = _summary(totals, HEATMAP_HW)
    result.update(
        data_dir=str(data_dir),
        mask_source=mask_source,
        seed=seed,
        sample=sample,
        available={"rendered": len(scan.rendered), "real": len(scan.real)},
        # With --sample, which images were drawn (so a run can be repeated or checked).
        sampled=[image for _, (image, _mask) in jobs] if sample is not None else None,
        mask_size_mismatches=mismatches,
        problems=problems,
        bad_files=bad,
        bad_pairs=len(problems) + len(bad),
    )
    examples = _pick_examples(totals, rng)
    result["examples"] = [image for _, image, _ in examples]
    files = _write_outputs(out_dir, data_dir, result, totals, examples)
    result["workers"] = workers
    result["seconds"] = round(time.perf_counter() - start, 2)
    eda_json = out_dir / "eda.json"

    write_json_atomic(eda_json, result)
    if progress:
        info(f"eda: {sum(t.images for t in totals.values())} pairs in {result['seconds']:.1f}s -> {out_dir}")
    return {**result, "out_dir": str(out_dir), "files": [str(f) for f in [*files, eda_json]]}


def _analyse(
    data_dir: Path, jobs: list[tuple[str, tuple[str, str]]], workers: int, mismatches: list[dict], progress: bool,
) -> tuple[dict[str, SetTotals], list[str]]:  # fmt: skip
    """Return each set's totals over ``jobs`` ((set, (image, mask)) pairs) and the bad files' lines.

    A pair whose decoded sizes disagree although the headers agreed is added to ``mismatches``, not counted.
    """
    totals = {s: SetTotals(HEATMAP_HW) for s in SETS}
    bad: list[str] = []
    tasks = [(str(data_dir), image, mask, *HEATMAP_HW) for _, (image, mask) in jobs]
    with contextlib.closing(_analysed(tasks, workers)) as results:
        for (set_name, pair), (ok, payload) in track(
            zip(jobs, results), f"analysing {len(jobs)} pairs", total=len(jobs), quiet=not progress
        ):
            if not ok:
                bad.append(str(payload))
            elif payload[0] != payload[1]:
                mismatches.append({"mask": pair[1], "mask_size": _wh(payload[1]), "image_size": _wh(payload[0])})
            else:
                totals[set_name].add(pair, payload)
    return totals, bad


# --- choosing and decoding ---------------------------------------------------------


def _choose(pairs: list[tuple[str, str]], sample: int | None, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Return all ``pairs``, or a seeded random ``sample`` of them kept in file order."""
    if sample is None or sample >= len(pairs):
        return list(pairs)
    picked = rng.choice(len(pairs), size=int(sample), replace=False)
    return [pairs[i] for i in sorted(picked)]


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def pair_stats(image_path: Path, mask_path: Path, heat_hw: tuple[int, int]) -> tuple:
    """Return (image (w, h), mask (w, h), pixels per class, mask resized to heat_hw, off-palette share).

    The mask is resized with INTER_NEAREST so every cell keeps a real class. Raises
    LunarError naming the file when the image or mask cannot be read.
    """

    image = read_image_rgb(Path(image_path))
    mask, off = read_mask(Path(mask_path))
    pixels = np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.int64)
    small = cv2.resize(mask, (heat_hw[1], heat_hw[0]), interpolation=cv2.INTER_NEAREST)
    return (image.shape[1], image.shape[0]), (mask.shape[1], mask.shape[0]), pixels, small, off


def _pair_job(job: tuple[str, str, str, int, int]) -> tuple[bool, object]:
    """Return (True, pair_stats) or (False, error line): user errors travel back as values."""
    root, image, mask, h, w = job
    try:
        return True, pair_stats(Path(root) / image, Path(root) / mask, (h, w))
    except LunarError as exc:
        return False, str(exc)


def _analysed(jobs: list[tuple], workers: int) -> Iterator[tuple[bool, object]]:
    """Yield the result of each job, in order, using ``workers`` processes (<=1: here)."""
    return map_in_processes(_pair_job, jobs, workers, max_chunk=32)


# --- numbers ---------------------------------------------------------------------------


def _per_class(values: np.ndarray, digits: int = 6) -> dict[str, float]:
    return {name: round(float(v), digits) for name, v in zip(CLASS_NAMES, values)}


def _summary(totals: dict[str, SetTotals], heat_hw: tuple[int, int]) -> dict:
    """Return the numbers of eda.json (without run details) from the per-set totals."""
    present = {s: t for s, t in totals.items() if t.images}
    all_pixels = sum(t.class_pixels for t in present.values())
    all_presence = sum(t.presence for t in present.values())
    all_images = sum(t.images for t in present.values())
    shares = {"all": _per_class(all_pixels / all_pixels.sum())}
    presence = {"all": _per_class(100 * all_presence / all_images, 4)}
    for s, t in present.items():
        shares[s] = _per_class(t.class_pixels / t.class_pixels.sum())
        presence[s] = _per_class(100 * t.presence / t.images, 4)
    masks = [m for t in present.values() for m in t.off_palette]
    off = np.array([share for _, share in masks])
    worst = sorted((m for m in masks if m[1] > 0), key=lambda m: (-m[1], m[0]))[:WORST]
    bands = min(ROW_BANDS, heat_hw[0])
    return {
        "counts": {**{s: t.images for s, t in totals.items()}, "all": all_images},
        "class_shares": shares,
        "class_pixels": {s: {n: int(v) for n, v in zip(CLASS_NAMES, t.class_pixels)} for s, t in present.items()},
        "class_presence_percent": presence,
        "image_sizes": {s: dict(t.sizes.most_common()) for s, t in present.items()},
        "off_palette": {
            "mean_share": round(float(off.mean()), 8),
            "max_share": round(float(off.max()), 8),
            "masks_with_off_palette": int((off > 0).sum()),
            "masks": len(masks),
            "worst": [{"mask": m, "share": round(share, 8)} for m, share in worst],
        },
        "heatmaps": {
            "size_hw": list(heat_hw),
            # Share of masks with the class in each horizontal band, top band first.
            "row_bands": {
                s: {
                    name: [round(float(b.mean()), 4) for b in np.array_split(t.heatmap()[c], bands, axis=0)]
                    for c, name in enumerate(CLASS_NAMES)
                }
                for s, t in present.items()
            },
        },
    }


def _pick_examples(totals: dict[str, SetTotals], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Return up to EXAMPLES[set] seeded random (set, image, mask) per set, from pairs that decoded."""
    picked = []
    for s in SETS:
        good = totals[s].good
        for i in sorted(rng.choice(len(good), size=min(EXAMPLES[s], len(good)), replace=False)):
            picked.append((s, *good[i]))
    return picked


# --- files -------------------------------------------------------------------------------


def _write_outputs(
    out_dir: Path, data_dir: Path, result: dict, totals: dict[str, SetTotals], examples: list[tuple[str, str, str]]
) -> list[Path]:
    """Write the figures, CSV tables and heatmap arrays; return their paths."""
    counts = result["counts"]
    sets = [s for s in SETS if totals[s].images]
    what = ", ".join(f"{counts[s]} {s}" for s in sets)
    files = []
    rows = [(f"{s}\n{Path(image).name}", read_image_rgb(data_dir / image), read_mask(data_dir / mask)[0])
            for s, image, mask in examples]
    files.append(plot_examples_grid(out_dir / "examples.png", rows, f"examples ({result['mask_source']} masks)"))
    shares = {c: {s: 100 * result["class_shares"][s][c] for s in sets} for c in CLASS_NAMES}
    title = f"pixel share per class ({what})"
    files.append(plot_bar_comparison(out_dir / "class_shares.png", shares, title, "% of pixels"))
    presence = {c: {s: result["class_presence_percent"][s][c] for s in sets} for c in CLASS_NAMES}
    title = f"images containing each class ({what})"
    files.append(plot_bar_comparison(out_dir / "class_presence.png", presence, title, "% of images"))
    h, w = result["heatmaps"]["size_hw"]
    for s in sets:
        name = "heatmaps.png" if s == "rendered" else f"heatmaps_{s}.png"
        title = f"share of {counts[s]} {s} masks with each class at each spot (resized to {w}x{h})"
        files.append(plot_heatmaps(out_dir / name, totals[s].heatmap(), title))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{s: totals[s].heatmap() for s in sets}, classes=np.array(CLASS_NAMES))
    with atomic_path(out_dir / "heatmaps.npz") as tmp:
        tmp.write_bytes(buffer.getvalue())
    files.append(out_dir / "heatmaps.npz")
    for name, key in (("class_shares.csv", "class_shares"), ("class_presence.csv", "class_presence_percent")):
        write_text_atomic(out_dir / name, _table(result[key]))
        files.append(out_dir / name)
    return files


def _table(values: dict[str, dict[str, float]]) -> str:
    """Return CSV text with columns set, class, value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["set", "class", "value"])
    writer.writerows((s, c, v) for s, per_class in values.items() for c, v in per_class.items())
    return buffer.getvalue()
