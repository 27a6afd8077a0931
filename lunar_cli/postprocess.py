"""From logits to what a model says about a photo: upsampled, calibrated probabilities, flip TTA, uncertainty, classes.

The one chain every command uses: training's validation, ``evaluate``, ``compare`` and
``export``'s check run it on torch tensors on the device, ``predict`` on NumPy arrays (so
an ONNX model never loads torch). Each step takes either kind and gives the same kind
back; ``tests/test_postprocess.py`` proves both give the same numbers on the same logits.
Logits are (..., C, H, W): one photo (C, H, W) or a batch (N, C, H, W); frames are uint8
RGB (N, H, W, 3).

Logits are upsampled (bilinear, pixel centres aligned) to the size asked for, never a
mask; probabilities are the softmax of logits divided by the model's calibration
temperature; with TTA the photo is also run mirrored left to right (a vertical flip
would put the sky below the ground, which no model was trained on) and the two
probability maps averaged. Uncertainty is the predictive entropy of the plain pass,
divided by log(number of classes) so it runs from 0 (certain) to 1 (all classes equally
likely): the out-of-distribution threshold is calibrated on it. With TTA, the spread
between the passes (their mutual information) is given too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

CLASS_AXIS = -3  # logits and probabilities are (..., C, H, W)


def is_tensor(x: Any) -> bool:
    """Return whether ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch"


def upsample(logits: Any, height: int, width: int) -> Any:
    """Return (..., C, h, w) logits resized bilinearly to (height, width), pixel centres aligned."""
    if tuple(logits.shape[-2:]) == (height, width):
        return logits
    if is_tensor(logits):
        import torch.nn.functional as F  # heavy: only where the logits already are torch tensors

        batch = logits if logits.dim() == 4 else logits[None]
        out = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
        return out if logits.dim() == 4 else out[0]
    if logits.ndim == 4:
        return np.stack([upsample(one, height, width) for one in logits])
    planes = cv2.resize(np.ascontiguousarray(logits.transpose(1, 2, 0)), (width, height), interpolation=cv2.INTER_LINEAR)
    return planes.reshape(height, width, -1).transpose(2, 0, 1)


def probabilities(logits: Any, temperature: float = 1.0) -> Any:
    """Return the class probabilities of logits divided by ``temperature`` (softmax over the class axis)."""
    if is_tensor(logits):
        return (logits / temperature).softmax(dim=CLASS_AXIS)
    z = logits / temperature
    z = np.exp(z - z.max(axis=CLASS_AXIS, keepdims=True))
    return z / z.sum(axis=CLASS_AXIS, keepdims=True)


def entropy(probs: Any) -> Any:
    """Return the entropy over the class axis divided by log C: 0 certain, 1 every class equally likely."""
    classes = probs.shape[CLASS_AXIS]
    if is_tensor(probs):
        return -(probs * probs.clamp(min=1e-12).log()).sum(dim=CLASS_AXIS) / math.log(classes)
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=CLASS_AXIS) / math.log(classes)


def class_map(scores: Any) -> Any:
    """Return the index of the largest score over the class axis (the first one on ties): uint8 for NumPy, int64 for torch.

    NumPy: a running comparison over the few classes, several times faster than argmax.
    """
    if is_tensor(scores):
        return scores.max(dim=CLASS_AXIS).indices  # max().indices: much faster than argmax on CPU torch builds
    best = np.take(scores, 0, axis=CLASS_AXIS).copy()
    classes = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[CLASS_AXIS]):
        plane = np.take(scores, c, axis=CLASS_AXIS)
        classes[plane > best] = c
        np.maximum(best, plane, out=best)
    return classes


def mirror_frames(frames: Any) -> Any:
    """Return uint8 frames (N, H, W, 3) mirrored left to right (the TTA pass)."""
    return frames.flip(2) if is_tensor(frames) else np.ascontiguousarray(frames[:, :, ::-1])


def unmirror(logits: Any) -> Any:
    """Return the logits of a mirrored pass (..., C, H, W) flipped back to line up with the photo."""
    return logits.flip(-1) if is_tensor(logits) else logits[..., ::-1]


@dataclass
class Outputs:
    """What a model says about photos (one (H, W) or a batch (N, H, W)), at the size asked for."""
    classes: Any  # class indices
    probs: Any | None  # (.., C, H, W) calibrated probabilities (averaged over TTA passes), when asked for
    uncertainty: Any | None  # normalised entropy of the plain pass in [0, 1], when asked for
    spread: Any | None  # disagreement between the TTA passes (mutual information), with TTA and uncertainty


def finish(
    passes: Sequence[Any], height: int, width: int, temperature: float, *, probs: bool = False,
    uncertainty: bool = False,
) -> Outputs:  # fmt: skip
    """Return the outputs at (height, width) from the logits of each pass (the plain one first, then its mirror).

    With one pass and nothing but classes asked for, the probabilities are never computed
    (the class of the largest logit is the class of the largest probability).
    """
    full = [upsample(p, height, width) for p in passes]
    if len(full) == 1 and not (probs or uncertainty):
        return Outputs(class_map(full[0]), None, None, None)
    each = [probabilities(logits, temperature) for logits in full]
    mean = each[0] if len(each) == 1 else sum(each) / len(each)
    unsure = entropy(each[0]) if uncertainty else None
    spread = entropy(mean) - sum(entropy(p) for p in each) / len(each) if uncertainty and len(each) > 1 else None
    return Outputs(class_map(mean), mean if probs else None, unsure, spread)


def mean_uncertainty(probs: Any) -> Any:
    """Return each image's mean normalised entropy (N,) of (N, C, H, W) probabilities."""
    unsure = entropy(probs)
    return unsure.flatten(1).mean(dim=1) if is_tensor(unsure) else unsure.reshape(len(unsure), -1).mean(axis=1)
