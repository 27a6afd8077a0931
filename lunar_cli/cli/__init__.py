"""The ``lunar`` command line: parse options, call one library function, print the result.

Every command follows the same path: its flags (None when not given; each named like the
config field it sets) -> ``config.command_config`` (defaults, then ``--config`` YAML, then
flags) -> one ``*_command`` function of the library -> a rich table on stdout, or JSON
with ``--json``. Errors are one line on stderr and an exit code. The commands are defined
in ``data_commands``, ``model_commands``, ``benchmark_commands`` and ``serve_command`` and registered here, in the order
``lunar --help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from lunar_cli import console
from lunar_cli.cli import benchmark_commands, data_commands, model_commands, serve_command
from lunar_cli.cli.app import app
from lunar_cli.console import LunarError
from lunar_cli.runtime import set_environment_defaults

__all__ = ["app", "main", "run"]

COMMANDS = (data_commands.fetch, data_commands.split, data_commands.eda, model_commands.train,
            model_commands.evaluate, model_commands.predict, model_commands.compare, model_commands.export,
            benchmark_commands.benchmark, serve_command.serve)  # fmt: skip
for _command in COMMANDS:
    app.command()(_command)


def debug_requested(argv: list[str]) -> bool:
    """Return whether ``--debug`` is among the root options (the ones before the command name)."""
    for arg in argv:
        if not arg.startswith("-"):
            return False
        if arg == "--debug":
            return True
    return False


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code, turning errors into one line each."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    set_environment_defaults()

    def say(message: str) -> None:
        console.stderr().print(message, markup=False, highlight=False)

    try:
        result = app(args=argv, prog_name="lunar", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        say("interrupted")
        return 130
    except LunarError as exc:
        if debug:
            console.stderr().print_exception()
        say(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge: anything unexpected still becomes one line
        if hasattr(exc, "format_message"):  # click's usage errors (bad option, bad value)
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "lunar"
            say(f"error: {exc.format_message()} (see {command} --help)")
            return int(getattr(exc, "exit_code", 2))
        if debug:
            console.stderr().print_exception()
            return 1
        where = "" if isinstance(exc, OSError) else " (a bug: rerun with --debug and report the traceback)"
        say(f"error: {type(exc).__name__}: {exc}{where}")
        return 1


def main() -> None:
    """Entry point of the ``lunar`` executable."""
    sys.exit(run(sys.argv[1:]))
