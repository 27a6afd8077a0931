"""The one way lunar runs a model on photos: a PyTorch checkpoint or an ONNX export behind the same two calls.

A predictor has a ``spec`` (``model_spec.ModelSpec``: what photos need and what its
outputs mean) and ``logits(frames)``: uint8 RGB frames at the model's scale in, float32
logits out, as NumPy arrays. ``predict`` (and anything that serves photos) resizes each
photo by the spec's rule, runs the passes here, and finishes them with
``postprocess.finish``. An ONNX model runs in ONNX Runtime and torch is never imported;
frames too big for memory are run in overlapping windows (``tiled_logits``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lunar_cli.console import warn
from lunar_cli.frames import resize_image
from lunar_cli.hazard import assess_hazard
from lunar_cli.model_spec import ModelSpec
from lunar_cli.postprocess import Outputs, mirror_frames, unmirror
from lunar_cli.runtime import select_device


class Predictor(Protocol):
    """What running a model on photos needs of it: its spec, logits for uint8 frames at its scale, and where it runs."""
    spec: ModelSpec

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, C, h, w) for uint8 RGB frames (N, h, w, 3)."""

    def runs_on(self) -> dict[str, str]:
        """Return the device, precision and memory layout the model runs in."""


def load_predictor(path: Path, device="auto", amp: bool | None = None, channels_last: bool | None = None) -> Predictor:
    """Return the model at ``path``: an ONNX file in ONNX Runtime (torch never imported), else a checkpoint in PyTorch.

    ``device`` is a name (auto, cpu, cuda:N) or a torch.device already chosen (a torchrun rank's).
    """
    if Path(path).suffix.lower() == ".onnx":
        from lunar_cli.onnx_model import load_onnx  # onnxruntime only: the torch-free path

        ignored = [flag for flag, given in (("--device", str(device) not in ("auto", "cpu")), ("--amp", amp is not None),
                                            ("--channels-last", channels_last is not None)) if given]  # fmt: skip
        if ignored:
            warn(f"{path}: ONNX Runtime runs it on the CPU in fp32 as exported; {', '.join(ignored)} not used")
        return load_onnx(Path(path))
    from lunar_cli.torch_model import load_model  # heavy: torch, for checkpoints only

    return load_model(path, select_device(device) if isinstance(device, str) else device, amp, channels_last)


def model_passes(model: Predictor, frames: np.ndarray, tta: bool) -> list[np.ndarray]:
    """Return the logits (N, C, h, w) of each pass over frames at the model's scale: as they are, and mirrored."""
    passes = [model.logits(frames)]
    if tta:
        passes.append(unmirror(model.logits(mirror_frames(frames))))
    return passes


def photo_summary(spec: ModelSpec, outputs: Outputs, hazard_margin: int | None) -> tuple[dict[str, Any], tuple | None]:
    """Return what a record says of one photo's outputs, and its (hazard, safe) maps when ``hazard_margin`` is given.

    The record: class_fractions, and hazard (largest safe circle...), uncertainty (mean,
    TTA spread) and out_of_distribution when those were asked for.
    """
    names = spec.class_names
    counts = np.bincount(outputs.classes.ravel(), minlength=len(names))
    record: dict[str, Any] = {
        "class_fractions": {name: round(float(c) / outputs.classes.size, 6) for name, c in zip(names, counts)},
    }
    maps = None
    if hazard_margin is not None:
        record["hazard"], *maps = assess_hazard(outputs.classes, hazard_margin)
    if outputs.uncertainty is not None:
        mean = float(outputs.uncertainty.mean())
        record["uncertainty"] = {"mean": round(mean, 6)}
        if outputs.spread is not None:
            record["uncertainty"]["tta_spread"] = round(float(outputs.spread.mean()), 6)
        if spec.ood_threshold is not None:
            record["out_of_distribution"] = bool(mean > spec.ood_threshold)
    return record, (tuple(maps) if maps is not None else None)


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


def tiled_logits(model: Predictor, photo: np.ndarray, overlap: float, batch_size: int) -> np.ndarray:
    """Return logits (C, h, w) at the model's scale for a photo of any size, by sliding windows over it.

    The photo is resized to the model's training scale (a model trained on squashed
    squares sees it at full resolution, in windows of its square), then cut into windows
    of the spec's side; overlapping windows are blended with ``blend_window`` weights, so
    there are no seams, and memory stays at one batch of windows however big the photo.
    A photo smaller than a window is mirror-padded, then cropped back.
    """
    rule, window = model.spec.frame_size, model.spec.window
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
