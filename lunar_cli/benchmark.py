"""``lunar benchmark``: each form of a model timed on 720x480 frames and scored on a split, side by side.

The forms (as ultralytics' benchmark mode lists a model's export formats): the PyTorch
checkpoint in fp32, in bf16 autocast where the device runs it natively
(``runtime.cpu_bf16_support`` on a CPU), and the ONNX files ``lunar export`` writes from
it in fp32 and int8, made in a temporary folder and removed afterwards. Each is timed on
rendered 720x480 scenes fed at the model's scale: the model's own time (pre- and
post-processing left out, being the same for every form), warm-up runs first, then the
median of the timed runs, one frame at a time (ms per frame) and in batches (images/s).
Each is scored on the split at the labels' resolution: PyTorch forms with ``lunar
evaluate``'s own scoring (``evaluate.score_split``), ONNX forms through the predictor
(``model_passes``, ``postprocess.finish``) into the same confusion matrix and metrics
(``metrics.confusion_matrix``, ``summarize``), so every mIoU is comparable.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lunar_cli.classes import CLASS_NAMES, NUM_CLASSES
from lunar_cli.config import Config
from lunar_cli.console import LunarError, info, track
from lunar_cli.data.cache import CachedSplit, build_or_load_cache, cache_folder
from lunar_cli.data.dataset import FrameLoader
from lunar_cli.data.scene import render_scene
from lunar_cli.data.split import split_pairs
from lunar_cli.evaluate import score_split, splits_to_score
from lunar_cli.export import export_model
from lunar_cli.frames import model_scale_frames
from lunar_cli.metrics import confusion_matrix, summarize
from lunar_cli.model_files import describe_choice, find_model
from lunar_cli.parallel import cpu_cores
from lunar_cli.postprocess import finish
from lunar_cli.predictor import Predictor, load_predictor, model_passes
from lunar_cli.runtime import cpu_bf16_support, select_device
from lunar_cli.torch_model import TorchModel

FRAME_SIZE = (480, 720)  # (height, width) of the timed frames: the rover camera's (and the Kaggle dataset's)


def cpu_name() -> str:
    """Return this machine's CPU model name (as lscpu gives it), or "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def timed(run: Callable[[], object], runs: int, warmup: int) -> float:
    """Return the median seconds of ``runs`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def speed(model: Predictor, frames: np.ndarray, runs: int, warmup: int) -> dict[str, float]:
    """Return ms per frame (one at a time) and images/s (in batches of ``len(frames)``) of the model on ``frames``."""
    one = timed(lambda: model.logits(frames[:1]), runs, warmup)
    batch = timed(lambda: model.logits(frames), runs, min(warmup, 1))
    return {"ms_per_frame": 1000 * one, "images_per_second": len(frames) / batch}


def predictor_miou(model: Predictor, split: CachedSplit, rows: np.ndarray, batch_size: int, progress: str | None) -> dict:
    """Return the scores (``metrics.summarize``) of a model run through the predictor on cache ``rows``, at the labels' size."""
    matrix = torch.zeros((NUM_CLASSES, NUM_CLASSES), dtype=torch.int64)
    groups: list[list[int]] = []
    for row in rows:  # batches of frames of one size, in order
        if groups and len(groups[-1]) < batch_size and (split.sizes[groups[-1][0]] == split.sizes[row]).all():
            groups[-1].append(int(row))
        else:
            groups.append([int(row)])
    for group in track(groups, progress or "", total=len(groups), quiet=progress is None):
        h, w, fh, fw = (int(v) for v in split.sizes[group[0]])
        passes = model_passes(model, np.ascontiguousarray(split.images[group, :h, :w]), tta=False)
        for i, row in enumerate(group):
            classes = finish([p[i] for p in passes], fh, fw, model.spec.temperature).classes
            matrix += confusion_matrix(torch.from_numpy(classes), torch.from_numpy(np.array(split.full_masks[row, :fh, :fw])))
    return summarize(matrix, CLASS_NAMES)


def _forms(checkpoint: Path, device: torch.device, folder: Path, export: dict) -> list[tuple[str, Path, Callable, dict]]:
    """Return (form, file, loader, what its export said) of each form of the model this machine runs.

    The ONNX files are exported into ``folder`` (``export``: export_model's runs_dir, data_dir, cache_dir, calibration_frames).
    """
    forms = [("pytorch fp32", checkpoint, lambda: load_predictor(checkpoint, device, amp=False), {})]
    native_bf16 = cpu_bf16_support() is not None if device.type == "cpu" else (
        device.type == "cuda" and torch.cuda.is_bf16_supported())  # fmt: skip
    if native_bf16:
        forms.append(("pytorch bf16", checkpoint, lambda: load_predictor(checkpoint, device, amp=True), {}))
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    forms.append(("onnx fp32", fp32, lambda: load_predictor(fp32, "cpu"),
                  export_model(checkpoint, fp32, "onnx", export["runs_dir"])))  # fmt: skip
    forms.append(("onnx int8", int8, lambda: load_predictor(int8, "cpu"),
                  export_model(checkpoint, int8, "onnx", int8=True, **export)))  # fmt: skip
    return forms


