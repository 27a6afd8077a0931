"""Are a model's probabilities honest? Expected calibration error, a fitted temperature, an out-of-distribution threshold.

At the end of training the best model is calibrated on the validation split: a temperature
T on the logits is fitted on a sample of pixels by minimising the negative log-likelihood,
and kept if it lowers the expected calibration error (ECE: 15 confidence bins, the gap
between confidence and accuracy weighted by the pixels in each bin) over whole frames. The
out-of-distribution threshold is the 99th percentile of the per-image mean uncertainty
(normalised entropy) over the validation frames: a photo above it looks unlike anything
the model was validated on. Both are stored in the checkpoint's meta ("calibration").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lunar_cli.classes import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

    from lunar_cli.data.dataset import FrameLoader
    from lunar_cli.engine import Model

BINS = 15
PIXELS_PER_FRAME = 4096  # sampled on a regular grid: enough for a temperature, cheap to keep
OOD_QUANTILE = 0.99


class CalibrationBins:
    """Confidence histogram summed over pixels: count, confidence sum and correct count per bin."""

    def __init__(self) -> None:
        self.counts = np.zeros(BINS)
        self.confidence = np.zeros(BINS)
        self.correct = np.zeros(BINS)

    def update(self, probs: "torch.Tensor", target: "torch.Tensor") -> None:
        """Add (N, C, H, W) probabilities against (N, H, W) labels (IGNORE_INDEX left out)."""
        import torch

        conf, pred = probs.max(dim=1)
        keep = target != IGNORE_INDEX
        conf, hit = conf[keep].float(), (pred[keep] == target[keep]).float()
        bins = (conf * BINS).long().clamp_(max=BINS - 1)
        for total, values in ((self.counts, torch.ones_like(conf)), (self.confidence, conf), (self.correct, hit)):
            total += torch.bincount(bins.cpu(), weights=values.cpu().double(), minlength=BINS).numpy()

    def ece(self) -> float | None:
        """Return the expected calibration error (None with no pixels)."""
        n = self.counts.sum()
        if n == 0:
            return None
        gap = np.abs(self.confidence - self.correct)  # both are sums: |sum conf - sum correct| per bin
        return float(gap.sum() / n)


def normalized_entropy(probs: "torch.Tensor") -> "torch.Tensor":
    """Return the entropy over dim 1 of (N, C, ...) probabilities divided by log C: 0 certain, 1 uniform."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim=1) / math.log(probs.shape[1])


def mean_uncertainty(probs: "torch.Tensor") -> "torch.Tensor":
    """Return each image's mean normalised entropy (N,) of (N, C, H, W) probabilities."""
    return normalized_entropy(probs).flatten(1).mean(dim=1)


class PixelSample:
    """Logits and labels of a regular grid of pixels of every frame scored (about PIXELS_PER_FRAME each)."""

    def __init__(self) -> None:
        self.logits: list["torch.Tensor"] = []
        self.labels: list["torch.Tensor"] = []

    def __call__(self, logits: "torch.Tensor", target: "torch.Tensor") -> None:
        """Keep the grid pixels of full-resolution logits (N, C, H, W) and their labels (N, H, W)."""
        step = max(1, int((target.shape[1] * target.shape[2] / PIXELS_PER_FRAME) ** 0.5))
        grid_logits = logits[:, :, ::step, ::step].permute(0, 2, 3, 1)
        grid_labels = target[:, ::step, ::step]
        keep = grid_labels != IGNORE_INDEX
        self.logits.append(grid_logits[keep].float().cpu())
        self.labels.append(grid_labels[keep].cpu())


def fit_temperature(logits: "torch.Tensor", labels: "torch.Tensor") -> float:
    """Return the temperature T > 0 that minimises the NLL of softmax(logits / T) on the labels."""
    import torch
    import torch.nn.functional as F

    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibrate(model: "Model", loader: "FrameLoader") -> dict:
    """Return the model's calibration on ``loader`` (the val split): temperature, ECE before and after, OOD threshold.

    The temperature is fitted on a grid of pixels of every frame, gathered during the pass
    without it; the ECE with and without it, and the per-image uncertainty behind the
    threshold, come from whole frames at full resolution, as ``lunar evaluate`` and
    ``lunar predict`` compute them. Two passes over the split in all.
    """
    import torch

    from lunar_cli.scoring import score_frames

    def scored(temperature: float, each=None):
        model.meta = {**model.meta, "calibration": {"temperature": temperature}}
        return score_frames(model, loader, calibration=True, each=each)

    sample = PixelSample()
    scores = {1.0: scored(1.0, each=sample)}  # the uncalibrated pass also gathers the pixels T is fitted on
    logits, labels = torch.cat(sample.logits), torch.cat(sample.labels)
    fitted = fit_temperature(logits, labels)
    scores[fitted] = scored(fitted)
    temperature = fitted if scores[fitted].ece < scores[1.0].ece else 1.0
    chosen = scores[temperature]
    return {
        "temperature": temperature, "ece_val_before": scores[1.0].ece, "ece_val": chosen.ece,
        "ood_threshold": float(np.quantile(chosen.uncertainty, OOD_QUANTILE)), "val_images": len(chosen.uncertainty),
        "val_pixels_sampled": int(labels.numel()),
    }  # fmt: skip


def calibrate_checkpoint(path: Path, loader: "FrameLoader", device, amp: bool | None, channels_last: bool | None) -> dict:
    """Calibrate the checkpoint at ``path`` on ``loader`` (the val split), store the result in its meta, return it."""
    from lunar_cli.engine import load_model
    from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint

    result = calibrate(load_model(path, device, amp, channels_last), loader)
    ckpt = load_checkpoint(path)
    save_checkpoint(path, model_state=ckpt["model"], meta={**ckpt["meta"], "calibration": result})
    return result
