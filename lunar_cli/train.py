"""The training loop behind ``lunar train``: best model on val IoU, exact resume, torchrun/DDP.

Reads top to bottom like torchvision's reference script: the run is built and restored in
``lunar_cli.train_setup`` (data, model, optimiser, loss, last.pt), then ``train_one_epoch``
-> ``validate`` -> ``end_epoch`` -> ``finish`` -> ``train``. ``best.pt`` holds the weights
with the highest val mIoU, ``last.pt`` everything a run needs to continue exactly. A run
whose loss or weights stop being finite stops in one line before anything of that epoch
is saved. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from lunar_cli.calibration import calibrate_checkpoint
from lunar_cli.classes import CLASS_NAMES
from lunar_cli.config import Config
from lunar_cli.console import LunarError, info
from lunar_cli.data.dataset import CropLoader
from lunar_cli.files import write_json_atomic
from lunar_cli.metrics import summarize
from lunar_cli.model_files import find_resume
from lunar_cli.models.checkpoint import save_checkpoint
from lunar_cli.models.registry import friendly_name
from lunar_cli.plots import plot_training_curves
from lunar_cli.recipe import learning_rate
from lunar_cli.resume import load_train_config, read_resume_checkpoint, say_changes
from lunar_cli.rundir import lock_run_dir, remove_if_unused
from lunar_cli.runtime import all_reduce_sum, setup_distributed, teardown_distributed
from lunar_cli.scoring import score_frames
from lunar_cli.torch_model import PRECISION_NAMES, wrap_model
from lunar_cli.train_log import EpochProgress, say_start, write_history
from lunar_cli.train_setup import (
    Run,
    TrainState,
    build_run,
    configure_torch,
    open_run_dir,
    refuse_overwriting_init,
    restore,
    run_checkpoint_meta,
    save_last,
    write_config,
)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite at (or within the few steps before) ``step``."""
    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"step {step}: loss {value}")
        self.step, self.value = step, value


CHECK_EVERY = 5  # steps between checks that the loss is still finite (each check waits for the device)


def train_one_epoch(
    model, loader: CropLoader, criterion, optimizer, scaler, autocast, update, scheduler=None,
) -> tuple[float, int, float]:  # fmt: skip
    """Train for one epoch (stepping a per-step ``scheduler`` after each step); return (mean loss, images, seconds).

    Raises NonFiniteLoss as soon as a check sees the summed loss NaN or infinite (every
    CHECK_EVERY steps and at the end): one bad step poisons the sum, so none is missed.
    """
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
        if step % CHECK_EVERY == 0 or step == len(loader):
            mean = total.item() / seen
            if not math.isfinite(mean):
                raise NonFiniteLoss(step, mean)
            if update is not None:
                update(step, f"loss {mean:.4f}  {seen / max(time.perf_counter() - start, 1e-9):.1f} img/s")
    seconds = time.perf_counter() - start
    return float(total.item() / max(seen, 1)), seen, seconds


def validate(run: Run) -> tuple[float | None, dict]:
    """Return (mean loss, metrics summary) of the run's model on the whole val split, at the labels' resolution."""
    model = wrap_model(run.model, run_checkpoint_meta(run, TrainState()), run.device, run.precision)
    score = score_frames(model, run.loaders.val, criterion=run.criterion)
    return score.loss, summarize(score.matrix, CLASS_NAMES)


def run_epoch(run: Run, epoch: int, bar: EpochProgress) -> dict:
    """Train and validate one epoch, step the schedule; return the epoch's history row."""
    run.loaders.train.set_epoch(epoch)
    lr = run.optimizer.param_groups[0]["lr"]
    per_step = run.scheduler if run.cfg.train.scheduler != "plateau" else None
    with bar.epoch(epoch, len(run.loaders.train)) as update:
        try:
            train_loss, seen, seconds = train_one_epoch(
                run.net, run.loaders.train, run.criterion, run.optimizer, run.scaler, run.precision.autocast, update,
                per_step,
            )  # fmt: skip
        except NonFiniteLoss as exc:
            value = "NaN" if math.isnan(exc.value) else "infinite"
            where = f"loss {value} by step {exc.step} of {len(run.loaders.train)}"
            raise LunarError(_diverged(run, epoch, where)) from None
    if run.dist.enabled:
        totals = all_reduce_sum(torch.tensor([train_loss * seen, seen], dtype=torch.float64, device=run.device), run.dist)
        train_loss, seen = float(totals[0] / totals[1]), int(totals[1])
    if not weights_are_finite(run.model):  # a finite loss with a non-finite gradient: caught before anything is saved
        raise LunarError(_diverged(run, epoch, "weights not finite after its last step: a non-finite gradient"))
    val_loss, summary = validate(run)
    if run.scheduler is not None and per_step is None:
        run.scheduler.step(summary["miou"] if summary["miou"] is not None else float("nan"))
    return {
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_miou": summary["miou"],
        "val_pixel_accuracy": summary["pixel_accuracy"], **{f"iou_{n}": summary["iou"][n] for n in CLASS_NAMES},
        "lr": lr, "epoch_seconds": seconds, "images_per_second": seen / max(seconds, 1e-9),
    }  # fmt: skip


