"""The one way lunar runs a model on photos: find and load it, feed frames at its scale, get logits back.

Shared by training's validation, ``evaluate``, ``predict``, ``compare`` and ``export``, so
that preprocessing always comes from the checkpoint (the frame scale it was trained at,
its normalisation) and is never re-specified by the user. Frames are fed whole (fully
convolutional), centred in the next multiple of the network's padding with edge pixels
repeated; logits are upsampled to the size the caller asks for (the photo's own, or the
label's), never a mask. ``predict`` turns logits into maps in ``lunar_cli.photos`` (NumPy
only), which also runs exported ONNX models (``lunar_cli.onnx_model``) and tiles frames
too big for memory.
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


class Described:
    """What a model's metadata says about its inputs and outputs (shared by PyTorch and ONNX models)."""

    meta: dict

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


@dataclass
class Model(Described):
    """A PyTorch model ready to run on photos, with what its checkpoint says about its inputs."""

    net: "torch.nn.Module"
    meta: dict
    device: "torch.device"
    precision: "Precision"

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, C, h, w) on the CPU for uint8 RGB frames (N, h, w, 3) at the model's scale."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        return forward(self, to_input(self, batch)).cpu().numpy()


def frame_size_of(meta: dict) -> FrameSize:
    """Return a checkpoint's frame size rule; checkpoints from before scales existed were squashed squares."""
    rule = meta.get("frame_size")
    if rule is not None:
        return FrameSize(scale=float(rule["scale"]), square=rule.get("square"))
    return FrameSize(square=int(meta["image_size"][0]))


def find_model(model: Path | str | None, runs_dir: Path, models_dir: Path = Path("models")) -> tuple[Path, str]:
    """Return (model path, how it was chosen: "given", "newest" or "builtin").

    ``model`` may be a checkpoint file, a run folder (its ``best.pt``), an exported .onnx
    or ``builtin``. With no ``model``, the newest ``best.pt`` under ``runs_dir/train``
    (then ``models_dir``), else the built-in model.
    """
    from lunar_cli.models.builtin import NAME, builtin_checkpoint
    from lunar_cli.rundir import latest_file

    def builtin() -> tuple[Path, str]:
        return builtin_checkpoint(), "builtin"

    if model is not None:
        if str(model) == NAME:
            return builtin()
        model = Path(model)
        if model.is_dir():
            for candidate in (model / "best.pt", model / "weights" / "best.pt"):
                if candidate.is_file():
                    return candidate, "given"
            if (model / "last.pt").is_file():
                return _last_of_unfinished_run(model / "last.pt"), "given"
            raise LunarError(f"{model}: no best.pt or last.pt in this folder; give a checkpoint file or a run folder")
        if not model.exists():
            raise LunarError(f"{model}: no such model file; give a checkpoint (.pt), an .onnx, a run folder or builtin")
        return model, "given"
    train_dir, models_dir = Path(runs_dir) / "train", Path(models_dir)
    newest = (latest_file(train_dir, "best.pt") if train_dir.is_dir() else None) or (
        latest_file(models_dir, "*.pt") if models_dir.is_dir() else None)  # fmt: skip
    return (newest, "newest") if newest is not None else builtin()


def _last_of_unfinished_run(last: Path) -> Path:
    """Return a run's last.pt to use for lack of a best.pt, saying so; refuse one saved before any epoch ended."""
    from lunar_cli.console import info
    from lunar_cli.models.checkpoint import load_checkpoint

    epoch = load_checkpoint(last, mmap=True)["meta"].get("epoch")
    if not epoch:
        raise LunarError(f"{last}: the run has no best.pt and its last.pt is from epoch 0 (saved before training: "
                         f"untrained weights); finish the run with lunar train --resume {last.parent}")  # fmt: skip
    info(f"{last.parent}: no best.pt (its training stopped early); using last.pt, from epoch {epoch}")
    return last


