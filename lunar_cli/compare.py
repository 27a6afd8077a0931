"""Comparing trained runs behind ``lunar compare``: curves, test and real mIoU, predictions, a ranked table.

Reproduces the study's comparison figures in one command. Each run's scores come from
its ``eval.json``; a run not yet evaluated on a split (or evaluated on an older
``best.pt``, another data folder or a ``--limit`` subset) is evaluated first. Runs are
ranked by mIoU on the real photos, the question the study asks, then on rendered test.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from lunar_cli.config import Config
from lunar_cli.console import LunarError, info, warn
from lunar_cli.data.cache import CachedSplit, build_or_load_cache, cache_folder
from lunar_cli.data.split import split_pairs
from lunar_cli.evaluate import SPLIT_TITLES, current_splits, evaluate_model, manifest_counts, predicted_frames
from lunar_cli.files import refuse_overwrite, write_json_atomic, write_text_atomic
from lunar_cli.metrics import image_matrices, mean_iou
from lunar_cli.model_files import find_runs
from lunar_cli.plots import plot_bar_comparison, plot_compare_curves, plot_side_by_side_predictions
from lunar_cli.rundir import run_files
from lunar_cli.runtime import select_device
from lunar_cli.torch_model import load_model

SCORE_SPLITS = ("test", "test_real")
TABLE_COLUMNS = [
    ("rank", "rank"), ("run", "run"), ("backbone", "backbone"), ("parameters", "params"),
    ("best_epoch", "best epoch"), ("best_val_miou", "best val mIoU"), ("test_miou", "test mIoU"),
    ("test_real_miou", "real mIoU"), ("train_seconds", "train s"),
]  # fmt: skip


def run_labels(folders: Sequence[Path]) -> list[str]:
    """Return a short, unique label per run: its folder name, with its parent's name where two clash."""
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def read_history(run: Path) -> list[dict[str, Any]]:
    """Return the rows of a run's history.csv with numbers parsed (empty cells: None); [] if absent."""
    path = Path(run) / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def read_metrics(run: Path) -> dict:
    """Return a run's metrics.json, or {} if it is missing or unreadable."""
    path = Path(run) / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        warn(f"{path}: unreadable; its run is compared without it")
        return {}


def scores_for(
    run: Path, label: str, *, data_dir: Path, device: str, available: Sequence[str], progress: bool,
    cache_dir: Path | None = None,
) -> dict[str, dict]:  # fmt: skip
    """Return {split: results} for test and test_real of one run, evaluating the splits eval.json lacks."""
    checkpoint = Path(run) / "best.pt"
    have = current_splits(checkpoint, data_dir)
    missing = [s for s in SCORE_SPLITS if s in available and s not in have]
    if missing:
        info(f"{label}: no up-to-date {' and '.join(missing)} results in eval.json; evaluating now")
        result = evaluate_model(checkpoint, data_dir=data_dir, splits=missing, device=device, cache_dir=cache_dir,
                                progress=progress)  # fmt: skip
        have.update(result["splits"])
    return {s: have[s] for s in SCORE_SPLITS if s in have}


def summary_row(run: Path, label: str, history: list[dict], metrics: dict, scores: dict[str, dict]) -> dict:
    """Return one table row for a run: backbone, size, best epoch, val/test/real mIoU, training time."""
    best = max(
        (r for r in history if _finite(r.get("val_miou"))), key=lambda r: r["val_miou"], default=None
    )
    return {
        "run": label,
        "run_dir": str(run),
        "backbone": metrics.get("backbone"),
        "parameters": metrics.get("parameters"),
        "best_epoch": metrics.get("best_epoch", best["epoch"] if best else None),
        "best_val_miou": metrics.get("best_val_miou", best["val_miou"] if best else None),
        "epochs_run": len(history) or metrics.get("epochs_run"),
        "test_miou": scores.get("test", {}).get("miou"),
        "test_real_miou": scores.get("test_real", {}).get("miou"),
        "test_pixel_accuracy": scores.get("test", {}).get("pixel_accuracy"),
        "test_real_pixel_accuracy": scores.get("test_real", {}).get("pixel_accuracy"),
        "iou_test": scores.get("test", {}).get("iou"),
        "iou_test_real": scores.get("test_real", {}).get("iou"),
        "train_seconds": metrics.get("train_seconds", sum(r.get("epoch_seconds") or 0 for r in history) or None),
    }


