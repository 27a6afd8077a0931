"""lunar train as a user runs it: files written, loss going down, exact resume, Ctrl-C, DDP, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lunar_cli.config import load_config
from lunar_cli.console import LunarError
from lunar_cli.data.split import make_split
from lunar_cli.resume import load_train_config
from lunar_cli.train import train
from tests.conftest import make_dataset

RUN_FILES = ["best.pt", "last.pt", "history.csv", "curves.png", "metrics.json", "config.yaml"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("train") / "data", n_render=24, n_real=2, size=(64, 64))
    make_split(root)
    return root


def config(data_dir: Path, runs_dir: Path, seed: int = 0, **train_overrides):
    flat = {"data.image_size": 64, "train.batch_size": 4, "train.epochs": 3, "train.deterministic": True,
            "data_dir": data_dir, "runs_dir": runs_dir, "seed": seed, "device": "cpu"}  # fmt: skip
    flat.update({f"train.{k}": v for k, v in train_overrides.items()})
    return load_config(None, flat)


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:  # wall-clock columns differ between runs by nature
        row.pop("epoch_seconds")
        row.pop("images_per_second")
    return rows


def test_short_training_lowers_loss_and_writes_every_file(data_dir, tmp_path):
    result = train(config(data_dir, tmp_path, epochs=4), progress=False)
    run_dir = Path(result["run_dir"])
    assert run_dir == tmp_path / "train" / "custom"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    rows = history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == max(range(1, 5), key=lambda e: float(rows[e - 1]["val_miou"]))
    assert 0.0 <= metrics["best_val_miou"] <= 1.0


def test_run_names_increment_and_exist_ok(data_dir, tmp_path):
    cfg = config(data_dir, tmp_path, epochs=1)
    first = train(cfg, progress=False)
    second = train(cfg, progress=False)
    assert Path(first["run_dir"]).name == "custom" and Path(second["run_dir"]).name == "custom2"
    cfg.train.exist_ok = True
    third = train(cfg, progress=False)
    assert Path(third["run_dir"]).name == "custom"


def test_resume_ends_with_the_same_history(data_dir, tmp_path, monkeypatch):
    import lunar_cli.train as engine

    full = train(config(data_dir, tmp_path, seed=3, epochs=3, name="full"), progress=False)
    real, calls = engine.train_one_epoch, {"n": 0}

    def stop_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(LunarError, match="interrupted in epoch 2"):
        train(config(data_dir, tmp_path, seed=3, epochs=3, name="part"), progress=False)
    monkeypatch.setattr(engine, "train_one_epoch", real)
    run_dir = tmp_path / "train" / "part"
    resumed = train(load_train_config(None, {}, run_dir)[0], resume=run_dir, progress=False)
    assert resumed["run_dir"] == str(run_dir)
    assert history(Path(full["run_dir"])) == history(run_dir)


def test_more_epochs_on_resume_extend_a_run(data_dir, tmp_path):
    part = train(config(data_dir, tmp_path, epochs=1, name="short"), progress=False)
    run_dir = Path(part["run_dir"])
    resumed = train(load_train_config(None, {"train.epochs": 2}, run_dir)[0], resume=run_dir, progress=False)
    assert [int(r["epoch"]) for r in history(run_dir)] == [1, 2] and resumed["epochs_run"] == 2


def test_ctrl_c_keeps_last_checkpoint_and_says_how_to_resume(data_dir, tmp_path, monkeypatch):
    import lunar_cli.train as engine

    real = engine.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", interrupted)
    with pytest.raises(LunarError, match=r"interrupted in epoch 2: .*last.pt holds epoch 1; continue with: lunar train --resume") as exc:
        train(config(data_dir, tmp_path, epochs=3), progress=False)
    assert exc.value.exit_code == 130
    monkeypatch.setattr(engine, "train_one_epoch", real)
    run_dir = tmp_path / "train" / "custom"
    result = train(load_train_config(None, {}, run_dir)[0], resume=run_dir, progress=False)
    assert result["epochs_run"] == 3


def test_resume_refuses_another_architecture_and_weights_only_files(cli, data_dir, tmp_path):
    run = Path(train(config(data_dir, tmp_path, epochs=1), progress=False)["run_dir"])
    result = cli("train", "--resume", run, "--backbone", "vgg11")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "--backbone vgg11: cannot change when resuming (the architecture is fixed by the checkpoint; the run has custom)" in result.err
    result = cli("train", "--resume", run / "best.pt")
    assert result.code == 1 and "weights only" in result.err


def test_train_command_errors_are_one_line(cli, data_dir, tmp_path):
    result = cli("train", "--data-dir", data_dir, "--runs-dir", tmp_path, "--backbone", "vgg12", "--epochs", "1")
    assert result.code == 1 and "vgg11" in result.err and result.err.count("\n") == 1
    result = cli("train", "--data-dir", data_dir, "--image-size", "100")
    assert result.code == 1 and "multiple of 32" in result.err and "use 96" in result.err
    result = cli("train", "--data-dir", tmp_path / "none", "--runs-dir", tmp_path)
    assert result.code == 1 and "run lunar fetch" in result.err
    result = cli("train", "--data-dir", data_dir, "--resume", tmp_path / "nope")
    assert result.code == 1 and "nothing to resume" in result.err


def test_empty_train_split_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "data", n_render=4, n_real=0, size=(64, 64))
    make_split(root, train=0.0, val=0.5)
    with pytest.raises(LunarError, match="split 'train' is empty"):
        train(config(root, tmp_path, epochs=1), progress=False)


def test_train_json_output(cli, data_dir, tmp_path):
    result = cli("train", "--data-dir", data_dir, "--runs-dir", tmp_path, "--epochs", "1", "--image-size", "64",
                 "--batch-size", "8", "--limit", "8", "--json")  # fmt: skip
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["epochs_run"] == 1 and set(payload["best"]) >= {"val_miou", "iou_sky"}


def test_two_process_ddp_on_gloo(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "lunar_cli", "train", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), "--epochs", "2",
           "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "train" / "custom"
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["custom"]  # one run dir, from rank 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_run"] == 2
    assert len(history(run_dir)) == 2


def test_crops_larger_than_the_frames_are_refused_in_one_line(cli, data_dir, tmp_path):
    base = ["train", "--data-dir", data_dir, "--runs-dir", tmp_path, "--epochs", "1", "--device", "cpu"]
    result = cli(*base, "--crop-size", "96")  # the frames are 64x64 (the caches are built first, and kept)
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert result.code == 1 and len(errors) == 1 and result.err.splitlines()[-1] == errors[0]
    assert "data.crop_size 96 is larger than the frames at scale 1 (64x64): use --crop-size 64 or less" in result.err
    result = cli(*base, "--crop-size", "32", "--scale", "0.25")  # 16x16 frames: no crop fits
    assert result.code == 1 and "smaller than the smallest crop (32 pixels): use a larger --scale" in result.err
    assert not list((tmp_path / "train").glob("*/best.pt"))