def benchmark_model(
    target: Path | str | None, *, data_dir: Path, runs_dir: Path = Path("runs"), split: str = "test", runs: int = 10,
    warmup: int = 2, batch_size: int = 4, device: str = "auto", limit: int | None = None, workers: int | None = None,
    cache_dir: Path | None = None, calibration_frames: int = 32, progress: bool = True,
) -> dict:  # fmt: skip
    """Time and score every form of a model; return ``{"model", "split", "images", "machine", "forms": [...]}``.

    Each form: form, file, bytes, ms_per_frame, images_per_second, miou, miou_drop (its
    mIoU below PyTorch fp32's), precision; ONNX forms also their class agreement with PyTorch.
    """
    splits_to_score([split], data_dir)
    checkpoint, how = find_model(target, runs_dir)
    if checkpoint.suffix.lower() == ".onnx":
        raise LunarError(f"{checkpoint}: benchmark makes every form from a lunar checkpoint (.pt); give the run or "
                         ".pt it was exported from")  # fmt: skip
    said = describe_choice(checkpoint, how, runs_dir)
    if said and progress:
        info(said)
    where = select_device(device)
    fp32 = load_predictor(checkpoint, where, amp=False)
    cached = build_or_load_cache(split_pairs(data_dir, split), fp32.spec.frame_size, cache_folder(data_dir, cache_dir),
                                 name=split, workers=workers, progress=progress)  # fmt: skip
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, FRAME_SIZE[1], FRAME_SIZE[0])[0] for _ in range(batch_size)]
    frames = model_scale_frames(fp32.spec.frame_size, scenes)
    export = {"runs_dir": runs_dir, "data_dir": data_dir, "cache_dir": cache_dir, "calibration_frames": calibration_frames}
    results, scored = [], None
    with tempfile.TemporaryDirectory(prefix="lunar-benchmark-") as folder:
        for form, path, load, made in _forms(checkpoint, where, Path(folder), export):
            model = load()
            if progress:
                info(f"{form}: timing {runs} runs on {FRAME_SIZE[1]}x{FRAME_SIZE[0]} frames")
            row = {"form": form, "file": str(path) if form.startswith("pytorch") else path.name,
                   "bytes": path.stat().st_size, **speed(model, frames, runs, warmup), **model.runs_on()}  # fmt: skip
            scores, scored = _scores(model, cached, batch_size, limit, progress, form)
            row.update({"miou": scores["miou"], "iou": scores["iou"]})
            if made:
                row.update({"class_agreement": made["class_agreement"], **({"quantization": made["quantization"]}
                                                                           if "quantization" in made else {})})  # fmt: skip
            results.append(row)
    base = results[0]["miou"]
    for row in results:
        row["miou_drop"] = None if base is None or row["miou"] is None else base - row["miou"]
    return {"model": str(checkpoint), "backbone": fp32.spec.backbone, "split": split, "images": scored,
            "resolution": f"labels at their own size ({cached.full_masks.shape[2]}x{cached.full_masks.shape[1]})",
            "timed_frames": f"{FRAME_SIZE[1]}x{FRAME_SIZE[0]} rendered scenes, fed at {fp32.spec.frame_size.describe()}",
            "runs": runs, "warmup": warmup, "batch_size": batch_size,
            "machine": {"cpu": cpu_name(), "cores": cpu_cores(), "device": str(where)}, "forms": results}  # fmt: skip


def _scores(model: Predictor, split: CachedSplit, batch_size: int, limit: int | None, progress: bool,
            form: str) -> tuple[dict, int]:  # fmt: skip
    """Return (scores of one form on the split, frames scored): evaluate's scoring for PyTorch, the predictor's for ONNX."""
    label = f"scoring {form}" if progress else None
    if isinstance(model, TorchModel):
        record, *_ = score_split(model, split, batch_size=batch_size, limit=limit, tta=False, grid=0,
                                 progress=progress, name=form)  # fmt: skip
        return record, record["images"]
    rows = np.asarray(FrameLoader(split, batch_size=batch_size, limit=limit).indices)  # the rows evaluate scores
    return predictor_miou(model, split, rows, batch_size, label), len(rows)


def benchmark_command(cfg: Config, target: Path | str | None, progress: bool = True) -> dict:
    """Do what ``lunar benchmark`` was asked: time and score every form of ``target`` (default: the newest run)."""
    b, d = cfg.benchmark, cfg.data
    return benchmark_model(
        target, data_dir=cfg.data_dir, runs_dir=cfg.runs_dir, split=b.split, runs=b.runs, warmup=b.warmup,
        batch_size=b.batch_size, device=cfg.device, limit=d.limit, workers=d.workers, cache_dir=d.cache_dir,
        calibration_frames=cfg.export.calibration_frames, progress=progress,
    )  # fmt: skip
