"""How photos become a network's input frames: the size rule, resizing, padding, normalisation.

Torch-free (NumPy and OpenCV), so that training's cache, PyTorch inference and ONNX
inference all size, pad and normalise frames by the same rules. A model is fed frames at
the size it was trained at (``FrameSize``: a share of each frame's own size, a fixed height
with the aspect kept, or the study's squashed square), centred in the next multiple of its padding multiple with edge
pixels repeated, then normalised per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

MULTIPLE = 32  # smp U-Nets halve their input 5 times
DEFAULT_WINDOW = 512  # tile window at the model's scale, for models trained on crops


@dataclass(frozen=True)
class FrameSize:
    """How a frame of H x W pixels is sized for the model: ``scale`` of its own size, a fixed ``height``, or a ``square``."""
    scale: float = 1.0
    square: int | None = None  # the study's recipe: every frame squashed to square x square
    # Every frame resized to this height, its aspect kept: rocks come out the size in pixels they had in the
    # training frames whatever the photo's resolution (the built-in model: 320, its scenes' height).
    height: int | None = None

    def of(self, height: int, width: int) -> tuple[int, int]:
        """Return the (height, width) a frame of ``height`` x ``width`` has at the model's size."""
        if self.square is not None:
            return self.square, self.square
        if self.height is not None:
            return self.height, max(1, round(width * self.height / height))
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def describe(self) -> str:
        """Return the rule in words, for logs and results ("scale 0.5", "height 320", "squashed to 256x256")."""
        if self.square is not None:
            return f"squashed to {self.square}x{self.square}"
        return f"height {self.height}" if self.height is not None else f"scale {self.scale:g}"

    def as_meta(self) -> dict[str, Any]:
        """Return the rule as a model file records it (``ModelSpec.frame_size`` reads it back)."""
        return {"scale": float(self.scale), "square": self.square, **({"height": self.height} if self.height else {})}


def resize_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Return ``img`` at (h, w): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    if img.shape[:2] == (h, w):
        return img
    shrinking = h <= img.shape[0] and w <= img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def model_scale_frames(size: FrameSize, photos: Sequence[np.ndarray]) -> np.ndarray:
    """Return same-size uint8 photos (H, W, 3) resized by ``size``'s rule, stacked (N, h, w, 3)."""
    h, w = size.of(*photos[0].shape[:2])
    return np.stack([resize_image(p, h, w) for p in photos])


def padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) padding that centres an h x w frame in the next multiple."""
    ph, pw = -h % multiple, -w % multiple
    return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2


def pad_frames(frames: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Return uint8 frames (N, h, w, 3) centred in the next ``multiple`` (edges repeated), and (top, left, h, w).

    What exported models are fed; the PyTorch path pads the same ``padding`` on the device.
    """
    h, w = frames.shape[1:3]
    top, bottom, left, right = padding(h, w, multiple)
    if top or bottom or left or right:
        frames = np.pad(frames, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="edge")
    return frames, (top, left, h, w)


def normalize(x: Any, mean: Any, std: Any) -> Any:
    """Return 0-1 RGB frames normalised per channel, ``(x - mean) / std``, for NumPy arrays and torch tensors alike.

    ``mean`` and ``std`` broadcast against ``x`` (shaped (1, 3, 1, 1) for (N, 3, H, W) frames).
    Training's loader, PyTorch inference and the exported graph all normalise through here.
    """
    return (x - mean) / std
