"""The README's main job, command by command, on a small synthetic set: every command wired end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from lunar_cli.classes import PALETTE


def test_fetch_split_eda_train_evaluate_predict_compare(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commands' defaults: data/, runs/
    r = cli("fetch", "--source", "synthetic", "--count", "24", "--real-count", "3", "--width", "96", "--height", "64")
    assert r.code == 0, r.err
    assert "render" in r.out and Path("data/dataset.json").is_file()
    r = cli("fetch", "--count", "24")
    assert r.code == 1 and "--force" in r.err  # never silently replaces a dataset

    r = cli("split", "--json")
    assert r.code == 0 and r.json()["counts"]["test_real"] == 3

    r = cli("eda", "--sample", "10", "--json")
    assert r.code == 0, r.err
    assert Path("runs/eda/eda.json").is_file() and Path("runs/eda/heatmaps.png").is_file()
    assert r.json()["counts"]["rendered"] == 10

    r = cli("train", "--epochs", "1", "--image-size", "64", "--batch-size", "4", "--json")
    assert r.code == 0, r.err
    run_dir = Path(r.json()["run_dir"])
    assert (run_dir / "best.pt").is_file()

    r = cli("evaluate", "--json")
    assert r.code == 0, r.err
    assert set(r.json()["splits"]) == {"test", "test_real"}
    assert json.loads((run_dir / "eval.json").read_text())["splits"]["test_real"]["images"] == 3

    photo = "data/real_moon_images/PCAM1.png"
    r = cli("predict", photo, "-o", "mask.png", "--hazard", "--json")
    assert r.code == 0, r.err
    mask = cv2.cvtColor(cv2.imread("mask.png"), cv2.COLOR_BGR2RGB)
    assert mask.shape[:2] == cv2.imread(photo).shape[:2]
    assert np.isin(mask.reshape(-1, 3).tolist(), PALETTE.tolist()).all()
    record = r.json()["records"][0]
    assert "largest_safe_region" in record["hazard"]
    assert "using model" in r.err  # says which model it picked

    r = cli("predict", photo, "missing.png", "-o", "out")
    assert r.code == 1 and "missing.png" in r.err  # failures reported, exit non-zero
    assert Path("out/PCAM1.png").is_file()  # ... but what worked was written

    r = cli("compare", "--json")
    assert r.code == 0, r.err
    assert len(r.json()["rows"]) == 1 and Path("runs/compare/predictions.png").is_file()


def test_commands_without_prerequisites_say_what_to_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cv2.imwrite("x.png", np.zeros((8, 8, 3), np.uint8))
    for args, hint in [
        (["split"], "run lunar fetch"),
        (["eda"], "run lunar fetch"),
        (["train", "--epochs", "1"], "run lunar fetch"),
        (["evaluate"], "run lunar fetch"),  # no run yet: the built-in model, which needs data to score
        (["compare"], "run lunar fetch"),
    ]:
        r = cli(*args)
        assert r.code != 0 and hint in r.err, (args, r.err)
        assert r.err.count("\n") == 1 and "Traceback" not in r.err, (args, r.err)
    r = cli("predict", "x.png", "-o", "x_mask.png")  # no run yet: the built-in model predicts
    assert r.code == 0 and "using the built-in model" in r.err and "train your own with lunar train" in r.err
