"""The decode-once cache: build, reuse, invalidation, interrupted builds, bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lunar_cli.classes import IGNORE_INDEX, encode_mask, write_png_atomic
from lunar_cli.console import LunarError
from lunar_cli.data import cache
from lunar_cli.data.cache import build_or_load_cache, cache_key
from lunar_cli.frames import FrameSize

SIZE = FrameSize(scale=0.5)  # the files are 48x64: the model's frames 24x32


def scene(i: int, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Return (image, mask) whose grey level encodes the class: image = mask * 60 + 20."""
    mask = np.zeros((height, width), np.uint8)
    mask[: 10 + i % 5] = 1
    mask[30:38, 5 + i : 15 + i] = 3
    mask[40:42, 50:52] = 2
    return np.repeat((mask * 60 + 20)[:, :, None], 3, axis=2).astype(np.uint8), mask


def write_pairs(root: Path, n: int = 10) -> list[tuple[Path, Path]]:
    pairs = []
    for i in range(1, n + 1):
        image, mask = scene(i)
        pair = (root / f"images/render/render{i:04d}.png", root / f"images/clean/clean{i:04d}.png")
        write_png_atomic(pair[0], image)
        write_png_atomic(pair[1], encode_mask(mask))
        pairs.append(pair)
    return pairs


@pytest.fixture
def pairs(tmp_path) -> list[tuple[Path, Path]]:
    return write_pairs(tmp_path / "data")


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(cache, "warn", seen.append)
    return seen


def valid_caches(root: Path) -> list[Path]:
    return [p for p in root.glob("*") if (p / "meta.json").is_file()] if root.exists() else []


def build(pairs, root, **kw):
    return build_or_load_cache(pairs, SIZE, root, workers=0, progress=False, **kw)


