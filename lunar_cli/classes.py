"""The four classes: names, colours, indices, and mask RGB <-> index conversion.

This is the only module that knows the palette. Index order is the training order:
0 ground (black), 1 sky (red), 2 small rocks (green), 3 large rocks (blue).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lunar_cli.console import LunarError
from lunar_cli.data.probe import (
    MAX_PIXELS,
    PNG_SIGNATURE,
    check_pixel_budget,
    check_png_chunks,
    probe_bytes,
    probe_image,
)
from lunar_cli.files import atomic_path


@dataclass(frozen=True)
class LunarClass:
    """One segmentation class: its index, name and mask colour (RGB)."""

    index: int
    name: str
    rgb: tuple[int, int, int]


CLASSES: tuple[LunarClass, ...] = (
    LunarClass(0, "ground", (0, 0, 0)),
    LunarClass(1, "sky", (255, 0, 0)),
    LunarClass(2, "small_rocks", (0, 255, 0)),
    LunarClass(3, "large_rocks", (0, 0, 255)),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NUM_CLASSES = len(CLASSES)
PALETTE = np.array([c.rgb for c in CLASSES], dtype=np.uint8)  # (4, 3), row = class index
IGNORE_INDEX = 255  # mask value of unlabeled pixels (and of padding around a frame): counted nowhere


def class_index(name: str) -> int:
    """Return the index of the class called ``name`` (e.g. ``"sky"`` -> 1)."""
    for c in CLASSES:
        if c.name == name:
            return c.index
    raise LunarError(f"unknown class {name!r}: choose one of {', '.join(CLASS_NAMES)}")


def to_rgb_uint8(array: np.ndarray, what: str = "mask") -> np.ndarray:
    """Return ``array`` as an (H, W, 3) uint8 RGB image.

    Accepts grayscale (H, W) or (H, W, 1), RGB, RGBA (alpha dropped) and 16-bit input
    (scaled to 8 bits). Anything else is a LunarError naming ``what``.
    """
    a = np.asarray(array)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise LunarError(f"{what}: unsupported pixel type {a.dtype}; expected 8- or 16-bit integers")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 4:
        return np.ascontiguousarray(a[:, :, :3])
    if a.ndim == 3 and a.shape[2] == 3:
        return a
    raise LunarError(f"{what}: unsupported shape {a.shape}; expected grayscale, RGB or RGBA")


def decode_mask(mask: np.ndarray, what: str = "mask") -> tuple[np.ndarray, float]:
    """Return (class indices as (H, W) uint8, share of pixels that were off-palette).

    ``mask`` is an RGB(A) colour mask (8- or 16-bit). Off-palette pixels (anti-aliased
    edges, JPEG noise) take the nearest palette colour. A single-channel mask whose
    values are all valid class indices (0..3) is taken as an index mask as it is; any
    other single-channel mask cannot carry the colours and is refused.
    """
    a = np.asarray(mask)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        plane = a.reshape(a.shape[0], a.shape[1])
        if plane.size and int(plane.max()) < NUM_CLASSES and plane.dtype.kind in "ui":
            return plane.astype(np.uint8), 0.0
        raise LunarError(
            f"{what}: grayscale mask with values outside 0..{NUM_CLASSES - 1}; "
            "masks must be RGB in the dataset palette (black/red/green/blue) or class indices"
        )
    rgb = to_rgb_uint8(a, what)
    # Most pixels are exact palette colours: match those by a packed 24-bit code, and
    # search the nearest colour only for the rest (about 30x faster on real masks).
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    indices = np.zeros(code.shape, np.uint8)
    exact = np.zeros(code.shape, bool)
    for c in CLASSES:
        hit = code == ((c.rgb[0] << 16) | (c.rgb[1] << 8) | c.rgb[2])
        indices[hit] = c.index
        exact |= hit
    off = ~exact
    n_off = int(off.sum())
    if n_off:
        stray = rgb[off].astype(np.int32)
        dist = ((stray[:, None, :] - PALETTE.astype(np.int32)[None, :, :]) ** 2).sum(axis=2)
        indices[off] = dist.argmin(axis=1)
    return indices, (n_off / code.size if code.size else 0.0)


def encode_mask(indices: np.ndarray) -> np.ndarray:
    """Return the (H, W, 3) uint8 RGB colour mask for a (H, W) array of class indices."""
    idx = np.asarray(indices)
    if idx.size and (int(idx.max()) >= NUM_CLASSES or int(idx.min()) < 0):
        raise LunarError(f"class index out of range 0..{NUM_CLASSES - 1} in mask")
    return PALETTE[idx.astype(np.intp)]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # formats OpenCV decodes that lunar accepts


def decode_image_file(path: Path, what: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Return the pixels of an image file as stored: (H, W) or (H, W, 3|4) in RGB(A) order, 8 or 16 bits.

    JPEGs are turned upright by their EXIF orientation, as a photo viewer shows them.
    Raises LunarError naming the file when it is missing, not a regular file, empty,
    damaged or not a readable image, or when its header claims more than ``max_pixels``
    (default ``probe.MAX_PIXELS``): checked before decoding, so memory stays flat.
    """

    path = Path(path)
    width, height = probe_image(path)
    check_pixel_budget(path, width, height, max_pixels or MAX_PIXELS)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # fromfile copes with non-UTF-8 names
    except OSError as exc:
        raise LunarError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return _decode_checked(data, path, what)


def decode_image_bytes(data: bytes, name: str, what: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Return the pixels of an image held in memory (an upload), as ``decode_image_file`` gives a file's.

    The same checks, in the same order: header and end marker, the pixel budget before
    decoding, PNG chunk checksums; ``name`` stands for the image in messages.
    """
    width, height = probe_bytes(data, name)
    check_pixel_budget(name, width, height, max_pixels or MAX_PIXELS)
    return _decode_checked(np.frombuffer(data, dtype=np.uint8), name, what)


def _decode_checked(data: np.ndarray, name: Path | str, what: str) -> np.ndarray:
    """Return the decoded pixels of a probed image's bytes (RGB(A) order), checking a PNG's chunks first."""
    if data[:8].tobytes() == PNG_SIGNATURE:
        check_png_chunks(data.data, name)
    # IMREAD_UNCHANGED keeps alpha and 16 bits but ignores EXIF rotation; JPEGs have
    # neither, so they are read with IMREAD_COLOR, which applies the orientation.
    is_jpeg = data[:2].tobytes() == b"\xff\xd8"
    flags = cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH
    img = cv2.imdecode(data, flags)
    if img is None:
        raise LunarError(f"{name}: not a readable {what} (corrupt, truncated or unsupported format)")
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; grayscale, RGBA and 16-bit are converted.

    Raises LunarError naming the file when it is missing, empty or not a readable image.
    """
    return to_rgb_uint8(decode_image_file(path, "image"), str(path))


def read_mask(path: Path) -> tuple[np.ndarray, float]:
    """Read a mask file; return (class indices (H, W) uint8, off-palette share)."""
    return decode_mask(decode_image_file(path, "mask"), str(path))


def encode_png(rgb_or_gray: np.ndarray, what: str = "image") -> bytes:
    """Return an RGB (H, W, 3) or single-channel (H, W) uint8 array as PNG bytes."""
    a = np.asarray(rgb_or_gray)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise LunarError(f"{what}: could not encode PNG")
    return buf.tobytes()


def write_png_atomic(path: Path, rgb_or_gray: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or single-channel (H, W) uint8 array as PNG, atomically."""
    data = encode_png(rgb_or_gray, str(path))
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)
