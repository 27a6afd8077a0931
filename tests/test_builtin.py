"""The built-in model: shipped in the package, self-describing, good enough to use, and never in the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lunar_cli.models.builtin import FOLDER, builtin_checkpoint
from tests.test_predict import REPO, make_photos, save_model

# Floors under the built-in model's full-resolution IoU on a freshly generated synthetic set (24
# lit scenes, seed 99, never seen in training); a broken, swapped or much weaker file falls below them
# (random weights: mIoU about 0.25; the previous built-in model, trained on the renderer before the lit
# scenes: 0.580, small rocks 0.132, large rocks 0.245). This model measured mIoU 0.833, small rocks
# 0.534, large rocks 0.809 (2026-12-04).
FLOORS = {"test": {"miou": 0.75, "small_rocks": 0.42, "large_rocks": 0.70}}


def record() -> dict:
    return json.loads((FOLDER / "builtin.json").read_text())


def test_shipped_checkpoint_loads_safely_and_rebuilds_itself():
    from lunar_cli.models.checkpoint import build_from_checkpoint

    ckpt = torch.load(builtin_checkpoint(), map_location="cpu", weights_only=True)
    model = build_from_checkpoint(ckpt, name="builtin")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # stored as fp16, run as fp32
    meta = ckpt["meta"]
    assert meta["backbone"] == "efficientnet_lite0" and meta["calibration"]["ood_threshold"] > 0
    assert meta["frame_size"]["height"] == 320  # fed at its training scenes' height
    logits = model(torch.rand(1, 3, 64, 96))
    assert logits.shape == (1, 4, 64, 96)


def test_the_files_fit_the_wheel_budget_and_export_to_onnx(cli, tmp_path):
    total = sum(p.stat().st_size for p in (builtin_checkpoint(), FOLDER / "builtin.json"))
    assert total < 11e6, f"the built-in model takes {total / 1e6:.1f} MB of the wheel"  # MODEL_CARD.md: 10.6 MB
    assert record()["export"]["class_agreement"] >= 0.999
    result = cli("export", "builtin", "-o", tmp_path / "builtin.onnx", "--json")
    assert result.code == 0 and result.json()["class_agreement"] >= 0.999, result.err
    from lunar_cli.onnx_model import load_onnx

    onnx = load_onnx(tmp_path / "builtin.onnx")
    assert onnx.spec.meta["frame_size"] == torch.load(builtin_checkpoint(), weights_only=True)["meta"]["frame_size"]


def test_iou_on_a_freshly_generated_synthetic_set_stays_above_its_floor(cli, tmp_path):
    data = tmp_path / "data"
    assert cli("fetch", "--source", "synthetic", "--count", "24", "--real-count", "0", "--seed", "99",
               "--data-dir", data).code == 0  # fmt: skip
    assert cli("split", "--data-dir", data, "--train", "0", "--val", "0", "--test", "1").code == 0
    result = cli("evaluate", "builtin", "--data-dir", data, "--runs-dir", tmp_path / "runs", "--split", "test",
                 "--json")  # fmt: skip
    assert result.code == 0, result.err
    scores = result.json()["splits"]["test"]
    assert scores["resolution"].startswith("full resolution (480x320 labels)")
    assert scores["miou"] >= FLOORS["test"]["miou"], scores["iou"]
    for name in ("small_rocks", "large_rocks"):
        assert scores["iou"][name] >= FLOORS["test"][name], scores["iou"]
    assert (tmp_path / "runs" / "builtin" / "eval.json").is_file()  # results never go into the package


def test_predict_uses_it_only_when_nothing_else_is_there(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (photo,) = make_photos(tmp_path / "in", 1)
    r = cli("predict", photo, "-o", "a.png", "--json")
    assert r.code == 0 and r.json()["model"] == str(builtin_checkpoint()) and "built-in model" in r.err
    mine = save_model(tmp_path / "runs" / "train" / "mine" / "best.pt")
    r = cli("predict", photo, "-o", "b.png", "--json")
    assert r.code == 0 and Path(r.json()["model"]).resolve() == mine.resolve() and "newest under" in r.err
    other = save_model(tmp_path / "other.pt")
    r = cli("predict", photo, "-o", "c.png", "--model", other, "--json")  # an explicit --model always wins
    assert r.code == 0 and r.json()["model"] == str(other) and r.err == ""
    r = cli("predict", photo, "-o", "d.png", "--model", "builtin", "--uncertainty", "--json")
    assert r.code == 0 and r.json()["model"] == str(builtin_checkpoint())
    assert isinstance(r.json()["records"][0]["out_of_distribution"], bool)


def test_init_fine_tunes_from_it_and_refuses_another_architecture(cli, tmp_path):
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "data", n_render=8, n_real=0, size=(64, 64))
    assert cli("split", "--data-dir", data).code == 0
    backbone = torch.load(builtin_checkpoint(), map_location="cpu", weights_only=True)["meta"]["backbone"]
    base = ["--data-dir", data, "--runs-dir", tmp_path / "runs", "--epochs", "1", "--crop-size", "64",
            "--batch-size", "4", "--workers", "0", "--device", "cpu"]  # fmt: skip
    result = cli("train", *base, "--init", "builtin", "--backbone", "custom")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "--init builtin:" in result.err and f"--backbone {backbone}" in result.err
    result = cli("train", *base, "--init", "builtin", "--backbone", backbone, "--json")
    assert result.code == 0 and "starting from the weights of" in result.err, result.err


def test_init_weights_that_do_not_fit_are_one_line(tmp_path):
    from lunar_cli.console import LunarError
    from lunar_cli.models.registry import build_model
    from lunar_cli.train_setup import load_initial_weights

    # Same width and depth, so the architectures read alike, but single-channel input: the weights cannot fit.
    grey = save_model(tmp_path / "grey.pt", base_width=4, depth=2, in_channels=1)
    with pytest.raises(LunarError, match=r"--init .*grey\.pt: weights do not fit a custom model") as info:
        load_initial_weights(build_model("custom", base_width=4, depth=2), str(grey), "custom",
                             {"base_width": 4, "depth": 2}, tmp_path)  # fmt: skip
    assert "\n" not in str(info.value)


def test_a_clean_install_of_the_wheel_predicts_with_it(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels,
                    str(REPO)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = wheels.glob("lunar_cli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"lunar_cli/models/builtin/builtin.pt", "lunar_cli/models/builtin/builtin.json"} <= set(names)
    site = tmp_path / "site"  # the package alone, installed from the wheel; its dependencies from this environment
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel], check=True,
                   capture_output=True)  # fmt: skip
    (photo,) = make_photos(tmp_path / "in", 1)
    work = tmp_path / "fresh"  # no runs/, no models/
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", "predict", str(photo), "-o", "mask.png", "--json"],
                          cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"].startswith(str(site)) and (work / "mask.png").is_file()


@pytest.mark.parametrize("split", ["test", "test_real"])
def test_the_model_card_quotes_the_record(split):
    card = (REPO / "MODEL_CARD.md").read_text()
    scores = record()["fresh_test"][split]
    assert f"{scores['miou']:.3f}" in card, f"MODEL_CARD.md does not quote the {split} mIoU of builtin.json"
