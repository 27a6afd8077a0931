"""The one way lunar runs a model on photos: find and load it, feed frames at its scale, get logits back.

Shared by training's validation, ``evaluate``, ``predict`` and ``compare``, so that
preprocessing always comes from the checkpoint (the frame scale it was trained at, its
normalisation) and is never re-specified by the user. Frames are fed whole (fully
convolutional, padded to the network's multiple of 32), or in overlapping windows for
frames too big for memory; logits are upsampled to the size the caller asks for (the
photo's own, or the label's), never a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import LunarError
from lunar_cli.data.cache import FrameSize

if TYPE_CHECKING:
    import torch

    from lunar_cli.runtime import Precision

MULTIPLE = 32  # smp U-Nets halve their input 5 times
DEFAULT_WINDOW = 512  # tile window at the model's scale, for models trained on crops


@dataclass
class Model:
    """A model ready to run on photos, with what its checkpoint says about its inputs."""

    net: "torch.nn.Module"
    meta: dict
    device: "torch.device"
    precision: "Precision"

    @property
    def frame_size(self) -> FrameSize:
        """How photos are sized for this model: the scale it was trained at, or the study's square."""
        return frame_size_of(self.meta)

    @property
    def window(self) -> int:
        """The tile side, in pixels at the model's scale, for frames fed in windows."""
        square = self.frame_size.square
        return square if square is not None else int(self.meta.get("crop_size") or DEFAULT_WINDOW)

    @property
    def class_names(self) -> list[str]:
        """The class names in index order."""
        return [c["name"] for c in self.meta.get("classes", [])] or list(CLASS_NAMES)


def frame_size_of(meta: dict) -> FrameSize:
    """Return a checkpoint's frame size rule; checkpoints from before scales existed were squashed squares."""
    rule = meta.get("frame_size")
    if rule is not None:
        return FrameSize(scale=float(rule["scale"]), square=rule.get("square"))
    return FrameSize(square=int(meta["image_size"][0]))


def find_model(model: Path | None, runs_dir: Path, models_dir: Path = Path("models")) -> tuple[Path, bool]:
    """Return (checkpoint path, whether it was chosen automatically).

    ``model`` may be a checkpoint file or a run folder (its ``best.pt``). With no
    ``model``, the newest ``best.pt`` under ``runs_dir`` (then ``models_dir``) is used.
    """
    from lunar_cli.rundir import latest_file

    if model is not None:
        model = Path(model)
        if model.is_dir():
            for candidate in (model / "best.pt", model / "weights" / "best.pt", model / "last.pt"):
                if candidate.is_file():
                    return candidate, False
            raise LunarError(f"{model}: no best.pt or last.pt in this folder; give a checkpoint file or a run folder")
        if not model.exists():
            raise LunarError(f"{model}: no such model file; give a checkpoint (.pt) or a run folder")
        return model, False
    newest = latest_file(runs_dir, "best.pt") or (latest_file(models_dir, "*.pt") if Path(models_dir).is_dir() else None)
    if newest is None:
        raise LunarError(f"no trained model under {runs_dir}/: run lunar train (or pass --model FILE)")
    return newest, True


def load_model(
    path: Path, device: "torch.device | str" = "cpu", amp: bool | None = None, channels_last: bool | None = None
) -> Model:
    """Return the model in ``path`` (a lunar checkpoint) on ``device`` in eval mode, in its best precision.

    ``amp`` and ``channels_last`` as in ``runtime.choose_precision`` (None: automatic).
    """
    import torch

    from lunar_cli.models.checkpoint import build_from_checkpoint, load_checkpoint
    from lunar_cli.runtime import choose_precision

    device = torch.device(device)
    ckpt = load_checkpoint(Path(path))
    return wrap_model(build_from_checkpoint(ckpt, name=str(path)), ckpt["meta"], device,
                      choose_precision(device, amp, channels_last))  # fmt: skip


def wrap_model(net: "torch.nn.Module", meta: dict, device: "torch.device", precision: "Precision") -> Model:
    """Return ``net`` (already built, e.g. the one being trained) as a Model on ``device``, in its layout."""
    import torch

    net = net.to(device)
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return Model(net=net, meta=meta, device=device, precision=precision)


