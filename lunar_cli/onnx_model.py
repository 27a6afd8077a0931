"""Running an exported model with ONNX Runtime: no torch, so ``lunar predict --model m.onnx`` starts in a blink.

A lunar ONNX file (``lunar export``) takes uint8 RGB frames (N, H, W, 3) whose sides are
multiples of its ``pad_multiple`` and gives logits (N, C, H, W); normalisation is inside
the graph. Its metadata ("lunar" in the model's metadata_props, JSON) carries what
predict needs without our code: classes and colours, the scale frames are fed at, the
padding multiple, the calibration temperature and the out-of-distribution threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lunar_cli.classes import NUM_CLASSES
from lunar_cli.console import LunarError
from lunar_cli.engine import Described

META_KEY = "lunar"
FORMAT = "lunar-onnx"


@dataclass
class OnnxModel(Described):
    """An exported model loaded in ONNX Runtime, with the metadata it carries."""

    session: Any  # onnxruntime.InferenceSession
    meta: dict
    path: Path

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, C, h, w) for uint8 RGB frames (N, h, w, 3) at the model's scale.

        Frames are centred in the next multiple of the model's padding multiple, edge
        pixels repeated, exactly as the PyTorch engine pads them; the logits are cropped back.
        """
        from lunar_cli.engine import pad_frames

        padded, (top, left, h, w) = pad_frames(frames, self.meta)
        (out,) = self.session.run(None, {self.session.get_inputs()[0].name: np.ascontiguousarray(padded)})
        return out[:, :, top : top + h, left : left + w]


def read_metadata(path: Path, session: Any) -> dict:
    """Return the lunar metadata of a loaded ONNX model, or raise LunarError saying what is missing."""
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise LunarError(
            f"{path}: an ONNX model without lunar metadata (classes, scale); lunar predicts only with files "
            "written by lunar export"
        )
    try:
        meta = json.loads(props[META_KEY])
    except ValueError as exc:
        raise LunarError(f"{path}: damaged lunar metadata in the ONNX model; export it again") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LunarError(f"{path}: its lunar metadata is not from lunar export; export it again")
    return meta


def load_onnx(path: Path, threads: int | None = None) -> OnnxModel:
    """Return the ONNX model at ``path`` ready to run on the CPU, refusing foreign or damaged files in one line."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise LunarError(f"{path}: no such model file; give a lunar .onnx file (lunar export writes one)")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: lunar says what went wrong in one line
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidProtobuf classes
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise LunarError(f"{path}: not a readable ONNX model ({first}); export it again with lunar export") from exc
    meta = read_metadata(path, session)
    classes = session.get_outputs()[0].shape[1]
    if classes != len(meta.get("classes", [])) or classes != NUM_CLASSES:
        raise LunarError(
            f"{path}: the model gives {classes} classes but lunar segments {NUM_CLASSES} (ground, sky, small "
            "rocks, large rocks); export a lunar model"
        )
    return OnnxModel(session=session, meta=meta, path=path)
