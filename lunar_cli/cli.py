"""The ``lunar`` command line: parse options, call one library function, print the result.

Every command follows the same path: flags (None when not given) -> ``load_config``
(defaults, then ``--config`` YAML, then flags) -> one function in the library -> a rich
table on stdout, or JSON with ``--json``. Errors are one line on stderr and an exit code.
"""

from __future__ import annotations

import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lunar_cli import __version__
from lunar_cli import config as options
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


def _choices(name: str, literal: Any) -> type[Enum]:
    """Return a str Enum of a config Literal's values, as Typer wants fixed choices (declared in config.py)."""
    return Enum(name, {value: value for value in typing.get_args(literal)}, type=str)


MaskSource = _choices("MaskSource", options.MaskSource)
Loss = _choices("Loss", options.Loss)
Optim = _choices("Optim", options.Optimizer)
Schedule = _choices("Schedule", options.Schedule)
SplitName = _choices("SplitName", options.SplitName)
OutputFormat = _choices("OutputFormat", options.OutputFormat)


def _default(dotted: str) -> str:
    """Return the built-in default of a config key, for help texts."""
    node: Any = _DEFAULTS
    for part in dotted.split("."):
        node = getattr(node, part)
    return f"[default: {node}]"




ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file; flags given here override it.")
]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help=f"Dataset folder. {_default('data_dir')}")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help=f"Random seed. {_default('seed')}")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]








RunsDirOpt = Annotated[Optional[Path], typer.Option("--runs-dir", help=f"Runs folder. {_default('runs_dir')}")]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help=f"auto | cpu | cuda | cuda:N | mps. {_default('device')}")
]
ImageSizeOpt = Annotated[
    Optional[int], typer.Option("--image-size", help=f"Square size, multiple of 32. {_default('data.image_size')}")
]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use only N images per split (quick runs).")]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", help="Processes decoding images into the cache (default: all cores).")
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
            "split.mask_source": mask_source,
            "split.strict": strict,
            "seed": seed,
        },
    )
    s = cfg.split
    result = make_split(
        cfg.data_dir, train=s.train, val=s.val, seed=cfg.seed, mask_source=s.mask_source, strict=s.strict
    )
    _report(result, json_out, "split")


