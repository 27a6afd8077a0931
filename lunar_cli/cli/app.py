"""The ``lunar`` Typer app, its root options, and the options and choices its commands share.

Choice Enums are derived from the Literals in ``lunar_cli.config``, where each set of
choices is declared once; help texts show each option's default and range from the same
place. A command's parameters are named like the config fields they set, so
``config.COMMAND_SECTIONS`` maps them to keys without a list per command.
"""

from __future__ import annotations

import os
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lunar_cli import __version__
from lunar_cli import config as options
from lunar_cli.config import Config
from lunar_cli.console import print_json

app = typer.Typer(
    name="lunar",
    help="Segment photos of the Moon's surface into sky, small rocks, large rocks and ground.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DEFAULTS = Config()


def _choices(name: str, literal: Any) -> type[Enum]:
    """Return a str Enum of a config Literal's values, as Typer wants fixed choices (declared in config.py)."""
    return Enum(name, {value: value for value in typing.get_args(literal)}, type=str)


MaskSource = _choices("MaskSource", options.MaskSource)
Loss = _choices("Loss", options.Loss)
Optim = _choices("Optim", options.Optimizer)
Schedule = _choices("Schedule", options.Schedule)
Recipe = _choices("Recipe", options.Recipe)
ExportFormat = _choices("ExportFormat", options.ExportFormat)
SplitName = _choices("SplitName", options.SplitName)
OutputFormat = _choices("OutputFormat", options.OutputFormat)


def flags(values: dict[str, Any], *arguments: str) -> dict[str, Any]:
    """Return a command's flags from its ``locals()``: every parameter but ``config``, ``json_out`` and its ``arguments``."""
    return {name: value for name, value in values.items() if name not in ("config", "json_out", *arguments)}


def default_of(dotted: str) -> str:
    """Return the built-in default of a config key and its allowed range, for help texts."""
    node: Any = _DEFAULTS
    for part in dotted.split("."):
        node = getattr(node, part)
    within = options.limit_text(dotted)
    return f"[default: {node}{'; ' + within if within else ''}]"


def range_of(dotted: str) -> str:
    """Return "[X to Y]" for a config key without a printable default (help texts)."""
    return f"[{options.limit_text(dotted)}]"


ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file; flags given here override it.")
]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help=f"Dataset folder. {default_of('data_dir')}")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help=f"Random seed. {default_of('seed')}")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]


RunsDirOpt = Annotated[Optional[Path], typer.Option("--runs-dir", help=f"Runs folder. {default_of('runs_dir')}")]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help=f"auto | cpu | cuda | cuda:N | mps. {default_of('device')}")
]
ImageSizeOpt = Annotated[
    Optional[int],
    typer.Option("--image-size", help=f"Squash frames to this square size, multiple of 32 (the study's 256). {range_of('data.image_size')}"),
]
AmpOpt = Annotated[
    Optional[bool],
    typer.Option("--amp/--no-amp", help="Mixed precision (bf16/fp16). [default: where the GPU or CPU runs it well]"),
]
ChannelsLastOpt = Annotated[
    Optional[bool],
    typer.Option("--channels-last/--no-channels-last", help="Channels-last memory layout. [default: the faster one]"),
]
TtaOpt = Annotated[
    Optional[bool], typer.Option("--tta", help="Also run each frame mirrored and average the probabilities.")
]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help=f"Use only N images per split (quick runs). {range_of('data.limit')}")]
CacheDirOpt = Annotated[
    Optional[Path], typer.Option("--cache-dir", help="Where decoded frames are cached. [default: <data-dir>/cache]")
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option("--workers", help=f"Processes decoding images into the cache. [default: all cores; {options.limit_text('data.workers')}]"),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lunar {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """Segment photos of the Moon's surface into sky, small rocks, large rocks and ground."""
    # --debug is read by lunar_cli.cli.run before the command starts, so errors can show tracebacks.


def report(result: dict, json_out: bool, command: str) -> None:
    """Print a command's result as JSON or as a rich summary (under torchrun, rank 0 only)."""
    if os.environ.get("RANK", "0") != "0":
        return
    if json_out:
        print_json(result)
    else:
        from lunar_cli import report  # rich tables: loaded only for a person reading a terminal

        report.show(command, result)
