"""The two ways ``lunar adapt`` moves a trained network towards unlabelled photos: BatchNorm statistics and self-training.

``reestimate_batchnorm`` (AdaBN, Li et al. 2016) forgets the running mean and variance
every BatchNorm layer learnt on synthetic scenes and measures them again on the target
photos, whole at the model's scale and padded as for prediction, as a plain average over
batches (BN ``momentum=None``): no weight moves. Only the BN layers are put in training
mode for it: Dropout in training mode would widen the variances measured behind it.

``self_train`` fine-tunes on the network's own confident answers: a teacher labels every
pixel of every photo whose calibrated probability is above a threshold (the rest is
IGNORE_INDEX, counted by no loss); the student learns them on random crops, flipped and
jittered as in training (``data.augment``), at a low learning rate, by cross-entropy
weighted by the inverse frequency of each class among the pseudo-labels (without it the
few rock pixels are drowned by the ground), with its BatchNorm statistics frozen (small
batches of crops would measure them worse than whole photos did). The teacher is the
network it starts from, fixed, or an exponential moving average of the student that
labels the photos afresh every epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lunar_cli.classes import IGNORE_INDEX, NUM_CLASSES
from lunar_cli.config import AdaptConfig, AugmentConfig
from lunar_cli.console import LunarError, info
from lunar_cli.data.augment import augment_crops
from lunar_cli.data.dataset import epoch_generator
from lunar_cli.frames import normalize
from lunar_cli.postprocess import probabilities
from lunar_cli.recipe import make_criterion
from lunar_cli.torch_model import TorchModel, channel_stats, forward, frame_logits, to_input

_SHUFFLE, _AUGMENT = 10, 11  # streams of the seed for adaptation (training uses 0-2)
EMA_DECAY = 0.99  # the EMA teacher's share of itself at each student step


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Return the BatchNorm layers of ``net`` that keep running statistics (those adaptation re-estimates)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def same_size_batches(shapes: Sequence[tuple[int, ...]], batch_size: int) -> list[list[int]]:
    """Return batches of indices into ``shapes`` (frame shapes, or any sizes), each batch of one shape, in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return [members[j : j + batch_size] for members in groups.values() for j in range(0, len(members), batch_size)]


def stacked(model: TorchModel, frames: Sequence[np.ndarray], batch: Sequence[int]) -> torch.Tensor:
    """Return the uint8 frames at ``batch`` (all of one size) as one (N, h, w, 3) tensor on the model's device."""
    return torch.from_numpy(np.stack([frames[i] for i in batch])).to(model.device)


def reestimate_batchnorm(model: TorchModel, frames: Sequence[np.ndarray], batch_size: int) -> int:
    """Measure the running statistics of every BatchNorm layer of ``model`` again on ``frames``; return how many layers.

    ``frames`` are uint8 (h, w, 3) photos at the model's scale, fed whole in batches of
    one size. Each layer's statistics become the plain average over the batches; no
    parameter changes. A network without BatchNorm is a LunarError.
    """
    layers = batchnorm_layers(model.net)
    if not layers:
        raise LunarError(f"{model.spec.backbone}: this network has no BatchNorm layer, so there are no statistics "
                         "to re-estimate; use --mode self-train")  # fmt: skip
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch, not an exponential one
    model.net.eval()
    for layer in layers:
        layer.train()
    try:
        for batch in same_size_batches([f.shape for f in frames], batch_size):
            forward(model, to_input(model, stacked(model, frames, batch)))  # BN buffers update even in inference mode
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.net.eval()
    return len(layers)


def pseudo_labels(model: TorchModel, frames: Sequence[np.ndarray], confidence: float, batch_size: int) -> list[np.ndarray]:
    """Return, per frame, the model's class where its calibrated probability is above ``confidence``, else IGNORE_INDEX.

    uint8 (h, w) at the model's scale, one per frame of ``frames``.
    """
    labels: list[np.ndarray | None] = [None] * len(frames)
    for batch in same_size_batches([f.shape for f in frames], batch_size):
        probs = probabilities(frame_logits(model, stacked(model, frames, batch)), model.spec.temperature)
        best, classes = probs.max(dim=1)
        kept = torch.where(best > confidence, classes, IGNORE_INDEX).to(torch.uint8).cpu().numpy()
        for i, label in zip(batch, kept):
            labels[i] = label
    return labels  # type: ignore[return-value]


@dataclass
class SelfTraining:
    """What self-training did: optimiser steps, the share of pixels the teacher labelled (first epoch, last), losses."""
    steps: int
    labelled_share: list[float]  # per epoch, the share of pixels confident enough to be a pseudo-label
    losses: list[float]  # mean loss per epoch
    seconds: float


