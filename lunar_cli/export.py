"""``lunar export``: a trained model as an ONNX or TorchScript file that carries everything needed to use it.

The exported graph takes uint8 RGB frames (N, H, W, 3), any batch and any H and W that
are multiples of the model's ``pad_multiple`` (32 for smp U-Nets, 2**depth for the
custom one; lunar pads other sizes by repeating edge pixels, centred), and gives float32
logits (N, C, H, W). The normalisation is inside the graph. Classes, colours, the scale
frames were trained at, the padding multiple and the calibration travel in the file's
metadata (ONNX metadata_props "lunar", or TorchScript extra file "lunar.json").

After writing, the file is run on rendered sample scenes and compared with the PyTorch
model: the largest probability difference and the share of pixels whose class agrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lunar_cli.console import LunarError, info

if TYPE_CHECKING:
    import torch

    from lunar_cli.engine import Model

SAMPLE_FRAMES = 4  # rendered scenes the export is checked on


def exported_meta(model: "Model") -> dict:
    """Return the metadata an exported file carries (JSON-ready)."""
    from lunar_cli import __version__
    from lunar_cli.engine import pad_multiple
    from lunar_cli.onnx_model import FORMAT

    keep = ("backbone", "encoder", "model_kwargs", "classes", "crop_size", "calibration", "epoch", "best_metric",
            "lunar_version")  # fmt: skip
    rule = model.frame_size  # also for checkpoints from before frame_size existed (squashed squares)
    return {
        "format": FORMAT, "format_version": 1, **{k: model.meta[k] for k in keep if k in model.meta},
        "frame_size": {"scale": rule.scale, "square": rule.square},
        "pad_multiple": pad_multiple(model.meta), "normalization_in_graph": model.meta["normalization"],
        "input": "uint8 RGB (N, H, W, 3); H and W multiples of pad_multiple; frames at frame_size of the photo",
        "output": "float32 logits (N, C, H, W); probabilities: softmax(logits / calibration.temperature)",
        "exported_by": f"lunar {__version__}",
    }  # fmt: skip


def _graph(model: "Model") -> "torch.nn.Module":
    """Return a module: uint8 RGB (N, H, W, 3) -> normalisation -> the network -> logits (N, C, H, W)."""
    import torch

    norm = model.meta["normalization"]

    class Exported(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("inv_std", 1.0 / (torch.tensor(norm["std"]).view(1, 3, 1, 1) * 255.0))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = (images.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
            return self.net(x)

    return Exported(model.net).eval()


def sample_frames(model: "Model", seed: int = 0) -> np.ndarray:
    """Return a few rendered lunar scenes (N, h, w, 3) at the model's scale for a 360x250 photo.

    The sides are not multiples of the padding on purpose, so the check covers lunar's padding too.
    """
    from lunar_cli.data.scene import render_scene

    h, w = model.frame_size.of(250, 360)
    rng = np.random.default_rng(seed)
    return np.stack([render_scene(rng, w, h)[0] for _ in range(SAMPLE_FRAMES)])


def _write_onnx(graph: "torch.nn.Module", meta: dict, multiple: int, tmp: Path) -> None:
    import onnx
    import torch

    n = torch.export.Dim("batch", min=1, max=4096)
    hb, wb = torch.export.Dim("height_blocks", min=1, max=1024), torch.export.Dim("width_blocks", min=1, max=1024)
    # Batch 2: torch.export would fix a batch of 1; sides multiples of the padding, as the graph takes them.
    example = torch.from_numpy(np.zeros((2, 2 * multiple, 3 * multiple, 3), np.uint8))
    # Exported in memory, then saved once with the metadata: no second file (weights as external data) beside it.
    program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"images": {0: n, 1: multiple * hb, 2: multiple * wb}}, verbose=False)  # fmt: skip
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "lunar", json.dumps(meta)
    onnx.save(proto, str(tmp))


def _write_torchscript(graph: "torch.nn.Module", meta: dict, multiple: int, tmp: Path) -> None:
    import warnings

    import torch

    # Quiet: tracer notes about shape checks that hold for every multiple of the padding, and
    # torch's notice that TorchScript is deprecated (the format is asked for by C++/mobile users).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, torch.zeros((2, 2 * multiple, 3 * multiple, 3), dtype=torch.uint8))
        torch.jit.save(traced, str(tmp), _extra_files={"lunar.json": json.dumps(meta)})


def compare_with_pytorch(model: "Model", out: Path, fmt: str, sample: np.ndarray) -> tuple[float, float]:
    """Return (largest probability difference, share of pixels of the same class) between the file and PyTorch."""
    import warnings

    import torch

    from lunar_cli.photos import softmax

    ours = model.logits(sample)
    if fmt == "onnx":
        from lunar_cli.onnx_model import load_onnx

        theirs = load_onnx(out).logits(sample)
    else:
        from lunar_cli.engine import pad_frames

        padded, (top, left, h, w) = pad_frames(sample, model.meta)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            theirs = torch.jit.load(str(out))(torch.from_numpy(padded)).numpy()[:, :, top : top + h, left : left + w]
    p, q = softmax(ours.transpose(1, 0, 2, 3)), softmax(theirs.transpose(1, 0, 2, 3))
    return float(np.abs(p - q).max()), float((p.argmax(0) == q.argmax(0)).mean())


def export_model(source: Path, out: Path, fmt: str = "onnx") -> dict:
    """Write the model at ``source`` (checkpoint or run folder) to ``out`` as ``fmt``; check it; return what was done."""
    from lunar_cli.engine import find_model, load_model, pad_multiple
    from lunar_cli.files import atomic_path, refuse_overwrite
    from lunar_cli.rundir import run_files

    checkpoint, _ = find_model(source, Path("runs"))
    out = Path(out)
    refuse_overwrite([out], [checkpoint, *run_files(checkpoint.parent)], "a file of the model it exports",
                     "choose another -o, e.g. model.onnx")  # fmt: skip
    if out.is_dir():
        raise LunarError(f"{out}: is a folder; give the file to write, e.g. {out / ('model.' + fmt)}")
    if not out.parent.is_dir():
        raise LunarError(f"{out.parent}: no such folder; create it or choose another -o")
    model = load_model(checkpoint, "cpu", amp=False, channels_last=False)  # fp32, the exported precision
    meta, sample = exported_meta(model), sample_frames(model)
    info(f"exporting {checkpoint} ({model.meta['backbone']}) to {out} ({fmt})")
    try:
        with atomic_path(out) as tmp:
            write = _write_onnx if fmt == "onnx" else _write_torchscript
            write(_graph(model), meta, pad_multiple(model.meta), tmp)
    except PermissionError as exc:
        raise LunarError(f"{out.parent}: not writable ({exc.strerror}); choose another -o") from exc
    diff, agree = compare_with_pytorch(model, out, fmt, sample)
    return {"model": str(checkpoint), "output": str(out), "format": fmt, "bytes": out.stat().st_size,
            "frames_checked": len(sample), "max_probability_difference": diff, "class_agreement": agree,
            "metadata": meta}  # fmt: skip