def rank_rows(rows: list[dict]) -> list[dict]:
    """Return ``rows`` sorted best first (real-photo mIoU, then rendered test mIoU; missing last), numbered."""
    def key(row: dict) -> tuple:
        real, test = row.get("test_real_miou"), row.get("test_miou")
        return (-real if _finite(real) else math.inf, -test if _finite(test) else math.inf, row["run"])

    return [{"rank": i, **row} for i, row in enumerate(sorted(rows, key=key), start=1)]


def format_table(rows: list[dict]) -> str:
    """Return the ranked rows as a Markdown table (also readable as plain text)."""
    header = [title for _, title in TABLE_COLUMNS]
    lines = [header] + [[_cell(key, row.get(key)) for key, _ in TABLE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines[1:])])


def pick_images(split: "CachedSplit", count: int) -> list[int]:
    """Return ``count`` cache rows spread evenly over the split (all rows if it has fewer)."""
    n = len(split)
    if count >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, count)})


def side_by_side_predictions(
    runs: Sequence[Path], *, data_dir: Path, split_name: str, n_images: int, device: str, progress: bool,
    cache_dir: Path | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray, list[np.ndarray], list[float]]]:
    """Return one (file name, image, truth, prediction per run, mIoU per run) per shown image.

    Every run predicts at the labels' own resolution (each at the scale it was trained
    at), so images, truths and predictions line up whatever the runs' scales.
    """
    dev = select_device(device)
    pairs = split_pairs(data_dir, split_name)
    files: list[str] = []
    shown: list[tuple[np.ndarray, np.ndarray]] = []  # (image, truth) at full resolution
    preds = []  # per run: one full-resolution class map per shown image
    for run in runs:
        model = load_model(Path(run) / "best.pt", dev)
        split = build_or_load_cache(pairs, model.spec.frame_size, cache_folder(data_dir, cache_dir), name=split_name,
                                    progress=progress)  # fmt: skip
        if not files:
            files = [split.files[r] for r in pick_images(split, n_images)]
        own = {f: i for i, f in enumerate(split.files)}  # rows are matched by file: another scale is another cache
        rows = [own[f] for f in files]
        frames = predicted_frames(model, split, rows)
        if not shown:
            shown = [(frame, np.array(split.full_masks[r, : pred.shape[0], : pred.shape[1]]))
                     for r, (frame, pred) in zip(rows, frames)]  # fmt: skip
        preds.append([pred for _, pred in frames])
    scores = [[mean_iou(image_matrices(torch.from_numpy(p[None]), torch.from_numpy(t[None]))[0])
               for p, (_, t) in zip(run_preds, shown)] for run_preds in preds]  # fmt: skip
    return [
        (Path(f).name, image, truth, [p[i] for p in preds], [s[i] for s in scores])
        for i, (f, (image, truth)) in enumerate(zip(files, shown))
    ]


def compare_command(cfg: Config, runs: Sequence[Path] | None, progress: bool = True) -> dict:
    """Do what ``lunar compare`` was asked: compare ``runs`` (default: every run under <runs_dir>/train)."""
    return compare_runs(runs or None, runs_dir=cfg.runs_dir, data_dir=cfg.data_dir, out_dir=cfg.compare.out,
                        device=cfg.device, n_images=cfg.compare.images, cache_dir=cfg.data.cache_dir,
                        progress=progress)  # fmt: skip


