"""The split manifest: ratios, reproducibility, bad pairs, and the command."""

from __future__ import annotations

import csv
import os
import random

import pytest

from lunar_cli.console import LunarError
from lunar_cli.data.split import assign_splits, make_split, read_manifest, split_pairs
from tests.conftest import make_dataset


def test_ratios_and_real_photos(tiny_data):
    result = make_split(tiny_data)
    assert result["counts"] == {"train": 10, "val": 4, "test": 6, "test_real": 3}
    rows = read_manifest(tiny_data)
    assert {r["split"] for r in rows if r["image"].startswith("real_moon_images/")} == {"test_real"}
    assert all((tiny_data / r["image"]).is_file() and (tiny_data / r["mask"]).is_file() for r in rows)


def test_large_split_ratios():
    pairs = [(f"images/render/render{i:04d}.png", f"images/clean/clean{i:04d}.png") for i in range(1, 9767)]
    rows = assign_splits(pairs, train=0.49, val=0.21, seed=42)
    counts = {s: sum(r[2] == s for r in rows) for s in ("train", "val", "test")}
    assert counts == {"train": 4785, "val": 2051, "test": 2930}


def test_same_files_same_seed_same_bytes_regardless_of_order(tiny_data):
    pairs = [(f"a{i}", f"m{i}") for i in range(50)]
    shuffled = pairs[:]
    random.Random(3).shuffle(shuffled)
    assert assign_splits(pairs, train=0.49, val=0.21, seed=42) == assign_splits(shuffled, train=0.49, val=0.21, seed=42)
    make_split(tiny_data)
    first = (tiny_data / "manifest.csv").read_bytes()
    make_split(tiny_data)
    assert (tiny_data / "manifest.csv").read_bytes() == first
    make_split(tiny_data, seed=1)
    assert (tiny_data / "manifest.csv").read_bytes() != first


def test_bad_pairs_are_skipped_with_warning_or_refused_when_strict(tiny_data, capsys):
    (tiny_data / "images/clean/clean0003.png").unlink()
    (tiny_data / "images/render/render0005.png").write_bytes(b"")
    data = (tiny_data / "images/clean/clean0007.png").read_bytes()
    (tiny_data / "images/clean/clean0007.png").write_bytes(data[: len(data) // 2])
    result = make_split(tiny_data)
    assert len(result["skipped"]) == 3
    assert sum(result["counts"][s] for s in ("train", "val", "test")) == 17
    assert "skipped 3 bad image/mask pair(s)" in capsys.readouterr().err
    with pytest.raises(LunarError, match="3 bad image/mask pair"):
        make_split(tiny_data, strict=True)


def test_mask_of_other_size_is_a_bad_pair(tmp_path):
    root = make_dataset(tmp_path / "d", n_render=4, n_real=0)
    other = make_dataset(tmp_path / "o", n_render=1, n_real=0, size=(32, 32))
    os.replace(other / "images/clean/clean0001.png", root / "images/clean/clean0002.png")
    result = make_split(root)
    assert any("32x32" in s and "48" in s for s in result["skipped"])


def test_ground_masks_as_label_source(tiny_data):
    make_split(tiny_data, mask_source="ground")
    assert all(r["mask"].startswith(("images/ground/", "real_moon_images/")) for r in read_manifest(tiny_data))


def test_missing_manifest_and_empty_split(tmp_path, tiny_data):
    with pytest.raises(LunarError, match="run lunar fetch --source synthetic, then lunar split"):
        read_manifest(tmp_path)
    with pytest.raises(LunarError, match="no manifest in .*: run lunar split"):
        read_manifest(tiny_data)
    make_split(tiny_data, train=1.0, val=0.0)
    with pytest.raises(LunarError, match="split 'val' is empty"):
        split_pairs(tiny_data, "val")


def test_split_command_table_and_json(cli, tiny_data):
    result = cli("split", "--data-dir", tiny_data)
    assert result.code == 0 and "train" in result.out and "test_real" in result.out
    result = cli("split", "--data-dir", tiny_data, "--json", "--seed", "5")
    assert result.code == 0
    payload = result.json()
    assert payload["counts"]["test_real"] == 3 and payload["seed"] == 5
    with open(tiny_data / "manifest.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["image", "mask", "split"]


def test_interrupted_manifest_write_keeps_old_manifest(tiny_data, monkeypatch):
    make_split(tiny_data)
    before = (tiny_data / "manifest.csv").read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(LunarError, match="nothing was changed"):
        make_split(tiny_data, seed=3)
    monkeypatch.undo()
    assert (tiny_data / "manifest.csv").read_bytes() == before
    assert not [p for p in tiny_data.iterdir() if p.name.endswith(".tmp")]


def test_tif_renders_are_paired_with_tif_or_png_masks(cli, tiny_data):
    import cv2

    for png in sorted((tiny_data / "images/render").glob("*.png")):
        assert cv2.imwrite(str(png.with_suffix(".tif")), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        png.unlink()
    for i in range(2, 21, 2):  # even masks as .tif too; the odd ones stay .png beside a .tif render
        png = tiny_data / f"images/clean/clean{i:04d}.png"
        assert cv2.imwrite(str(png.with_suffix(".tif")), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        png.unlink()

    result = cli("split", "--data-dir", tiny_data, "--json")
    assert result.code == 0, result.err
    assert result.json()["counts"] == {"train": 10, "val": 4, "test": 6, "test_real": 3}
    assert "skipped" not in result.err
    rendered = [r for r in read_manifest(tiny_data) if r["split"] != "test_real"]
    assert len(rendered) == 20 and all(r["image"].endswith(".tif") for r in rendered)
    assert sorted(r["mask"] for r in rendered)[:2] == ["images/clean/clean0001.png", "images/clean/clean0002.tif"]


def test_cut_off_tif_and_bmp_renders_are_bad_pairs(tiny_data):
    import cv2

    for name in ("render0001.tif", "render0002.bmp"):
        path = tiny_data / "images/render" / name
        png = path.with_suffix(".png")
        assert cv2.imwrite(str(path), cv2.imread(str(png), cv2.IMREAD_UNCHANGED))
        png.unlink()
        path.write_bytes(path.read_bytes()[:-40])
    skipped = make_split(tiny_data)["skipped"]
    assert len(skipped) == 2
    assert "render0001.tif: damaged or truncated TIFF" in skipped[0] and "render0002.bmp: truncated BMP" in skipped[1]
