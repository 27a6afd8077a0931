"""The training engine behind ``lunar train``: best model on val IoU, exact resume, torchrun/DDP.

Reads top to bottom like torchvision's reference script: ``build_run`` (data from
``lunar_cli.data.loaders``, model, optimiser, loss) -> ``restore`` -> ``train_one_epoch``
-> ``validate`` -> ``end_epoch`` -> ``finish`` -> ``train``. A ``Run`` holds what is built once; a ``TrainState`` holds what
changes every epoch, and ``last.pt`` holds both (with the config), so a run continues
exactly. ``best.pt`` holds the weights with the highest val mIoU. Only rank 0 writes
files and logs.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.config import Config
from lunar_cli.config_tree import as_plain
from lunar_cli.console import LunarError, info, warn
from lunar_cli.runtime import Dist

if TYPE_CHECKING:
    import torch

    from lunar_cli.data.dataset import CropLoader
    from lunar_cli.data.loaders import Loaders
    from lunar_cli.runtime import Precision
    from lunar_cli.train_log import EpochProgress

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
    device: "torch.device"
    run_dir: Path
    backbone: str
    model: "torch.nn.Module"  # the plain model: its weights are what checkpoints hold
    net: "torch.nn.Module"  # the model as trained: wrapped in DDP and/or torch.compile
    loaders: Loaders
    optimizer: "torch.optim.Optimizer"
    scheduler: Any
    scaler: Any
    precision: "Precision"
    criterion: Callable
    meta: dict  # checkpoint_meta arguments that do not change during the run


def configure_torch(cfg: Config, device: "torch.device") -> None:
    """Seed torch and choose deterministic or fast kernels for the run."""
    import torch

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
    from lunar_cli.rundir import make_run_dir
    from lunar_cli.runtime import broadcast

    if resume_from is not None:
        return resume_from.parent
    run_dir = make_run_dir(Path(cfg.runs_dir) / "train", cfg.train.name or backbone, cfg.train.exist_ok) if dist.is_main else None
    return Path(broadcast(str(run_dir) if run_dir else None, dist))


def build_run(cfg: Config, dist: Dist, device: "torch.device", run_dir: Path, fresh: bool, progress: bool) -> Run:
    """Return the run's data, model (on the device, wrapped for DDP/compile), optimiser, schedule and loss."""
    import torch

    from lunar_cli.data.loaders import crop_side, frame_size, make_loaders
    from lunar_cli.models.checkpoint import load_initial_weights
    from lunar_cli.models.registry import (
        build_model,
        friendly_name,
        normalization,
        smp_encoder_name,
    )
    from lunar_cli.recipe import make_criterion, make_optimizer, make_scheduler
    from lunar_cli.runtime import choose_precision

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
        from torch.nn.parallel import DistributedDataParallel

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


def restore(run: Run, ckpt: dict) -> TrainState:
    """Load a last.pt into the run (weights, optimiser, schedule, scaler, random state); return its state.

    The run's own config then sets the rate, momentum and weight decay, so values
    changed on resume take effect.
    """
    from lunar_cli.recipe import set_hyperparameters
    from lunar_cli.resume import set_rng_state

    saved = ckpt["train_state"]
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


def train_one_epoch(
    model, loader: "CropLoader", criterion, optimizer, scaler, autocast, update, scheduler=None,
) -> tuple[float, int, float]:  # fmt: skip
    """Train for one epoch (stepping a per-step ``scheduler`` after each step); return (mean loss, images, seconds)."""
    import torch

    model.train()
    # float64 sums exactly over an epoch; MPS has no float64.
    total = torch.zeros((), dtype=torch.float32 if loader.device.type == "mps" else torch.float64, device=loader.device)
    seen = 0
    start = time.perf_counter()
    for step, (images, masks) in enumerate(loader, start=1):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(images)
        loss = criterion(logits, masks)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach() * images.shape[0]
        seen += images.shape[0]
        if update is not None and (step % 5 == 0 or step == len(loader)):
            elapsed = time.perf_counter() - start
            update(step, f"loss {total.item() / seen:.4f}  {seen / max(elapsed, 1e-9):.1f} img/s")
    seconds = time.perf_counter() - start
    return float(total.item() / max(seen, 1)), seen, seconds


