"""A lunar checkpoint run in PyTorch: loaded on a device in its best precision, fed uint8 frames, giving logits.

The PyTorch side of ``lunar_cli.predictor`` (whose other side is ONNX Runtime) and what
training's validation, ``evaluate``, ``compare`` and ``export`` run. Frames are fed whole
(fully convolutional) at the model's scale, normalised as it was trained
(``frames.normalize``), centred in the next multiple of its padding with edge pixels
repeated (``frames.padding``, as exported models are padded), and the logits cropped back;
``frame_logits`` upsamples them to the size the caller asks for (``postprocess.upsample``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lunar_cli.frames import normalize, padding
from lunar_cli.model_spec import ModelSpec
from lunar_cli.models.checkpoint import build_from_checkpoint, load_checkpoint
from lunar_cli.postprocess import upsample
from lunar_cli.runtime import Precision, choose_precision

PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}  # autocast dtype -> record name


@dataclass
class TorchModel:
    """A PyTorch network ready to run on photos, with what its checkpoint says about its inputs and outputs."""
    net: torch.nn.Module
    spec: ModelSpec
    device: torch.device
    precision: Precision

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, C, h, w) on the CPU for uint8 RGB frames (N, h, w, 3) at the model's scale."""
        batch = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return forward(self, to_input(self, batch)).cpu().numpy()

    def runs_on(self) -> dict[str, str]:
        """Return where and how the model runs, for records: device, precision and memory layout."""
        return {"device": str(self.device), "precision": PRECISION_NAMES[self.precision.dtype],
                "layout": "channels-last" if self.precision.channels_last else "NCHW"}  # fmt: skip


def load_model(
    path: Path, device: torch.device | str = "cpu", amp: bool | None = None, channels_last: bool | None = None
) -> TorchModel:
    """Return the model in ``path`` (a lunar checkpoint) on ``device`` in eval mode, in its best precision.

    ``amp`` and ``channels_last`` as in ``runtime.choose_precision`` (None: automatic).
    """
    device = torch.device(device)
    ckpt = load_checkpoint(Path(path))
    net = build_from_checkpoint(ckpt, name=str(path))
    return wrap_model(net, ckpt["meta"], device, choose_precision(device, amp, channels_last))


def wrap_model(net: torch.nn.Module, meta: dict, device: torch.device, precision: Precision) -> TorchModel:
    """Return ``net`` (already built, e.g. the one being trained) as a TorchModel on ``device``, in its layout."""
    net = net.to(device)
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return TorchModel(net=net, spec=ModelSpec(meta), device=device, precision=precision)


def channel_stats(spec: ModelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the model's normalisation mean and std as (1, 3, 1, 1) tensors on ``device``."""
    norm = spec.normalization
    return (torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1),
            torch.tensor(norm["std"], device=device).view(1, 3, 1, 1))  # fmt: skip


def to_input(model: TorchModel, frames: torch.Tensor) -> torch.Tensor:
    """Return uint8 RGB frames (N, h, w, 3) on the model's device as normalised float (N, 3, h, w)."""
    mean, std = channel_stats(model.spec, frames.device)
    x = normalize(frames.permute(0, 3, 1, 2).float().div_(255.0), mean, std)
    fmt = torch.channels_last if model.precision.channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def forward(model: TorchModel, x: torch.Tensor) -> torch.Tensor:
    """Return float32 logits (N, C, h, w) for normalised input (N, 3, h, w) of any size."""
    h, w = x.shape[-2:]
    top, bottom, left, right = padding(h, w, model.spec.pad_multiple)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), mode="replicate")
    with torch.inference_mode(), model.precision.autocast():
        return model.net(x)[..., top : top + h, left : left + w].float()


def frame_logits(model: TorchModel, frames: torch.Tensor, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Return float32 logits for uint8 frames (N, h, w, 3) already at the model's size, at ``out_hw`` (bilinear)."""
    logits = forward(model, to_input(model, frames))
    return logits if out_hw is None else upsample(logits, *out_hw)
