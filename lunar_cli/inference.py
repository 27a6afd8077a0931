"""Running a trained model: find and load a checkpoint, preprocess like training, get logits.

Shared by ``evaluate``, ``predict`` and ``compare`` so that preprocessing always comes
from the checkpoint (size, normalisation) and is never re-specified by the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lunar_cli.console import LunarError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lunar_cli.runtime import Precision


@dataclass
class LoadedModel:
    """A model ready for inference, with what its checkpoint says about its inputs."""

    model: "torch.nn.Module"
    meta: dict
    device: "torch.device"
    precision: "Precision"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at."""
        h, w = self.meta["image_size"]
        return int(h), int(w)


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
) -> LoadedModel:
    """Return the model in ``path`` (a lunar checkpoint) on ``device`` in eval mode, in its best precision.

    ``amp`` and ``channels_last`` as in ``runtime.choose_precision`` (None: automatic).
    """
    import torch

    from lunar_cli.models.checkpoint import build_from_checkpoint, load_checkpoint
    from lunar_cli.runtime import choose_precision

    device = torch.device(device)
    ckpt = load_checkpoint(Path(path))
    precision = choose_precision(device, amp, channels_last)
    model = build_from_checkpoint(ckpt, name=str(path)).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(model=model, meta=ckpt["meta"], device=device, precision=precision)


def to_input(images: "torch.Tensor | np.ndarray", meta: dict, device: "torch.device") -> "torch.Tensor":
    """Return uint8 RGB images (N, H, W, 3) as normalised float (N, 3, H, W) on ``device``."""
    import torch

    batch = torch.as_tensor(images).to(device, non_blocking=True)
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(meta["normalization"]["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta["normalization"]["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def logits_for(loaded: LoadedModel, images: Any) -> "torch.Tensor":
    """Return float32 logits (N, C, H, W) for uint8 images (N, H, W, 3) already at the model's size."""
    import torch

    x = to_input(images, loaded.meta, loaded.device)
    if loaded.precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), loaded.precision.autocast():
        return loaded.model(x).float()
