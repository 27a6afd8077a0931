"""lunar train --resume as a config layer: every flag typed with it is applied (and said) or refused.

The run's saved config sits between the defaults and YAML/flags; a flag is never dropped in
silence. Each train flag is tried on a copy of one finished one-epoch run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lunar_cli.completions import command_specs
from lunar_cli.data.split import make_split
from lunar_cli.resume import ON_RESUME, load_train_config
from tests.conftest import make_dataset

BASE = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu"]

# A value for each train flag that differs from the base run's, and what --resume must do with it.
CHANGES = {
    "--backbone": (["--backbone", "vgg11"], "refuse"),
    "--encoder-weights": (["--encoder-weights", "none"], "refuse"),
    "--width": (["--width", "4"], "refuse"),
    "--init": (["--init", "builtin"], "refuse"),
    "--depth": (["--depth", "2"], "refuse"),
    "--epochs": (["--epochs", "2"], "apply"),
    "--batch-size": (["--batch-size", "2"], "note"),
    "--image-size": (["--image-size", "64"], "refuse"),
    "--recipe": (["--recipe", "seed"], "refuse"),
    "--scale": (["--scale", "0.5"], "refuse"),
    "--crop-size": (["--crop-size", "64"], "note"),
    "--limit": (["--limit", "4"], "refuse"),
    "--patience": (["--patience", "3"], "apply"),
    "--loss": (["--loss", "dice"], "note"),
    "--class-weights": (["--class-weights", "1,1,5,5"], "note"),
    "--optimizer": (["--optimizer", "sgd"], "refuse"),
    "--lr": (["--lr", "0.5"], "note"),
    "--scheduler": (["--scheduler", "poly"], "refuse"),
    "--name": (["--name", "other"], "refuse"),
    "--exist-ok": (["--exist-ok"], "refuse"),
    "--amp": (["--no-amp"], "note"),
    "--channels-last": (["--no-channels-last"], "apply"),
    "--compile": (["--compile"], "note"),
    "--deterministic": (["--deterministic"], "note"),
    "--workers": (["--workers", "1"], "apply"),
    "--cache-dir": (None, "apply"),  # another folder: made in the test
    "--seed": (["--seed", "7"], "refuse"),
    "--device": (["--device", "auto"], "apply"),
    "--data-dir": (None, "note"),  # a copy of the dataset elsewhere: made in the test
    "--runs-dir": (None, "refuse"),
}
NOT_CHANGES = {"--resume", "--config", "--json", "--help"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """Return (data dir, run folder) of a finished one-epoch custom run on tiny 32x32 data."""
    from lunar_cli.cli import run

    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "data", n_render=8, n_real=0, size=(32, 32))
    make_split(data)
    assert run(["train", "--data-dir", str(data), "--runs-dir", str(root / "runs"), *BASE]) == 0
    return data, root / "runs" / "train" / "custom"


def test_every_train_flag_has_a_resume_case():
    flags = {o.names[0] for o in command_specs()["train"]} - NOT_CHANGES - {"-h"}
    assert flags == set(CHANGES), "a train flag was added or removed: say what --resume does with it"


@pytest.mark.parametrize("flag", sorted(CHANGES))
def test_each_flag_is_applied_and_said_or_refused(flag, finished_run, tmp_path, cli):
    data, run_dir = finished_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    args, expected = CHANGES[flag]
    if flag == "--data-dir":
        args = ["--data-dir", shutil.copytree(data, tmp_path / "data_copy")]
    elif flag == "--runs-dir":
        args = ["--runs-dir", tmp_path / "elsewhere"]
    elif flag == "--cache-dir":
        args = ["--cache-dir", tmp_path / "cache"]
    result = cli("train", "--resume", run, *args, "--json")
    shown = " ".join(str(a) for a in args)
    if expected == "refuse":
        assert result.code == 1, result.err
        assert result.err.count("\n") == 1 and f"error: {shown}: cannot change when resuming" in result.err
        return
    assert result.code == 0, result.err
    said = [line for line in result.err.splitlines() if line.startswith(("resume:", "warning: resume:"))]
    assert len(said) == 1 and f"resume: {shown} (the run had " in said[0], result.err
    assert said[0].startswith("warning:") == (expected == "note"), said[0]


def test_yaml_values_are_a_layer_above_the_run_and_named_as_keys(finished_run, tmp_path, cli):
    data, run_dir = finished_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    config = tmp_path / "more.yaml"
    config.write_text("train:\n  epochs: 2\n  momentum: 0.5\n")
    result = cli("train", "--resume", run, "--config", config, "--json")
    assert result.code == 0, result.err
    assert "resume: config key 'train.epochs: 2' (the run had 1)" in result.err
    assert "resume: config key 'train.momentum: 0.5' (the run had 0.9)" in result.err
    assert result.json()["epochs_run"] == 2
    result = cli("train", "--resume", run, "--config", config, "--epochs", "3", "--json")  # a flag beats the file
    assert result.code == 0 and result.json()["epochs_run"] == 3, result.err


def test_applied_values_take_effect_in_the_resumed_run(finished_run, tmp_path):
    data, run_dir = finished_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    flags = {"train.epochs": 2, "train.lr": 0.25, "train.batch_size": 2}
    cfg, _changes = load_train_config(None, flags, run)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.data.image_size) == (2, 0.25, 2, 32)
    from lunar_cli.train import train

    result = train(cfg, resume=run, progress=False)
    assert result["epochs_run"] == 2
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["train_state"]["optimizer"]["param_groups"][0]["initial_lr"] == 0.25  # the schedule's base rate
    assert last["train_state"]["config"]["train"]["batch_size"] == 2
    assert result["last"]["images_per_second"] > 0 and result["best_epoch"] in (1, 2)


def test_a_refused_flag_leaves_the_run_untouched(finished_run, tmp_path, cli):
    _data, run_dir = finished_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert cli("train", "--resume", run, "--image-size", "64", "--epochs", "3").code == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_every_refused_key_says_why():
    for key, (action, why) in ON_RESUME.items():
        assert action in ("refuse", "apply", "note"), key
        assert action != "refuse" or why, f"{key}: a refusal must say why"


def test_a_backbone_spelled_another_way_is_the_same_backbone():
    from lunar_cli.config import load_config
    from lunar_cli.resume import resume_changes

    cfg = load_config(None, {"train.backbone": "tu-mobilenetv3_large_100"})
    assert resume_changes({"train.backbone": "mobilenet_v3_large"}, cfg, {"train.backbone"}) == []
    with pytest.raises(Exception, match="--backbone tu-mobilenetv3_large_100: cannot change when resuming"):
        resume_changes({"train.backbone": "resnet18"}, cfg, {"train.backbone"})


def test_a_run_of_the_old_squashed_format_is_refused_in_one_line(finished_run, tmp_path, cli):
    _data, run_dir = finished_run
    run = shutil.copytree(run_dir, tmp_path / "run")
    last = torch.load(run / "last.pt", weights_only=True)
    last["meta"]["format_version"] = 1  # as lunar 0.1 wrote it: image_size, no frame_size
    last["meta"]["image_size"] = [256, 256]
    del last["meta"]["frame_size"]
    torch.save(last, run / "last.pt")
    result = cli("train", "--resume", run)
    assert result.code == 1 and result.err.count("\n") == 1
    assert "frames squashed to a square" in result.err and "start a new run" in result.err


def test_resumed_rates_change_only_when_a_rate_is_given():
    from dataclasses import replace

    from lunar_cli.config import TrainConfig
    from lunar_cli.recipe import make_optimizer, make_scheduler, set_hyperparameters

    def restored(cfg: TrainConfig, base: float):
        """An optimiser as a plateau run at ``base`` left it: its rate halved once by the schedule."""
        optimizer = make_optimizer(torch.nn.Linear(2, 2), replace(cfg, lr=base))
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=1)
        optimizer.param_groups[0]["lr"] = base / 2
        return optimizer, scheduler

    cfg = TrainConfig(backbone="custom", optimizer="adamw", scheduler="plateau")
    # Only the weight decay changed, and the run began at 1e-3 (an older default): its rate stays as it was.
    optimizer, scheduler = restored(cfg, 1e-3)
    set_hyperparameters(optimizer, scheduler, replace(cfg, lr=None, weight_decay=0.05))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (5e-4, 1e-3, 0.05)
    # A new rate given: the schedule's progress is kept (half the new base).
    optimizer, scheduler = restored(cfg, 1e-3)
    set_hyperparameters(optimizer, scheduler, replace(cfg, lr=4e-3))
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["initial_lr"]) == (2e-3, 4e-3)