def test_build_writes_arrays_at_training_size(pairs, tmp_path):
    import cv2

    split = build(pairs, tmp_path / "cache")
    assert split.images.shape == (10, 24, 32, 3) and split.images.dtype == np.uint8
    assert split.masks.shape == (10, 24, 32) and split.masks.dtype == np.uint8
    assert split.full_masks.shape == (10, 48, 64) and split.sizes.tolist() == [[24, 32, 48, 64]] * 10
    assert isinstance(split.images, np.memmap)
    assert split.files == [p[0].as_posix() for p in pairs]
    assert split.off_palette == 0.0 and split.skipped == []
    image, mask = scene(3)
    expected = cv2.resize(mask, (32, 24), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(split.masks[2], expected)
    assert np.array_equal(split.images[2], cv2.resize(image, (32, 24), interpolation=cv2.INTER_AREA))
    assert np.array_equal(split.full_masks[2], mask)  # the labels as drawn, for scoring
    assert sum(split.class_pixels) == 10 * 24 * 32
    meta = json.loads((split.path / "meta.json").read_text())
    assert meta["count"] == 10 and meta["key"] == split.path.name == cache_key(pairs, SIZE)
    assert meta["canvas"] == [24, 32] and meta["size_rule"] == "scale 0.5"


def test_at_scale_one_the_masks_are_stored_once(pairs, tmp_path):
    split = build_or_load_cache(pairs, FrameSize(), tmp_path / "cache", workers=0, progress=False)
    assert split.images.shape == (10, 48, 64, 3) and split.full_masks is split.masks
    assert not (split.path / "full_masks.npy").exists()


def test_frames_of_other_sizes_share_a_canvas_and_keep_their_own_size(tmp_path):
    pairs = []
    for i, (h, w) in enumerate([(48, 64), (40, 30), (50, 20)], start=1):
        image, mask = scene(1, height=h, width=w)
        pair = (tmp_path / f"render{i}.png", tmp_path / f"clean{i}.png")
        write_png_atomic(pair[0], image)
        write_png_atomic(pair[1], encode_mask(mask))
        pairs.append(pair)
    split = build_or_load_cache(pairs, FrameSize(scale=0.5), tmp_path / "cache", workers=0, progress=False)
    assert split.images.shape == (3, 25, 32, 3) and split.full_masks.shape == (3, 50, 64)
    assert split.sizes.tolist() == [[24, 32, 48, 64], [20, 15, 40, 30], [25, 10, 50, 20]]
    assert (split.masks[1, 20:] == IGNORE_INDEX).all() and (split.masks[1, :, 15:] == IGNORE_INDEX).all()
    assert (split.full_masks[2, :, 20:] == IGNORE_INDEX).all() and (split.full_masks[2, :, :20] != IGNORE_INDEX).all()


def test_masks_are_never_blended(tmp_path):
    import cv2

    mask = np.where(np.arange(64) % 3 == 0, 3, 1).astype(np.uint8)[None, :].repeat(48, axis=0)  # sky/large stripes
    pair = (tmp_path / "render0001.png", tmp_path / "clean0001.png")
    write_png_atomic(pair[0], np.zeros((48, 64, 3), np.uint8))
    write_png_atomic(pair[1], encode_mask(mask))
    split = build_or_load_cache([pair], FrameSize(scale=27 / 64), tmp_path / "cache", workers=0, progress=False)
    assert set(np.unique(split.masks)) == {1, 3}  # blending 1 and 3 would invent class 2
    assert np.array_equal(split.masks[0], cv2.resize(mask, (27, 20), interpolation=cv2.INTER_NEAREST))


def test_process_pool_gives_the_same_arrays(pairs, tmp_path):
    one = build(pairs, tmp_path / "a")
    two = build_or_load_cache(pairs, SIZE, tmp_path / "b", workers=2, progress=False)
    assert np.array_equal(one.images, two.images) and np.array_equal(one.masks, two.masks)


def test_second_call_reuses_without_decoding(pairs, tmp_path, monkeypatch):
    first = build(pairs, tmp_path / "cache")
    stamp = (first.path / "images.npy").stat().st_mtime_ns

    def no_decode(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "_decode_pair", no_decode)
    again = build(pairs, tmp_path / "cache")
    assert again.path == first.path and (again.path / "images.npy").stat().st_mtime_ns == stamp
    assert np.array_equal(again.masks, first.masks)


def test_changed_file_or_size_gives_a_new_cache(pairs, tmp_path):
    first = build(pairs, tmp_path / "cache")
    image, mask = scene(1)
    mask[:] = 2
    write_png_atomic(pairs[0][1], encode_mask(mask))  # new content, new mtime
    changed = build(pairs, tmp_path / "cache")
    assert changed.path != first.path
    assert (changed.masks[0] == 2).all() and not (first.masks[0] == 2).all()
    st = pairs[4][0].stat()
    os.utime(pairs[4][0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touch only
    assert cache_key(pairs, SIZE) != changed.path.name
    square = build_or_load_cache(pairs, FrameSize(square=16), tmp_path / "cache", workers=0, progress=False)
    assert square.images.shape == (10, 16, 16, 3) and square.full_masks.shape == (10, 48, 64)


def test_moving_the_data_folder_keeps_the_key(pairs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", moved)  # copy2 keeps mtime_ns
    data = tmp_path / "data"
    moved_pairs = [(moved / a.relative_to(data), moved / b.relative_to(data)) for a, b in pairs]
    assert cache_key(moved_pairs, SIZE) == cache_key(pairs, SIZE)
    assert cache_key(pairs, SIZE) != cache_key(pairs[:-1], SIZE)


def test_interrupted_build_leaves_nothing_valid(pairs, tmp_path, monkeypatch):
    real = cache._decode_pair
    calls = []

    def fail_midway(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(cache, "_decode_pair", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        build(pairs, tmp_path / "cache")
    assert valid_caches(tmp_path / "cache") == []
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(cache, "_decode_pair", real)
    assert len(build(pairs, tmp_path / "cache")) == 10


def test_truncated_array_is_rebuilt_with_a_warning(pairs, tmp_path, warnings):
    first = build(pairs, tmp_path / "cache")
    expected = np.array(first.images)
    npy = first.path / "images.npy"
    del first
    with open(npy, "r+b") as fh:
        fh.truncate(npy.stat().st_size // 2)
    again = build(pairs, tmp_path / "cache")
    assert any("rebuilding" in w and "unusable" in w for w in warnings)
    assert np.array_equal(again.images, expected)


def test_bad_meta_is_rebuilt(pairs, tmp_path, warnings):
    first = build(pairs, tmp_path / "cache")
    (first.path / "meta.json").write_text("{not json")
    again = build(pairs, tmp_path / "cache")
    assert len(again) == 10 and warnings
    json.loads((again.path / "meta.json").read_text())


def test_corrupt_image_is_an_error_naming_it(pairs, tmp_path):
    pairs[3][0].write_bytes(pairs[3][0].read_bytes()[:100])  # truncated PNG
    with pytest.raises(LunarError, match="render0004.png"):
        build(pairs, tmp_path / "cache")
    assert valid_caches(tmp_path / "cache") == []


def test_skip_bad_drops_pairs_and_counts_them(pairs, tmp_path, warnings, monkeypatch):
    pairs[3][0].write_bytes(b"not a png at all")
    pairs[6][1].unlink()  # image without mask
    split = build(pairs, tmp_path / "cache", skip_bad=True)
    assert len(split) == 8 and len(split.skipped) == 2
    assert any("render0004.png" in s for s in split.skipped) and any("clean0007.png" in s for s in split.skipped)
    assert pairs[3][0].as_posix() not in split.files and len(split.files) == 8
    assert any("2 bad pairs" in w for w in warnings)
    decode = cache._decode_pair
    monkeypatch.setattr(cache, "_decode_pair", lambda *a: (_ for _ in ()).throw(AssertionError("decoded")))
    assert len(build(pairs, tmp_path / "cache", skip_bad=True).skipped) == 2  # from the cache
    with pytest.raises(LunarError, match="clean0007.png"):
        build(pairs, tmp_path / "cache")  # bad pairs are not allowed now
    monkeypatch.setattr(cache, "_decode_pair", decode)
    write_png_atomic(pairs[6][1], encode_mask(scene(7)[1]))
    split = build(pairs, tmp_path / "cache", skip_bad=True)
    assert len(split) == 9 and len(split.skipped) == 1
    with pytest.raises(LunarError, match="render0004.png"):
        build(pairs, tmp_path / "cache")  # cached with the bad image dropped: still refused


def test_missing_mask_is_an_error_naming_it(pairs, tmp_path):
    pairs[2][1].unlink()
    with pytest.raises(LunarError, match="clean0003.png"):
        build(pairs, tmp_path / "cache")


def test_mask_of_another_size_is_an_error_naming_it(pairs, tmp_path):
    _image, mask = scene(2, height=40, width=64)
    write_png_atomic(pairs[1][1], encode_mask(mask))
    with pytest.raises(LunarError, match=r"clean0002\.png.*64x40.*64x48"):
        build(pairs, tmp_path / "cache")


def test_empty_split_says_what_to_do(tmp_path):
    with pytest.raises(LunarError, match=r"split 'val' is empty: run `lunar split`"):
        build_or_load_cache([], SIZE, tmp_path / "cache", name="val", progress=False)
