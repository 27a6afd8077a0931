"""int8 models for onboard computers: an exported fp32 ONNX file statically quantised with ONNX Runtime.

``onnxruntime.quantization.quantize_static`` puts int8 weights (per output channel) and
uint8 activations into the graph; the activation ranges are fixed by running the fp32
model on calibration frames (``calibration_frames``): frames of the data folder's val
split at the model's scale, through the decode cache, or rendered lunar scenes when the
data folder has none (the result says which). The graph keeps its uint8 input and float
logits, so lunar predicts with it as with any export, torch-free; the lunar metadata is
carried over with the precision and how it was calibrated added.

The format is QDQ (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into
int8 kernels): on the AVX512-VNNI CPU of bench/RESULTS.md it ran the built-in model as
fast as the QOperator format, with the same accuracy, in a file a fifth smaller.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from lunar_cli.console import LunarError, first_line, info
from lunar_cli.data.cache import build_or_load_cache, cache_folder
from lunar_cli.data.scene import render_scene
from lunar_cli.data.split import MANIFEST_NAME, read_manifest, split_pairs
from lunar_cli.frames import pad_frames, resize_image
from lunar_cli.model_spec import ModelSpec
from lunar_cli.onnx_model import META_KEY

QUANT_FORMAT = "QDQ"  # as fast as QOperator, same mIoU, smaller file: bench/bench_int8.py (bench/RESULTS.md)
RENDERED_SIZE = (480, 720)  # (height, width) of rendered calibration scenes: the real dataset's frames


def calibration_set(spec: ModelSpec, data_dir: Path, cache_dir: Path | None, count: int,
                       seed: int = 0) -> tuple[list[np.ndarray], str]:  # fmt: skip
    """Return up to ``count`` frames (h, w, 3) at the model's scale to calibrate on, and where they come from.

    The val split of ``data_dir`` (evenly spaced frames, read through the decode cache) when
    it has a manifest with val frames; otherwise ``count`` rendered scenes.
    """
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir) if (data_dir / MANIFEST_NAME).is_file() else []
    if any(row["split"] == "val" for row in rows):
        pairs = split_pairs(data_dir, "val")
        split = build_or_load_cache(pairs, spec.frame_size, cache_folder(data_dir, cache_dir), name="val",
                                    progress=False)  # fmt: skip
        rows = np.unique(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int))
        frames = [np.array(split.images[row, : split.sizes[row, 0], : split.sizes[row, 1]]) for row in rows]
        return frames, f"{len(frames)} frames of the val split of {data_dir}"
    rng = np.random.default_rng(seed)
    h, w = spec.frame_size.of(*RENDERED_SIZE)
    frames = [render_scene(rng, RENDERED_SIZE[1], RENDERED_SIZE[0])[0] for _ in range(count)]
    frames = [resize_image(f, h, w) for f in frames]
    return frames, f"{count} rendered scenes ({RENDERED_SIZE[1]}x{RENDERED_SIZE[0]}; no val split in {data_dir})"


@contextlib.contextmanager
def root_warnings_off() -> Iterator[None]:
    """Silence warnings logged on the root logger (ONNX Runtime's quantiser) while the block runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_onnx(fp32: Path, out: Path, frames: list[np.ndarray], pad_multiple: int, meta: dict, source: str,
                  quant_format: str = QUANT_FORMAT) -> dict:  # fmt: skip
    """Write ``fp32`` (a lunar ONNX export) statically quantised to int8 at ``out``; return the quantisation record.

    ``meta`` is the lunar metadata of the fp32 file; the int8 file carries it with
    ``precision`` "int8" and the record (format, weights, activations, calibration ``source``).
    ``quant_format``: "QDQ" or "QOperator".
    """
    import onnx  # heavy: only for int8 exports
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # heavy: as above
    from onnxruntime.quantization.shape_inference import quant_pre_process  # heavy: as above

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(frames)

        def get_next(self) -> dict | None:
            frame = next(self.items, None)
            return None if frame is None else {"images": pad_frames(frame[None], pad_multiple)[0]}

    with tempfile.TemporaryDirectory(prefix="lunar-int8-") as work:
        prepared, quantised = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        try:
            # Shapes and graph fusions first, as ONNX Runtime advises; the frame sides are symbolic
            # (any multiple of the padding), which its symbolic shape inference cannot follow.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            # Its QOperator path prints the graph's inputs (keep --json clean), and its per-channel pass logs a
            # root-logger warning for each 1-D weight it leaves per tensor (EfficientNet's BatchNorm scales).
            with contextlib.redirect_stdout(io.StringIO()), root_warnings_off():
                quantize_static(str(prepared), str(quantised), Frames(), quant_format=getattr(QuantFormat, quant_format),
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantiser raises many kinds; say it in one line
            raise LunarError(f"ONNX Runtime could not quantise the model ({type(exc).__name__}: {first_line(exc)}); "
                             "export it without --int8") from exc  # fmt: skip
        proto = onnx.load(str(quantised))
    record = {"format": quant_format, "weights": "int8, per output channel", "activations": "uint8",
              "calibration": source}  # fmt: skip
    for entry in [e for e in proto.metadata_props if e.key == META_KEY]:
        proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps({**meta, "precision": "int8", "quantization": record})
    onnx.save(proto, str(out))
    info(f"quantised to int8 ({quant_format}), calibrated on {source}")
    return record
