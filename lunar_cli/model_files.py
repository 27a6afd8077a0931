"""Which model file a command uses: the one named, the newest run's, the run to resume or compare, or the built-in model.

Every command that takes a model finds it here, given the runs folder it works in:
``predict``, ``evaluate``, ``export``, ``serve`` and ``train --init`` (``find_model``),
``train --resume`` (``find_resume``) and ``compare`` (``find_runs``). A model is a
checkpoint file, a run folder (its ``best.pt``; a ``last.pt`` only when the run never
wrote one, and never one from before any epoch ended), an exported ``.onnx`` or
``builtin``; with none named, the newest ``best.pt`` under ``<runs>/train``, then
``models/``, else the built-in model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lunar_cli.console import LunarError, info
from lunar_cli.models.builtin import NAME as BUILTIN
from lunar_cli.models.builtin import builtin_checkpoint, builtin_run
from lunar_cli.models.checkpoint import load_checkpoint
from lunar_cli.rundir import latest_file

MODELS_DIR = Path("models")  # where lunar fetch --models puts downloaded checkpoints


def find_model(model: Path | str | None, runs_dir: Path, models_dir: Path = MODELS_DIR) -> tuple[Path, str]:
    """Return (model path, how it was chosen: "given", "newest" or "builtin")."""
    if model is not None:
        if str(model) == BUILTIN:
            return builtin_checkpoint(), "builtin"
        model = Path(model)
        if model.is_dir():
            return _checkpoint_of_run(model), "given"
        if not model.exists():
            raise LunarError(f"{model}: no such model file; give a checkpoint (.pt), an .onnx, a run folder or builtin")
        return model, "given"
    train_dir, models_dir = Path(runs_dir) / "train", Path(models_dir)
    newest = (latest_file(train_dir, "best.pt") if train_dir.is_dir() else None) or (
        latest_file(models_dir, "*.pt") if models_dir.is_dir() else None)  # fmt: skip
    return (newest, "newest") if newest is not None else (builtin_checkpoint(), "builtin")


def _checkpoint_of_run(folder: Path) -> Path:
    """Return the checkpoint a run folder stands for: its best.pt, or (said) the last.pt of a run that wrote none."""
    for candidate in (folder / "best.pt", folder / "weights" / "best.pt"):
        if candidate.is_file():
            return candidate
    last = folder / "last.pt"
    if not last.is_file():
        raise LunarError(f"{folder}: no best.pt or last.pt in this folder; give a checkpoint file or a run folder")
    epoch = load_checkpoint(last, mmap=True)["meta"].get("epoch")
    if not epoch:
        raise LunarError(f"{last}: the run has no best.pt and its last.pt is from epoch 0 (saved before training: "
                         f"untrained weights); finish the run with lunar train --resume {folder}")  # fmt: skip
    info(f"{folder}: no best.pt (its training stopped early); using last.pt, from epoch {epoch}")
    return last


def describe_choice(path: Path, how: str, runs_dir: Path) -> str | None:
    """Return the line that says which model a command uses when the user did not name one (None when they did)."""
    if how == "newest":
        return f"using model {path} (newest under {Path(runs_dir) / 'train'}/)"
    if how == "builtin":
        return ("using the built-in model (trained on synthetic scenes only; see MODEL_CARD.md): "
                "train your own with lunar train")  # fmt: skip
    return None


def checkpoint_for_results(path: Path, how: str, runs_dir: Path) -> Path:
    """Return the checkpoint whose folder gets a command's results: the built-in model's copy under runs_dir/builtin."""
    return builtin_run(runs_dir) / "best.pt" if how == "builtin" else path


def find_resume(resume: Path) -> Path:
    """Return the last.pt to resume from, given a run folder or a checkpoint file."""
    resume = Path(resume)
    path = resume / "last.pt" if resume.is_dir() else resume
    if not path.is_file():
        raise LunarError(f"nothing to resume at {resume}: give a run folder with last.pt or a checkpoint file")
    return path


def find_runs(runs: Sequence[Path] | None, runs_dir: Path) -> list[Path]:
    """Return the run folders to compare: those given (a path, a name under runs/train, or builtin), or all with a best.pt.

    With no runs trained yet, the built-in model is compared (as the run folder runs/builtin).
    """
    train_dir = Path(runs_dir) / "train"
    if not runs:
        found = sorted(p.parent for p in train_dir.glob("*/best.pt")) if train_dir.is_dir() else []
        if not found:
            info(describe_choice(Path(BUILTIN), "builtin", runs_dir) or "")
            return [builtin_run(runs_dir)]
        return found
    folders = []
    for run in runs:
        run = builtin_run(runs_dir) if str(run) == BUILTIN else Path(run)
        if not run.exists() and (train_dir / run).is_dir():
            run = train_dir / run  # a bare run name, as listed under runs/train
        if not (run / "best.pt").is_file():
            raise LunarError(f"{run}: not a run folder with best.pt; give folders under {train_dir} (or their names)")
        folders.append(run)
    return list(dict.fromkeys(folders))
