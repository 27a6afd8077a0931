"""Scoring a model on a split the way the labels were drawn: whole frames, full resolution, one confusion matrix.

Used by training's validation and by ``lunar evaluate``, so both report the same number.
Each frame is run whole at the model's scale (``torch_model.frame_logits``); its logits are
upsampled to the mask's own size before the argmax, and one confusion matrix is summed
over the whole split (never a mean of per-batch scores). Padding around frames of another
size is IGNORE_INDEX in the masks and counted nowhere.

With ``tta`` each frame is also run mirrored left to right and the two probability maps
averaged (a second matrix, so the effect shows per class); with ``calibration`` the
confidence histogram (ECE) and each frame's mean uncertainty are gathered from the
model's own (temperature-scaled) probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from lunar_cli.classes import NUM_CLASSES
from lunar_cli.console import track
from lunar_cli.data.dataset import FrameLoader
from lunar_cli.metrics import CalibrationBins, confusion_matrix, image_matrices, mean_iou
from lunar_cli.postprocess import class_map, finish, mean_uncertainty, mirror_frames, probabilities, unmirror
from lunar_cli.torch_model import TorchModel, frame_logits


@dataclass
class SplitScore:
    """What scoring a split gives: confusion matrices, the mean loss (if asked), per-frame scores."""
    matrix: torch.Tensor  # (C, C) int64 on CPU, rows = true class
    loss: float | None
    per_image: np.ndarray  # mIoU of each frame in loader order (NaN: no labelled pixel)
    resolution: str  # what was scored, e.g. "full resolution (480x320 labels), model fed at scale 1"
    tta_matrix: torch.Tensor | None = None  # the same with flip test-time augmentation
    ece: float | None = None  # expected calibration error of the (temperature-scaled) probabilities
    uncertainty: np.ndarray | None = None  # each frame's mean normalised entropy


def same_size_groups(
    frames: torch.Tensor, masks: torch.Tensor, sizes: np.ndarray
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (frames, masks) cut to their own size: the whole batch when every frame fills the canvas."""
    h, w = frames.shape[1:3]
    hh, ww = masks.shape[1:3]
    if (sizes == [h, w, hh, ww]).all():
        yield frames, masks
        return
    for i, (fh, fw, mh, mw) in enumerate(sizes):
        yield frames[i : i + 1, :fh, :fw], masks[i : i + 1, :mh, :mw]


def score_frames(
    model: TorchModel, loader: FrameLoader, *, criterion: Callable | None = None, tta: bool = False,
    calibration: bool = False, progress: str | None = None,
    each: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> SplitScore:  # fmt: skip
    """Return the split's confusion matrix at the labels' resolution (and loss, TTA matrix, ECE when asked).

    ``progress`` is the label of a progress bar (None: quiet). ``each`` is called with the
    full-resolution logits (N, C, H, W) and labels (N, H, W) of every group of frames.
    """
    model.net.eval()
    temperature = model.spec.temperature
    zeros = lambda: torch.zeros((NUM_CLASSES, NUM_CLASSES), dtype=torch.int64, device=model.device)  # noqa: E731
    matrix, tta_matrix, bins = zeros(), zeros(), CalibrationBins()
    per_image: list[torch.Tensor] = []
    unsure: list[torch.Tensor] = []
    total, seen = 0.0, 0
    for frames, masks, sizes in track(loader, progress or "", total=len(loader), quiet=progress is None):
        for f, m in same_size_groups(frames, masks, sizes):
            size = tuple(m.shape[1:])
            logits = frame_logits(model, f, size)
            target = m.long()
            if each is not None:
                each(logits, target)
            pred = class_map(logits)
            matrix += confusion_matrix(pred, target)  # also refuses masks with class indices out of range
            per_image.append(image_matrices(pred, target).cpu())
            if criterion is not None:
                total += float(criterion(logits, target)) * len(f)
                seen += len(f)
            if calibration:  # of the model's own probabilities, as the threshold and predict use them
                probs = probabilities(logits, temperature)
                bins.update(probs, target)
                unsure.append(mean_uncertainty(probs).float().cpu())
            if tta:
                mirrored = unmirror(frame_logits(model, mirror_frames(f), size))
                tta_matrix += confusion_matrix(finish([logits, mirrored], *size, temperature).classes, target)
    matrices = torch.cat(per_image) if per_image else torch.zeros((0, NUM_CLASSES, NUM_CLASSES), dtype=torch.int64)
    canvas = loader.split.full_masks.shape[1:]
    return SplitScore(
        matrix=matrix.cpu(), loss=total / seen if seen else None,
        per_image=np.array([mean_iou(m) for m in matrices], dtype=np.float64),
        resolution=f"full resolution ({canvas[1]}x{canvas[0]} labels), model fed at {loader.split.size_rule.describe()}",
        tta_matrix=tta_matrix.cpu() if tta else None, ece=bins.ece() if calibration else None,
        uncertainty=torch.cat(unsure).numpy() if calibration and unsure else None,
    )  # fmt: skip
