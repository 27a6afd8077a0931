"""lunar eda: exact numbers on hand-made masks, figures, sampling, bad files, missing dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli.classes import encode_mask, write_png_atomic
from lunar_cli.console import LunarError
from lunar_cli.data import eda
from lunar_cli.data.eda import run_eda
from tests.conftest import make_dataset

H, W = 8, 12  # rendered masks; the real one is 16x24 so the heatmap must resize it


def hand_made(root: Path) -> Path:
    """Four rendered masks and one real mask with known content, in the original layout.

    render0001: all ground.                    render0002: sky in the top 2 of 8 rows (25%).
    render0003: small rocks at rows 0-1 cols 0-2 (6 px), large rocks at rows 4-7 cols 6-11 (24 px).
    render0004: all ground but 3 off-palette pixels (10, 0, 0), nearest to ground.
    PCAM1 (real, 16x24): sky in the top 8 of 16 rows, large rocks at rows 11-15 cols 0-5 (30 px).
    """
    for sub in ("images/render", "images/clean", "real_moon_images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    masks = [np.zeros((H, W), np.uint8) for _ in range(4)]
    masks[1][:2] = 1
    masks[2][0:2, 0:3] = 2
    masks[2][4:8, 6:12] = 3
    colour = [encode_mask(m) for m in masks]
    colour[3][5, 5] = colour[3][6, 7] = colour[3][0, 11] = (10, 0, 0)
    for i, rgb in enumerate(colour, start=1):
        write_png_atomic(root / f"images/render/render{i:04d}.png", np.full((H, W, 3), 40 * i, np.uint8))
        write_png_atomic(root / f"images/clean/clean{i:04d}.png", rgb)
    real = np.zeros((16, 24), np.uint8)
    real[:8] = 1
    real[11:, :6] = 3  # starts on an odd row: only a NEAREST resize keeps it free of blended classes
    write_png_atomic(root / "real_moon_images/PCAM1.png", np.full((16, 24, 3), 90, np.uint8))
    write_png_atomic(root / "real_moon_images/g_PCAM1.png", encode_mask(real))
    (root / "dataset.json").write_text(json.dumps({"source": "test", "counts": {"render": 4}}))
    return root


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The hand-made dataset analysed once, with real figures: (result, out_dir)."""
    root = tmp_path_factory.mktemp("eda")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eda, "HEATMAP_HW", (H, W))  # heatmap cells = rendered mask pixels, so spots are exact
        result = run_eda(hand_made(root / "data"), root / "out", workers=0, progress=False)
    return result, root / "out"


@pytest.fixture
def no_figures(monkeypatch):
    """Skip drawing (matplotlib takes seconds) in tests that only check numbers."""
    import lunar_cli.plots as plots

    for name in ("plot_examples_grid", "plot_bar_comparison", "plot_heatmaps"):
        monkeypatch.setattr(plots, name, lambda path, *args, **kwargs: Path(path))


def test_class_shares_and_presence_are_exact(analysed):
    result, _ = analysed
    assert result["counts"] == {"rendered": 4, "real": 1, "all": 5}
    # Rendered: 4 masks x 96 px = 384; ground 96 + 72 + 66 + 96.
    assert result["class_pixels"]["rendered"] == {"ground": 330, "sky": 24, "small_rocks": 6, "large_rocks": 24}
    assert result["class_pixels"]["real"] == {"ground": 162, "sky": 192, "small_rocks": 0, "large_rocks": 30}
    shares = result["class_shares"]
    rendered = {"ground": 330 / 384, "sky": 24 / 384, "small_rocks": 6 / 384, "large_rocks": 24 / 384}
    assert shares["rendered"] == pytest.approx(rendered, abs=1e-6)
    assert shares["real"] == pytest.approx({"ground": 162 / 384, "sky": 0.5, "small_rocks": 0, "large_rocks": 30 / 384})
    pooled = {"ground": 492 / 768, "sky": 216 / 768, "small_rocks": 6 / 768, "large_rocks": 54 / 768}
    assert shares["all"] == pytest.approx(pooled, abs=1e-6)  # pixels pooled over both sets
    presence = result["class_presence_percent"]
    assert presence["rendered"] == {"ground": 100.0, "sky": 25.0, "small_rocks": 25.0, "large_rocks": 25.0}
    assert presence["real"] == {"ground": 100.0, "sky": 100.0, "small_rocks": 0.0, "large_rocks": 100.0}
    assert presence["all"] == {"ground": 100.0, "sky": 40.0, "small_rocks": 20.0, "large_rocks": 40.0}


def test_off_palette_and_sizes(analysed):
    result, _ = analysed
    off = result["off_palette"]
    assert off["masks"] == 5 and off["masks_with_off_palette"] == 1
    assert off["max_share"] == pytest.approx(3 / 96)
    assert off["mean_share"] == pytest.approx(3 / 96 / 5)
    assert off["worst"] == [{"mask": "images/clean/clean0004.png", "share": pytest.approx(3 / 96)}]
    assert result["image_sizes"] == {"rendered": {"12x8": 4}, "real": {"24x16": 1}}
    assert result["mask_size_mismatches"] == [] and result["bad_pairs"] == 0