def compare_runs(
    runs: Sequence[Path] | None, *, runs_dir: Path, data_dir: Path, out_dir: Path | None = None,
    device: str = "auto", n_images: int = 4, cache_dir: Path | None = None, progress: bool = True,
) -> dict:  # fmt: skip
    """Compare trained runs: curves, test and real mIoU, predictions side by side, a ranked table.

    Writes curves.png, miou.png, predictions.png, compare.json and compare.md into
    ``out_dir`` (default ``runs_dir/compare``); returns compare.json's content plus "files".
    """
    data_dir = Path(data_dir)
    counts = manifest_counts(data_dir)  # first: no data, no need to say which runs would have been compared
    folders = find_runs(runs, runs_dir)
    labels = run_labels(folders)
    out_dir = Path(out_dir) if out_dir is not None else Path(runs_dir) / "compare"
    available = [s for s in SCORE_SPLITS if counts[s] > 0]
    if not available:
        raise LunarError(f"no test or test_real images in {data_dir}/manifest.csv: run lunar split")
    if "test_real" not in available:
        warn(f"no real photos (test_real) in {data_dir}/manifest.csv; ranking on rendered test only")
    if progress:
        info(f"comparing {len(folders)} run(s): {', '.join(labels)}")

    outputs = [out_dir / name for name in ("curves.png", "miou.png", "predictions.png", "compare.md", "compare.json")]
    refuse_overwrite(outputs, [f for run in folders for f in run_files(run)], "a file of a compared run",
                     "choose another -o")  # fmt: skip

    rows, histories, bars, kept = [], {}, {}, []
    for run, label in zip(folders, labels):
        try:  # one unusable run (damaged or non-finite weights) is left out, not the whole comparison
            scores = scores_for(run, label, data_dir=data_dir, device=device, available=available, cache_dir=cache_dir,
                                progress=progress)  # fmt: skip
        except LunarError as exc:
            if len(folders) == 1:
                raise
            warn(f"{run}: left out of the comparison ({exc})")
            continue
        kept.append((run, label))
        history = read_history(run)
        if history:
            histories[label] = history
        else:
            warn(f"{run}: no history.csv; its curves are left out")
        rows.append(summary_row(run, label, history, read_metrics(run), scores))
        bars[label] = {SPLIT_TITLES[s]: scores.get(s, {}).get("miou") for s in available}
    if not kept:
        raise LunarError(f"none of the {len(folders)} runs could be scored (see the warnings); train or fix them first")
    folders, labels = [run for run, _ in kept], [label for _, label in kept]
    ranked = rank_rows(rows)

    files = []
    if histories:
        files.append(plot_compare_curves(out_dir / "curves.png", histories, "loss and validation mIoU per epoch"))
    files.append(plot_bar_comparison(
        out_dir / "miou.png", bars, "mIoU on rendered test images and real photos", "mIoU"
    ))  # fmt: skip
    if n_images > 0:
        shown_split = "test_real" if "test_real" in available else "test"
        grid = side_by_side_predictions(
            folders, data_dir=data_dir, split_name=shown_split, n_images=n_images, device=device, cache_dir=cache_dir,
            progress=progress,
        )
        files.append(plot_side_by_side_predictions(
            out_dir / "predictions.png", grid, labels, f"predictions on {SPLIT_TITLES[shown_split]}"
        ))  # fmt: skip
    table = format_table(ranked)
    write_text_atomic(out_dir / "compare.md", f"# Runs ranked by real-photo mIoU, then test mIoU\n\n{table}\n")
    files.append(out_dir / "compare.md")
    files.append(out_dir / "compare.json")
    result = {
        "data_dir": str(data_dir),
        "ranked_by": [s for s in ("test_real", "test") if s in available],
        "rows": ranked,
        "table": table,
        "files": [str(f) for f in files],
    }
    write_json_atomic(out_dir / "compare.json", result)
    if progress:  # the table itself is the command's result, printed on stdout by the CLI
        info(f"comparison -> {out_dir}")
    return result


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "parameters":
        return f"{value / 1e6:.2f}M"
    if key == "train_seconds":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
