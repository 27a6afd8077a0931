"""lunar export --int8: a statically quantised ONNX file, about 4x smaller, that agrees with PyTorch and runs torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lunar_cli.data.split import read_manifest
from lunar_cli.export import export_model
from lunar_cli.models.builtin import builtin_checkpoint
from lunar_cli.onnx_model import load_onnx
from tests.conftest import make_dataset
from tests.test_predict import REPO, make_photos, save_model


@pytest.fixture(scope="module")
def builtin_int8(tmp_path_factory) -> tuple[Path, dict]:
    """The built-in model exported to int8, calibrated on rendered scenes (its data folder has no split)."""
    folder = tmp_path_factory.mktemp("int8")
    out = folder / "builtin.int8.onnx"
    return out, export_model("builtin", out, "onnx", folder / "runs", int8=True, data_dir=folder / "no-data",
                             calibration_frames=4)  # fmt: skip


def test_the_int8_file_is_about_4x_smaller_agrees_with_pytorch_and_carries_its_metadata(builtin_int8):
    out, result = builtin_int8
    ckpt = torch.load(builtin_checkpoint(), map_location="cpu", weights_only=True)
    fp32_bytes = 4 * sum(v.numel() for v in ckpt["model"].values() if v.is_floating_point())
    assert fp32_bytes / out.stat().st_size > 3.5 and result["bytes"] == out.stat().st_size
    assert result["class_agreement"] >= 0.99 and result["precision"] == "int8"
    assert result["quantization"]["calibration"].startswith("4 rendered scenes")
    assert [p.name for p in out.parent.iterdir() if p.is_file()] == [out.name]  # nothing left beside it
    meta = load_onnx(out).spec.meta
    assert meta["precision"] == "int8" and meta["quantization"]["format"] in ("QDQ", "QOperator")
    assert meta["calibration"] == ckpt["meta"]["calibration"] and meta["classes"][3]["name"] == "large_rocks"


def test_predict_with_the_int8_file_never_imports_torch(builtin_int8, tmp_path):
    out, _ = builtin_int8
    (photo,) = make_photos(tmp_path / "in", 1, size=(64, 96))
    code = (
        "import sys\n"
        "from lunar_cli.cli import run\n"
        f"code = run(['predict', {str(photo)!r}, '-o', {str(tmp_path / 'm.png')!r}, '--model', {str(out)!r}, "
        "'--uncertainty', '--hazard', '--json'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)["records"][0]
    assert record["precision"] == "int8" and (tmp_path / "m.png").is_file() and "out_of_distribution" in record


def test_int8_calibrates_on_the_val_split_and_refuses_torchscript(tmp_path, cli):
    data = make_dataset(tmp_path / "data")
    assert cli("split", "--data-dir", data).code == 0
    model = save_model(tmp_path / "m.pt", square=None, base_width=4, depth=2)
    result = cli("export", model, "-o", tmp_path / "m.int8.onnx", "--int8", "--data-dir", data, "--json")
    assert result.code == 0, result.err
    made = result.json()
    val = sum(row["split"] == "val" for row in read_manifest(data))
    assert made["quantization"]["calibration"] == f"{val} frames of the val split of {data}"
    assert made["class_agreement"] >= 0.8 and load_onnx(tmp_path / "m.int8.onnx").runs_on()["precision"] == "int8"
    refused = cli("export", model, "-o", tmp_path / "m.ts", "--format", "torchscript", "--int8")
    assert refused.code == 1 and "int8 is for ONNX files" in refused.err and refused.err.count("\n") == 1
    assert not (tmp_path / "m.ts").exists()
