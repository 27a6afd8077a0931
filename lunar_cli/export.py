"""``lunar export``: a trained model as an ONNX or TorchScript file that carries everything needed to use it.

The exported graph takes uint8 RGB frames (N, H, W, 3), any batch and any H and W that
are multiples of the model's ``pad_multiple`` (32 for smp U-Nets, 2**depth for the
custom one; lunar pads other sizes by repeating edge pixels, centred), and gives float32
logits (N, C, H, W). The normalisation is inside the graph. Classes, colours, the scale
frames were trained at, the padding multiple and the calibration travel in the file's
metadata (ONNX metadata_props "lunar", or TorchScript extra file "lunar.json").

After writing, the file is run on rendered sample scenes and compared with the PyTorch
model: the largest probability difference and the share of pixels whose class agrees.
With ``int8`` the ONNX file is statically quantised (``lunar_cli.quantize``) and checked
against PyTorch the same way.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from lunar_cli import __version__
from lunar_cli.config import Config
from lunar_cli.console import LunarError, info
from lunar_cli.data.scene import render_scene
from lunar_cli.files import atomic_path, refuse_overwrite
from lunar_cli.frames import normalize, pad_frames
from lunar_cli.model_files import find_model
from lunar_cli.onnx_model import FORMAT, load_onnx
from lunar_cli.postprocess import class_map, probabilities
from lunar_cli.quantize import calibration_set, quantize_onnx
from lunar_cli.rundir import run_files
from lunar_cli.torch_model import TorchModel, channel_stats, load_model

SAMPLE_FRAMES = 4  # rendered scenes the export is checked on


def exported_meta(model: TorchModel) -> dict:
    """Return the metadata an exported file carries (JSON-ready)."""
    keep = ("backbone", "encoder", "model_kwargs", "classes", "crop_size", "calibration", "epoch", "best_metric",
            "lunar_version")  # fmt: skip
    meta, rule = model.spec.meta, model.spec.frame_size  # also for checkpoints from before frame_size existed
    return {
        "format": FORMAT, "format_version": 1, **{k: meta[k] for k in keep if k in meta},
        "frame_size": rule.as_meta(),
        "pad_multiple": model.spec.pad_multiple, "normalization_in_graph": model.spec.normalization,
        "input": "uint8 RGB (N, H, W, 3); H and W multiples of pad_multiple; frames at frame_size of the photo",
        "output": "float32 logits (N, C, H, W); probabilities: softmax(logits / calibration.temperature)",
        "exported_by": f"lunar {__version__}",
    }  # fmt: skip


class ExportedGraph(torch.nn.Module):
    """uint8 RGB frames (N, H, W, 3) -> the model's normalisation -> its network -> logits (N, C, H, W)."""
    def __init__(self, model: TorchModel) -> None:
        super().__init__()
        self.net = model.net
        mean, std = channel_stats(model.spec, torch.device("cpu"))
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(normalize(images.permute(0, 3, 1, 2).float() / 255.0, self.mean, self.std))


def sample_frames(model: TorchModel, seed: int = 0) -> np.ndarray:
    """Return a few rendered lunar scenes (N, h, w, 3) at the model's scale for a 360x250 photo.

    The sides are not multiples of the padding on purpose, so the check covers lunar's padding too.
    """
    h, w = model.spec.frame_size.of(250, 360)
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(rng, w, h)[0] for _ in range(SAMPLE_FRAMES)])


def _example(multiple: int) -> torch.Tensor:
    """Return the frames a graph is traced on: batch 2 (a batch of 1 would be fixed), sides multiples of the padding."""
    return torch.from_numpy(np.zeros((2, 2 * multiple, 3 * multiple, 3), np.uint8))


def _write_onnx(graph: ExportedGraph, meta: dict, multiple: int, tmp: Path) -> None:
    import onnx  # heavy: only for ONNX files (torch's exporter writes through it)

    n = torch.export.Dim("batch", min=1, max=4096)
    hb, wb = torch.export.Dim("height_blocks", min=1, max=1024), torch.export.Dim("width_blocks", min=1, max=1024)
    # Exported in memory, then saved once with the metadata: no second file (weights as external data) beside it.
    program = torch.onnx.export(graph, (_example(multiple),), dynamo=True, input_names=["images"],
                                output_names=["logits"], dynamic_shapes={"images": {0: n, 1: multiple * hb,
                                                                                     2: multiple * wb}}, verbose=False)  # fmt: skip
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "lunar", json.dumps(meta)
    onnx.save(proto, str(tmp))


