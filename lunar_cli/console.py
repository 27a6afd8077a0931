"""The two rich consoles, progress bars, and the one error type for user mistakes.

Results go to stdout (``stdout()``); logs, progress and errors go to stderr (``stderr()``),
so ``lunar ... --json | jq`` always sees clean JSON. The consoles are made on first use,
so that ``lunar --help`` never imports rich.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


@functools.cache
def stdout() -> Any:
    """Return the rich console for results (stdout)."""
    from rich.console import Console  # rich loads on first output, not for lunar --help

    return Console(soft_wrap=True)


@functools.cache
def stderr() -> Any:
    """Return the rich console for logs, progress and errors (stderr)."""
    from rich.console import Console  # rich loads on first output, not for lunar --help

    return Console(stderr=True, soft_wrap=True)


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


def printable(text: str | os.PathLike) -> str:
    """Return text (a file name) safe for any terminal or UTF-8 file: bytes that are not UTF-8 become \\xNN."""
    try:
        raw = os.fsencode(text)  # how Python holds undecodable name bytes (surrogateescape)
    except UnicodeEncodeError:
        raw = str(text).encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def number(value: float | None, digits: int = 3) -> str:
    """Return a score for a log line or table: ``digits`` decimals, "n/a" when there is none (None or NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def warn(message: str) -> None:
    """Print a one-line warning to stderr (the message as it is: brackets in file names are not markup)."""
    from rich.markup import escape  # rich loads on first output, not for lunar --help

    stderr().print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def info(message: str) -> None:
    """Print a one-line progress message to stderr."""
    stderr().print(message, highlight=False, markup=False)


def map_leaves(value: Any, fn: Any) -> Any:
    """Return a copy of nested dicts, lists and tuples (as lists) with ``fn`` applied to every other value."""
    if isinstance(value, dict):
        return {key: map_leaves(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_leaves(item, fn) for item in value]
    return fn(value)


def json_safe(value: Any) -> Any:
    """Return ``value`` with every NaN or infinite float replaced by None, so it is valid JSON (null)."""
    return map_leaves(value, lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)


def json_text(payload: Any) -> str:
    """Return ``payload`` as indented, strictly valid JSON: non-finite numbers are null, other objects strings."""
    return json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False)


def print_json(payload: Any) -> None:
    """Print ``payload`` as JSON on stdout, with nothing else on the line."""
    sys.stdout.write(json_text(payload) + "\n")
    sys.stdout.flush()


def track(items: Iterable[T], description: str, total: int | None = None, quiet: bool = False,
          unit: str | None = None) -> Iterator[T]:  # fmt: skip
    """Yield ``items`` while showing a rich progress bar on stderr (plain when not a terminal).

    With ``unit`` ("frames") the bar also counts them and shows how many a second go by.
    """
    if quiet or not stderr().is_terminal:
        yield from items
        return
    from rich import progress  # rich loads on first output, not for lunar --help

    if unit is None:
        yield from progress.track(items, description=description, total=total, console=stderr(), transient=True)
        return

    class Rate(progress.ProgressColumn):
        def render(self, task: Any) -> Any:
            return progress.Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s")

    columns = (progress.TextColumn("{task.description}"), progress.BarColumn(), progress.MofNCompleteColumn(),
               Rate(), progress.TimeElapsedColumn(), progress.TimeRemainingColumn())  # fmt: skip
    with progress.Progress(*columns, console=stderr(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
