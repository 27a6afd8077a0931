"""CPU precision: bf16 autocast and channels-last where the processor runs them natively, fp32 elsewhere."""

from __future__ import annotations

import shutil

import pytest
import torch

from lunar_cli import runtime
from lunar_cli.data.split import make_split
from lunar_cli.runtime import choose_precision
from tests.conftest import make_dataset

CPU = torch.device("cpu")
TRAIN = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: "AMX")


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: None)


def test_automatic_precision_follows_the_capability_check(bf16_cpu):
    p = choose_precision(CPU, None, None)
    assert p.dtype == torch.bfloat16 and p.channels_last and p.label == "cpu, bf16 autocast (AMX), channels-last"
    assert choose_precision(CPU, False, None).dtype is None  # --no-amp
    assert not choose_precision(CPU, None, False).channels_last  # --no-channels-last


def test_a_cpu_without_bf16_runs_fp32_and_says_so_only_when_asked(plain_cpu, capsys):
    assert choose_precision(CPU, None, None).dtype is None
    assert capsys.readouterr().err == ""
    p = choose_precision(CPU, True, None)  # --amp asked
    assert p.dtype is None and p.label.startswith("cpu, fp32")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no native bf16" in err and "fp32" in err


def test_autocast_really_runs_bf16_and_fp32():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with choose_precision(CPU, False, None).autocast():
        assert conv(x).dtype == torch.float32
    bf16 = runtime.Precision("cpu", torch.bfloat16, True, "cpu, bf16")
    with bf16.autocast():
        assert conv(x).dtype == torch.bfloat16


@pytest.fixture
def tiny(tmp_path):
    data = make_dataset(tmp_path / "data", n_render=8, n_real=1, size=(32, 32))
    make_split(data)
    return data


def test_bf16_training_logs_it_keeps_fp32_checkpoints_and_evaluates(bf16_cpu, tiny, tmp_path, cli):
    runs = tmp_path / "runs"
    result = cli("train", "--data-dir", tiny, "--runs-dir", runs, *TRAIN)
    assert result.code == 0, result.err
    assert "on cpu, bf16 autocast (AMX), channels-last" in result.err
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(runs / "train" / "custom" / name, weights_only=True)
        assert all(t.dtype in (torch.float32, torch.int64) for t in ckpt["model"].values()), name
    result = cli("evaluate", runs / "train" / "custom", "--data-dir", tiny, "--device", "cpu", "--json")
    assert result.code == 0, result.err
    assert 0.0 <= result.json()["splits"]["test"]["miou"] <= 1.0


def test_no_amp_trains_in_fp32(bf16_cpu, tiny, tmp_path, cli):
    result = cli("train", "--data-dir", tiny, "--runs-dir", tmp_path / "runs", *TRAIN, "--no-amp")
    assert result.code == 0 and "on cpu, fp32, channels-last" in result.err, result.err


def test_resuming_on_a_machine_without_bf16_says_so_once(tiny, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: "AVX512-BF16")
    runs = tmp_path / "runs"
    assert cli("train", "--data-dir", tiny, "--runs-dir", runs, *TRAIN).code == 0
    run = runs / "train" / "custom"
    same = shutil.copytree(run, tmp_path / "same")
    result = cli("train", "--resume", same, "--epochs", "2")
    assert result.code == 0 and "this machine runs" not in result.err, result.err  # same machine: nothing to say

    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: None)  # "another machine"
    result = cli("train", "--resume", run, "--epochs", "2")
    assert result.code == 0, result.err
    said = [line for line in result.err.splitlines() if "this machine runs" in line]
    assert len(said) == 1 and "cpu, fp32" in said[0] and "bf16 autocast (AVX512-BF16)" in said[0]