def said_model(path: Path, how: str, runs_dir: Path) -> str | None:
    """Return the line that says which model a command uses when the user did not name one (None when they did)."""
    if how == "newest":
        return f"using model {path} (newest under {Path(runs_dir) / 'train'}/)"
    if how == "builtin":
        return ("using the built-in model (trained on synthetic scenes only; see MODEL_CARD.md): "
                "train your own with lunar train")  # fmt: skip
    return None


def load_any(path: Path, device="auto", amp: bool | None = None, channels_last: bool | None = None):
    """Return the model at ``path`` for predict: an ONNX file in ONNX Runtime (torch is never imported), else a checkpoint.

    ``device`` is a name (auto, cpu, cuda:N) or a torch.device already chosen (a torchrun rank's).
    """
    if Path(path).suffix.lower() == ".onnx":
        from lunar_cli.console import warn
        from lunar_cli.onnx_model import load_onnx

        ignored = [flag for flag, given in (("--device", str(device) not in ("auto", "cpu")), ("--amp", amp is not None),
                                            ("--channels-last", channels_last is not None)) if given]  # fmt: skip
        if ignored:
            warn(f"{path}: ONNX Runtime runs it on the CPU in fp32 as exported; {', '.join(ignored)} not used")
        return load_onnx(Path(path))
    if isinstance(device, str):
        from lunar_cli.runtime import select_device

        device = select_device(device)
    return load_model(path, device, amp, channels_last)


def temperature_of(meta: dict) -> float:
    """Return the calibration temperature a model's logits are divided by for probabilities (1 if uncalibrated)."""
    return float(meta.get("calibration", {}).get("temperature") or 1.0)


def pad_frames(frames: np.ndarray, meta: dict) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Return uint8 frames (N, h, w, 3) centred in the model's padding multiple (edges repeated), and (top, left, h, w).

    NumPy only: what exported models are fed (the PyTorch engine pads the same way in ``forward``).
    """
    h, w = frames.shape[1:3]
    top, bottom, left, right = padding(h, w, pad_multiple(meta))
    if top or bottom or left or right:
        frames = np.pad(frames, ((0, 0), (top, bottom), (left, right), (0, 0)), mode="edge")
    return frames, (top, left, h, w)


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


def pad_multiple(meta: dict) -> int:
    """Return the multiple a model's input sides are padded to: 32 for smp U-Nets, 2**depth for the custom one."""
    if "pad_multiple" in meta:  # an exported model says it
        return int(meta["pad_multiple"])
    if meta.get("encoder"):
        return MULTIPLE
    from lunar_cli.models.registry import CUSTOM_DEFAULTS

    return 2 ** int(meta.get("model_kwargs", {}).get("depth", CUSTOM_DEFAULTS["depth"]))


def padding(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) padding that centres an h x w frame in the next multiple."""
    ph, pw = -h % multiple, -w % multiple
    return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2


def forward(model: Model, x: "torch.Tensor") -> "torch.Tensor":
    """Return float32 logits (N, C, h, w) for normalised input (N, 3, h, w) of any size.

    The input is centred in the next multiple of the network's ``pad_multiple`` with its
    edge pixels repeated (as the custom U-Net pads itself), and the logits cropped back;
    exported models take the same padding, so both give the same answer.
    """
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    top, bottom, left, right = padding(h, w, pad_multiple(model.meta))
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), mode="replicate")
    with torch.inference_mode(), model.precision.autocast():
        return model.net(x)[..., top : top + h, left : left + w].float()


def frame_logits(model: Model, frames: "torch.Tensor", out_hw: tuple[int, int] | None = None) -> "torch.Tensor":
    """Return float32 logits for uint8 frames (N, h, w, 3) already at the model's size, at ``out_hw`` (bilinear)."""
    import torch.nn.functional as F

    logits = forward(model, to_input(model, frames))
    if out_hw is not None and tuple(logits.shape[-2:]) != tuple(out_hw):
        logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
    return logits
