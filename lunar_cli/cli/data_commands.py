"""``lunar fetch``, ``lunar split`` and ``lunar eda``: getting and looking at the dataset (registered in ``lunar_cli.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lunar_cli.cli.app import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    MaskSource,
    RunsDirOpt,
    SeedOpt,
    WorkersOpt,
    default_of,
    flags,
    range_of,
    report,
)
from lunar_cli.config import command_config


def fetch(
    source: Annotated[
        Optional[str],
        typer.Option(
            "--source",
            "-s",
            help="synthetic | kaggle | PATH to a downloaded zip or folder | drive:ID | https URL of a zip. "
            "[default: synthetic; no dataset when only --models is given]",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    count: Annotated[Optional[int], typer.Option(help=f"Synthetic scenes. {default_of('fetch.count')}")] = None,
    real_count: Annotated[
        Optional[int], typer.Option(help=f"Synthetic real-like photos. {default_of('fetch.real_count')}")
    ] = None,
    width: Annotated[Optional[int], typer.Option(help=f"Synthetic image width. {default_of('fetch.width')}")] = None,
    height: Annotated[Optional[int], typer.Option(help=f"Synthetic image height. {default_of('fetch.height')}")] = None,
    force: Annotated[Optional[bool], typer.Option("--force", help="Replace a dataset already there.")] = None,
    models: Annotated[
        Optional[str], typer.Option(help="Also download trained checkpoints: a URL or Google Drive id.")
    ] = None,
    models_dir: Annotated[
        Optional[Path], typer.Option(help=f"Where --models puts checkpoints. {default_of('fetch.models_dir')}")
    ] = None,
    checksum: Annotated[Optional[str], typer.Option(help="Expected sha256 of the --models download.")] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Put the Artificial Lunar Landscape dataset (or a synthetic one) under the data folder."""
    given = flags(locals())
    from lunar_cli.data.fetch import run_fetch  # NumPy, OpenCV and the downloaders load when the command runs

    report(run_fetch(command_config("fetch", config, given)), json_out, "fetch")


def split(
    data_dir: DataDirOpt = None,
    train: Annotated[Optional[float], typer.Option(help=f"Train share. {default_of('split.train')}")] = None,
    val: Annotated[Optional[float], typer.Option(help=f"Validation share. {default_of('split.val')}")] = None,
    test: Annotated[Optional[float], typer.Option(help=f"Test share. {default_of('split.test')}")] = None,
    mask_source: Annotated[
        Optional[MaskSource], typer.Option(help=f"Label folder under images/. {default_of('split.mask_source')}")
    ] = None,
    strict: Annotated[
        Optional[bool], typer.Option("--strict", help="Stop at a missing or unreadable image/mask mate.")
    ] = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the train/val/test/test_real manifest (data/manifest.csv)."""
    given = flags(locals())
    from lunar_cli.data.split import split_command  # NumPy loads when the command runs

    report(split_command(command_config("split", config, given)), json_out, "split")


def eda(
    data_dir: DataDirOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: <runs-dir>/eda).")] = None,
    sample: Annotated[
        Optional[int], typer.Option(help=f"Analyse a seeded random subset of N rendered images. {range_of('eda.sample')}")
    ] = None,
    mask_source: Annotated[
        Optional[MaskSource], typer.Option(help=f"Label folder under images/. {default_of('split.mask_source')}")
    ] = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Explore the dataset: class shares, where classes appear, palette and size checks."""
    given = flags(locals())
    from lunar_cli.data.eda import eda_command  # NumPy, OpenCV and matplotlib load when the command runs

    report(eda_command(command_config("eda", config, given), progress=not json_out), json_out, "eda")
