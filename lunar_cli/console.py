"""The two rich consoles, progress bars, and the one error type for user mistakes.

Results go to stdout (``out``); logs, progress and errors go to stderr (``err``), so
``lunar ... --json | jq`` always sees clean JSON.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


def __getattr__(name: str) -> Any:
    # ``out`` and ``err`` are made on first use, so that ``lunar --help`` never imports rich.
    if name in ("out", "err"):
        from rich.console import Console

        globals()["out"] = Console(soft_wrap=True)
        globals()["err"] = Console(stderr=True, soft_wrap=True)
        return globals()[name]
    raise AttributeError(name)


class LunarError(Exception):
    """A user-facing mistake: wrong input, missing file, bad option.

    The message is one line saying what is wrong, where, and what to do. The CLI edge
    turns it into ``error: <message>`` on stderr and ``exit_code`` (1 unless given).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_line(exc: BaseException, limit: int = 160) -> str:
    """Return the first line of an exception's message (its type name if it has none), cut to ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = (lines[0].strip() if lines else "") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warn(message: str) -> None:
    """Print a one-line warning to stderr (the message as it is: brackets in file names are not markup)."""
    from rich.markup import escape

    from lunar_cli.console import err

    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def info(message: str) -> None:
    """Print a one-line progress message to stderr."""
    from lunar_cli.console import err

    err.print(message, highlight=False, markup=False)


def json_safe(value: Any) -> Any:
    """Return ``value`` with every NaN or infinite float replaced by None, so it is valid JSON (null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(payload: Any) -> str:
    """Return ``payload`` as indented, strictly valid JSON: non-finite numbers are null, other objects strings."""
    return json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False)


def print_json(payload: Any) -> None:
    """Print ``payload`` as JSON on stdout, with nothing else on the line."""
    sys.stdout.write(json_text(payload) + "\n")
    sys.stdout.flush()


def track(items: Iterable[T], description: str, total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """Yield ``items`` while showing a rich progress bar on stderr (plain when not a terminal)."""
    from lunar_cli.console import err

    if quiet or not err.is_terminal:
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=err, transient=True)
