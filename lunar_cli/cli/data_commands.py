"""``lunar fetch``, ``lunar split`` and ``lunar eda``: getting and looking at the dataset."""

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
    app,
    default_of,
    range_of,
    report,
)
from lunar_cli.config import load_config


@app.command()
def fetch(
    source: Annotated[
        Optional[str],
        typer.Option(
            "--source",
            "-s",
            help="synthetic | kaggle | PATH to a downloaded zip or folder | drive:ID | https URL of a zip. "
            + default_of("fetch.source"),
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
    report(result, json_out, "fetch")


@app.command()
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
    from lunar_cli.data.split import make_split

    cfg = load_config(
        config,
        {
            "data_dir": data_dir,
            "split.train": train,
            "split.val": val,
            "split.test": test,
            "split.mask_source": mask_source,
            "split.strict": strict,
            "seed": seed,
        },
    )
    s = cfg.split
    result = make_split(
        cfg.data_dir, train=s.train, val=s.val, seed=cfg.seed, mask_source=s.mask_source, strict=s.strict
    )
    report(result, json_out, "split")


@app.command()
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
    from lunar_cli.data.eda import run_eda

    cfg = load_config(
        config,
        {
            "data_dir": data_dir,
            "eda.out": out,
            "eda.sample": sample,
            "split.mask_source": mask_source,
            "data.workers": workers,
            "seed": seed,
            "runs_dir": runs_dir,
        },
    )
    result = run_eda(
        cfg.data_dir, cfg.eda.out or cfg.runs_dir / "eda", sample=cfg.eda.sample, seed=cfg.seed,
        mask_source=cfg.split.mask_source, workers=cfg.data.workers, progress=not json_out,
    )  # fmt: skip
    report(result, json_out, "eda")
