"""Decode every image and mask once into uint8 arrays at the training size, kept on disk.

Decoding a 720x480 PNG and resizing it costs milliseconds on one core; a GPU trains
hundreds of 256x256 images a second. So each split is decoded once into

    <cache_root>/<key>/images.npy   (N, H, W, 3) uint8 RGB
    <cache_root>/<key>/masks.npy    (N, H, W) uint8 class indices
    <cache_root>/<key>/meta.json    written last: its presence marks the cache valid

and later runs memory-map the arrays. ``key`` hashes the format version, the size and
every file's relative path, byte size and mtime, so a changed file or size gives a new
key and a rebuild. The arrays are built in a temporary folder renamed into place, so an
interrupted build leaves nothing that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lunar_cli.classes import NUM_CLASSES
from lunar_cli.console import LunarError, info, track, warn

CACHE_FORMAT = 1  # bump when the layout or the decoding changes: old caches then rebuild


@dataclass
class CachedSplit:
    """One split decoded at the training size: memory-mapped arrays plus what went into them."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB, read-only memmap
    masks: np.ndarray  # (N, H, W) uint8 class indices, read-only memmap
    files: list[str]  # image path of each row (POSIX), in row order
    path: Path  # the cache folder
    skipped: list[str]  # one line per dropped pair (skip_bad): "<file>: what is wrong"
    off_palette: float  # share of mask pixels (full resolution) that were not an exact palette colour
    class_pixels: list[int] = field(default_factory=list)  # pixels per class index at the training size

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _InvalidCache(Exception):
    """A cache folder that exists but cannot be used (reason in the message)."""


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """Return (height, width) for a training size: an int is a square, a pair is (height, width)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        h, w = int(size[0]), int(size[1])
    else:
        raise LunarError(f"image size {size!r}: give one integer or (height, width)")
    if h < 8 or w < 8:
        raise LunarError(f"image size {h}x{w}: height and width must be at least 8 pixels")
    return h, w


def _common_root(pairs: Sequence[tuple[Path, Path]]) -> Path:
    paths = [str(Path(p).absolute()) for pair in pairs for p in pair]
    return Path(os.path.commonpath(paths))


def _rel(path: Path, root: Path) -> str:
    return Path(path).absolute().relative_to(root).as_posix()


def cache_key(pairs: Sequence[tuple[Path, Path]], size: int | Sequence[int]) -> str:
    """Return the hex sha256 naming the cache for ``pairs`` at ``size``.

    It covers the cache format, the size and, for every image and mask, its path
    relative to the files' common folder, its byte size and its mtime_ns: moving the
    whole data folder keeps the key, touching or replacing any file changes it.
    """
    h, w = size_hw(size)
    hasher = hashlib.sha256(f"lunar-cache format={CACHE_FORMAT} size={h}x{w}\n".encode())
    if not pairs:
        return hasher.hexdigest()
    root = _common_root(pairs)
    for pair in pairs:
        for p in pair:
            try:
                st = Path(p).stat()
            except OSError as exc:
                raise LunarError(f"{p}: cannot read ({exc.strerror}); check the data folder") from exc
            hasher.update(f"{_rel(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return hasher.hexdigest()


def _resize_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    if img.shape[:2] == (h, w):
        return img
    # INTER_AREA averages when shrinking (no aliasing); it is blocky when enlarging.
    shrinking = h <= img.shape[0] and w <= img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _decode_pair(image_path: str, mask_path: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Return (image (h, w, 3) uint8, mask (h, w) uint8 indices, off-palette share, mask pixels).

    Raises LunarError naming the file when either is unreadable or their sizes differ.
    """
    import cv2

    from lunar_cli.classes import read_image_rgb, read_mask

    img = read_image_rgb(Path(image_path))
    # Nearest palette colour at full resolution first, then NEAREST resize: a mask is
    # never interpolated, so no pixel gets a class that is a blend of two others.
    mask, off = read_mask(Path(mask_path))
    if mask.shape != img.shape[:2]:
        raise LunarError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {Path(image_path).name} "
            f"is {img.shape[1]}x{img.shape[0]}; masks must match their image's size"
        )
    pixels = int(mask.size)
    if mask.shape != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return _resize_image(img, h, w), mask, off, pixels


def _decode_job(job: tuple[str, str, int, int]) -> tuple[bool, object]:
    """Return (True, decoded pair) or (False, error line): user errors travel back as values."""
    try:
        return True, _decode_pair(*job)
    except LunarError as exc:
        return False, str(exc)


