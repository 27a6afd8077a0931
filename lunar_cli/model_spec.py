"""What a model is, and what photos need before its network, read from a checkpoint's or an ONNX file's metadata.

Torch-free: PyTorch checkpoints and exported ONNX models are described alike, so every
command prepares photos from the model file (the scale it was trained at, its padding
multiple and normalisation) and reads its outputs the same way (class names, calibration
temperature, out-of-distribution threshold). Nothing here is re-typed by the user.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.console import LunarError
from lunar_cli.frames import DEFAULT_WINDOW, MULTIPLE, FrameSize


@dataclass(frozen=True)
class ModelSpec:
    """A model's metadata (checkpoint ``meta`` or ONNX "lunar" metadata) and what it says about inputs and outputs."""
    meta: dict

    @property
    def backbone(self) -> str:
        """The backbone's friendly name ("custom", "resnet18", ...)."""
        return str(self.meta.get("backbone", "?"))

    @property
    def class_names(self) -> list[str]:
        """The class names in index order."""
        return [c["name"] for c in self.meta.get("classes", [])] or list(CLASS_NAMES)

    @property
    def frame_size(self) -> FrameSize:
        """How photos are sized for this model: the scale it was trained at, a fixed height, or the study's square."""
        rule = self.meta.get("frame_size")
        if rule is not None:
            return FrameSize(scale=float(rule["scale"]), square=rule.get("square"), height=rule.get("height"))
        return FrameSize(square=int(self.meta["image_size"][0]))  # checkpoints from before scales existed

    @property
    def pad_multiple(self) -> int:
        """The multiple a frame's sides are padded to: 32 for smp U-Nets, 2**depth for the custom one."""
        if "pad_multiple" in self.meta:  # an exported model says it
            return int(self.meta["pad_multiple"])
        if self.meta.get("encoder"):
            return MULTIPLE
        return 2 ** int(self.meta["model_kwargs"]["depth"])  # checkpoint.load_checkpoint fills it for old files

    @property
    def window(self) -> int:
        """The tile side, in pixels at the model's scale, for frames fed in windows."""
        square = self.frame_size.square
        return square if square is not None else int(self.meta.get("crop_size") or DEFAULT_WINDOW)

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The per-channel ``mean`` and ``std`` of 0-1 RGB the network was trained on."""
        return self.meta.get("normalization") or self.meta["normalization_in_graph"]

    @property
    def calibration(self) -> dict[str, Any]:
        """The calibration record fitted on val (temperature, ECE, out-of-distribution threshold), or {}."""
        return self.meta.get("calibration") or {}

    @property
    def temperature(self) -> float:
        """The temperature logits are divided by for probabilities (1 if uncalibrated)."""
        return float(self.calibration.get("temperature") or 1.0)

    @property
    def ood_threshold(self) -> float | None:
        """The mean uncertainty above which a photo looks unlike anything the model was validated on (None if unknown)."""
        value = self.calibration.get("ood_threshold")
        return None if value is None else float(value)

    def with_temperature(self, temperature: float) -> "ModelSpec":
        """Return this spec with its probabilities calibrated by ``temperature`` (for fitting one)."""
        return dataclasses.replace(self, meta={**self.meta, "calibration": {**self.calibration, "temperature": temperature}})


def check_numbers(meta: dict[str, Any], name: str) -> None:
    """Refuse, in one line, a model whose normalisation or calibration is not a finite, usable number.

    A NaN temperature or a zero standard deviation would turn every photo into NaN
    probabilities, and every mask into ground, without an error.
    """

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    norm = meta.get("normalization") or meta.get("normalization_in_graph") or {}
    mean, std = norm.get("mean"), norm.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3
            and all(finite(v) for v in mean) and all(finite(v) and v > 0 for v in std)):  # fmt: skip
        raise LunarError(f"{name}: damaged model (normalisation mean {mean}, std {std}: 3 finite numbers each, "
                         "std above 0); retrain or export the model again")  # fmt: skip
    height = (meta.get("frame_size") or {}).get("height")
    if height is not None and not (isinstance(height, int) and not isinstance(height, bool) and 8 <= height <= 8192):
        raise LunarError(f"{name}: damaged model (frame_size height {height!r}: a whole number of pixels, 8 to 8192); "
                         "export the model again")  # fmt: skip
    calibration = meta.get("calibration") or {}
    for key, ok in (("temperature", lambda v: finite(v) and v > 0), ("ood_threshold", finite)):
        if calibration.get(key) is not None and not ok(calibration[key]):
            raise LunarError(f"{name}: damaged model (calibration {key} {calibration[key]!r}); retrain it, or "
                             "calibrate it again by resuming its run")  # fmt: skip
