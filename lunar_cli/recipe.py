"""How a model learns: the loss, the optimiser and the learning-rate schedule of a run.

Each builder takes the values it needs and trusts them (the config was validated at the
edge). Schedules are stepped after every optimiser step; their shape is a function of
(step, total steps), so a resumed run that asks for more epochs stretches the schedule
instead of replaying it. Losses ignore IGNORE_INDEX pixels (crops that overhang a frame).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from lunar_cli.classes import IGNORE_INDEX
from lunar_cli.config import TrainConfig


def make_criterion(loss: str, class_weights: Any, class_pixels: list[int], device: torch.device) -> Callable:
    """Return the loss function (logits, int64 masks) -> scalar for ``loss`` (computed in fp32)."""
    weight = None
    if class_weights == "auto":
        counts = torch.tensor(class_pixels, dtype=torch.float64).clamp_min(1.0)
        inverse = counts.sum() / (len(counts) * counts)
        weight = (inverse / inverse.mean()).clamp(max=50.0).float().to(device)
    elif class_weights is not None:
        weight = torch.tensor(class_weights, dtype=torch.float32, device=device)

    def cross_entropy(logits, target):
        return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX)

    if loss == "ce":
        return cross_entropy
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss  # ~1 s import, only when asked

    dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE_INDEX)
    if loss == "dice":
        return lambda logits, target: dice(logits.float(), target)
    if loss == "focal":
        focal = FocalLoss(mode="multiclass", ignore_index=IGNORE_INDEX)
        return lambda logits, target: focal(logits.float(), target)
    return lambda logits, target: cross_entropy(logits, target) + dice(logits.float(), target)


def optimizer_kind(cfg: TrainConfig) -> str:
    """Return the optimiser a run uses: ``auto`` is Adam for the custom U-Net and SGD for smp encoders."""
    if cfg.optimizer != "auto":
        return cfg.optimizer
    return "adam" if cfg.backbone == "custom" else "sgd"


def learning_rate(cfg: TrainConfig) -> float:
    """Return the run's base learning rate: the one given, else the measured or the study's default.

    AdamW on the custom U-Net: 3e-3 (measured on the CPU benchmark: small/large-rock IoU
    0.39/0.43 at 3e-3 against 0.35/0.40 at 1e-3 after 16 epochs; bench/RESULTS.md). SGD
    1e-2 and Adam 1e-3 are the study's; AdamW on smp encoders keeps 1e-3 (not measured here).
    """
    if cfg.lr is not None:
        return cfg.lr
    kind = optimizer_kind(cfg)
    if kind == "sgd":
        return 1e-2
    return 3e-3 if kind == "adamw" and cfg.backbone == "custom" else 1e-3


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Return the run's optimiser over the model's trainable parameters."""
    kind, lr = optimizer_kind(cfg), learning_rate(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif kind == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:  # the base rate, kept in last.pt (LambdaLR sets it too; plateau does not)
        group["initial_lr"] = lr
    return optimizer


def schedule_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """Return the learning-rate multiplier after ``step`` of ``total`` optimiser steps (``warmup`` of them rising)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "poly":
        return (1.0 - progress) ** 0.9
    if kind == "step":
        return 0.1 ** min(2, int(progress * 3))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Return the run's scheduler: a per-step LambdaLR (warm-up, then the schedule), ReduceLROnPlateau, or None.

    ``plateau`` is stepped once per epoch with the val mIoU; every other kind after each
    optimiser step.
    """

    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup * total)
    if cfg.scheduler == "none" and warmup == 0:
        return None
    kind = cfg.scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule_factor(kind, step, total, warmup))


def set_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainConfig) -> None:
    """Make a restored optimiser (and schedule) use ``cfg``'s rate, momentum and weight decay.

    The schedule keeps its progress: the current rate is rescaled by new base / old base
    (the base is the optimiser's ``initial_lr``). Without a rate in ``cfg`` the run keeps
    the one it has: a default that changed since the run started is not applied to it.
    """
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
    if cfg.lr is None:
        return
    new_base = cfg.lr
    for group in optimizer.param_groups:
        old_base = group.get("initial_lr", group["lr"])  # runs saved before initial_lr was kept: the current rate
        if old_base != new_base:
            group["lr"] = group["lr"] * new_base / old_base if old_base else new_base
            group["initial_lr"] = new_base
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [new_base for _ in scheduler.base_lrs]