def validate(run: Run) -> tuple[float | None, dict]:
    """Return (mean loss, metrics summary) of the run's model on the whole val split, at the labels' resolution."""
    from lunar_cli.engine import wrap_model
    from lunar_cli.metrics import summarize
    from lunar_cli.scoring import score_frames

    model = wrap_model(run.model, run.meta, run.device, run.precision)
    score = score_frames(model, run.loaders.val, criterion=run.criterion)
    return score.loss, summarize(score.matrix, CLASS_NAMES)


def run_epoch(run: Run, epoch: int, bar: "EpochProgress") -> dict:
    """Train and validate one epoch, step the schedule; return the epoch's history row."""
    import torch

    from lunar_cli.runtime import all_reduce_sum

    run.loaders.train.set_epoch(epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    per_step = run.scheduler if run.cfg.train.scheduler != "plateau" else None
    with bar.epoch(epoch, len(run.loaders.train)) as update:
        train_loss, seen, seconds = train_one_epoch(
            run.net, run.loaders.train, run.criterion, run.optimizer, run.scaler, run.precision.autocast, update,
            per_step,
        )  # fmt: skip
    if run.dist.enabled:
        totals = all_reduce_sum(torch.tensor([train_loss * seen, seen], dtype=torch.float64, device=run.device), run.dist)
        train_loss, seen = float(totals[0] / totals[1]), int(totals[1])
    val_loss, summary = validate(run)
    if run.scheduler is not None and per_step is None:
        run.scheduler.step(summary["miou"] if summary["miou"] is not None else float("nan"))
    return {
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_miou": summary["miou"],
        "val_pixel_accuracy": summary["pixel_accuracy"], **{f"iou_{n}": summary["iou"][n] for n in CLASS_NAMES},
        "lr": lr, "epoch_seconds": seconds, "images_per_second": seen / max(seconds, 1e-9),
    }  # fmt: skip


def _checkpoint_meta(run: Run, state: TrainState) -> dict:
    from lunar_cli.models.checkpoint import checkpoint_meta

    best = state.best_miou if state.best_miou >= 0 else None
    return checkpoint_meta(epoch=state.epoch, best_metric=("val_miou", best), **run.meta)


def save_last(run: Run, state: TrainState) -> None:
    """Write last.pt: weights, optimiser, schedule, scaler, random state, history and the config."""
    from lunar_cli.models.checkpoint import save_checkpoint
    from lunar_cli.resume import rng_state

    train_state = {
        **asdict(state), "backbone": run.backbone, "config": _saved_config(run.cfg),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": rng_state(),
        "precision": run.precision.label,
    }  # fmt: skip
    save_checkpoint(run.run_dir / "last.pt", model_state=run.model.state_dict(), meta=_checkpoint_meta(run, state),
                    extra={"train_state": train_state})  # fmt: skip


def _saved_config(cfg: Config) -> dict:
    """Return the config as a resumed run reads it back (data_dir absolute, so any folder can resume it)."""
    saved = as_plain(cfg)
    saved["data_dir"] = str(Path(cfg.data_dir).resolve())
    return saved


def end_epoch(run: Run, state: TrainState, row: dict, bar: "EpochProgress") -> None:
    """Record a finished epoch: best-so-far, best.pt when it improved, last.pt, history.csv, the log line."""
    from lunar_cli.models.checkpoint import save_checkpoint
    from lunar_cli.train_log import write_history

    state.epoch = row["epoch"]
    state.history.append(row)
    miou = row["val_miou"] if row["val_miou"] is not None else math.nan
    improved = not math.isnan(miou) and miou > state.best_miou
    if improved:
        state.best_miou, state.best_epoch, state.stale = miou, state.epoch, 0
    else:
        state.stale += 1
    if run.dist.is_main:
        if improved:
            save_checkpoint(run.run_dir / "best.pt", model_state=run.model.state_dict(),
                            meta=_checkpoint_meta(run, state))  # fmt: skip
        save_last(run, state)
        write_history(run.run_dir / "history.csv", state.history)
        bar.log(row)


def finish(run: Run, state: TrainState, stopped_early: bool) -> dict:
    """Calibrate best.pt, write curves.png and metrics.json (rank 0); return the run's summary."""
    from lunar_cli.files import write_json_atomic

    run_dir, history = run.run_dir, state.history
    best = run_dir / "best.pt"
    calibration = None
    if run.dist.is_main and best.is_file():
        from lunar_cli.calibration import calibrate_checkpoint

        calibration = calibrate_checkpoint(best, run.loaders.val, run.device, run.cfg.amp, run.cfg.channels_last)
        info(f"calibrated best.pt on val: temperature {calibration['temperature']:.3g}, calibration error (ECE) "
             f"{calibration['ece_val_before']:.4f} -> {calibration['ece_val']:.4f}, out-of-distribution above mean "
             f"uncertainty {calibration['ood_threshold']:.3f}")  # fmt: skip
    result = {
        "run_dir": str(run_dir), "backbone": run.backbone, "encoder": run.meta["encoder"],
        "parameters": sum(p.numel() for p in run.model.parameters()), "device": str(run.device),
        "world_size": run.dist.world_size, "epochs_run": len(history), "stopped_early": stopped_early,
        "best_epoch": state.best_epoch, "best_val_miou": state.best_miou if state.best_miou >= 0 else None,
        "best": next((r for r in history if r["epoch"] == state.best_epoch), None),
        "last": history[-1] if history else None, "train_seconds": sum(r["epoch_seconds"] for r in history),
        "calibration": calibration,
        "files": {n: str(run_dir / n) for n in ("best.pt", "last.pt", "history.csv", "curves.png", "metrics.json")},
    }  # fmt: skip
    if run.dist.is_main:
        from lunar_cli.plots import plot_training_curves

        if history:
            plot_training_curves(run_dir / "curves.png", history, f"{run.backbone}: loss and IoU per epoch")
        write_json_atomic(run_dir / "metrics.json", result)
    return result


def _write_config(run: Run) -> None:
    import yaml

    from lunar_cli.files import write_text_atomic

    text = yaml.safe_dump({**_saved_config(run.cfg), "world_size": run.dist.world_size}, sort_keys=False)
    write_text_atomic(run.run_dir / "config.yaml", text)


def train(
    cfg: Config, *, resume: Path | None = None, changes: list[tuple[str, str]] = (), progress: bool = True
) -> dict:
    """Train a model as ``cfg`` says (continuing the run at ``resume``); return its final metrics.

    The run folder holds every file of the run. ``cfg`` and ``changes`` for a resumed run
    come from ``lunar_cli.resume.load_train_config`` (the run's saved config under YAML
    and flags); the changes are said once the run folder is ours.
    """
    from lunar_cli.models.registry import friendly_name
    from lunar_cli.resume import read_resume_checkpoint, resolve_resume, say_changes
    from lunar_cli.rundir import lock_run_dir, remove_if_unused
    from lunar_cli.runtime import setup_distributed, teardown_distributed
    from lunar_cli.train_log import EpochProgress, say_start

    last = resolve_resume(resume) if resume is not None else None
    ckpt = read_resume_checkpoint(last) if last is not None else None
    dist, device = setup_distributed(cfg.device)
    with contextlib.ExitStack() as stack:
        stack.callback(teardown_distributed, dist)
        configure_torch(cfg, device)
        run_dir = open_run_dir(cfg, dist, last, friendly_name(cfg.train.backbone))
        if dist.is_main:
            lock = lock_run_dir(run_dir)  # one training per run folder
            stack.callback(lambda: lock is not None and lock.close())
            say_changes(list(changes))
        try:
            run = build_run(cfg, dist, device, run_dir, fresh=ckpt is None, progress=progress)
        except BaseException:
            if dist.is_main and ckpt is None:
                remove_if_unused(run_dir)  # refused before anything was written: leave no empty folder
            raise
        state = restore(run, ckpt) if ckpt is not None else TrainState()
        talk = progress and dist.is_main
        if talk:
            say_start(run, state.epoch if ckpt is not None else None)
        if dist.is_main and ckpt is None:
            _write_config(run)
            save_last(run, state)  # an interrupted first epoch can still be resumed
        bar = EpochProgress(talk, cfg.train.epochs)
        stack.callback(bar.close)
        stopped_early = False
        try:
            for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
                end_epoch(run, state, run_epoch(run, epoch, bar), bar)
                if cfg.train.patience is not None and state.stale >= cfg.train.patience:
                    stopped_early = True
                    if talk:
                        info(f"no better val mIoU for {state.stale} epochs: stopping early (--patience {cfg.train.patience})")
                    break
        except KeyboardInterrupt:
            raise LunarError(
                f"interrupted in epoch {state.epoch + 1}: {run_dir / 'last.pt'} holds epoch {state.epoch}; "
                f"continue with: lunar train --resume {run_dir}",
                exit_code=130,
            ) from None
        bar.close()
        return finish(run, state, stopped_early)
