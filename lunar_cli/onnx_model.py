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
from lunar_cli.console import LunarError, first_line
from lunar_cli.frames import pad_frames
from lunar_cli.model_spec import ModelSpec, check_numbers

META_KEY = "lunar"
FORMAT = "lunar-onnx"


@dataclass
class OnnxModel:
    """An exported model loaded in ONNX Runtime, with what its metadata says about inputs and outputs."""
    session: Any  # onnxruntime.InferenceSession
    spec: ModelSpec
    path: Path

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, C, h, w) for uint8 RGB frames (N, h, w, 3) at the model's scale.

        Frames are centred in the next multiple of the model's padding multiple, edge
        pixels repeated, exactly as the PyTorch side pads them; the logits are cropped back.
        """
        padded, (top, left, h, w) = pad_frames(frames, self.spec.pad_multiple)
        try:
            (out,) = self.session.run(None, {self.session.get_inputs()[0].name: np.ascontiguousarray(padded)})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error classes (InvalidArgument, Fail...)
            raise LunarError(f"{self.path}: ONNX Runtime could not run the model on a {w}x{h} frame "
                             f"({first_line(exc)}); export the model again with lunar export") from exc  # fmt: skip
        return out[:, :, top : top + h, left : left + w]

    def runs_on(self) -> dict[str, str]:
        """Return where and how the model runs, for records: ONNX Runtime on the CPU, as exported (fp32, or int8)."""
        return {"device": "cpu", "precision": str(self.spec.meta.get("precision", "fp32")), "layout": "onnxruntime"}


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


def check_signature(path: Path, session: Any) -> None:
    """Refuse, in one line, an ONNX model that does not take what lunar feeds: uint8 (N, H, W, 3) of any H and W."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    fixed = [d for d in shape[1:3] if isinstance(d, int)]
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(shape) != 4 or shape[3] != 3:
        got = ", ".join(f"{i.type} {list(i.shape)}" for i in inputs)
        raise LunarError(f"{path}: the model takes {got}, not uint8 RGB frames (N, H, W, 3) as lunar exports do; "
                         "export it with lunar export")  # fmt: skip
    if fixed:
        raise LunarError(f"{path}: the model takes frames of a fixed {shape[2]}x{shape[1]} only; lunar feeds photos "
                         "at their own size: export it with lunar export (any size)")  # fmt: skip
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        raise LunarError(f"{path}: the model gives {len(outputs)} output(s) of shape "
                         f"{[list(o.shape) for o in outputs]}, not logits (N, C, H, W); export it with lunar export")  # fmt: skip


def load_onnx(path: Path, threads: int | None = None) -> OnnxModel:
    """Return the ONNX model at ``path`` ready to run on the CPU, refusing foreign or damaged files in one line."""
    import onnxruntime as ort  # heavy: loaded only when an ONNX model is run

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
        raise LunarError(
            f"{path}: not a readable ONNX model ({first_line(exc, 120)}); export it again with lunar export"
        ) from exc
    meta = read_metadata(path, session)
    check_numbers(meta, str(path))
    check_signature(path, session)
    classes = session.get_outputs()[0].shape[1]
    if classes != len(meta.get("classes", [])) or classes != NUM_CLASSES:
        raise LunarError(
            f"{path}: the model gives {classes} classes but lunar segments {NUM_CLASSES} (ground, sky, small "
            "rocks, large rocks); export a lunar model"
        )
    return OnnxModel(session=session, spec=ModelSpec(meta), path=path)
