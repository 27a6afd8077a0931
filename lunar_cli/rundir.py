"""Run folders: ``runs/<task>/<name>``, numbered so two runs never share one."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO

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


def lock_run_dir(run_dir: Path) -> IO[str] | None:
    """Return an open handle that holds an exclusive lock on ``run_dir``; close it to release.

    A second training in the same folder (``--exist-ok``, or ``--resume`` of a run that is
    still going) is refused in one line instead of overwriting the same checkpoints. The
    OS drops the lock when the process ends, kill -9 included, so it is never stale.
    None where file locks do not exist (Windows, some network file systems).
    """
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = open(Path(run_dir) / ".lock", "a+", encoding="utf-8")
    except OSError as exc:
        raise LunarError(f"{run_dir}: cannot open its lock file ({exc.strerror}); check the folder") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise LunarError(
            f"{run_dir}: another lunar train (pid {holder}) is writing this run; wait for it, or use another --name"
        ) from None
    except OSError:  # a file system without locks (some network mounts): train unguarded, as before
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def remove_if_unused(run_dir: Path) -> bool:
    """Remove ``run_dir`` if it holds nothing but its lock file; return whether it was removed.

    For a run refused before it wrote anything (weights that cannot be had, a bad --init):
    such a failure leaves no empty folder behind to take the run's name.
    """
    run_dir = Path(run_dir)
    try:
        if any(p.name != ".lock" for p in run_dir.iterdir()):
            return False
        (run_dir / ".lock").unlink(missing_ok=True)
        run_dir.rmdir()
    except OSError:
        return False
    return True


def latest_file(root: Path, filename: str) -> Path | None:
    """Return the newest ``filename`` anywhere under ``root`` (by modification time), or None."""
    found = [p for p in Path(root).glob(f"**/{filename}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
