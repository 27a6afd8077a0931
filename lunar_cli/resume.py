"""Resuming a training run: its saved config as a layer under YAML and flags, and its random state.

``lunar train --resume RUN`` builds its config as defaults -> the run's saved config ->
``--config`` YAML -> flags. Every value that then differs from the run's own is either
refused (``ON_RESUME`` in config.py says which and why) or applied and said in one line,
so a flag the user typed is never dropped in silence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lunar_cli.config import ON_RESUME, RESUME_SECTIONS, Config, load_config
from lunar_cli.config_tree import as_plain, flatten, nest
from lunar_cli.console import LunarError, info, warn


def resolve_resume(resume: Path) -> Path:
    """Return the last.pt to resume from, given a run folder or a checkpoint file."""
    resume = Path(resume)
    path = resume / "last.pt" if resume.is_dir() else resume
    if not path.is_file():
        raise LunarError(f"nothing to resume at {resume}: give a run folder with last.pt or a checkpoint file")
    return path


def read_resume_checkpoint(last: Path) -> dict:
    """Return the checkpoint at ``last`` (tensors memory-mapped), refusing one that cannot be resumed."""
    from lunar_cli.models.checkpoint import load_checkpoint

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


def _same(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if key in ("data_dir", "runs_dir"):
        return Path(old).resolve() == Path(new).resolve()
    if key == "train.backbone":
        from lunar_cli.models.registry import friendly_name

        return friendly_name(str(old)) == friendly_name(str(new))
    return False


def _shown(value: Any, key: str = "") -> str:
    """Return a value as a flag takes it: ``0.5``, ``1,1,5,5``, ``none`` (``auto`` for automatic choices)."""
    if value is None:
        return "auto" if key in ("amp", "channels_last") else "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _spelled(key: str, value: Any, from_flag: bool) -> str:
    """Return how the user gave ``key``: as its flag (``--lr 0.5``, ``--no-amp``) or as a config key."""
    if not from_flag:
        return f"config key '{key}: {_shown(value)}'"
    flag = "--" + key.rsplit(".", 1)[-1].replace("_", "-")
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    return f"{flag} {_shown(value)}"


def resume_changes(saved: Mapping[str, Any], cfg: Config, flag_keys: set[str]) -> list[tuple[str, str]]:
    """Return (level, line) for each value of ``cfg`` that differs from the run's ``saved`` one.

    Raises LunarError for the first change ``ON_RESUME`` refuses. ``flag_keys`` are the
    dotted keys given as flags (the others came from the YAML file).
    """
    said = []
    for key, new in _relevant(cfg).items():
        old = saved.get(key, new)
        if _same(key, old, new):
            continue
        action, why = ON_RESUME.get(key, ("note", ""))
        given = _spelled(key, new, key in flag_keys)
        if action == "refuse":
            raise LunarError(
                f"{given}: cannot change when resuming ({why}; the run has {_shown(old, key)}); "
                "leave it out, or start a new run"
            )
        if action == "apply":
            said.append(("info", f"resume: {given} (the run had {_shown(old, key)})"))
        else:
            reason = why or "the run will no longer match an uninterrupted one"
            said.append(("warn", f"resume: {given} (the run had {_shown(old, key)}); {reason}"))
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
    last = resolve_resume(resume)
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
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a random state saved by ``rng_state`` (GPU state only where GPUs are visible)."""
    import contextlib

    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])