def test_heatmaps_at_known_spots(analysed):
    result, out = analysed
    with np.load(out / "heatmaps.npz") as maps:
        rendered, real = maps["rendered"], maps["real"]
    assert rendered.shape == real.shape == (4, H, W)
    sky, ground, small, large = rendered[1], rendered[0], rendered[2], rendered[3]
    assert np.allclose(sky[:2], 0.25) and np.allclose(sky[2:], 0)
    assert ground[0, 0] == pytest.approx(0.5)  # render0002 sky, render0003 small rock there
    assert ground[0, 5] == pytest.approx(0.75)
    assert small[0, 0] == pytest.approx(0.25) and small[7, 0] == 0
    assert large[7, 11] == pytest.approx(0.25) and large[0, 11] == 0
    assert np.allclose(rendered.sum(axis=0), 1)  # every mask has one class at each spot
    # The 16x24 real mask, resized with NEAREST to 8x12 (keeps even rows and columns).
    assert np.allclose(real[1, :4], 1) and np.allclose(real[1, 4:], 0)
    assert np.allclose(real[3, 6:, :3], 1) and real[3].sum() == 6 and real[3, 5].sum() == 0
    assert np.all(real[2] == 0)  # no blend of ground (0) and large rocks (3) became small rocks (2)
    bands = result["heatmaps"]["row_bands"]
    assert result["heatmaps"]["size_hw"] == [H, W]
    assert bands["rendered"]["sky"] == [0.25, 0.25, 0, 0, 0, 0, 0, 0]
    assert bands["real"]["sky"] == [1, 1, 1, 1, 0, 0, 0, 0]


def test_every_file_is_written_and_readable(analysed):
    result, out = analysed
    for name in ("examples.png", "class_shares.png", "class_presence.png", "heatmaps.png", "heatmaps_real.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100, name
    names = {Path(f).name for f in result["files"]}
    assert names >= {"eda.json", "class_shares.csv", "class_presence.csv", "examples.png", "heatmaps.npz"}
    assert all(Path(f).is_file() for f in result["files"])
    saved = json.loads((out / "eda.json").read_text())
    assert saved["class_shares"] == result["class_shares"] and "files" not in saved
    assert len(result["examples"]) == 4  # 3 rendered of 4, plus the only real photo
    assert result["examples"][-1] == "real_moon_images/PCAM1.png"
    with (out / "class_presence.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"set": "real", "class": "sky", "value": "100.0"} in rows
    assert len(rows) == 3 * 4  # all, rendered, real
    assert not list(out.glob("*.tmp"))


def test_sample_draws_n_rendered_and_repeats_with_the_seed(tmp_path, no_figures):
    data = make_dataset(tmp_path / "data", n_render=20, n_real=3, seed=5)
    first = run_eda(data, tmp_path / "a", sample=5, seed=7, workers=0, progress=False)
    again = run_eda(data, tmp_path / "b", sample=5, seed=7, workers=0, progress=False)
    other = run_eda(data, tmp_path / "c", sample=5, seed=8, workers=0, progress=False)
    assert first["counts"] == {"rendered": 5, "real": 3, "all": 8}
    assert first["available"] == {"rendered": 20, "real": 3}
    assert sum(1 for f in first["sampled"] if f.startswith("images/render/")) == 5
    assert first["sampled"] == again["sampled"] and first["examples"] == again["examples"]
    assert first["class_pixels"] == again["class_pixels"]
    assert first["sampled"] != other["sampled"]
    full = run_eda(data, tmp_path / "d", workers=0, progress=False)
    assert full["counts"]["rendered"] == 20 and full["sampled"] is None


def test_bad_files_are_counted_not_fatal(tmp_path, no_figures, capsys):
    data = hand_made(tmp_path / "data")
    png = bytearray((data / "images/clean/clean0001.png").read_bytes())
    png[41:-16] = b"\x5a" * (len(png) - 57)  # header and end marker intact: only decoding finds it
    for i, mask in ((5, bytes(png)), (6, b"not an image at all")):
        write_png_atomic(data / f"images/render/render{i:04d}.png", np.zeros((H, W, 3), np.uint8))
        (data / f"images/clean/clean{i:04d}.png").write_bytes(mask)
    write_png_atomic(data / "images/render/render0007.png", np.zeros((H, W, 3), np.uint8))
    write_png_atomic(data / "images/clean/clean0007.png", encode_mask(np.zeros((10, 10), np.uint8)))

    result = run_eda(data, tmp_path / "out", workers=0, progress=False)

    assert result["counts"] == {"rendered": 4, "real": 1, "all": 5}  # the good ones, same numbers
    assert result["class_pixels"]["rendered"]["ground"] == 330
    assert len(result["bad_files"]) == 1 and "clean0005.png" in result["bad_files"][0]
    assert len(result["problems"]) == 2 and result["bad_pairs"] == 3
    assert result["mask_size_mismatches"] == [
        {"mask": "images/clean/clean0007.png", "mask_size": "10x10", "image_size": "12x8"}
    ]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipped 3 bad" in err
    assert json.loads((tmp_path / "out/eda.json").read_text())["bad_pairs"] == 3


def test_worker_pool_gives_the_same_numbers(tmp_path, no_figures):
    data = make_dataset(tmp_path / "data", n_render=12, n_real=2, seed=3)
    here = run_eda(data, tmp_path / "a", workers=0, progress=False)
    pool = run_eda(data, tmp_path / "b", workers=2, progress=False)
    assert pool["workers"] == 2
    for key in ("counts", "class_pixels", "class_presence_percent", "heatmaps", "off_palette", "examples"):
        assert pool[key] == here[key], key


def test_missing_dataset_says_run_fetch(tmp_path):
    with pytest.raises(LunarError, match="run lunar fetch"):
        run_eda(tmp_path / "nothing", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_sample_is_a_one_line_error(tmp_path):
    data = make_dataset(tmp_path / "data", n_render=2, n_real=0)
    with pytest.raises(LunarError, match="sample 0"):
        run_eda(data, tmp_path / "out", sample=0, progress=False)
