"""Decode every image and mask once into uint8 arrays at the model's scale, kept on disk.

Decoding a 720x480 PNG costs milliseconds on one core; a GPU trains hundreds of crops a
second. So each split is decoded once into ``<cache_root>/<key>/``: ``images.npy`` (N, h,
w, 3) and ``masks.npy`` (N, h, w) at the model's size, ``full_masks.npy`` (N, H, W), the
masks as drawn (only when h, w != H, W), ``sizes.npy`` (N, 4: h, w, H, W) and
``meta.json``, written last: its presence marks the cache valid. Later runs memory-map
the arrays. The model's size is the frame's own size times ``scale`` (aspect kept), or a
fixed square (the study's squashed 256x256). Training crops come from ``images``/``masks``;
scores are computed against ``full_masks``. Frames of different sizes share one canvas:
the unused part of a mask holds IGNORE_INDEX (255), which no loss or score counts.

Disk cost at scale 1: 4 bytes a pixel (a 720x480 frame: 1.4 MB; the whole Kaggle set of
9,766 renders: 13.5 GB). At scale 0.5 images and training masks take a quarter of that,
plus 1 byte a pixel for the full-resolution masks (0.6 MB a frame).

``key`` hashes the format version, the size rule and every file's relative path, byte
size and mtime, so a changed file or rule gives a new key and a rebuild. The arrays are
built in a temporary folder renamed into place, so an interrupted build leaves nothing
that looks valid.
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

import cv2
import numpy as np

from lunar_cli.classes import IGNORE_INDEX, NUM_CLASSES, read_image_rgb, read_mask
from lunar_cli.console import LunarError, info, track, warn
from lunar_cli.data.probe import check_pixel_budget, probe_image
from lunar_cli.files import atomic_dir, write_json_atomic
from lunar_cli.frames import FrameSize, resize_image
from lunar_cli.parallel import cpu_cores, map_in_processes

CACHE_FORMAT = 2  # bump when the layout or the decoding changes: old caches then rebuild


@dataclass
class CachedSplit:
    """One split decoded at the model's size: memory-mapped arrays plus what went into them."""
    images: np.ndarray  # (N, h, w, 3) uint8 RGB, read-only memmap (canvas: the largest frame)
    masks: np.ndarray  # (N, h, w) uint8 class indices at the model's size, IGNORE_INDEX outside the frame
    full_masks: np.ndarray  # (N, H, W) the masks as drawn (the same array as masks when sizes agree)
    sizes: np.ndarray  # (N, 4) int: h, w (model size) and H, W (own size) of each frame
    files: list[str]  # image path of each row (POSIX), in row order
    path: Path  # the cache folder
    skipped: list[str]  # one line per dropped pair (skip_bad): "<file>: what is wrong"
    off_palette: float  # share of mask pixels (full resolution) that were not an exact palette colour
    size_rule: FrameSize = field(default_factory=FrameSize)
    class_pixels: list[int] = field(default_factory=list)  # pixels per class index at the model's size

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _InvalidCache(Exception):
    """A cache folder that exists but cannot be used (reason in the message)."""


def cache_folder(data_dir: Path, cache_dir: Path | None = None) -> Path:
    """Return where a dataset's decoded frames are cached: ``cache_dir`` if given, else ``<data_dir>/cache``."""
    return Path(cache_dir) if cache_dir is not None else Path(data_dir) / "cache"


def _common_root(pairs: Sequence[tuple[Path, Path]]) -> Path:
    paths = [str(Path(p).absolute()) for pair in pairs for p in pair]
    return Path(os.path.commonpath(paths))


def _rel(path: Path, root: Path) -> str:
    return Path(path).absolute().relative_to(root).as_posix()


def cache_key(pairs: Sequence[tuple[Path, Path]], size: FrameSize) -> str:
    """Return the hex sha256 naming the cache for ``pairs`` at ``size``.

    It covers the cache format, the size rule and, for every image and mask, its path
    relative to the files' common folder, its byte size and its mtime_ns: moving the
    whole data folder keeps the key, touching or replacing any file changes it.
    """
    hasher = hashlib.sha256(f"lunar-cache format={CACHE_FORMAT} size={size.describe()}\n".encode())
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


def _decode_pair(image_path: str, mask_path: str, size: FrameSize) -> tuple:
    """Return (image at the model size, mask at the model size, mask as drawn, off-palette share).

    Raises LunarError naming the file when either is unreadable or their sizes differ.
    """

    img = read_image_rgb(Path(image_path))
    # Nearest palette colour at full resolution first, then NEAREST resize: a mask is
    # never interpolated, so no pixel gets a class that is a blend of two others.
    full, off = read_mask(Path(mask_path))
    if full.shape != img.shape[:2]:
        raise LunarError(
            f"{mask_path}: mask is {full.shape[1]}x{full.shape[0]} but its image {Path(image_path).name} "
            f"is {img.shape[1]}x{img.shape[0]}; masks must match their image's size"
        )
    h, w = size.of(*full.shape)
    mask = full if full.shape == (h, w) else cv2.resize(full, (w, h), interpolation=cv2.INTER_NEAREST)
    return resize_image(img, h, w), mask, full, off


