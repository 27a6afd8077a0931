"""Cheap checks that a file is a whole PNG or JPEG, and its size, without decoding it."""

from __future__ import annotations

import struct
from pathlib import Path

from lunar_cli.console import LunarError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def probe_image(path: Path) -> tuple[int, int]:
    """Return (width, height) of a PNG or JPEG file, or raise LunarError if it is empty or damaged.

    Reads only the header and the last bytes, so it catches zero-byte files, text files
    named .png and truncated files in microseconds instead of a full decode.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise LunarError(f"{path}: file is empty")
        with path.open("rb") as fh:
            head = fh.read(32)
            fh.seek(max(0, size - 12))
            tail = fh.read(12)
    except FileNotFoundError as exc:
        raise LunarError(f"{path}: no such file") from exc
    except OSError as exc:
        raise LunarError(f"{path}: cannot read ({exc.strerror})") from exc
    if head.startswith(PNG_SIGNATURE):
        if head[12:16] != b"IHDR" or len(head) < 24:
            raise LunarError(f"{path}: damaged PNG header")
        if not tail.endswith(b"IEND\xaeB`\x82"):
            raise LunarError(f"{path}: truncated PNG (no end marker)")
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in tail:
            raise LunarError(f"{path}: truncated JPEG (no end marker)")
        return _jpeg_size(path)
    raise LunarError(f"{path}: not a PNG or JPEG image")


def _exif_orientation(app1: bytes) -> int:
    """Return the EXIF orientation (1..8) held in an APP1 segment's payload, or 1 when there is none."""
    if not app1.startswith(b"Exif\0\0") or app1[6:8] not in (b"II", b"MM"):
        return 1
    tiff, order = app1[6:], "<" if app1[6:8] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, _type, _n, value = struct.unpack(order + "HHIH", tiff[entry : entry + 10])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except struct.error:  # a damaged EXIF block: the decoder ignores it too
        return 1
    return 1


def _jpeg_size(path: Path) -> tuple[int, int]:
    """Return (width, height) of a JPEG as it is shown: EXIF orientations 5-8 swap the stored sides.

    ``classes.decode_image_file`` turns JPEGs upright the same way, so a mask drawn on
    the upright photo matches.
    """
    with path.open("rb") as fh:
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
