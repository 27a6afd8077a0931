"""What a training run builds before its first step, and what it saves: folder, data, model, optimiser, checkpoints.

``build_run`` makes a ``Run`` (data from ``lunar_cli.data.loaders``, the model, its
optimiser, schedule and loss) in the run folder ``open_run_dir`` gives; ``restore`` loads a
``last.pt`` into it, so a run continues exactly; ``save_last`` writes one. A ``Run`` holds
what is built once, a ``TrainState`` what changes every epoch; ``last.pt`` holds both,
with the config. The loop itself is ``lunar_cli.train``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from lunar_cli.config import Config
from lunar_cli.config_tree import as_plain
from lunar_cli.console import LunarError, info, warn
from lunar_cli.data.loaders import Loaders, crop_side, frame_size, make_loaders
from lunar_cli.files import refuse_overwrite, write_text_atomic
from lunar_cli.model_files import find_model
from lunar_cli.models.checkpoint import (
    check_finite_weights,
    checkpoint_meta,
    describe_architecture,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from lunar_cli.models.registry import build_model, friendly_name, normalization, smp_encoder_name
from lunar_cli.recipe import make_criterion, make_optimizer, make_scheduler, set_hyperparameters
from lunar_cli.resume import rng_state, set_rng_state
from lunar_cli.rundir import make_run_dir
from lunar_cli.runtime import Dist, Precision, broadcast, choose_precision


@dataclass
class TrainState:
    """What changes from epoch to epoch; saved in last.pt so that a run resumes where it stopped."""
    epoch: int = 0  # the last finished epoch
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (HISTORY_FIELDS)
    best_miou: float = -1.0  # best val mIoU so far (-1: none yet)
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one


@dataclass
class Run:
    """What a training run builds once: where it writes, the model, and how it learns."""
    cfg: Config
    dist: Dist
    device: torch.device
    run_dir: Path
    backbone: str
    model: torch.nn.Module  # the plain model: its weights are what checkpoints hold
    net: torch.nn.Module  # the model as trained: wrapped in DDP and/or torch.compile
    loaders: Loaders
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    precision: Precision
    criterion: Callable
    meta: dict  # checkpoint_meta arguments that do not change during the run


def configure_torch(cfg: Config, device: torch.device) -> None:
    """Seed torch and choose deterministic or fast kernels for the run."""
    torch.manual_seed(cfg.seed)
    if cfg.train.deterministic:
        # On CUDA a few kernels we use (2-D NLL loss, weighted bincount) have no deterministic
        # version: warn instead of failing the first step there.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def open_run_dir(cfg: Config, dist: Dist, resume_from: Path | None, backbone: str) -> Path:
    """Return the run folder (the resumed run's, or a new runs/train/<name>N), the same on every rank."""
    if resume_from is not None:
        return resume_from.parent
    run_dir = make_run_dir(Path(cfg.runs_dir) / "train", cfg.train.name or backbone, cfg.train.exist_ok) if dist.is_main else None
    return Path(broadcast(str(run_dir) if run_dir else None, dist))


def build_run(cfg: Config, dist: Dist, device: torch.device, run_dir: Path, fresh: bool, progress: bool) -> Run:
    """Return the run's data, model (on the device, wrapped for DDP/compile), optimiser, schedule and loss."""
    t, on_gpu = cfg.train, device.type == "cuda"
    backbone = friendly_name(t.backbone)
    norm = normalization(backbone)
    precision = choose_precision(device, cfg.amp, cfg.channels_last)
    # The model first: a wrong --init or weights file is refused before any data is decoded.
    # A resumed or initialised run's weights come from a checkpoint: never download encoder weights for it.
    weights = None if not fresh or t.init or backbone == "custom" or t.encoder_weights == "none" else t.encoder_weights
    model_kwargs = {"base_width": t.width, "depth": t.depth} if backbone == "custom" else {}
    model = build_model(backbone, encoder_weights=weights, **model_kwargs)
    if fresh and t.init:
        load_initial_weights(model, t.init, backbone, model_kwargs, cfg.runs_dir)
    loaders = make_loaders(
        cfg.data_dir, cfg.data, batch_size=t.batch_size, normalization=norm, device=device, seed=cfg.seed,
        dist=dist, channels_last=precision.channels_last, progress=progress,
    )  # fmt: skip
    model = model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, t)
    net = model
    if dist.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)
    if t.compile:
        net = torch.compile(net)
    meta = dict(backbone=backbone, encoder=smp_encoder_name(backbone), frame_size=frame_size(cfg.data),
                crop_size=crop_side(cfg.data), normalization=norm, model_kwargs=model_kwargs)  # fmt: skip
    return Run(
        cfg=cfg, dist=dist, device=device, run_dir=run_dir, backbone=backbone, model=model, net=net,
        loaders=loaders, optimizer=optimizer, scheduler=make_scheduler(optimizer, t, len(loaders.train)),
        scaler=precision.grad_scaler(), precision=precision,
        criterion=make_criterion(t.loss, t.class_weights, loaders.class_pixels, device), meta=meta,
    )  # fmt: skip


