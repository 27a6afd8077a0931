"""Cheap checks that a file is a whole PNG, JPEG, TIFF or BMP image, and its size, without decoding it.

Every reader checks a file here before decoding it, so a small file whose header claims a
huge frame (a decompression bomb) is refused before it costs any memory, and a damaged
one is named in one line before the decoder prints its own noise.
"""

from __future__ import annotations

import io
import stat
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from lunar_cli.console import LunarError

# Pixel budgets, checked from the header before a frame is decoded. Whole frames: decoding,
# training and predicting a frame in one pass take about 250 bytes a pixel at the peak (4 GB
# at 16 megapixels). predict --tile holds only the photo and its maps at full size (about
# 60 bytes a pixel: 6 GB at 100 megapixels) and runs the model in windows.
MAX_PIXELS = 16_000_000
MAX_TILED_PIXELS = 100_000_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")  # little- and big-endian
TIFF_INTS = {3: "H", 4: "I"}  # SHORT and LONG: the field types sizes and offsets are stored as


def probe_image(path: Path) -> tuple[int, int]:
    """Return (width, height) of a PNG, JPEG, TIFF or BMP file, or raise LunarError if it is empty or damaged.

    Reads only a few hundred bytes (headers, end markers, a TIFF's directory), so it catches
    zero-byte files, text files named .png and truncated files in microseconds instead of a
    full decode.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "folder" if stat.S_ISDIR(info.st_mode) else "FIFO" if stat.S_ISFIFO(info.st_mode) else "special file"
            raise LunarError(f"{path}: not a regular file (a {kind}); give an image file")
        if info.st_size == 0:
            raise LunarError(f"{path}: file is empty")
        with path.open("rb") as fh:
            return _probe_stream(fh, info.st_size, path)
    except FileNotFoundError as exc:
        raise LunarError(f"{path}: no such file") from exc
    except OSError as exc:
        raise LunarError(f"{path}: cannot read ({exc.strerror})") from exc


def probe_bytes(data: bytes, name: str) -> tuple[int, int]:
    """Return (width, height) of an image held in memory (an upload), with the checks ``probe_image`` makes of files.

    ``name`` stands for the image in messages (an upload's file name).
    """
    if not data:
        raise LunarError(f"{name}: empty (no image bytes); send a PNG, JPEG, TIFF or BMP image")
    return _probe_stream(io.BytesIO(data), len(data), name)


def _probe_stream(fh: BinaryIO, size: int, name: Path | str) -> tuple[int, int]:
    """Return (width, height) of the image in ``fh`` (``size`` bytes long) from its header, checking its end marker."""
    head = fh.read(32)
    fh.seek(max(0, size - 12))
    tail = fh.read(12)
    if head.startswith(PNG_SIGNATURE):
        if head[12:16] != b"IHDR" or len(head) < 24:
            raise LunarError(f"{name}: damaged PNG header")
        if not tail.endswith(b"IEND\xaeB`\x82"):
            raise LunarError(f"{name}: truncated PNG (no end marker)")
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in tail:
            raise LunarError(f"{name}: truncated JPEG (no end marker)")
        return _jpeg_size(fh, name)
    if head.startswith(TIFF_SIGNATURES):
        return _tiff_size(fh, size, name)
    if head.startswith(b"BM") and len(head) >= 26:
        return _bmp_size(name, head, size)
    raise LunarError(f"{name}: not a PNG, JPEG, TIFF or BMP image")


def check_pixel_budget(path: Path, width: int, height: int, limit: int = MAX_PIXELS) -> None:
    """Refuse, in one line, a frame of more than ``limit`` pixels, before it is decoded."""
    if width * height <= limit:
        return
    size = f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels)"
    if limit < MAX_TILED_PIXELS:
        todo = f"predict it with --tile (up to {MAX_TILED_PIXELS // 1_000_000} megapixels), or downscale it"
    else:
        todo = "downscale it, or cut it into pieces"
    raise LunarError(f"{path}: {size} is over the {limit // 1_000_000} megapixels lunar decodes at once; {todo}")


def check_png_chunks(data: bytes | memoryview, path: Path) -> None:
    """Refuse a PNG whose chunks do not add up or fail their checksum (a file damaged in the middle).

    libpng would print its own "libpng error" line for such a file before the decoder gives
    up; checking the chunks first (zlib's CRC-32, a few milliseconds a megabyte) names it once.
    """
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(view):
        (length,) = struct.unpack(">I", view[pos : pos + 4])
        end = pos + 12 + length
        if end > len(view):
            break
        (crc,) = struct.unpack(">I", view[end - 4 : end])
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            kind = bytes(view[pos + 4 : pos + 8]).decode("latin-1")
            raise LunarError(f"{path}: damaged PNG (checksum error in a {kind!r} chunk at byte {pos}); replace the file")
        if bytes(view[pos + 4 : pos + 8]) == b"IEND":
            return
        pos = end
    raise LunarError(f"{path}: truncated PNG (its chunks end before the end marker); replace the file")


def _ifd_entries(block: bytes, start: int, order: str) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (tag, type, count, the 4 value-or-offset bytes) of each entry of the TIFF directory at block[start:]."""
    (count,) = struct.unpack(order + "H", block[start : start + 2])
    for entry in range(start + 2, start + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack(order + "HHI", block[entry : entry + 8])
        yield tag, kind, n, block[entry + 8 : entry + 12]


def _exif_orientation(app1: bytes) -> int:
    """Return the EXIF orientation (1..8) held in an APP1 segment's payload, or 1 when there is none."""
    if not app1.startswith(b"Exif\0\0") or app1[6:8] not in (b"II", b"MM"):
        return 1
    tiff, order = app1[6:], "<" if app1[6:8] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        for tag, _type, _n, value in _ifd_entries(tiff, ifd, order):
            if tag == 0x0112:
                (orientation,) = struct.unpack(order + "H", value[:2])
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:  # a damaged EXIF block: the decoder ignores it too
        return 1
    return 1


def _jpeg_size(fh: BinaryIO, path: Path | str) -> tuple[int, int]:
    """Return (width, height) of a JPEG as it is shown: EXIF orientations 5-8 swap the stored sides.

    ``classes.decode_image_file`` turns JPEGs upright the same way, so a mask drawn on
    the upright photo matches.
    """
    fh.seek(0)
    data = fh.read(1 << 20)
    orientation = 1
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return (int(height), int(width)) if orientation >= 5 else (int(width), int(height))
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(data[i + 4 : i + 2 + length])
        i += 2 + length
    raise LunarError(f"{path}: JPEG without a frame header")


def _tiff_size(fh: BinaryIO, size: int, path: Path | str) -> tuple[int, int]:
    """Return (width, height) of a TIFF's first image; raise if its directory or pixel data lies past the end.

    Reads the header, the first directory and its strip (or tile) tables, wherever they are
    in the file: writers such as OpenCV's put the directory after the pixels.
    """
    try:
        fh.seek(0)
        order = "<" if fh.read(2) == b"II" else ">"
        fh.seek(4)
        (ifd,) = struct.unpack(order + "I", fh.read(4))
        fh.seek(ifd)
        (count,) = struct.unpack(order + "H", fh.read(2))
        fh.seek(ifd)
        entries = _ifd_entries(fh.read(2 + 12 * count), 0, order)
        fields = {tag: (kind, n, value) for tag, kind, n, value in entries}
        width = _tiff_ints(fh, order, *fields[256])[0]
        height = _tiff_ints(fh, order, *fields[257])[0]
        offsets, counts = (273, 279) if 273 in fields else (324, 325)  # strips, or tiles
        pieces = zip(_tiff_ints(fh, order, *fields[offsets]), _tiff_ints(fh, order, *fields[counts]))
        end = max((offset + length for offset, length in pieces), default=0)
    except (struct.error, KeyError, IndexError) as exc:  # a short read or a missing field
        raise LunarError(f"{path}: damaged or truncated TIFF header") from exc
    if end > size:
        raise LunarError(f"{path}: truncated TIFF (pixel data past the end of the file)")
    return int(width), int(height)


def _tiff_ints(fh: BinaryIO, order: str, kind: int, n: int, value: bytes) -> list[int]:
    """Return the n SHORT or LONG values of a TIFF directory entry, read from where it points when they do not fit."""
    fmt = f"{order}{n}{TIFF_INTS[kind]}"
    length = struct.calcsize(fmt)
    if length > 4:  # the entry holds the offset of the values, not the values
        fh.seek(struct.unpack(order + "I", value)[0])
        value = fh.read(length)
    return list(struct.unpack(fmt, value[:length]))


def _bmp_size(path: Path, head: bytes, size: int) -> tuple[int, int]:
    """Return (width, height) of a BMP from its first bytes; raise if the file is shorter than it says."""
    (declared,) = struct.unpack("<I", head[2:6])  # the file size the writer recorded
    (header,) = struct.unpack("<I", head[14:18])  # the size of the info header says which kind it is
    if header == 12:  # the old OS/2 header: 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
    elif header in (40, 52, 56, 64, 108, 124):
        width, height = struct.unpack("<ii", head[18:26])
    else:
        raise LunarError(f"{path}: damaged BMP header")
    if declared > size:
        raise LunarError(f"{path}: truncated BMP ({size} of {declared} bytes)")
    return int(width), abs(int(height))  # a negative height means rows are stored top-down
