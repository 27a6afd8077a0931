"""The ``lunar`` command line: parse options, call one library function, print the result.

Every command follows the same path: flags (None when not given) -> ``load_config``
(defaults, then ``--config`` YAML, then flags) -> one function in the library -> a rich
table on stdout, or JSON with ``--json``. Errors are one line on stderr and an exit code.
The commands live in ``data_commands`` and ``model_commands``; importing them registers
them on ``app`` in the order ``lunar --help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from lunar_cli.cli import data_commands, model_commands  # noqa: F401  (registers the commands)
from lunar_cli.cli.app import STATE, app

__all__ = ["app", "main", "run"]


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code, turning errors into one line each."""
    from lunar_cli.console import LunarError
    from lunar_cli.runtime import set_environment_defaults

    set_environment_defaults()

    def say(message: str) -> None:
        from lunar_cli.console import err

        err.print(message, markup=False, highlight=False)

    def traceback() -> None:
        from lunar_cli.console import err

        err.print_exception()

    try:
        result = app(args=argv, prog_name="lunar", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        say("interrupted")
        return 130
    except LunarError as exc:
        if STATE["debug"]:
            traceback()
        say(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge: anything unexpected still becomes one line
        if hasattr(exc, "format_message"):  # click's usage errors (bad option, bad value)
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "lunar"
            say(f"error: {exc.format_message()} (see {command} --help)")
            return int(getattr(exc, "exit_code", 2))
        if STATE["debug"]:
            traceback()
            return 1
        where = "" if isinstance(exc, OSError) else " (a bug: rerun with --debug and report the traceback)"
        say(f"error: {type(exc).__name__}: {exc}{where}")
        return 1


def main() -> None:
    """Entry point of the ``lunar`` executable."""
    sys.exit(run(sys.argv[1:]))