def _diverged(run: Run, epoch: int, what: str) -> str:
    """Return the one line that stops a run whose loss (or weights) stopped being finite, with the likely cause."""
    t = run.cfg.train
    causes = f"the learning rate {learning_rate(t):g} is too high (try {learning_rate(t) / 10:g} with --lr)"
    if t.class_weights not in (None, "auto"):
        causes += f", or the class weights {t.class_weights} are extreme"
    if t.init:
        causes += f", or the --init weights ({t.init}) are far out of range"
    kept = run.run_dir / "last.pt"
    return (f"training diverged in epoch {epoch} ({what}): likely {causes}; "
            f"nothing of this epoch was saved, {kept} holds the last good epoch ({epoch - 1})")  # fmt: skip


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Return whether every parameter and buffer of ``model`` is finite (no NaN or infinity)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def end_epoch(run: Run, state: TrainState, row: dict, bar: EpochProgress) -> None:
    """Record a finished epoch: best-so-far, best.pt when it improved, last.pt, history.csv, the log line."""
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
                            meta=run_checkpoint_meta(run, state))  # fmt: skip
        save_last(run, state)
        write_history(run.run_dir / "history.csv", state.history)
        bar.log(row)


def finish(run: Run, state: TrainState, stopped_early: bool) -> dict:
    """Calibrate best.pt, write curves.png and metrics.json (rank 0); return the run's summary."""
    run_dir, history = run.run_dir, state.history
    best = run_dir / "best.pt"
    calibration = None
    if run.dist.is_main and best.is_file():
        calibration = calibrate_checkpoint(best, run.loaders.val, run.device, run.cfg.amp, run.cfg.channels_last)
        info(f"calibrated best.pt on val: temperature {calibration['temperature']:.3g}, calibration error (ECE) "
             f"{calibration['ece_val_before']:.4f} -> {calibration['ece_val']:.4f}, out-of-distribution above mean "
             f"uncertainty {calibration['ood_threshold']:.3f}")  # fmt: skip
    result = {
        "run_dir": str(run_dir), "backbone": run.backbone, "encoder": run.meta["encoder"],
        "parameters": sum(p.numel() for p in run.model.parameters()), "device": str(run.device),
        "precision": PRECISION_NAMES[run.precision.dtype], "layout": "channels-last" if run.precision.channels_last else "NCHW",
        "world_size": run.dist.world_size, "epochs_run": len(history), "stopped_early": stopped_early,
        "best_epoch": state.best_epoch, "best_val_miou": state.best_miou if state.best_miou >= 0 else None,
        "best": next((r for r in history if r["epoch"] == state.best_epoch), None),
        "last": history[-1] if history else None, "train_seconds": sum(r["epoch_seconds"] for r in history),
        "calibration": calibration,
        "files": {n: str(run_dir / n) for n in ("best.pt", "last.pt", "history.csv", "curves.png", "metrics.json")},
    }  # fmt: skip
    if run.dist.is_main:
        if history:
            plot_training_curves(run_dir / "curves.png", history, f"{run.backbone}: loss and IoU per epoch")
        write_json_atomic(run_dir / "metrics.json", result)
    return result


def train(
    cfg: Config, *, resume: Path | None = None, changes: list[tuple[str, str]] = (), progress: bool = True
) -> dict:
    """Train a model as ``cfg`` says (continuing the run at ``resume``); return its final metrics.

    The run folder holds every file of the run. ``cfg`` and ``changes`` for a resumed run
    come from ``lunar_cli.resume.load_train_config`` (the run's saved config under YAML
    and flags); the changes are said once the run folder is ours.
    """

    last = find_resume(resume) if resume is not None else None
    ckpt = read_resume_checkpoint(last) if last is not None else None
    dist, device = setup_distributed(cfg.device)
    with contextlib.ExitStack() as stack:
        stack.callback(teardown_distributed, dist)
        configure_torch(cfg, device)
        run_dir = open_run_dir(cfg, dist, last, friendly_name(cfg.train.backbone))
        if dist.is_main:
            if ckpt is None:  # a run that fails before its first checkpoint leaves no empty folder behind
                stack.callback(remove_if_unused, run_dir)
            lock = lock_run_dir(run_dir)  # one training per run folder
            stack.callback(lambda: lock is not None and lock.close())
            if ckpt is None and cfg.train.init:
                refuse_overwriting_init(cfg, run_dir)
            say_changes(list(changes))
        run = build_run(cfg, dist, device, run_dir, fresh=ckpt is None, progress=progress)
        state = restore(run, ckpt) if ckpt is not None else TrainState()
        shows_progress = progress and dist.is_main
        if shows_progress:
            say_start(run, state.epoch if ckpt is not None else None)
        if dist.is_main and ckpt is None:
            write_config(run)
            save_last(run, state)  # an interrupted first epoch can still be resumed
        bar = EpochProgress(shows_progress, cfg.train.epochs)
        stack.callback(bar.close)
        stopped_early = False
        try:
            for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
                end_epoch(run, state, run_epoch(run, epoch, bar), bar)
                if cfg.train.patience is not None and state.stale >= cfg.train.patience:
                    stopped_early = True
                    if shows_progress:
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


def train_command(config: Path | None, flags: dict[str, Any], resume: Path | None, progress: bool = True) -> dict:
    """Do what ``lunar train`` was asked: a new run from defaults -> ``config`` -> ``flags`` (dotted keys), or ``resume``'s."""
    cfg, changes = load_train_config(config, flags, resume)
    return train(cfg, resume=resume, changes=changes, progress=progress)
