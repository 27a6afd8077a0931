"""Confusion matrix -> IoU per class, mean IoU, pixel accuracy; confidence histogram -> calibration error.

Scores are computed once from a confusion matrix summed over the whole split, never
averaged per batch: a per-batch mean weights a batch with three rock pixels as much as
one with thousands, and a class absent from a batch would drag its mean down.

segmentation_models_pytorch.metrics (``get_stats`` -> ``iou_score``) gives per-image
tp/fp/fn/tn tensors and no confusion matrix, which we also want for plots and reports.
One ``torch.bincount`` of ``num_classes * target + pred`` per batch gives the whole
matrix, and matrices add exactly across batches and DDP ranks (as in torchvision's
segmentation reference). The calibration error (ECE) is likewise one histogram summed
over the split.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from lunar_cli.classes import IGNORE_INDEX, NUM_CLASSES
from lunar_cli.console import LunarError

ECE_BINS = 15  # confidence bins of the expected calibration error


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Return the (C, C) int64 counts for one batch, rows = true class, cols = predicted.

    ``pred`` and ``target`` are class-index maps of the same shape (any shape, e.g.
    (N, H, W)). Unlabeled pixels (target ``IGNORE_INDEX``) are left out. Any other
    value outside 0..C-1 is a LunarError, so a wrong mask encoding cannot pass silently.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    pred = pred.detach().reshape(-1).long()
    target = target.detach().reshape(-1).long()
    n = num_classes
    keep = target != IGNORE_INDEX
    bad_target = keep & ((target < 0) | (target >= n))
    bad_pred = keep & ((pred < 0) | (pred >= n))
    if bool(bad_target.any()):
        value = int(target[bad_target][0])
        raise LunarError(
            f"mask holds class index {value}, outside 0..{n - 1} (ignore index {IGNORE_INDEX}); "
            "check the mask colours against the dataset palette"
        )
    if bool(bad_pred.any()):
        raise ValueError(f"prediction holds class index {int(pred[bad_pred][0])}, outside 0..{n - 1}")
    # Ignored pixels go to one extra bin that is then cut off: no boolean compaction.
    flat = torch.where(keep, target * n + pred, torch.full_like(target, n * n))
    return torch.bincount(flat, minlength=n * n + 1)[: n * n].reshape(n, n)


def image_matrices(pred: "Tensor", target: "Tensor", num_classes: int = NUM_CLASSES) -> "Tensor":
    """Return one (C, C) confusion matrix per image, shape (N, C, C), from (N, H, W) class maps.

    One bincount for the whole batch: image i's counts sit in bins offset by i * (C*C + 1);
    the extra bin per image takes the unlabeled (IGNORE_INDEX) pixels and is cut off.
    """
    n, bins = pred.shape[0], num_classes * num_classes + 1
    target = target.reshape(n, -1).long()
    cell = torch.where(target != IGNORE_INDEX, target * num_classes + pred.reshape(n, -1).long(), bins - 1)
    cell = cell + torch.arange(n, device=cell.device).view(n, 1) * bins
    counts = torch.bincount(cell.reshape(-1), minlength=n * bins).view(n, bins)
    return counts[:, :-1].reshape(n, num_classes, num_classes)


class CalibrationBins:
    """Confidence histogram summed over pixels: count, confidence sum and correct count per bin (for the ECE)."""
    def __init__(self) -> None:
        self.counts = np.zeros(ECE_BINS)
        self.confidence = np.zeros(ECE_BINS)
        self.correct = np.zeros(ECE_BINS)

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add (N, C, H, W) probabilities against (N, H, W) labels (IGNORE_INDEX left out)."""
        conf, pred = probs.max(dim=1)
        keep = target != IGNORE_INDEX
        conf, hit = conf[keep].float(), (pred[keep] == target[keep]).float()
        bins = (conf * ECE_BINS).long().clamp_(max=ECE_BINS - 1)
        for total, values in ((self.counts, torch.ones_like(conf)), (self.confidence, conf), (self.correct, hit)):
            total += torch.bincount(bins.cpu(), weights=values.cpu().double(), minlength=ECE_BINS).numpy()

    def ece(self) -> float | None:
        """Return the expected calibration error: the gap between confidence and accuracy, pixel-weighted (None: no pixels)."""
        n = self.counts.sum()
        if n == 0:
            return None
        gap = np.abs(self.confidence - self.correct)  # both are sums: |sum conf - sum correct| per bin
        return float(gap.sum() / n)


def iou_per_class(matrix: Tensor) -> Tensor:
    """Return the Jaccard index (IoU) of each class as a float64 CPU tensor.

    IoU = TP / (TP + FP + FN). A class absent from both prediction and target has no
    union and gets NaN, so means can skip it instead of counting it as 0 or 1.
    """
    m = matrix.detach().cpu().double()
    tp = m.diagonal()
    union = m.sum(dim=0) + m.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(matrix: Tensor) -> float:
    """Return the mean IoU over classes present in prediction or target (NaN if none)."""
    return float(torch.nanmean(iou_per_class(matrix)))


def pixel_accuracy(matrix: Tensor) -> float:
    """Return the share of counted pixels whose predicted class is right (NaN if none)."""
    m = matrix.detach().cpu().double()
    total = float(m.sum())
    return float(m.diagonal().sum()) / total if total > 0 else math.nan


def summarize(matrix: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Return a JSON-ready dict: miou, pixel_accuracy, iou per class name, confusion_matrix.

    NaN (class never seen, empty matrix) becomes None so the dict dumps as valid JSON.
    """
    if len(class_names) != matrix.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {matrix.shape[0]}-class matrix")
    iou = iou_per_class(matrix).tolist()
    return {
        "miou": _none_if_nan(mean_iou(matrix)),
        "pixel_accuracy": _none_if_nan(pixel_accuracy(matrix)),
        "iou": {name: _none_if_nan(v) for name, v in zip(class_names, iou)},
        "confusion_matrix": matrix.detach().cpu().long().tolist(),
    }


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value