def load_initial_weights(model: torch.nn.Module, init: str, backbone: str, model_kwargs: dict, runs_dir: Path) -> None:
    """Load the weights of the trained model ``init`` (a checkpoint, run folder or builtin) into ``model``.

    Refuses, in one line, a model of another architecture.
    """
    path, _ = find_model(init, runs_dir)
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    theirs = describe_architecture(meta["backbone"], meta["model_kwargs"])
    ours = describe_architecture(backbone, model_kwargs)
    if theirs != ours:
        options = meta["model_kwargs"]
        flags = (f"--backbone custom --width {options['base_width']} --depth {options['depth']}"
                 if meta["backbone"] == "custom" else f"--backbone {meta['backbone']}")  # fmt: skip
        raise LunarError(f"--init {init}: {path} holds a {theirs}, not the {ours} asked for; train with {flags}, "
                         "or leave --init out")  # fmt: skip
    load_weights(model, ckpt["model"], meta["backbone"], f"--init {init}: {path}")
    info(f"starting from the weights of {path} ({theirs})")


def refuse_overwriting_init(cfg: Config, run_dir: Path) -> None:
    """Refuse a run folder (``--exist-ok``) whose checkpoints are the ``--init`` model itself: they would replace it."""
    source, _ = find_model(cfg.train.init, cfg.runs_dir)
    refuse_overwrite([run_dir / "best.pt", run_dir / "last.pt"], [source], "the --init model",
                     "give the new run another --name, or copy the model elsewhere first")  # fmt: skip


def restore(run: Run, ckpt: dict) -> TrainState:
    """Load a last.pt into the run (weights, optimiser, schedule, scaler, random state); return its state.

    The run's own config then sets the rate, momentum and weight decay, so values
    changed on resume take effect.
    """
    saved = ckpt["train_state"]
    check_finite_weights(ckpt["model"], f"--resume {run.run_dir}")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    if run.scheduler is not None and saved.get("scheduler") is not None:
        run.scheduler.load_state_dict(saved["scheduler"])
    if run.scaler is not None and saved.get("scaler") is not None:
        run.scaler.load_state_dict(saved["scaler"])
    asked_before = saved["config"].get("train", {})
    if any(asked_before.get(k) != getattr(run.cfg.train, k) for k in ("lr", "momentum", "weight_decay")):
        set_hyperparameters(run.optimizer, run.scheduler, run.cfg.train)  # only what the user changed on resume
    set_rng_state(saved["rng"])
    before, asked = saved.get("precision"), saved["config"]
    same_request = (asked.get("amp"), asked.get("channels_last")) == (run.cfg.amp, run.cfg.channels_last)
    if before not in (None, run.precision.label) and same_request and run.dist.is_main:  # flags say their own line
        warn(f"resume: this machine runs the model as {run.precision.label}, the run so far ran as {before}; "
             "numbers will differ slightly from an uninterrupted run")
    return TrainState(epoch=saved["epoch"], history=list(saved["history"]), best_miou=saved["best_miou"],
                      best_epoch=saved["best_epoch"], stale=saved["stale"])  # fmt: skip


def run_checkpoint_meta(run: Run, state: TrainState) -> dict:
    best = state.best_miou if state.best_miou >= 0 else None
    return checkpoint_meta(epoch=state.epoch, best_metric=("val_miou", best), **run.meta)


def save_last(run: Run, state: TrainState) -> None:
    """Write last.pt: weights, optimiser, schedule, scaler, random state, history and the config."""
    train_state = {
        **asdict(state), "backbone": run.backbone, "config": saved_config(run.cfg),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": rng_state(),
        "precision": run.precision.label,
    }  # fmt: skip
    save_checkpoint(run.run_dir / "last.pt", model_state=run.model.state_dict(), meta=run_checkpoint_meta(run, state),
                    extra={"train_state": train_state})  # fmt: skip


def saved_config(cfg: Config) -> dict:
    """Return the config as a resumed run reads it back (data_dir absolute, so any folder can resume it)."""
    saved = as_plain(cfg)
    saved["data_dir"] = str(Path(cfg.data_dir).resolve())
    return saved


def write_config(run: Run) -> None:

    text = yaml.safe_dump({**saved_config(run.cfg), "world_size": run.dist.world_size}, sort_keys=False)
    write_text_atomic(run.run_dir / "config.yaml", text)
