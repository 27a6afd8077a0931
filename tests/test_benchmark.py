"""lunar benchmark: every form of a model timed and scored, with evaluate's numbers for PyTorch and the same metrics for ONNX."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from lunar_cli.benchmark import benchmark_model
from lunar_cli.cli import run
from lunar_cli.evaluate import evaluate_model
from lunar_cli.runtime import cpu_bf16_support
from tests.conftest import make_dataset
from tests.test_predict import save_model


@pytest.fixture(scope="module")
def benchmarked(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(model, data folder, the benchmark of a tiny custom U-Net on a tiny dataset's test split)."""
    root = tmp_path_factory.mktemp("bench")
    data = make_dataset(root / "data")
    assert run(["split", "--data-dir", str(data)]) == 0
    model = save_model(root / "m.pt", square=None, base_width=4, depth=2)
    before = set(Path(tempfile.gettempdir()).glob("lunar-benchmark-*"))
    result = benchmark_model(model, data_dir=data, runs_dir=root / "runs", runs=2, warmup=1, batch_size=2, device="cpu",
                             calibration_frames=4, progress=False)  # fmt: skip
    assert set(Path(tempfile.gettempdir()).glob("lunar-benchmark-*")) == before  # the exports are gone
    return model, data, result


def test_every_form_this_machine_runs_is_timed_and_sized(benchmarked):
    model, _, result = benchmarked
    forms = [f["form"] for f in result["forms"]]
    expected = ["pytorch fp32"] + (["pytorch bf16"] if cpu_bf16_support() else []) + ["onnx fp32", "onnx int8"]
    assert forms == expected
    for form in result["forms"]:
        assert form["bytes"] > 0 and form["ms_per_frame"] > 0 and form["images_per_second"] > 0
    assert result["forms"][0]["bytes"] == model.stat().st_size and result["forms"][0]["precision"] == "fp32"
    assert [f["precision"] for f in result["forms"][-2:]] == ["fp32", "int8"]
    assert result["timed_frames"].startswith("720x480") and result["machine"]["cores"] >= 1


def test_pytorch_scores_are_evaluates_and_onnx_fp32_scores_the_same(benchmarked, tmp_path):
    model, data, result = benchmarked
    evaluated = evaluate_model(model, data_dir=data, runs_dir=tmp_path / "runs", splits=["test"], device="cpu",
                               amp=False, grid=0, progress=False)["splits"]["test"]  # fmt: skip
    by_form = {f["form"]: f for f in result["forms"]}
    assert result["images"] == evaluated["images"] and result["split"] == "test"
    assert by_form["pytorch fp32"]["miou"] == pytest.approx(evaluated["miou"], abs=1e-12)
    assert by_form["pytorch fp32"]["miou_drop"] == 0.0
    assert by_form["onnx fp32"]["miou"] == pytest.approx(evaluated["miou"], abs=2e-3)
    assert by_form["onnx fp32"]["class_agreement"] >= 0.999
    int8 = by_form["onnx int8"]
    assert int8["miou_drop"] == pytest.approx(evaluated["miou"] - int8["miou"])
    assert int8["quantization"]["calibration"].endswith(f"frames of the val split of {data}")


def test_the_table_names_each_form_and_the_machine(benchmarked, capsys):
    from lunar_cli import report

    _, _, result = benchmarked
    capsys.readouterr()
    report.show("benchmark", result)
    out = capsys.readouterr().out
    assert all(f["form"] in out for f in result["forms"]) and "drop vs fp32" in out and result["machine"]["cpu"] in out


def test_a_missing_split_and_an_onnx_model_are_one_line_errors(benchmarked, tmp_path, cli):
    model, data, _ = benchmarked
    empty = make_dataset(tmp_path / "empty", n_real=0)
    assert cli("split", "--data-dir", empty).code == 0
    (tmp_path / "m.onnx").write_bytes(b"an export")
    for args, message in (([model, "--data-dir", empty, "--split", "test_real"], "split test_real has no images"),
                          ([tmp_path / "m.onnx", "--data-dir", data], "makes every form from a lunar checkpoint")):  # fmt: skip
        result = cli("benchmark", *args, "--runs-dir", tmp_path / "runs")
        assert result.code == 1 and result.err.count("\n") == 1 and message in result.err, result.err
