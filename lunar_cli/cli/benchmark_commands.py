"""``lunar benchmark``: every form of a model timed and scored (registered in ``lunar_cli.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lunar_cli.cli.app import (
    CacheDirOpt,
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    RunsDirOpt,
    SplitName,
    WorkersOpt,
    default_of,
    flags,
    report,
)
from lunar_cli.config import command_config


def benchmark(
    target: Annotated[
        Optional[Path], typer.Argument(help="A run folder, checkpoint or builtin (default: the newest best.pt under runs/).")
    ] = None,
    split: Annotated[Optional[SplitName], typer.Option(help=f"Split each form is scored on. {default_of('benchmark.split')}")] = None,
    runs: Annotated[Optional[int], typer.Option(help=f"Timed runs per form (median). {default_of('benchmark.runs')}")] = None,
    warmup: Annotated[Optional[int], typer.Option(help=f"Untimed runs first. {default_of('benchmark.warmup')}")] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help=f"Frames per pass for images/s and scoring. {default_of('benchmark.batch_size')}")
    ] = None,
    calibration_frames: Annotated[
        Optional[int], typer.Option(help=f"Frames the int8 form is calibrated on. {default_of('export.calibration_frames')}")
    ] = None,
    limit: LimitOpt = None,
    workers: WorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Time and score each form of a model (PyTorch fp32, bf16 where native, ONNX fp32, ONNX int8) on this machine."""
    given = flags(locals(), "target")
    from lunar_cli.benchmark import benchmark_command  # heavy: torch loads when the command runs

    cfg = command_config("benchmark", config, given)
    report(benchmark_command(cfg, target, progress=not json_out), json_out, "benchmark")
