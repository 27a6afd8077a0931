"""The ``lunar`` command line: parse options, call one library function, print the result.

Every command follows the same path: flags (None when not given) -> ``load_config``
(defaults, then ``--config`` YAML, then flags) -> one function in the library -> a rich
table on stdout, or JSON with ``--json``. Errors are one line on stderr and an exit code.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typing_extensions import Annotated

from lunar_cli import __version__
from lunar_cli.config import Config, load_config

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


def _default(dotted: str) -> str:
    """Return the built-in default of a config key, for help texts."""
    node: Any = _DEFAULTS
    for part in dotted.split("."):
        node = getattr(node, part)
    return f"[default: {node}]"


class MaskSource(str, Enum):
    clean = "clean"
    ground = "ground"


ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file; flags given here override it.")
]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help=f"Dataset folder. {_default('data_dir')}")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help=f"Random seed. {_default('seed')}")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]


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
    _STATE["debug"] = debug


_STATE: dict[str, bool] = {"debug": False}


@app.command()
def fetch(
    source: Annotated[
        Optional[str],
        typer.Option(
            "--source",
            "-s",
            help="synthetic | kaggle | PATH to a downloaded zip or folder | drive:ID | https URL of a zip. "
            + _default("fetch.source"),
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    count: Annotated[Optional[int], typer.Option(help=f"Synthetic scenes. {_default('fetch.count')}")] = None,
    real_count: Annotated[
        Optional[int], typer.Option(help=f"Synthetic real-like photos. {_default('fetch.real_count')}")
    ] = None,
    width: Annotated[Optional[int], typer.Option(help=f"Synthetic image width. {_default('fetch.width')}")] = None,
    height: Annotated[Optional[int], typer.Option(help=f"Synthetic image height. {_default('fetch.height')}")] = None,
    force: Annotated[Optional[bool], typer.Option("--force", help="Replace a dataset already there.")] = None,
    models: Annotated[
        Optional[str], typer.Option(help="Also download trained checkpoints: a URL or Google Drive id.")
    ] = None,
    models_dir: Annotated[
        Optional[Path], typer.Option(help=f"Where --models puts checkpoints. {_default('fetch.models_dir')}")
    ] = None,
    checksum: Annotated[Optional[str], typer.Option(help="Expected sha256 of the --models download.")] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put the Artificial Lunar Landscape dataset (or a synthetic one) under the data folder."""
    from lunar_cli.data.fetch import run_fetch

    cfg = load_config(
        config,
        {
            "fetch.source": source,
            "data_dir": data_dir,
            "fetch.count": count,
            "fetch.real_count": real_count,
            "fetch.width": width,
            "fetch.height": height,
            "fetch.force": force,
            "fetch.models": models,
            "fetch.models_dir": models_dir,
            "fetch.checksum": checksum,
            "seed": seed,
        },
    )
    result = run_fetch(cfg.fetch, data_dir=cfg.data_dir, seed=cfg.seed, dataset=source is not None or models is None)
    _report(result, json_out, "fetch")


@app.command()
def split(
    data_dir: DataDirOpt = None,
    train: Annotated[Optional[float], typer.Option(help=f"Train share. {_default('split.train')}")] = None,
    val: Annotated[Optional[float], typer.Option(help=f"Validation share. {_default('split.val')}")] = None,
    test: Annotated[Optional[float], typer.Option(help=f"Test share. {_default('split.test')}")] = None,
    mask_source: Annotated[
        Optional[MaskSource], typer.Option(help=f"Label folder under images/. {_default('split.mask_source')}")
    ] = None,
    strict: Annotated[
        Optional[bool], typer.Option("--strict", help="Stop at a missing or unreadable image/mask mate.")
    ] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the train/val/test/test_real manifest (data/manifest.csv)."""
    from lunar_cli.data.split import make_split

    cfg = load_config(
        config,
        {
            "data_dir": data_dir,
            "split.train": train,
            "split.val": val,
            "split.test": test,
            "split.mask_source": mask_source.value if mask_source else None,
            "split.strict": strict,
            "seed": seed,
        },
    )
    s = cfg.split
    result = make_split(
        cfg.data_dir, train=s.train, val=s.val, seed=cfg.seed, mask_source=s.mask_source, strict=s.strict
    )
    _report(result, json_out, "split")


def _not_yet(name: str, config: Optional[Path]) -> None:
    from lunar_cli.console import NotImplementedYet

    if config is not None:
        load_config(config)
    raise NotImplementedYet(name)


@app.command()
def eda(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Explore the dataset: class shares, where classes appear, palette checks (not implemented yet)."""
    _not_yet("eda", config)


@app.command()
def train(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Train a U-Net on the train split, keeping the best on validation IoU (not implemented yet)."""
    _not_yet("train", config)


@app.command()
def evaluate(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Score a trained model on the test splits with the Jaccard index (not implemented yet)."""
    _not_yet("evaluate", config)


@app.command()
def predict(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Write class masks for photos (not implemented yet)."""
    _not_yet("predict", config)


@app.command()
def compare(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Compare trained runs: curves, test IoU and predictions side by side (not implemented yet)."""
    _not_yet("compare", config)


def _report(result: dict, json_out: bool, command: str) -> None:
    """Print a command's result as JSON or as a rich summary."""
    from lunar_cli import report

    if json_out:
        from lunar_cli.console import print_json

        print_json(result)
    else:
        report.show(command, result)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code, turning errors into one line each."""
    from lunar_cli.console import LunarError

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
        if _STATE["debug"]:
            traceback()
        say(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the edge: anything unexpected still becomes one line
        if hasattr(exc, "format_message"):  # click's usage errors (bad option, bad value)
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "lunar"
            say(f"error: {exc.format_message()} (see {command} --help)")
            return int(getattr(exc, "exit_code", 2))
        if _STATE["debug"]:
            traceback()
            return 1
        where = "" if isinstance(exc, OSError) else " (a bug: rerun with --debug and report the traceback)"
        say(f"error: {type(exc).__name__}: {exc}{where}")
        return 1


def main() -> None:
    """Entry point of the ``lunar`` executable."""
    sys.exit(run(sys.argv[1:]))