@app.command()
def eda(
    data_dir: DataDirOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: <runs-dir>/eda).")] = None,
    sample: Annotated[Optional[int], typer.Option(help="Analyse a seeded random subset of N rendered images.")] = None,
    mask_source: Annotated[
        Optional[MaskSource], typer.Option(help=f"Label folder under images/. {_default('split.mask_source')}")
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
    _report(result, json_out, "eda")


@app.command()
def train(
    backbone: Annotated[
        Optional[str],
        typer.Option("--backbone", "-b", help=f"custom | vgg11 | resnet18 | mobilenet_v3_large | any smp encoder. {_default('train.backbone')}"),
    ] = None,
    encoder_weights: Annotated[
        Optional[str],
        typer.Option(help=f"imagenet | none | PATH to local encoder weights. {_default('train.encoder_weights')}"),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Epochs. {_default('train.epochs')}")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per step. {_default('train.batch_size')}")] = None,
    image_size: ImageSizeOpt = None,
    limit: LimitOpt = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N epochs without a better val mIoU.")] = None,
    loss: Annotated[Optional[Loss], typer.Option(help=f"Loss. {_default('train.loss')}")] = None,
    class_weights: Annotated[
        Optional[str], typer.Option(help="Cross-entropy class weights: auto (inverse frequency) or 4 numbers a,b,c,d.")
    ] = None,
    optimizer: Annotated[Optional[Optim], typer.Option(help=f"Optimiser. {_default('train.optimizer')}")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: 1e-3 adam, 1e-2 sgd).")] = None,
    scheduler: Annotated[Optional[Schedule], typer.Option(help=f"LR schedule. {_default('train.scheduler')}")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run folder name under runs/train (default: the backbone).")] = None,
    exist_ok: Annotated[Optional[bool], typer.Option("--exist-ok", help="Reuse runs/train/NAME if it exists.")] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(help="Continue a run: its folder or a last.pt. Other flags change it or are refused."),
    ] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision on GPU. [default: amp]")] = None,
    compile_model: Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the model.")] = None,
    deterministic: Annotated[
        Optional[bool], typer.Option("--deterministic", help="Deterministic algorithms (exact resume).")
    ] = None,
    workers: WorkersOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a U-Net on the train split, keeping the best on validation IoU."""
    from lunar_cli.config import parse_class_weights
    from lunar_cli.resume import load_train_config
    from lunar_cli.train import train as run_train

    flags = {
        "train.backbone": backbone,
        "train.encoder_weights": encoder_weights,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "data.image_size": image_size,
        "data.limit": limit,
        "data.workers": workers,
        "train.patience": patience,
        "train.loss": loss,
        "train.class_weights": parse_class_weights(class_weights),
        "train.optimizer": optimizer,
        "train.lr": lr,
        "train.scheduler": scheduler,
        "train.name": name,
        "train.exist_ok": exist_ok,
        "train.amp": amp,
        "train.compile": compile_model,
        "train.deterministic": deterministic,
        "seed": seed,
        "device": device,
        "data_dir": data_dir,
        "runs_dir": runs_dir,
    }
    cfg, changes = load_train_config(config, flags, resume)
    result = run_train(cfg, resume=resume, changes=changes, progress=not json_out)
    _report(result, json_out, "train")


@app.command()
def evaluate(
    target: Annotated[
        Optional[Path], typer.Argument(help="A run folder or checkpoint (default: the newest best.pt under runs/).")
    ] = None,
    split_names: Annotated[
        Optional[list[SplitName]],
        typer.Option("--split", help="Split to score; repeat for several. [default: test, test_real]"),
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per pass. {_default('evaluate.batch_size')}")] = None,
    limit: LimitOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a trained model on the test splits with the Jaccard index (IoU)."""
    from lunar_cli.evaluate import evaluate_model
    from lunar_cli.inference import find_model

    cfg = load_config(
        config,
        {
            "evaluate.splits": split_names or None,
            "evaluate.batch_size": batch_size,
            "data.limit": limit,
            "data.workers": workers,
            "device": device,
            "data_dir": data_dir,
            "runs_dir": runs_dir,
        },
    )
    model_path, _ = find_model(target, cfg.runs_dir)
    result = evaluate_model(
        model_path, data_dir=cfg.data_dir, splits=cfg.evaluate.splits, batch_size=cfg.evaluate.batch_size,
        device=cfg.device, limit=cfg.data.limit, workers=cfg.data.workers, grid=cfg.evaluate.grid,
        progress=not json_out,
    )  # fmt: skip
    _report(result, json_out, "evaluate")


@app.command()
def predict(
    inputs: Annotated[
        list[str], typer.Argument(help="Images, folders, globs, or - to read paths from stdin.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output file (one input) or folder. [default: runs/predict]")
    ] = Path("runs/predict"),
    model: Annotated[
        Optional[Path], typer.Option("--model", "-m", help="Checkpoint or run folder (default: newest best.pt under runs/).")
    ] = None,
    fmt: Annotated[
        Optional[OutputFormat], typer.Option("--format", "-f", help=f"What to write. {_default('predict.format')}")
    ] = None,
    tile: Annotated[Optional[bool], typer.Option("--tile", help="Sliding-window inference for large frames.")] = None,
    overlap: Annotated[Optional[float], typer.Option(help=f"Tile overlap. {_default('predict.tile_overlap')}")] = None,
    hazard: Annotated[Optional[bool], typer.Option("--hazard", help="Also write a hazard/safe-ground map.")] = None,
    hazard_margin: Annotated[
        Optional[int], typer.Option(help=f"Clearance around rocks, pixels. {_default('predict.hazard_margin')}")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per pass. {_default('predict.batch_size')}")] = None,
    strict: Annotated[Optional[bool], typer.Option("--strict", help="Stop at the first image that fails.")] = None,
    device: DeviceOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write class masks for photos: lunar predict img.png -o mask.png."""
    from lunar_cli.predict import run_predict

    cfg = load_config(
        config,
        {
            "predict.format": fmt,
            "predict.tile": tile,
            "predict.tile_overlap": overlap,
            "predict.hazard": hazard,
            "predict.hazard_margin": hazard_margin,
            "predict.batch_size": batch_size,
            "predict.strict": strict,
            "device": device,
            "runs_dir": runs_dir,
        },
    )
    p = cfg.predict
    result = run_predict(
        inputs, output=output, model=model, runs_dir=cfg.runs_dir, fmt=p.format, tile=p.tile,
        tile_overlap=p.tile_overlap, hazard=p.hazard, hazard_margin=p.hazard_margin, batch_size=p.batch_size,
        device=cfg.device, amp=p.amp, strict=p.strict, progress=not json_out,
    )  # fmt: skip
    _report(result, json_out, "predict")
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def compare(
    runs: Annotated[
        Optional[list[Path]], typer.Argument(help="Run folders to compare (default: every run under runs/train).")
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: <runs-dir>/compare).")] = None,
    images: Annotated[Optional[int], typer.Option(help=f"Real images in the grid. {_default('compare.images')}")] = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare trained runs: curves, test and real-photo IoU, predictions side by side."""
    from lunar_cli.compare import compare_runs

    cfg = load_config(
        config,
        {"compare.out": out, "compare.images": images, "device": device, "data_dir": data_dir, "runs_dir": runs_dir},
    )
    result = compare_runs(
        runs or None, runs_dir=cfg.runs_dir, data_dir=cfg.data_dir, out_dir=cfg.compare.out, device=cfg.device,
        n_images=cfg.compare.images, progress=not json_out,
    )  # fmt: skip
    _report(result, json_out, "compare")


def _report(result: dict, json_out: bool, command: str) -> None:
    """Print a command's result as JSON or as a rich summary (under torchrun, rank 0 only)."""
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    from lunar_cli import report

    if json_out:
        from lunar_cli.console import print_json

        print_json(result)
    else:
        report.show(command, result)


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
