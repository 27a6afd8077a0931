"""From photos to class maps, probabilities and uncertainty, in NumPy and OpenCV only (no torch).

``lunar predict`` runs every model through here, a PyTorch checkpoint or an exported ONNX
file alike: the backend only turns uint8 frames at the model's scale into logits
(``model.logits``). Each photo is resized to the scale the model was trained at, its
logits are upsampled (bilinear) to the photo's own size, then divided by the model's
calibration temperature for probabilities; the class map is their argmax. With ``tta``
the photo is also run mirrored left to right and the two probability maps are averaged
(a vertical flip would put the sky below the ground, which no model was trained on).

Uncertainty is the predictive entropy of the model's probabilities for the photo as it
is, divided by log(number of classes) so it runs from 0 (certain) to 1 (all classes
equally likely) (the out-of-distribution threshold is calibrated on it); with ``tta`` the
spread between the two passes (their mutual information) is given too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class RunsOnFrames(Protocol):
    """What predict needs of a model: its metadata, and logits for uint8 frames at its scale."""

    meta: dict

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, C, h, w) for uint8 RGB frames (N, h, w, 3)."""


@dataclass
class PhotoPrediction:
    """What a model says about one photo, at the photo's own size."""

    classes: np.ndarray  # (H, W) uint8 class indices
    probs: np.ndarray | None  # (C, H, W) float32 calibrated probabilities, when asked for
    uncertainty: np.ndarray | None  # (H, W) float32 normalised entropy in [0, 1], when asked for
    spread: np.ndarray | None  # (H, W) float32 disagreement between TTA passes, with tta and uncertainty


def resize_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Return ``img`` at (h, w): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    import cv2

    if img.shape[:2] == (h, w):
        return img
    shrinking = h <= img.shape[0] and w <= img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def upsample(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return (C, h, w) float32 logits resized bilinearly to (C, height, width) (pixel centres aligned)."""
    import cv2

    if logits.shape[1:] == (height, width):
        return logits
    planes = cv2.resize(np.ascontiguousarray(logits.transpose(1, 2, 0)), (width, height), interpolation=cv2.INTER_LINEAR)
    return planes.reshape(height, width, -1).transpose(2, 0, 1)


def class_map(scores: np.ndarray) -> np.ndarray:
    """Return (H, W) uint8 indices of the largest of (C, H, W) scores (the first one on ties, like argmax).

    A running comparison over the few classes: several times faster than np.argmax(axis=0).
    """
    best = scores[0].copy()
    classes = np.zeros(best.shape, np.uint8)
    for c in range(1, scores.shape[0]):
        higher = scores[c] > best
        classes[higher] = c
        np.maximum(best, scores[c], out=best)
    return classes


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return probabilities over axis 0 of (C, ...) logits divided by ``temperature``."""
    z = logits / temperature
    z = np.exp(z - z.max(axis=0, keepdims=True))
    return z / z.sum(axis=0, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Return the entropy over axis 0 of (C, ...) probabilities, divided by log C (0 certain, 1 uniform)."""
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=0) / math.log(probs.shape[0])


def model_scale_frames(meta: dict, photos: list[np.ndarray]) -> np.ndarray:
    """Return same-size uint8 photos (H, W, 3) resized to the model's scale, stacked (N, h, w, 3)."""
    from lunar_cli.engine import frame_size_of

    h, w = frame_size_of(meta).of(*photos[0].shape[:2])
    return np.stack([resize_image(p, h, w) for p in photos])


def model_passes(model: RunsOnFrames, frames: np.ndarray, tta: bool) -> list[np.ndarray]:
    """Return the logits (N, C, h, w) of each pass over frames at the model's scale: as they are, and mirrored."""
    passes = [model.logits(frames)]
    if tta:
        passes.append(model.logits(np.ascontiguousarray(frames[:, :, ::-1]))[..., ::-1])
    return passes


def finish_photo(
    meta: dict, passes: list[np.ndarray], height: int, width: int, *, probs: bool = False, uncertainty: bool = False,
) -> PhotoPrediction:  # fmt: skip
    """Return one photo's prediction at (height, width) from its logits (C, h, w) of each pass."""
    full = [upsample(p, height, width) for p in passes]
    if len(full) == 1 and not (probs or uncertainty):
        return PhotoPrediction(class_map(full[0]), None, None, None)
    from lunar_cli.engine import temperature_of

    temperature = temperature_of(meta)
    each = [softmax(logits, temperature) for logits in full]
    mean = each[0] if len(each) == 1 else sum(each) / len(each)
    # The model's own uncertainty is the plain pass's: the out-of-distribution threshold was set on it.
    unsure = entropy(each[0]) if uncertainty else None
    spread = entropy(mean) - sum(entropy(p) for p in each) / len(each) if uncertainty and len(each) > 1 else None
    return PhotoPrediction(class_map(mean), mean if probs else None, unsure, spread)


def tile_starts(length: int, window: int, overlap: float) -> list[int]:
    """Return window offsets covering ``length`` (>= ``window``) with about ``overlap`` shared between neighbours."""
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)  # the last window ends flush with the edge
    return starts


def blend_window(height: int, width: int) -> np.ndarray:
    """Return a (height, width) float32 Hann-like weight: 1 in the centre, small but never zero at the edges."""

    def hann(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2  # half-pixel offset: never exactly 0

    return np.outer(hann(height), hann(width)).astype(np.float32)


def tiled_logits(model: RunsOnFrames, photo: np.ndarray, window: int, overlap: float, batch_size: int) -> np.ndarray:
    """Return logits (C, h, w) at the model's scale for a photo of any size, by sliding windows over it.

    The photo is resized to the model's training scale (a model trained on squashed
    squares sees it at full resolution, in windows of its square), then cut into
    ``window``-sided windows; overlapping windows are blended with ``blend_window`` weights,
    so there are no seams, and memory stays at one batch of windows however big the
    photo. A photo smaller than a window is mirror-padded, then cropped back.
    """
    from lunar_cli.engine import frame_size_of

    rule = frame_size_of(model.meta)
    scaled = photo if rule.square is not None else resize_image(photo, *rule.of(*photo.shape[:2]))
    sh, sw = scaled.shape[:2]
    # "symmetric" mirrors like reflect but also works when the photo is 1 px wide.
    padded = np.pad(scaled, ((0, max(0, window - sh)), (0, max(0, window - sw)), (0, 0)), mode="symmetric")
    ph, pw = padded.shape[:2]
    weight = blend_window(window, window)
    windows = [(y, x) for y in tile_starts(ph, window, overlap) for x in tile_starts(pw, window, overlap)]
    total: np.ndarray | None = None
    norm = np.zeros((ph, pw), np.float32)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        logits = model.logits(np.stack([padded[y : y + window, x : x + window] for y, x in chunk]))
        if total is None:
            total = np.zeros((logits.shape[1], ph, pw), np.float32)
        for (y, x), window_logits in zip(chunk, logits):
            total[:, y : y + window, x : x + window] += window_logits * weight
            norm[y : y + window, x : x + window] += weight
    return (total / norm)[:, :sh, :sw]