def to_input(model: Model, frames: "torch.Tensor") -> "torch.Tensor":
    """Return uint8 RGB frames (N, h, w, 3) on the model's device as normalised float (N, 3, h, w)."""
    import torch

    norm = model.meta["normalization"]
    mean = torch.tensor(norm["mean"], device=frames.device).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(norm["std"], device=frames.device).view(1, 3, 1, 1)
    x = frames.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).mul_(inv_std)
    fmt = torch.channels_last if model.precision.channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def forward(model: Model, x: "torch.Tensor") -> "torch.Tensor":
    """Return float32 logits (N, C, h, w) for normalised input (N, 3, h, w) of any size.

    smp U-Nets need sides they can halve five times: their input is padded (edge pixels
    repeated) to a multiple of 32 and the logits cropped back. The custom U-Net pads
    itself only as far as its own depth needs, so its frame edges look as in training.
    """
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    multiple = MULTIPLE if model.meta.get("encoder") else 1
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    with torch.inference_mode(), model.precision.autocast():
        return model.net(x)[..., :h, :w].float()


def frame_logits(model: Model, frames: "torch.Tensor", out_hw: tuple[int, int] | None = None) -> "torch.Tensor":
    """Return float32 logits for uint8 frames (N, h, w, 3) already at the model's size, at ``out_hw`` (bilinear)."""
    import torch.nn.functional as F

    logits = forward(model, to_input(model, frames))
    if out_hw is not None and tuple(logits.shape[-2:]) != tuple(out_hw):
        logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
    return logits


def photo_logits(model: Model, photos: list[np.ndarray]) -> "torch.Tensor":
    """Return float32 logits (N, C, H, W) at the photos' own size for same-size uint8 RGB photos (H, W, 3).

    Each photo is resized to the model's size (its training scale) as the training cache
    was, run whole, and its logits upsampled back.
    """
    import torch

    from lunar_cli.data.cache import resize_image

    height, width = photos[0].shape[:2]
    h, w = model.frame_size.of(height, width)
    batch = torch.from_numpy(np.stack([resize_image(p, h, w) for p in photos])).to(model.device)
    return frame_logits(model, batch, (height, width))


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


def tiled_logits(model: Model, photo: np.ndarray, overlap: float, batch_size: int) -> "torch.Tensor":
    """Return logits (C, H, W) on CPU for a photo of any size, by sliding windows over it.

    The photo is resized to the model's training scale (a model trained on squashed
    squares sees it at full resolution, in windows of its square), then cut into
    ``model.window``-sided windows; overlapping windows are blended with ``blend_window``
    weights, so there are no seams, and the running sums live in one float32 buffer on
    CPU, so device memory stays at one batch of windows however big the photo. A photo
    smaller than a window is mirror-padded, then cropped back. The logits are upsampled
    to the photo's size.
    """
    import torch
    import torch.nn.functional as F

    from lunar_cli.data.cache import resize_image

    height, width = photo.shape[:2]
    rule = model.frame_size
    scaled = photo if rule.square is not None else resize_image(photo, *rule.of(height, width))
    sh, sw = scaled.shape[:2]
    win = model.window
    # "symmetric" mirrors like reflect but also works when the photo is 1 px wide.
    padded = np.pad(scaled, ((0, max(0, win - sh)), (0, max(0, win - sw)), (0, 0)), mode="symmetric")
    ph, pw = padded.shape[:2]
    weight = torch.from_numpy(blend_window(win, win))
    windows = [(y, x) for y in tile_starts(ph, win, overlap) for x in tile_starts(pw, win, overlap)]
    total: torch.Tensor | None = None
    norm = torch.zeros(ph, pw)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        crops = torch.from_numpy(np.stack([padded[y : y + win, x : x + win] for y, x in chunk])).to(model.device)
        logits = frame_logits(model, crops).cpu()
        if total is None:
            total = torch.zeros(logits.shape[1], ph, pw)
        for (y, x), window_logits in zip(chunk, logits):
            total[:, y : y + win, x : x + win] += window_logits * weight
            norm[y : y + win, x : x + win] += weight
    logits = (total / norm)[:, :sh, :sw]
    if (sh, sw) != (height, width):
        logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return logits