def _write_torchscript(graph: ExportedGraph, meta: dict, multiple: int, tmp: Path) -> None:
    # Quiet: tracer notes about shape checks that hold for every multiple of the padding, and
    # torch's notice that TorchScript is deprecated (the format is asked for by C++/mobile users).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, _example(multiple))
        torch.jit.save(traced, str(tmp), _extra_files={"lunar.json": json.dumps(meta)})


def _torchscript_logits(path: Path, frames: np.ndarray, multiple: int) -> np.ndarray:
    """Return the logits of a TorchScript export for frames at the model's scale, padded as lunar pads them."""
    padded, (top, left, h, w) = pad_frames(frames, multiple)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        return torch.jit.load(str(path))(torch.from_numpy(padded)).numpy()[:, :, top : top + h, left : left + w]


def compare_with_pytorch(model: TorchModel, out: Path, fmt: str, sample: np.ndarray) -> tuple[float, float]:
    """Return (largest probability difference, share of pixels of the same class) between the file and PyTorch."""
    ours = model.logits(sample)
    theirs = load_onnx(out).logits(sample) if fmt == "onnx" else _torchscript_logits(out, sample, model.spec.pad_multiple)
    p, q = probabilities(ours), probabilities(theirs)
    return float(np.abs(p - q).max()), float((class_map(p) == class_map(q)).mean())


def export_model(
    source: Path | str, out: Path, fmt: str = "onnx", runs_dir: Path = Path("runs"), *, int8: bool = False,
    data_dir: Path = Path("data"), cache_dir: Path | None = None, calibration_frames: int = 32,
) -> dict:  # fmt: skip
    """Write the model at ``source`` (checkpoint, run folder or builtin) to ``out`` as ``fmt``; check it; return what was done.

    ``int8`` (ONNX only): statically quantised, calibrated on ``calibration_frames`` frames of
    the val split in ``data_dir`` (rendered scenes when it has none); see ``lunar_cli.quantize``.
    """
    if int8 and fmt != "onnx":
        raise LunarError(f"--int8 is for ONNX files (ONNX Runtime's quantisation), not {fmt}; use --format onnx")
    checkpoint, _ = find_model(source, runs_dir)
    out = Path(out)
    refuse_overwrite([out], [checkpoint, *run_files(checkpoint.parent)], "a file of the model it exports",
                     "choose another -o, e.g. model.onnx")  # fmt: skip
    if out.is_dir():
        raise LunarError(f"{out}: is a folder; give the file to write, e.g. {out / ('model.' + fmt)}")
    if not out.parent.is_dir():
        raise LunarError(f"{out.parent}: no such folder; create it or choose another -o")
    model = load_model(checkpoint, "cpu", amp=False, channels_last=False)  # fp32, the exported precision
    meta, sample = exported_meta(model), sample_frames(model)
    info(f"exporting {checkpoint} ({model.spec.backbone}) to {out} ({fmt}{', int8' if int8 else ''})")
    quantization = None
    try:
        with atomic_path(out) as tmp:
            write = _write_onnx if fmt == "onnx" else _write_torchscript
            if int8:
                frames, source = calibration_set(model.spec, data_dir, cache_dir, calibration_frames)
                with tempfile.TemporaryDirectory(prefix="lunar-export-") as work:
                    fp32 = Path(work) / "fp32.onnx"
                    write(ExportedGraph(model).eval(), meta, model.spec.pad_multiple, fp32)
                    quantization = quantize_onnx(fp32, tmp, frames, model.spec.pad_multiple, meta, source)
            else:
                write(ExportedGraph(model).eval(), meta, model.spec.pad_multiple, tmp)
    except PermissionError as exc:
        raise LunarError(f"{out.parent}: not writable ({exc.strerror}); choose another -o") from exc
    diff, agree = compare_with_pytorch(model, out, fmt, sample)
    return {"model": str(checkpoint), "output": str(out), "format": fmt, "precision": "int8" if int8 else "fp32",
            "bytes": out.stat().st_size, "frames_checked": len(sample), "max_probability_difference": diff,
            "class_agreement": agree, "metadata": meta,
            **({"quantization": quantization} if quantization else {})}  # fmt: skip


def export_command(cfg: Config, model: Path | str, output: Path) -> dict:
    """Do what ``lunar export`` was asked: write ``model`` (found under ``cfg.runs_dir``) to ``output``."""
    e = cfg.export
    return export_model(model, output, e.format, runs_dir=cfg.runs_dir, int8=e.int8, data_dir=cfg.data_dir,
                        cache_dir=cfg.data.cache_dir, calibration_frames=e.calibration_frames)  # fmt: skip
