"""``lunar train``, ``evaluate``, ``predict``, ``compare`` and ``export``: the models (registered in ``lunar_cli.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lunar_cli.cli.app import (
    AmpOpt,
    CacheDirOpt,
    ChannelsLastOpt,
    ConfigOpt,
    DataDirOpt,
    DeviceOpt,
    ExportFormat,
    ImageSizeOpt,
    JsonOpt,
    LimitOpt,
    Loss,
    Optim,
    OutputFormat,
    Recipe,
    RunsDirOpt,
    Schedule,
    SeedOpt,
    SplitName,
    TtaOpt,
    WorkersOpt,
    default_of,
    flags,
    range_of,
    report,
)
from lunar_cli.config import CLASS_WEIGHT_MAX, command_config, flag_keys


def train(
    backbone: Annotated[
        Optional[str],
        typer.Option("--backbone", "-b", help=f"custom | vgg11 | resnet18 | mobilenet_v3_large | efficientnet_lite0 | any smp encoder. {default_of('train.backbone')}"),
    ] = None,
    encoder_weights: Annotated[
        Optional[str],
        typer.Option(help=f"imagenet | none | PATH to local encoder weights. {default_of('train.encoder_weights')}"),
    ] = None,
    init: Annotated[
        Optional[str], typer.Option(help="Start from a trained model's weights: a checkpoint, run folder or builtin.")
    ] = None,
    width: Annotated[
        Optional[int], typer.Option(help=f"Custom U-Net: filters at the top level. {default_of('train.width')}")
    ] = None,
    depth: Annotated[Optional[int], typer.Option(help=f"Custom U-Net: poolings, 1-5. {default_of('train.depth')}")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Epochs. {default_of('train.epochs')}")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per step. {default_of('train.batch_size')}")] = None,
    recipe: Annotated[Optional[Recipe], typer.Option(help=f"Training recipe. {default_of('train.recipe')}")] = None,
    scale: Annotated[
        Optional[float], typer.Option(help=f"Feed frames at this share of their own size. {default_of('data.scale')}")
    ] = None,
    crop_size: Annotated[
        Optional[int], typer.Option(help=f"Training crop side, multiple of 32. {default_of('data.crop_size')}")
    ] = None,
    image_size: ImageSizeOpt = None,
    limit: LimitOpt = None,
    patience: Annotated[
        Optional[int], typer.Option(help=f"Stop after N epochs without a better val mIoU. {range_of('train.patience')}")
    ] = None,
    loss: Annotated[Optional[Loss], typer.Option(help=f"Loss. {default_of('train.loss')}")] = None,
    class_weights: Annotated[
        Optional[str],
        typer.Option(help="Cross-entropy class weights: auto (inverse frequency) or 4 numbers a,b,c,d. "
                    f"[each 0 to {CLASS_WEIGHT_MAX:g}]"),
    ] = None,
    optimizer: Annotated[Optional[Optim], typer.Option(help=f"Optimiser. {default_of('train.optimizer')}")] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(help="Learning rate. [default: 3e-3 adamw on custom, 1e-3 adam(w), 1e-2 sgd; above 0 to 10]"),
    ] = None,
    scheduler: Annotated[Optional[Schedule], typer.Option(help=f"LR schedule. {default_of('train.scheduler')}")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run folder name under runs/train (default: the backbone).")] = None,
    exist_ok: Annotated[Optional[bool], typer.Option("--exist-ok", help="Reuse runs/train/NAME if it exists.")] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(help="Continue a run: its folder or a last.pt. Other flags change it or are refused."),
    ] = None,
    amp: AmpOpt = None,
    channels_last: ChannelsLastOpt = None,
    compile: Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the model.")] = None,
    deterministic: Annotated[
        Optional[bool], typer.Option("--deterministic", help="Deterministic algorithms (exact resume).")
    ] = None,
    workers: WorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a U-Net on the train split, keeping the best on validation IoU."""
    given = flags(locals(), "resume")
    from lunar_cli.train import train_command  # heavy: torch loads when the command runs

    report(train_command(config, flag_keys("train", given), resume, progress=not json_out),
           json_out, "train")  # fmt: skip


