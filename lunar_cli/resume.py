"""Resuming a training run: its saved config as a layer under YAML and flags, and its random state.

``lunar train --resume RUN`` builds its config as defaults -> the run's saved config ->
``--config`` YAML -> flags. Every value that then differs from the run's own is either
refused (``ON_RESUME`` says which and why) or applied and said in one line,
so a flag the user typed is never dropped in silence.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping

import torch

from lunar_cli.config import Config, load_config
from lunar_cli.config_tree import as_plain, flatten, nest
from lunar_cli.console import LunarError, info, warn
from lunar_cli.model_files import find_resume
from lunar_cli.models.checkpoint import load_checkpoint
from lunar_cli.models.registry import friendly_name

# What ``lunar train --resume`` does with a value that differs from the run's saved one.
# "refuse": a one-line error naming the flag (the value is part of the run's identity);
# "apply": used, and said in one line; "note": used, and said with a warning that the
# run no longer reproduces an uninterrupted one. Keys outside train/data/seed/device/
# data_dir/runs_dir do not affect training and are ignored on resume.
ON_RESUME: dict[str, tuple[str, str]] = {
    "seed": ("refuse", "the seed fixes the run's shuffles and augmentation"),
    "runs_dir": ("refuse", "a resumed run stays in its own folder"),
    "train.name": ("refuse", "a resumed run stays in its own folder"),
    "train.exist_ok": ("refuse", "a resumed run stays in its own folder"),
    "train.recipe": ("refuse", "the recipe sets how frames are cached and fed"),
    "train.backbone": ("refuse", "the architecture is fixed by the checkpoint"),
    "train.width": ("refuse", "the architecture is fixed by the checkpoint"),
    "train.depth": ("refuse", "the architecture is fixed by the checkpoint"),
    "train.encoder_weights": ("refuse", "the weights come from the checkpoint"),
    "train.init": ("refuse", "the weights come from the checkpoint"),
    "train.optimizer": ("refuse", "the optimiser state in last.pt belongs to the run's optimiser"),
    "train.scheduler": ("refuse", "the schedule state in last.pt belongs to the run's schedule"),
    "data.image_size": ("refuse", "it changes the cached training data"),
    "data.scale": ("refuse", "it changes the cached training data"),
    "data.limit": ("refuse", "it changes which images the run trains on"),
    "data.skip_bad": ("refuse", "it changes which images the run trains on"),
    "train.epochs": ("apply", ""),
    "train.patience": ("apply", ""),
    "data.workers": ("apply", ""),
    "data.cache_dir": ("apply", ""),
    "device": ("apply", ""),
    "data_dir": ("note", "it must hold the same dataset"),
    "channels_last": ("apply", ""),
}
RESUME_SECTIONS = ("train.", "data.", "seed", "device", "amp", "channels_last", "data_dir", "runs_dir")


def read_resume_checkpoint(last: Path) -> dict:
    """Return the checkpoint at ``last`` (tensors memory-mapped), refusing one that cannot be resumed."""
    ckpt = load_checkpoint(last, mmap=True)
    if "train_state" not in ckpt:
        raise LunarError(f"{last}: holds weights only (a best.pt?); resume from the run's last.pt")
    if ckpt["meta"]["format_version"] < 2:
        raise LunarError(
            f"{last}: a run of lunar {ckpt['meta'].get('lunar_version', '0.1')} (frames squashed to a square), "
            "which this lunar cannot continue; start a new run (its best.pt still works with evaluate and predict)"
        )
    return ckpt


def saved_config(ckpt: dict) -> dict[str, Any]:
    """Return the resume-relevant part of the config a run was started with, as dotted keys."""
    flat = flatten(ckpt["train_state"]["config"])
    return {k: v for k, v in flat.items() if k.startswith(RESUME_SECTIONS)}


def _relevant(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in flatten(as_plain(cfg)).items() if k.startswith(RESUME_SECTIONS)}


def _unchanged(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if key in ("data_dir", "runs_dir"):
        return Path(old).resolve() == Path(new).resolve()
    if key == "train.backbone":
        return friendly_name(str(old)) == friendly_name(str(new))
    return False


def _as_typed(value: Any, key: str = "") -> str:
    """Return a value as a flag takes it: ``0.5``, ``1,1,5,5``, ``none`` (``auto`` for automatic choices)."""
    if value is None:
        return "auto" if key in ("amp", "channels_last") else "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_typed(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _as_given(key: str, value: Any, from_flag: bool) -> str:
    """Return how the user gave ``key``: as its flag (``--lr 0.5``, ``--no-amp``) or as a config key."""
    if not from_flag:
        return f"config key '{key}: {_as_typed(value)}'"
    flag = "--" + key.rsplit(".", 1)[-1].replace("_", "-")
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    return f"{flag} {_as_typed(value)}"


def resume_changes(saved: Mapping[str, Any], cfg: Config, flag_keys: set[str]) -> list[tuple[str, str]]:
    """Return (level, line) for each value of ``cfg`` that differs from the run's ``saved`` one.

    Raises LunarError for the first change ``ON_RESUME`` refuses. ``flag_keys`` are the
    dotted keys given as flags (the others came from the YAML file).
    """
    said = []
    for key, new in _relevant(cfg).items():
        old = saved.get(key, new)
        if _unchanged(key, old, new):
            continue
        action, why = ON_RESUME.get(key, ("note", ""))
        given = _as_given(key, new, key in flag_keys)
        if action == "refuse":
            raise LunarError(
                f"{given}: cannot change when resuming ({why}; the run has {_as_typed(old, key)}); "
                "leave it out, or start a new run"
            )
        if action == "apply":
            said.append(("info", f"resume: {given} (the run had {_as_typed(old, key)})"))
        else:
            reason = why or "the run will no longer match an uninterrupted one"
            said.append(("warn", f"resume: {given} (the run had {_as_typed(old, key)}); {reason}"))
    return said


def load_train_config(
    path: Path | None, flags: Mapping[str, Any], resume: Path | None
) -> tuple[Config, list[tuple[str, str]]]:
    """Return the config of ``lunar train`` (defaults -> the resumed run's config -> YAML -> flags) and what changed.

    With ``resume``, a refused change is a LunarError; the others come back as (level,
    line) for the run to say once it has its folder.
    """
    if resume is None:
        return load_config(path, flags), []
    last = find_resume(resume)
    saved = saved_config(read_resume_checkpoint(last))
    try:
        base = load_config(None, None, base=nest(saved))
    except LunarError as exc:
        raise LunarError(f"{last}: its saved config does not fit this lunar ({exc}); start a new run") from exc
    cfg = load_config(path, flags, base=nest(saved))
    flag_keys = {k for k, v in flags.items() if v is not None}
    return cfg, resume_changes(_relevant(base), cfg, flag_keys)


def say_changes(changes: list[tuple[str, str]]) -> None:
    """Print the lines of ``resume_changes`` on stderr (a warning where reproduction breaks)."""
    for level, line in changes:
        (info if level == "info" else warn)(line)


def rng_state() -> dict:
    """Return the torch random state (CPU, and every GPU's) for last.pt."""

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a random state saved by ``rng_state`` (GPU state only where GPUs are visible)."""

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])
