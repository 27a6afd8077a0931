"""Atomic writes: every file lunar makes appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from lunar_cli.console import LunarError, json_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any error the temporary file is removed and ``path`` keeps its old content.
    ``suffix`` ends the temporary name (a writer that picks its format by the name needs ``path``'s own).
    """
    path = Path(path)
    if path.is_dir():
        raise LunarError(f"{path}: is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise LunarError(f"{path}: cannot write here ({exc.strerror}); choose another location") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; results should read like any file
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise LunarError(f"{path}: write failed ({exc.strerror}); nothing was changed") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json_text(payload) + "\n")


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str, *, clear_stale: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden folder ``parent/.PREFIX-XXXX.partial``, removed afterwards whatever happens.

    On the same disk as ``parent``, so what is built there moves into place by renaming.
    ``clear_stale`` first removes such folders left by a run of the same kind that was
    killed outright (only where no two runs share ``parent``).
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    if clear_stale:
        for stale in parent.glob(f".{prefix}-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", suffix=".partial", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    On failure the temporary directory is deleted and ``path`` is untouched, so a
    half-built directory never looks valid.
    """
    path = Path(path)
    with staging_dir(path.parent, path.name) as tmp:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)


def _file_keys(path: Path) -> list[Any]:
    """Return what identifies a file: its resolved path, and its (device, inode) when it exists."""
    keys: list[Any] = [path.resolve()]
    try:
        st = path.stat()
    except OSError:  # not there (yet): only the path can match
        return keys
    return keys + [(st.st_dev, st.st_ino)]


def refuse_overwrite(targets: Iterable[Path], protected: Iterable[Path], what: str, hint: str) -> None:
    """Raise one line when a file a command is about to write is one it reads (``what`` names those: "an input photo").

    Compares resolved paths and inodes, so ``./best.pt``, a symbolic link to it or a hard
    link all count as the same file. ``hint`` says what to do instead.
    """
    known = {key: Path(p) for p in protected for key in _file_keys(Path(p))}
    for target in (Path(t) for t in targets):
        source = next((known[key] for key in _file_keys(target) if key in known), None)
        if source is not None:
            raise LunarError(f"{target}: would overwrite {what} ({source}); {hint}")