def _decoded(jobs: list[tuple[str, str, int, int]], workers: int) -> Iterator[tuple[bool, object]]:
    """Yield the decode result of each job, in order, using ``workers`` processes (<=1: here)."""
    from lunar_cli.parallel import map_in_processes

    return map_in_processes(_decode_job, jobs, workers, max_chunk=16)


def _reserve(path: Path) -> None:
    """Allocate the disk blocks of a fresh memmap now, so a full disk is an error, not SIGBUS later."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC; other errors mean the file system cannot preallocate: fine
            raise
    finally:
        os.close(fd)


def _open_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    _reserve(path)
    return arr


def _shrink(path: Path, arr: np.ndarray, count: int) -> np.ndarray:
    """Rewrite ``arr`` (a memmap at ``path``) keeping its first ``count`` rows; return the new memmap."""
    tmp = path.with_name(path.name + ".shrink")
    small = _open_array(tmp, (count, *arr.shape[1:]))
    for start in range(0, count, 256):
        stop = min(start + 256, count)
        small[start:stop] = arr[start:stop]
    small.flush()
    del arr
    os.replace(tmp, path)
    return small


def _build(
    tmp: Path, pairs: list[tuple[Path, Path]], root: Path, key: str, h: int, w: int,
    name: str, workers: int, skip_bad: bool, progress: bool,
) -> dict:
    """Decode ``pairs`` into ``tmp``/{images,masks}.npy and meta.json (last); return the meta."""
    from lunar_cli.files import write_json_atomic

    n = len(pairs)
    images = _open_array(tmp / "images.npy", (n, h, w, 3))
    masks = _open_array(tmp / "masks.npy", (n, h, w))
    kept: list[list[str]] = []
    skipped: list[str] = []
    off_pixels = 0.0
    all_pixels = 0
    off_masks = 0
    class_pixels = np.zeros(256, dtype=np.int64)
    jobs = [(str(i), str(m), h, w) for i, m in pairs]
    # closing(): stop the worker pool at once when a bad file or Ctrl-C ends the loop early.
    with contextlib.closing(_decoded(jobs, workers)) as results:
        for (image_path, mask_path), (ok, payload) in track(
            zip(pairs, results), f"caching {name} ({n} pairs at {w}x{h})", total=n, quiet=not progress
        ):
            if not ok:
                if not skip_bad:
                    raise LunarError(f"{payload}; replace the file, or skip bad pairs")
                skipped.append(str(payload))
                continue
            img, mask, off, pixels = payload  # type: ignore[misc]
            row = len(kept)
            images[row] = img
            masks[row] = mask
            kept.append([_rel(image_path, root), _rel(mask_path, root)])
            off_pixels += off * pixels
            all_pixels += pixels
            off_masks += off > 0
            class_pixels += np.bincount(mask.ravel(), minlength=256)
    images.flush()
    masks.flush()
    if not kept:
        raise LunarError(f"split {name!r}: all {n} pairs are unreadable; fix or replace the files (see warnings)")
    if len(kept) < n:
        images = _shrink(tmp / "images.npy", images, len(kept))
        masks = _shrink(tmp / "masks.npy", masks, len(kept))
    del images, masks
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "name": name,
        "height": h,
        "width": w,
        "count": len(kept),
        "root": root.as_posix(),  # informational: files are relative to it
        "files": kept,  # [image, mask] relative to root, in row order
        "skipped": skipped,
        "off_palette": off_pixels / all_pixels if all_pixels else 0.0,
        "masks_with_off_palette": int(off_masks),
        "class_pixels": [int(c) for c in class_pixels[:NUM_CLASSES]],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(tmp / "meta.json", meta)  # last: the validity marker
    return meta


def _load(path: Path, key: str, h: int, w: int, root: Path) -> CachedSplit:
    """Return the cache in ``path`` memory-mapped, or raise _InvalidCache saying why."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise _InvalidCache("meta.json is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise _InvalidCache("meta.json belongs to another format or key")
        n = int(meta["count"])
        if (int(meta["height"]), int(meta["width"])) != (h, w) or len(meta["files"]) != n:
            raise _InvalidCache("meta.json does not match the requested size or its own file list")
        images = np.load(path / "images.npy", mmap_mode="r")
        masks = np.load(path / "masks.npy", mmap_mode="r")
    except _InvalidCache:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        # Truncated .npy (mmap longer than the file), bad JSON, missing keys.
        raise _InvalidCache(f"{type(exc).__name__}: {exc}") from exc
    if images.dtype != np.uint8 or images.shape != (n, h, w, 3):
        raise _InvalidCache(f"images.npy is {images.dtype} {images.shape}, expected uint8 {(n, h, w, 3)}")
    if masks.dtype != np.uint8 or masks.shape != (n, h, w):
        raise _InvalidCache(f"masks.npy is {masks.dtype} {masks.shape}, expected uint8 {(n, h, w)}")
    return CachedSplit(
        images=images,
        masks=masks,
        files=[(root / image).as_posix() for image, _mask in meta["files"]],
        path=path,
        skipped=list(meta.get("skipped", [])),
        off_palette=float(meta.get("off_palette", 0.0)),
        class_pixels=[int(c) for c in meta.get("class_pixels", [])],
    )


