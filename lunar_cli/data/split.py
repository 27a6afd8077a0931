"""The split manifest: which image/mask pairs are train, val, test and test_real.

``<data_dir>/manifest.csv`` has one row per pair: ``image,mask,split`` with paths
relative to the data directory. Rendered scenes are split by a seeded permutation of
the sorted file list, so the result is the same bit for bit whatever order the file
system lists them in; the real photos are always ``test_real``.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from lunar_cli.classes import IMAGE_SUFFIXES
from lunar_cli.config import Config, SplitName
from lunar_cli.console import LunarError, printable, warn
from lunar_cli.data.fetch import read_dataset_info
from lunar_cli.data.probe import check_pixel_budget, probe_image
from lunar_cli.files import write_text_atomic

MANIFEST_NAME = "manifest.csv"
SPLITS: tuple[str, ...] = typing.get_args(SplitName)  # in manifest order


@dataclass
class PairScan:
    """Image/mask pairs found under a data directory, and the problems met on the way."""

    rendered: list[tuple[str, str]] = field(default_factory=list)
    real: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _check_pair(data_dir: Path, image: Path, mask: Path) -> str | None:
    """Return why the pair is unusable, or None when both files are whole and the same size."""
    for path in (image, mask):
        if printable(path) != str(path):  # the manifest is UTF-8 text: it cannot name this file
            return f"{printable(path.relative_to(data_dir))}: file name is not valid UTF-8; rename the file"
    if not mask.is_file():
        return f"{image.relative_to(data_dir)}: no mask ({mask.relative_to(data_dir)} missing)"
    try:
        image_size = probe_image(image)
        mask_size = probe_image(mask)
        check_pixel_budget(image, *image_size)
    except LunarError as exc:
        return str(exc)
    if image_size != mask_size:
        return (
            f"{mask.relative_to(data_dir)}: mask is {mask_size[0]}x{mask_size[1]} "
            f"but its image is {image_size[0]}x{image_size[1]}"
        )
    return None


def _keep_or_report(scan: PairScan, kept: list, data_dir: Path, image: Path, mask: Path) -> None:
    """Append the pair (relative POSIX paths) to ``kept``, or its problem to ``scan.problems``."""
    problem = _check_pair(data_dir, image, mask)
    if problem:
        scan.problems.append(problem)
    else:
        kept.append((image.relative_to(data_dir).as_posix(), mask.relative_to(data_dir).as_posix()))


def scan_pairs(data_dir: Path, mask_source: str = "clean") -> PairScan:
    """Find rendered and real image/mask pairs under ``data_dir``, checking each mate."""
    scan = PairScan()
    render_dir = data_dir / "images" / "render"
    mask_dir = data_dir / "images" / mask_source
    if not render_dir.is_dir():
        raise LunarError(f"no rendered images in {render_dir}: run lunar fetch --source synthetic")
    if not mask_dir.is_dir():
        raise LunarError(f"no mask folder {mask_dir}: fetch the full dataset or choose --mask-source clean|ground")
    for image in sorted(p for p in render_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        number = image.stem.removeprefix("render")
        mask = mask_dir / f"{mask_source}{number}{image.suffix}"
        if not mask.exists():
            mask = mask_dir / f"{mask_source}{number}.png"
        _keep_or_report(scan, scan.rendered, data_dir, image, mask)
    real_dir = data_dir / "real_moon_images"
    if real_dir.is_dir():
        photos = [p for p in real_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("g_")]
        for image in sorted(photos):
            mask = real_dir / f"g_{image.name}"
            if not mask.exists():
                mask = real_dir / f"g_{image.stem}.png"
            _keep_or_report(scan, scan.real, data_dir, image, mask)
    return scan


def assign_splits(
    pairs: list[tuple[str, str]], *, train: float, val: float, seed: int
) -> list[tuple[str, str, str]]:
    """Return (image, mask, split) rows: a seeded shuffle of the sorted pairs cut into train/val/test."""
    ordered = sorted(pairs)
    n = len(ordered)
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * train))
    n_val = min(n - n_train, int(round(n * val)))
    rows = []
    for rank, idx in enumerate(order):
        split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        rows.append((*ordered[idx], split))
    return sorted(rows, key=lambda r: (SPLITS.index(r[2]), r[0]))


def make_split(
    data_dir: Path,
    *,
    train: float = 0.49,
    val: float = 0.21,
    seed: int = 42,
    mask_source: str = "clean",
    strict: bool = False,
) -> dict:
    """Write ``manifest.csv`` under ``data_dir``; return counts per split and the skipped pairs."""
    data_dir = Path(data_dir)
    read_dataset_info(data_dir)
    scan = scan_pairs(data_dir, mask_source)
    if scan.problems:
        if strict:
            raise LunarError(f"{len(scan.problems)} bad image/mask pair(s), first: {scan.problems[0]} (--strict)")
        for problem in scan.problems:
            warn(f"skipped {problem}")
        warn(f"skipped {len(scan.problems)} bad image/mask pair(s); pass --strict to make this an error")
    if not scan.rendered:
        raise LunarError(f"no usable rendered image/mask pairs in {data_dir}/images: run lunar fetch again")
    rows = assign_splits(scan.rendered, train=train, val=val, seed=seed)
    rows += [(image, mask, "test_real") for image, mask in scan.real]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "mask", "split"])
    writer.writerows(rows)
    manifest = data_dir / MANIFEST_NAME
    write_text_atomic(manifest, buffer.getvalue())
    counts = {name: sum(1 for r in rows if r[2] == name) for name in SPLITS}
    return {
        "manifest": str(manifest),
        "counts": counts,
        "total": len(rows),
        "seed": seed,
        "mask_source": mask_source,
        "skipped": scan.problems,
    }


def split_command(cfg: Config) -> dict:
    """Do what ``lunar split`` was asked: write the manifest of ``cfg.data_dir`` by ``cfg.split``; return its counts."""
    s = cfg.split
    return make_split(cfg.data_dir, train=s.train, val=s.val, seed=cfg.seed, mask_source=s.mask_source, strict=s.strict)


def read_manifest(data_dir: Path) -> list[dict[str, str]]:
    """Return the manifest rows of ``data_dir`` as dicts with image, mask and split."""
    path = Path(data_dir) / MANIFEST_NAME
    # No dataset.json, no dataset: a fetch killed while replacing one can leave the old
    # manifest beside half-moved files, and it must not be trained on.
    if not (Path(data_dir) / "dataset.json").is_file():
        raise LunarError(f"no dataset in {data_dir}/: run lunar fetch --source synthetic, then lunar split")
    if not path.is_file():
        raise LunarError(f"no manifest in {data_dir}/: run lunar split")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != ["image", "mask", "split"]:
                raise LunarError(f"{path}: not a lunar manifest (header {reader.fieldnames}); run lunar split again")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise LunarError(f"{path}: not UTF-8 text (byte {exc.start}); run lunar split again") from exc
    first_seen: dict[str, tuple[int, str]] = {}
    for line, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS or not row["image"] or not row["mask"]:
            raise LunarError(f"{path}:{line}: bad row {row}; run lunar split again")
        for column in ("image", "mask"):
            if not _inside(row[column]):
                raise LunarError(f"{path}:{line}: {column} {row[column]!r} is outside the data folder (an absolute "
                                 "path or '..'); manifests name files under it: run lunar split again")  # fmt: skip
        image = posixpath.normpath(row["image"].replace("\\", "/"))
        if image in first_seen:
            before, split = first_seen[image]
            where = f"in {split} twice" if split == row["split"] else f"in both {split} and {row['split']}"
            raise LunarError(f"{path}:{line}: {row['image']} is listed {where} (line {before} too): a model would be "
                             "scored on what it trained on, or a frame counted twice; run lunar split again")  # fmt: skip
        first_seen[image] = (line, row["split"])
    return rows


def _inside(relative: str) -> bool:
    """Return whether a manifest path stays inside the data folder: relative, and no '..' leading out of it."""
    posix = relative.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return False
    parts = PurePosixPath(posixpath.normpath(posix)).parts
    return bool(parts) and parts[0] != ".."


def split_pairs(data_dir: Path, split: str) -> list[tuple[Path, Path]]:
    """Return the absolute (image, mask) paths of one split, or raise if it is empty."""
    rows = read_manifest(data_dir)
    pairs = [(Path(data_dir) / r["image"], Path(data_dir) / r["mask"]) for r in rows if r["split"] == split]
    if not pairs:
        raise LunarError(f"split {split!r} is empty in {data_dir}/{MANIFEST_NAME}: fetch more data and run lunar split")
    return pairs
