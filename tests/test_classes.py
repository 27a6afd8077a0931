"""The palette: decoding anti-aliased masks, encoding back, odd image formats."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lunar_cli.classes import CLASS_NAMES, PALETTE, decode_mask, encode_mask, read_image_rgb, read_mask, to_rgb_uint8
from lunar_cli.console import LunarError


def test_class_order_and_colours():
    assert CLASS_NAMES == ("ground", "sky", "small_rocks", "large_rocks")
    assert PALETTE.tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_round_trip_exact():
    indices = np.random.default_rng(0).integers(0, 4, size=(13, 17)).astype(np.uint8)
    decoded, off = decode_mask(encode_mask(indices))
    assert np.array_equal(decoded, indices) and off == 0.0


def test_anti_aliased_mask_maps_to_nearest_and_reports_share():
    indices = np.zeros((20, 20), np.uint8)
    indices[:5] = 1
    indices[10:15, 10:15] = 3
    rgb = encode_mask(indices)
    blurred = cv2.GaussianBlur(rgb, (3, 3), 0)  # soft edges, like the real hand masks
    blurred[19, 19] = (30, 20, 10)  # a stray near-black pixel
    decoded, off = decode_mask(blurred)
    off_pixels = (np.abs(blurred.astype(int) - rgb.astype(int)).sum(axis=2) > 0) | (
        ~np.isin(blurred.reshape(-1, 3).tolist(), PALETTE.tolist()).all(axis=1).reshape(20, 20)
    )
    assert 0 < off <= off_pixels.mean() + 1e-9
    assert decoded[19, 19] == 0
    assert decoded[2, 2] == 1 and decoded[12, 12] == 3
    # Only edge pixels may change class, interior pixels keep theirs.
    assert (decoded != indices).sum() < 0.2 * indices.size


def test_rgba_and_16bit_and_index_masks():
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    rgb = encode_mask(indices)
    rgba = np.concatenate([rgb, np.full((2, 2, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(decode_mask(rgba)[0], indices)
    assert np.array_equal(decode_mask(rgb.astype(np.uint16) * 257)[0], indices)
    assert np.array_equal(decode_mask(indices)[0], indices)  # a class-index PNG


def test_grayscale_photo_as_mask_is_refused():
    with pytest.raises(LunarError, match="grayscale mask"):
        decode_mask(np.full((4, 4), 200, np.uint8))


def test_encode_rejects_out_of_range():
    with pytest.raises(LunarError, match="out of range"):
        encode_mask(np.array([[4]]))


def test_to_rgb_handles_gray_and_rejects_floats():
    assert to_rgb_uint8(np.zeros((3, 3), np.uint8)).shape == (3, 3, 3)
    with pytest.raises(LunarError, match="unsupported pixel type"):
        to_rgb_uint8(np.zeros((3, 3), np.float32))


def test_read_files_bgr_order_and_bad_files(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # red = sky
    cv2.imwrite(str(tmp_path / "m.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    indices, _ = read_mask(tmp_path / "m.png")
    assert (indices == 1).all()
    assert read_image_rgb(tmp_path / "m.png")[0, 0].tolist() == [255, 0, 0]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(LunarError, match="empty"):
        read_image_rgb(tmp_path / "empty.png")
    with pytest.raises(LunarError, match="not a PNG, JPEG, TIFF or BMP image"):
        read_image_rgb(tmp_path / "text.png")
    with pytest.raises(LunarError, match="no such file"):
        read_image_rgb(tmp_path / "missing.png")


def jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """Return a JPEG of ``rgb`` carrying an EXIF orientation tag (6 = rotate 90 degrees clockwise)."""
    import struct

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def test_jpeg_exif_rotation_is_applied(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = 255  # left half white
    (tmp_path / "rot.jpg").write_bytes(jpeg_with_orientation(rgb, 6))
    upright = read_image_rgb(tmp_path / "rot.jpg")
    assert upright.shape == (60, 40, 3)  # turned as a viewer shows it
    assert upright[:30].mean() > 200 and upright[30:].mean() < 50  # the white half is now on top