def _decode_job(job: tuple[str, str, FrameSize]) -> tuple[bool, object]:
    """Return (True, decoded pair) or (False, error line): user errors travel back as values."""
    try:
        return True, _decode_pair(*job)
    except LunarError as exc:
        return False, str(exc)


def _decoded(jobs: list[tuple[str, str, FrameSize]], workers: int) -> Iterator[tuple[bool, object]]:
    """Yield the decode result of each job, in order, using ``workers`` processes (<=1: here)."""
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


def _open_array(path: Path, shape: tuple[int, ...], fill: int | None = None) -> np.ndarray:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    _reserve(path)
    if fill:
        arr[...] = fill
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


def _probe_sizes(pairs: list[tuple[Path, Path]]) -> list[tuple[int, int] | str]:
    """Return each image's (height, width) from its header, or the error line of an unreadable one."""
    sizes: list[tuple[int, int] | str] = []
    for image, _mask in pairs:
        try:
            width, height = probe_image(image)
            check_pixel_budget(image, width, height)  # before the canvas of the whole split is sized by it
            sizes.append((height, width))
        except LunarError as exc:
            sizes.append(str(exc))
    return sizes


def _build(
    tmp: Path, pairs: list[tuple[Path, Path]], root: Path, key: str, size: FrameSize,
    name: str, workers: int, skip_bad: bool, progress: bool,
) -> dict:  # fmt: skip
    """Decode ``pairs`` into ``tmp`` (images, masks, full_masks, sizes .npy) and meta.json (last); return the meta."""
    n = len(pairs)
    probed = [s for s in _probe_sizes(pairs) if isinstance(s, tuple)] or [(1, 1)]
    full_hw = (max(h for h, _ in probed), max(w for _, w in probed))
    model_hw = (max(size.of(*s)[0] for s in probed), max(size.of(*s)[1] for s in probed))
    separate = any(size.of(*s) != s for s in probed)  # full-resolution masks need their own array
    images = _open_array(tmp / "images.npy", (n, *model_hw, 3))
    masks = _open_array(tmp / "masks.npy", (n, *model_hw), fill=IGNORE_INDEX)
    full_masks = _open_array(tmp / "full_masks.npy", (n, *full_hw), fill=IGNORE_INDEX) if separate else masks
    sizes = np.zeros((n, 4), np.int32)
    kept: list[list[str]] = []
    skipped: list[str] = []
    off_pixels, all_pixels, off_masks = 0.0, 0, 0
    class_pixels = np.zeros(256, dtype=np.int64)
    jobs = [(str(i), str(m), size) for i, m in pairs]
    # closing(): stop the worker pool at once when a bad file or Ctrl-C ends the loop early.
    with contextlib.closing(_decoded(jobs, workers)) as results:
        description = f"caching {name} ({n} pairs, {size.describe()})"
        for (image_path, mask_path), (ok, payload) in track(zip(pairs, results), description, total=n, quiet=not progress):
            if not ok:
                if not skip_bad:
                    raise LunarError(f"{payload}; replace the file, or skip bad pairs")
                skipped.append(str(payload))
                continue
            img, mask, full, off = payload  # type: ignore[misc]
            row = len(kept)
            (h, w), (fh, fw) = mask.shape, full.shape
            images[row, :h, :w] = img
            masks[row, :h, :w] = mask
            if separate:
                full_masks[row, :fh, :fw] = full
            sizes[row] = (h, w, fh, fw)
            kept.append([_rel(image_path, root), _rel(mask_path, root)])
            off_pixels += off * full.size
            all_pixels += full.size
            off_masks += off > 0
            class_pixels += np.bincount(mask.ravel(), minlength=256)
    for arr in (images, masks, full_masks):
        arr.flush()
    if not kept:
        raise LunarError(f"split {name!r}: all {n} pairs are unreadable; fix or replace the files (see warnings)")
    if len(kept) < n:
        for file, arr in (("images.npy", images), ("masks.npy", masks), ("full_masks.npy", full_masks)):
            if file != "full_masks.npy" or separate:
                _shrink(tmp / file, arr, len(kept))
    np.save(tmp / "sizes.npy", sizes[: len(kept)])
    del images, masks, full_masks
    meta = {
        "format": CACHE_FORMAT, "key": key, "name": name, "size_rule": size.describe(), "count": len(kept),
        "canvas": list(model_hw), "full_canvas": list(full_hw), "separate_full_masks": separate,
        "root": root.as_posix(),  # informational: files are relative to it
        "files": kept,  # [image, mask] relative to root, in row order
        "skipped": skipped, "off_palette": off_pixels / all_pixels if all_pixels else 0.0,
        "masks_with_off_palette": int(off_masks), "class_pixels": [int(c) for c in class_pixels[:NUM_CLASSES]],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    write_json_atomic(tmp / "meta.json", meta)  # last: the validity marker
    return meta


def _load(path: Path, key: str, size: FrameSize, root: Path) -> CachedSplit:
    """Return the cache in ``path`` memory-mapped, or raise _InvalidCache saying why."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise _InvalidCache("meta.json is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise _InvalidCache("meta.json belongs to another format or key")
        n = int(meta["count"])
        if meta["size_rule"] != size.describe() or len(meta["files"]) != n:
            raise _InvalidCache("meta.json does not match the requested size or its own file list")
        images = np.load(path / "images.npy", mmap_mode="r")
        masks = np.load(path / "masks.npy", mmap_mode="r")
        full_masks = np.load(path / "full_masks.npy", mmap_mode="r") if meta["separate_full_masks"] else masks
        sizes = np.load(path / "sizes.npy")
        canvas, full_canvas = tuple(meta["canvas"]), tuple(meta["full_canvas"])
    except _InvalidCache:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        # Truncated .npy (mmap longer than the file), bad JSON, missing keys.
        raise _InvalidCache(f"{type(exc).__name__}: {exc}") from exc
    expected = {"images.npy": (images, (n, *canvas, 3)), "masks.npy": (masks, (n, *canvas)),
                "full_masks.npy": (full_masks, (n, *full_canvas))}  # fmt: skip
    for file, (arr, shape) in expected.items():
        if arr.dtype != np.uint8 or arr.shape != shape:
            raise _InvalidCache(f"{file} is {arr.dtype} {arr.shape}, expected uint8 {shape}")
    if sizes.shape != (n, 4):
        raise _InvalidCache(f"sizes.npy is {sizes.shape}, expected {(n, 4)}")
    return CachedSplit(
        images=images, masks=masks, full_masks=full_masks, sizes=sizes,
        files=[(root / image).as_posix() for image, _mask in meta["files"]], path=path,
        skipped=list(meta.get("skipped", [])), off_palette=float(meta.get("off_palette", 0.0)), size_rule=size,
        class_pixels=[int(c) for c in meta.get("class_pixels", [])],
    )  # fmt: skip


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
    pairs: list[tuple[Path, Path]], size: FrameSize, cache_root: Path, *, name: str = "train",
    workers: int | None = None, skip_bad: bool = False, progress: bool = True,
) -> CachedSplit:  # fmt: skip
    """Return split ``name`` as uint8 arrays at the model's ``size``, decoding the files only if no valid cache exists.

    ``pairs`` are (image, mask) paths of one split. ``workers`` processes decode in
    parallel (None: all cores; 0 or 1: in this process). A bad pair (unreadable file,
    missing mask, mask of another size) is a LunarError naming the file, or with
    ``skip_bad`` a warning and the pair is dropped (listed in ``skipped``). A cache that
    cannot be read is rebuilt with a warning.
    """
    if not pairs:
        raise LunarError(f"split {name!r} is empty: run `lunar split` (or check the manifest lists {name} rows)")
    present, dropped = _present_pairs(pairs, name, skip_bad)
    if not present:
        raise LunarError(f"split {name!r}: none of its {len(pairs)} files exist; run `lunar fetch` and `lunar split`")
    root = _common_root(present)
    key = cache_key(present, size)
    path = Path(cache_root) / key

    if path.exists():
        try:
            split = _load(path, key, size, root)
        except _InvalidCache as exc:
            warn(f"cache {path} is unusable ({exc}); rebuilding it")
        else:
            return _checked(split, dropped, name, skip_bad, progress)

    if workers is None:
        workers = cpu_cores()
    workers = max(0, min(int(workers), len(present)))

    start = time.perf_counter()
    try:
        with atomic_dir(path) as tmp:
            meta = _build(tmp, present, root, key, size, name, workers, skip_bad, progress)
    except OSError as exc:
        # Another process (a second DDP rank) may have renamed the same cache into place first.
        try:
            split = _load(path, key, size, root)
        except _InvalidCache:
            raise LunarError(
                f"{cache_root}: cannot write the {name} cache ({exc.strerror or exc}); "
                "free disk space, or put the cache elsewhere with --cache-dir"
            ) from exc
        return _checked(split, dropped, name, skip_bad, progress)
    if progress:
        h, w = meta["canvas"]
        info(f"cached {name}: {meta['count']} frames at {w}x{h} ({size.describe()}) in "
             f"{time.perf_counter() - start:.1f}s -> {path}")  # fmt: skip
    split = _load(path, key, size, root)
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
