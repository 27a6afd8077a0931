"""Are a model's probabilities honest? A temperature fitted on val, its calibration error, an out-of-distribution threshold.

At the end of training the best model is calibrated on the validation split: a temperature
T on the logits is fitted on a sample of pixels by minimising the negative log-likelihood,
and kept if it lowers the expected calibration error (ECE, ``metrics.CalibrationBins``:
the gap between confidence and accuracy weighted by the pixels in each bin) over whole
frames. The out-of-distribution threshold is the 99th percentile of the per-image mean
uncertainty (normalised entropy, ``postprocess.entropy``) over the validation frames: a
photo above it looks unlike anything the model was validated on. Both are stored in the
checkpoint's meta ("calibration").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lunar_cli.classes import IGNORE_INDEX
from lunar_cli.data.dataset import FrameLoader
from lunar_cli.models.checkpoint import load_checkpoint, save_checkpoint
from lunar_cli.scoring import score_frames
from lunar_cli.torch_model import TorchModel, load_model

PIXELS_PER_FRAME = 4096  # sampled on a regular grid: enough for a temperature, cheap to keep
OOD_QUANTILE = 0.99


class PixelSample:
    """Logits and labels of a regular grid of pixels of every frame scored (about PIXELS_PER_FRAME each)."""
    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Keep the grid pixels of full-resolution logits (N, C, H, W) and their labels (N, H, W)."""
        step = max(1, int((target.shape[1] * target.shape[2] / PIXELS_PER_FRAME) ** 0.5))
        grid_logits = logits[:, :, ::step, ::step].permute(0, 2, 3, 1)
        grid_labels = target[:, ::step, ::step]
        keep = grid_labels != IGNORE_INDEX
        self.logits.append(grid_logits[keep].float().cpu())
        self.labels.append(grid_labels[keep].cpu())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the temperature T > 0 that minimises the NLL of softmax(logits / T) on the labels."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibrate(model: TorchModel, loader: FrameLoader) -> dict:
    """Return the model's calibration on ``loader`` (the val split): temperature, ECE before and after, OOD threshold.

    The temperature is fitted on a grid of pixels of every frame, gathered during the pass
    without it; the ECE with and without it, and the per-image uncertainty behind the
    threshold, come from whole frames at full resolution, as ``lunar evaluate`` and
    ``lunar predict`` compute them. Two passes over the split in all.
    """

    def scored(temperature: float, each=None):
        trial = dataclasses.replace(model, spec=model.spec.with_temperature(temperature))
        return score_frames(trial, loader, calibration=True, each=each)

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


def calibrate_checkpoint(path: Path, loader: FrameLoader, device, amp: bool | None, channels_last: bool | None) -> dict:
    """Calibrate the checkpoint at ``path`` on ``loader`` (the val split), store the result in its meta, return it."""
    result = calibrate(load_model(path, device, amp, channels_last), loader)
    ckpt = load_checkpoint(path)
    save_checkpoint(path, model_state=ckpt["model"], meta={**ckpt["meta"], "calibration": result})
    return result