def _present_pairs(
    pairs: Sequence[tuple[Path, Path]], name: str, skip_bad: bool
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Return (pairs whose two files exist, lines for those dropped); missing files raise unless skip_bad."""
    present: list[tuple[Path, Path]] = []
    dropped: list[str] = []
    for image, mask in pairs:
        image, mask = Path(image), Path(mask)
        if not image.is_file():
            problem = f"{image}: image file is missing"
        elif not mask.is_file():
            problem = f"{mask}: no mask for image {image.name}"
        else:
            present.append((image, mask))
            continue
        if not skip_bad:
            raise LunarError(f"{problem}; restore it or run `lunar split` again (split {name!r})")
        dropped.append(problem)
    return present, dropped


def build_or_load_cache(
    pairs: list[tuple[Path, Path]],
    size: int | tuple[int, int],
    cache_root: Path,
    *,
    name: str = "train",
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> CachedSplit:
    """Return split ``name`` as uint8 arrays at ``size``, decoding the files only if no valid cache exists.

    ``pairs`` are (image, mask) paths of one split. ``workers`` processes decode in
    parallel (None: all cores; 0 or 1: in this process). A bad pair (unreadable file,
    missing mask, mask of another size) is a LunarError naming the file, or with
    ``skip_bad`` a warning and the pair is dropped (listed in ``skipped``). A cache that
    cannot be read is rebuilt with a warning.
    """
    h, w = size_hw(size)
    if not pairs:
        raise LunarError(f"split {name!r} is empty: run `lunar split` (or check the manifest lists {name} rows)")
    present, dropped = _present_pairs(pairs, name, skip_bad)
    if not present:
        raise LunarError(f"split {name!r}: none of its {len(pairs)} files exist; run `lunar fetch` and `lunar split`")
    root = _common_root(present)
    key = cache_key(present, (h, w))
    path = Path(cache_root) / key

    if path.exists():
        try:
            split = _load(path, key, h, w, root)
        except _InvalidCache as exc:
            warn(f"cache {path} is unusable ({exc}); rebuilding it")
        else:
            return _checked(split, dropped, name, skip_bad, progress)

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(0, min(int(workers), len(present)))
    from lunar_cli.files import atomic_dir

    start = time.perf_counter()
    try:
        with atomic_dir(path) as tmp:
            meta = _build(tmp, present, root, key, h, w, name, workers, skip_bad, progress)
    except OSError as exc:
        # Another process (a second DDP rank) may have renamed the same cache into place first.
        try:
            split = _load(path, key, h, w, root)
        except _InvalidCache:
            raise LunarError(
                f"{cache_root}: cannot write the {name} cache ({exc.strerror or exc}); "
                "free disk space or choose another cache folder"
            ) from exc
        return _checked(split, dropped, name, skip_bad, progress)
    if progress:
        info(f"cached {name}: {meta['count']} pairs at {w}x{h} in {time.perf_counter() - start:.1f}s -> {path}")
    split = _load(path, key, h, w, root)
    split.skipped = dropped + split.skipped
    for line in split.skipped:
        warn(f"skipped {line}")
    if split.skipped:
        warn(f"split {name!r}: {len(split.skipped)} bad pairs dropped")
    return split


def _checked(split: CachedSplit, dropped: list[str], name: str, skip_bad: bool, progress: bool) -> CachedSplit:
    """Return a loaded cache, refusing one that dropped pairs when the caller did not allow it."""
    if split.skipped and not skip_bad:
        # Built earlier with skip_bad: the same bad file is still there.
        raise LunarError(f"{split.skipped[0]}; replace the file, or skip bad pairs")
    split.skipped = dropped + split.skipped
    if progress:
        info(f"cache {name}: {len(split)} pairs from {split.path}")
    if split.skipped:
        warn(f"split {name!r}: {len(split.skipped)} bad pairs dropped")
    return split
