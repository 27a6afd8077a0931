"""Scoring a trained model behind ``lunar evaluate``: IoU per class, mIoU, accuracy, figures.

Each split is scored on its own (rendered ``test`` and real ``test_real`` answer
different questions: how well the model learnt the renderer, and how well it transfers
to photos). Scores come from one confusion matrix summed over the whole split: each frame
is read from the cache at the scale the checkpoint was trained at, run whole, and its
logits upsampled to the mask as drawn (``lunar_cli.scoring``, as training's validation).

Results go to ``eval.json`` beside the checkpoint (the run folder for ``best.pt``),
merged with earlier results for the same checkpoint, so evaluating ``val`` later keeps
the test scores. A checkpoint other than ``best.pt`` gets ``<stem>_eval.json`` and
``<stem>_``-prefixed figures, so two models in one folder never overwrite each other.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lunar_cli.classes import CLASS_NAMES
from lunar_cli.config import Config, EvaluateConfig
from lunar_cli.console import LunarError, info, number, warn
from lunar_cli.data.cache import CachedSplit, build_or_load_cache, cache_folder
from lunar_cli.data.dataset import FrameLoader
from lunar_cli.data.split import MANIFEST_NAME, SPLITS, read_manifest, split_pairs
from lunar_cli.files import write_json_atomic
from lunar_cli.frames import resize_image
from lunar_cli.metrics import summarize
from lunar_cli.model_files import checkpoint_for_results, describe_choice, find_model
from lunar_cli.plots import plot_confusion_matrix, plot_prediction_grid
from lunar_cli.postprocess import class_map
from lunar_cli.runtime import select_device
from lunar_cli.scoring import score_frames
from lunar_cli.torch_model import TorchModel, frame_logits, load_model

DEFAULT_SPLITS = tuple(EvaluateConfig().splits)
SPLIT_TITLES = {"train": "train (rendered)", "val": "val (rendered)", "test": "test (rendered)", "test_real": "real photos"}


def choose_checkpoint(target: Path | str | None, runs_dir: Path, say: bool) -> Path:
    """Return the checkpoint ``lunar evaluate`` scores (the built-in model's copy under runs_dir/builtin)."""
    path, how = find_model(target, runs_dir)
    if path.suffix.lower() == ".onnx":
        raise LunarError(f"{path}: evaluate scores lunar checkpoints (.pt), not ONNX exports; give the run or .pt it was exported from")
    said = describe_choice(path, how, runs_dir)
    if said and say:
        info(said)
    return checkpoint_for_results(path, how, runs_dir)


def results_path(checkpoint: Path, name: str) -> Path:
    """Return where the result file ``name`` (eval.json, confusion_test.png, ...) of ``checkpoint`` goes."""
    checkpoint = Path(checkpoint)
    # A run's best.pt owns the run folder's eval.json; any other checkpoint gets its own prefix.
    prefix = "" if checkpoint.name == "best.pt" else f"{checkpoint.stem}_"
    return checkpoint.parent / f"{prefix}{name}"


def checkpoint_fingerprint(checkpoint: Path) -> dict:
    """Return the size and mtime of ``checkpoint``: results recorded under another fingerprint are stale."""
    # best.pt is rewritten each time val mIoU improves (a resumed run), so scores of an
    # older best.pt must never be merged with, or stand in for, scores of the new one.
    st = Path(checkpoint).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_eval(checkpoint: Path) -> dict:
    """Return the eval.json of ``checkpoint`` if it was written for this very file, else {}."""
    path = results_path(checkpoint, "eval.json")
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warn(f"{path}: unreadable ({exc}); it will be rewritten")
        return {}
    if not isinstance(saved, dict) or not isinstance(saved.get("splits"), dict):
        warn(f"{path}: not a lunar eval.json; it will be rewritten")
        return {}
    if saved.get("checkpoint") != checkpoint_fingerprint(checkpoint):
        return {}
    return saved


def current_splits(checkpoint: Path, data_dir: Path) -> dict[str, dict]:
    """Return the split results in eval.json that are complete and belong to this checkpoint and data folder."""
    here = str(Path(data_dir).resolve())
    return {
        name: result
        for name, result in read_eval(checkpoint).get("splits", {}).items()
        if isinstance(result, dict) and result.get("data_dir") == here and result.get("limit") is None
    }


def manifest_counts(data_dir: Path) -> dict[str, int]:
    """Return how many image/mask pairs each split has in the manifest of ``data_dir``."""
    rows = read_manifest(data_dir)
    return {name: sum(1 for r in rows if r["split"] == name) for name in SPLITS}


def splits_to_score(requested: Sequence[str], data_dir: Path) -> list[str]:
    """Return the requested splits that have images, warning about the others (all empty: LunarError)."""
    requested = list(dict.fromkeys(requested))
    counts = manifest_counts(data_dir)
    present = [name for name in requested if counts[name] > 0]
    missing = [name for name in requested if counts[name] == 0]
    if not present:
        what = "has no images" if len(missing) == 1 else "have no images"
        hint = "add real photos (real_moon_images/) and run lunar split" if "test_real" in missing else "run lunar split"
        raise LunarError(f"split {' and '.join(missing)} {what} in {Path(data_dir) / MANIFEST_NAME}: {hint}")
    for name in missing:
        warn(f"split {name!r} has no images in {Path(data_dir) / MANIFEST_NAME}; skipped")
    return present


def best_and_worst(scores: np.ndarray, count: int) -> tuple[list[int], list[int]]:
    """Return positions of up to ``count`` best and ``count`` worst scores, never the same image twice."""
    ranked = [int(i) for i in np.argsort(-scores, kind="stable") if not math.isnan(scores[i])]
    n_best = min(count, (len(ranked) + 1) // 2)
    n_worst = min(count, len(ranked) - n_best)
    return ranked[:n_best], ranked[len(ranked) - n_worst :][::-1]


def predicted_frames(model: TorchModel, split: CachedSplit, rows: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (frame at the labels' size, predicted class map) of each cache row, for figures."""
    shown = []
    for row in rows:
        h, w, fh, fw = (int(v) for v in split.sizes[row])
        frame = np.array(split.images[row, :h, :w])  # a writable copy of the memmap rows
        logits = frame_logits(model, torch.from_numpy(frame[None]).to(model.device), (fh, fw))
        pred = class_map(logits)[0].to("cpu").numpy().astype(np.uint8)
        shown.append((resize_image(frame, fh, fw), pred))
    return shown


def plot_best_and_worst(
    path: Path, model: TorchModel, split: CachedSplit, rows: np.ndarray, scores: np.ndarray, count: int, title: str,
) -> Path | None:  # fmt: skip
    """Write the ``count`` best and worst predictions (image | truth | prediction) at full resolution; return the path."""
    best, worst = best_and_worst(scores, count)
    if not best and not worst:
        return None
    chosen = [("best", p) for p in best] + [("worst", p) for p in worst]
    frames = predicted_frames(model, split, [int(rows[p]) for _, p in chosen])
    grid = []
    for (kind, p), (frame, pred) in zip(chosen, frames):
        row = int(rows[p])
        fh, fw = (int(v) for v in split.sizes[row, 2:])
        label = f"{kind}: mIoU {scores[p]:.2f}\n{Path(split.files[row]).name}"
        grid.append((label, frame, split.full_masks[row, :fh, :fw], pred))
    return plot_prediction_grid(path, grid, title)


def score_split(
    model: TorchModel, split: CachedSplit, *, batch_size: int, limit: int | None, tta: bool, grid: int,
    progress: bool, name: str,
) -> tuple[dict, torch.Tensor, np.ndarray, np.ndarray]:  # fmt: skip
    """Return (the split's result record, confusion matrix, rows scored, each row's mIoU)."""
    start = time.perf_counter()
    loader = FrameLoader(split, batch_size=batch_size, device=model.device, limit=limit)
    score = score_frames(model, loader, tta=tta, calibration=True, progress=f"evaluating {name}" if progress else None)
    rows, seconds = np.asarray(loader.indices), time.perf_counter() - start
    threshold = model.spec.ood_threshold
    record = {
        **summarize(score.matrix, CLASS_NAMES), "resolution": score.resolution, "images": int(len(rows)),
        "limit": limit, "ece": score.ece, "temperature": model.spec.calibration.get("temperature"),
        "out_of_distribution_share": None if threshold is None else float((score.uncertainty > threshold).mean()),
        "mean_uncertainty": float(score.uncertainty.mean()) if len(rows) else None,
        "seconds": seconds, "images_per_second": len(rows) / max(seconds, 1e-9),
        "worst_images": [{"file": split.files[int(rows[p])], "miou": float(score.per_image[p])}
                         for p in best_and_worst(score.per_image, grid)[1]],
        "evaluated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if tta:
        with_tta = summarize(score.tta_matrix, CLASS_NAMES)
        record["tta"] = {**with_tta, "iou_gain": {c: _gain(with_tta["iou"][c], record["iou"][c]) for c in CLASS_NAMES},
                         "miou_gain": _gain(with_tta["miou"], record["miou"])}  # fmt: skip
    return record, score.matrix, rows, score.per_image


def _gain(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def evaluate_model(
    target: Path | str | None, *, data_dir: Path, runs_dir: Path = Path("runs"), splits: Sequence[str] = DEFAULT_SPLITS,
    batch_size: int = 8,
    device: str = "auto", limit: int | None = None, workers: int | None = None, amp: bool | None = None,
    channels_last: bool | None = None, tta: bool = False, grid: int = 3, skip_bad: bool = False,
    cache_dir: Path | None = None, progress: bool = True,
) -> dict:  # fmt: skip
    """Score a trained model on each split; write eval.json and figures; return the numbers.

    ``target`` is a run folder, a checkpoint, ``builtin`` or None (the newest run under
    ``runs_dir/train``, else the built-in model, whose results go to ``runs_dir/builtin``).

    Returns ``{"model", "backbone", "frame_size", "splits": {name: {"miou", "pixel_accuracy",
    "iou", "confusion_matrix", "resolution", "ece", "images", ...}}, "files"}`` for the splits
    scored now (with ``tta``, each split also has "tta": its scores with flip TTA and the gain).
    A requested split with no images is skipped with a warning (an error if none is left).
    """
    data_dir = Path(data_dir)
    names = splits_to_score(splits, data_dir)  # first: no data, no need to say which model would have been scored
    checkpoint = choose_checkpoint(target, runs_dir, progress)
    model = load_model(checkpoint, select_device(device), amp, channels_last)
    backbone = model.spec.backbone
    # "vgg11 run unet3" reads better than "vgg11" alone when runs of one backbone are compared.
    model_name = checkpoint.parent.name if checkpoint.name == "best.pt" else checkpoint.stem
    shown = backbone if model_name == backbone else f"{model_name} ({backbone})"
    if progress:
        info(f"evaluating {checkpoint} ({backbone}, frames {model.spec.frame_size.describe()}) on {model.precision.label}")

    results: dict[str, dict] = {}
    files: list[str] = []
    for name in names:
        split = build_or_load_cache(
            split_pairs(data_dir, name), model.spec.frame_size, cache_folder(data_dir, cache_dir), name=name, workers=workers,
            skip_bad=skip_bad, progress=progress,
        )  # fmt: skip
        record, matrix, rows, scores = score_split(model, split, batch_size=batch_size, limit=limit, tta=tta, grid=grid,
                                                   progress=progress, name=name)  # fmt: skip
        results[name] = {**record, "data_dir": str(data_dir.resolve())}
        where = f"{shown} on {SPLIT_TITLES.get(name, name)}"
        title = f"{where}: mIoU {number(record['miou'])} ({record['resolution']})"
        files.append(str(plot_confusion_matrix(
            results_path(checkpoint, f"confusion_{name}.png"), matrix.numpy(), CLASS_NAMES, title
        )))  # fmt: skip
        if grid > 0:
            figure = plot_best_and_worst(results_path(checkpoint, f"predictions_{name}.png"), model, split, rows,
                                         scores, grid, f"{where}: best and worst images by mIoU")  # fmt: skip
            if figure is not None:
                files.append(str(figure))
        if progress:
            _say(name, record)

    eval_path = results_path(checkpoint, "eval.json")
    saved = read_eval(checkpoint)  # {} when absent or written for another version of the file
    common = {"model": str(checkpoint), "backbone": backbone, "frame_size": model.spec.frame_size.describe(),
              **model.runs_on()}  # fmt: skip
    write_json_atomic(eval_path, {
        **common, "checkpoint": checkpoint_fingerprint(checkpoint), "splits": {**saved.get("splits", {}), **results},
        "files": sorted(set(saved.get("files", [])) | set(files) | {str(eval_path)}),
    })  # fmt: skip
    if progress:
        info(f"results -> {eval_path}")
    return {**common, "splits": results, "files": [str(eval_path), *files]}


def evaluate_command(cfg: Config, target: Path | str | None, progress: bool = True) -> dict:
    """Do what ``lunar evaluate`` was asked: score ``target`` (default: the newest run) on ``evaluate.splits``."""
    e, d = cfg.evaluate, cfg.data
    return evaluate_model(
        target, data_dir=cfg.data_dir, runs_dir=cfg.runs_dir, splits=e.splits, batch_size=e.batch_size, tta=e.tta,
        grid=e.grid, device=cfg.device, amp=cfg.amp, channels_last=cfg.channels_last, limit=d.limit,
        workers=d.workers, skip_bad=d.skip_bad, cache_dir=d.cache_dir, progress=progress,
    )  # fmt: skip


def _say(name: str, record: dict) -> None:
    """Log one split's scores in one line (and their change with TTA in a second)."""
    ious = "  ".join(f"{c} {number(v)}" for c, v in record["iou"].items())
    info(f"{name}: mIoU {number(record['miou'])}  pixel accuracy {number(record['pixel_accuracy'])}  [{ious}]  "
         f"ECE {number(record['ece'])}  {record['images']} images at {record['resolution']}, "
         f"{record['images_per_second']:.1f} img/s")  # fmt: skip
    if "tta" in record:
        gains = "  ".join(f"{c} {v:+.3f}" for c, v in record["tta"]["iou_gain"].items() if v is not None)
        info(f"{name} with --tta: mIoU {number(record['tta']['miou'])} ({record['tta']['miou_gain']:+.3f})  [{gains}]")