def evaluate(
    target: Annotated[
        Optional[Path], typer.Argument(help="A run folder or checkpoint (default: the newest best.pt under runs/).")
    ] = None,
    splits: Annotated[
        Optional[list[SplitName]],
        typer.Option("--split", help="Split to score; repeat for several. [default: test, test_real]"),
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per pass. {default_of('evaluate.batch_size')}")] = None,
    tta: TtaOpt = None,
    limit: LimitOpt = None,
    workers: WorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    channels_last: ChannelsLastOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a trained model on the test splits with the Jaccard index (IoU)."""
    given = flags(locals(), "target")
    from lunar_cli.evaluate import evaluate_command  # heavy: torch loads when the command runs

    cfg = command_config("evaluate", config, {**given, "splits": splits or None})
    report(evaluate_command(cfg, target, progress=not json_out), json_out, "evaluate")


def predict(
    inputs: Annotated[
        list[str], typer.Argument(help="Images, videos, folders, globs, or - to read paths from stdin.", show_default=False)
    ],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Output file (one input), video (out.mp4) or folder. [default: <runs-dir>/predict]")
    ] = None,
    model: Annotated[
        Optional[Path],
        typer.Option("--model", "-m", help="Checkpoint, run folder or exported .onnx (default: newest best.pt under runs/)."),
    ] = None,
    format: Annotated[
        Optional[OutputFormat], typer.Option("--format", "-f", help=f"What to write. {default_of('predict.format')}")
    ] = None,
    tile: Annotated[Optional[bool], typer.Option("--tile", help="Sliding-window inference for large frames.")] = None,
    tile_overlap: Annotated[
        Optional[float], typer.Option("--overlap", help=f"Tile overlap. {default_of('predict.tile_overlap')}")
    ] = None,
    hazard: Annotated[Optional[bool], typer.Option("--hazard", help="Also write a hazard/safe-ground map.")] = None,
    hazard_margin: Annotated[
        Optional[int], typer.Option(help=f"Clearance around rocks, pixels. {default_of('predict.hazard_margin')}")
    ] = None,
    uncertainty: Annotated[
        Optional[bool], typer.Option("--uncertainty", help="Also write an uncertainty map; flag out-of-distribution photos.")
    ] = None,
    tta: TtaOpt = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per pass. {default_of('predict.batch_size')}")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict", help="Stop at the first image that fails.")] = None,
    every: Annotated[
        Optional[int], typer.Option(help=f"Videos, numbered frames: predict every Nth frame. {default_of('predict.every')}")
    ] = None,
    fps: Annotated[
        Optional[float], typer.Option(help=f"Frame rate of a folder of numbered frames, for time stamps. {range_of('predict.fps')}")
    ] = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    channels_last: ChannelsLastOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write class masks for photos and videos: lunar predict img.png -o mask.png; lunar predict v.mp4 -o out.mp4 -f overlay."""
    given = flags(locals(), "inputs", "output", "model")
    from lunar_cli.predict import predict_command  # NumPy and OpenCV (torch only for a checkpoint) load here

    cfg = command_config("predict", config, given)
    result = predict_command(cfg, inputs, output, model, progress=not json_out)
    report(result, json_out, "predict")
    if result["failed"]:
        raise typer.Exit(1)


def compare(
    runs: Annotated[
        Optional[list[Path]], typer.Argument(help="Run folders to compare (default: every run under runs/train).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: <runs-dir>/compare).")] = None,
    images: Annotated[Optional[int], typer.Option(help=f"Real images in the grid. {default_of('compare.images')}")] = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare trained runs: curves, test and real-photo IoU, predictions side by side."""
    given = flags(locals(), "runs")
    from lunar_cli.compare import compare_command  # heavy: torch loads when the command runs

    cfg = command_config("compare", config, given)
    report(compare_command(cfg, runs, progress=not json_out), json_out, "compare")


def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint or run folder to export.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (model.onnx, model.ts).")],
    format: Annotated[
        Optional[ExportFormat], typer.Option("--format", "-f", help=f"File format. {default_of('export.format')}")
    ] = None,
    int8: Annotated[
        Optional[bool], typer.Option("--int8", help="ONNX statically quantised to int8, calibrated on val frames.")
    ] = None,
    calibration_frames: Annotated[
        Optional[int], typer.Option(help=f"--int8: frames to calibrate on. {default_of('export.calibration_frames')}")
    ] = None,
    data_dir: DataDirOpt = None,
    cache_dir: CacheDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a model for deployment (ONNX, int8 ONNX or TorchScript), normalisation and metadata inside; check it against PyTorch."""
    given = flags(locals(), "model", "output")
    from lunar_cli.export import export_command  # heavy: torch loads when the command runs

    cfg = command_config("export", config, given)
    report(export_command(cfg, model, output), json_out, "export")
