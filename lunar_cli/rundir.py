"""Run folders: ``runs/<task>/<name>``, numbered so two runs never share one."""

from __future__ import annotations

import re
from pathlib import Path

from lunar_cli.console import LunarError


def make_run_dir(root: Path, name: str, exist_ok: bool = False) -> Path:
    """Create and return a fresh run folder ``root/name`` (or ``name2``, ``name3``, ...).

    Creation is exclusive (``mkdir`` without exist_ok), so two trainings started at the
    same moment get different folders. With ``exist_ok`` the folder ``root/name`` is
    reused as it is.
    """
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", name) or name in (".", ".."):
        raise LunarError(f"run name {name!r}: use letters, digits, '.', '_', '+' or '-' only")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if exist_ok:
            (root / name).mkdir(exist_ok=True)
            return root / name
        for n in range(1, 10_000):
            candidate = root / (name if n == 1 else f"{name}{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        raise LunarError(f"{root}: cannot create a run folder ({exc.strerror}); choose another --runs-dir") from exc
    raise LunarError(f"{root}: 10,000 runs named {name!r} already; choose another --name")


def latest_file(root: Path, filename: str) -> Path | None:
    """Return the newest ``filename`` anywhere under ``root`` (by modification time), or None."""
    found = [p for p in Path(root).glob(f"**/{filename}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