def canvas_batch(model: TorchModel, frames: Sequence[np.ndarray], labels: Sequence[np.ndarray], batch: Sequence[int]):
    """Return (uint8 images (B, H, W, 3), uint8 labels (B, H, W), sizes (B, 2)) of frames of any sizes, top-left on one canvas.

    What ``augment.augment_crops`` samples crops from; outside each frame the labels are IGNORE_INDEX.
    """
    height = max(frames[i].shape[0] for i in batch)
    width = max(frames[i].shape[1] for i in batch)
    images = np.zeros((len(batch), height, width, 3), np.uint8)
    masks = np.full((len(batch), height, width), IGNORE_INDEX, np.uint8)
    for row, i in enumerate(batch):
        h, w = frames[i].shape[:2]
        images[row, :h, :w], masks[row, :h, :w] = frames[i], labels[i]
    sizes = torch.tensor([frames[i].shape[:2] for i in batch], dtype=torch.int64)
    return torch.from_numpy(images).to(model.device), torch.from_numpy(masks).to(model.device), sizes


def self_train(
    student: TorchModel, frames: Sequence[np.ndarray], options: AdaptConfig, augment: AugmentConfig, seed: int,
    crop: int, say: Callable[[str], None] = info,
) -> SelfTraining:  # fmt: skip
    """Fine-tune ``student`` (in place) on the confident pseudo-labels of its own starting point (or its EMA); say each epoch.

    ``frames``: uint8 (h, w, 3) photos at the model's scale. The teacher is a frozen copy
    of the student as it starts (``options.teacher`` fixed) or its exponential moving
    average (ema). The student's BatchNorm statistics stay as they are; its other weights
    learn the teacher's labels with the loss ``options.loss`` on ``crop``-pixel crops.
    """
    teacher = dataclasses.replace(student, net=copy.deepcopy(student.net).eval())
    for p in teacher.net.parameters():
        p.requires_grad_(False)
    net = student.net
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=options.lr, weight_decay=1e-4)
    mean, std = channel_stats(student.spec, student.device)
    fmt = torch.channels_last if student.precision.channels_last else torch.contiguous_format
    start, steps, shares, losses = time.perf_counter(), 0, [], []
    labels = pseudo_labels(teacher, frames, options.confidence, options.batch_size)
    counts = [int(sum(int((label == c).sum()) for label in labels)) for c in range(NUM_CLASSES)]
    criterion = make_criterion(options.loss, None if options.class_weights == "none" else "auto", counts, student.device)
    for epoch in range(1, options.epochs + 1):
        if options.teacher == "ema" and epoch > 1:
            labels = pseudo_labels(teacher, frames, options.confidence, options.batch_size)
        shares.append(labelled_share(labels))
        order = torch.randperm(len(frames), generator=epoch_generator(seed, epoch, _SHUFFLE)).tolist()
        generator = epoch_generator(seed, epoch, _AUGMENT)
        total, seen = 0.0, 0
        _train_mode_keeping_batchnorm(net)
        for j in range(0, len(order), options.batch_size):
            images, masks, sizes = canvas_batch(student, frames, labels, order[j : j + options.batch_size])
            x, target = augment_crops(images, masks, sizes, crop=crop, zoom=(1.0, 1.0), params=augment,
                                      generator=generator)  # fmt: skip
            if not bool((target != IGNORE_INDEX).any()):
                continue  # no pixel confident enough in these crops: nothing to learn (the loss would be NaN)
            x = normalize(x, mean, std).contiguous(memory_format=fmt)
            with student.precision.autocast():
                logits = net(x)
            loss = criterion(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            total, seen = total + loss.item() * len(x), seen + len(x)
            if options.teacher == "ema":
                _ema_update(teacher.net, net)
        losses.append(total / seen if seen else math.nan)
        net.eval()
        say(f"self-training epoch {epoch}/{options.epochs}: loss {losses[-1]:.4f}, pseudo-labelled pixels "
            f"{100 * shares[-1]:.1f}%, {steps} steps, {time.perf_counter() - start:.0f} s")  # fmt: skip
        if not math.isfinite(losses[-1]) and seen:
            raise LunarError(f"self-training diverged in epoch {epoch} (loss {losses[-1]}); try a lower --lr "
                             f"than {options.lr:g}; nothing was written")  # fmt: skip
    net.eval()
    return SelfTraining(steps=steps, labelled_share=shares, losses=losses, seconds=time.perf_counter() - start)


def labelled_share(labels: Sequence[np.ndarray]) -> float:
    """Return the share of pixels that hold a pseudo-label (not IGNORE_INDEX)."""
    kept = sum(int((label != IGNORE_INDEX).sum()) for label in labels)
    return kept / max(1, sum(label.size for label in labels))


def _train_mode_keeping_batchnorm(net: nn.Module) -> None:
    """Put ``net`` in training mode (Dropout on) with its BatchNorm layers still using their running statistics."""
    net.train()
    for layer in batchnorm_layers(net):
        layer.eval()


@torch.no_grad()
def _ema_update(teacher: nn.Module, student: nn.Module) -> None:
    """Move each teacher parameter an EMA step towards the student's (buffers: BN statistics are frozen in both)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(EMA_DECAY).add_(s.detach(), alpha=1.0 - EMA_DECAY)

