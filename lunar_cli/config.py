"""The one typed configuration: defaults, then a YAML file, then CLI flags, validated once.

Each section is a dataclass whose fields carry their default and a one-line comment:
``example.yaml`` and the CLI's choices are rendered from them (``lunar_cli.config_tree``),
so every option and every set of choices is declared here and nowhere else. Commands
take the sections they need; library functions trust what they get.

A resumed training adds one layer: defaults -> the run's saved config -> YAML -> flags
(see ``ON_RESUME`` for what a changed value does then).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Literal, Mapping, Union

from lunar_cli.config_tree import apply_mapping, nest, read_yaml, render_yaml
from lunar_cli.console import LunarError

KAGGLE_DATASET = "romainpessia/artificial-lunar-rocky-landscape-dataset"

# The fixed choices, each declared once: the dataclasses, the CLI and example.yaml use these.
MaskSource = Literal["clean", "ground"]
Optimizer = Literal["auto", "adam", "adamw", "sgd"]
Schedule = Literal["none", "cosine", "poly", "step", "plateau"]
Recipe = Literal["default", "seed"]
ExportFormat = Literal["onnx", "torchscript"]
Loss = Literal["ce", "dice", "focal", "ce+dice"]
SplitName = Literal["train", "val", "test", "test_real"]
OutputFormat = Literal["rgb", "index", "overlay", "probs"]


@dataclass
class FetchConfig:
    """Where the dataset comes from (``lunar fetch``)."""

    source: str = "synthetic"  # synthetic | kaggle | path to a downloaded zip or unpacked folder | drive:ID | https URL of a zip
    count: int = 300  # synthetic: number of rendered scenes to generate
    real_count: int = 12  # synthetic: number of "real-like" photos (the real dataset has 36)
    width: int = 480  # synthetic: image width in pixels (the real dataset is 720)
    height: int = 320  # synthetic: image height in pixels (the real dataset is 480)
    force: bool = False  # replace a dataset already in data_dir
    kaggle_dataset: str = KAGGLE_DATASET  # Kaggle dataset slug for source: kaggle
    models: Union[str, None] = None  # URL or Google Drive id of trained checkpoints to download
    models_dir: Path = Path("models")  # where downloaded checkpoints go
    checksum: Union[str, None] = None  # expected sha256 of the downloaded models file


@dataclass
class SplitConfig:
    """How rendered images are split (``lunar split``); real photos are always test_real."""

    train: float = 0.49  # share of rendered images for training
    val: float = 0.21  # share for validation (model selection)
    test: float = 0.30  # share for the rendered test set
    mask_source: MaskSource = "clean"  # label folder under images/
    strict: bool = False  # a missing or unreadable image/mask mate is an error, not a warning


@dataclass
class AugmentConfig:
    """Training augmentation, per crop on the device (off for val/test): geometry, colour, camera look."""

    hflip: float = 0.5  # probability of a horizontal flip (image and mask together)
    vflip: float = 0.0  # probability of a vertical flip (the study's 0.2 puts the sky below the ground)
    jitter_p: float = 0.5  # probability of colour jitter (image only)
    brightness: float = 0.2  # colour jitter: brightness factor range 1 +- this
    contrast: float = 0.2  # colour jitter: contrast factor range 1 +- this
    saturation: float = 0.2  # colour jitter: saturation factor range 1 +- this
    hue: float = 0.0  # colour jitter: hue shift range +- this (fraction of a turn, max 0.5; the study's 0.05)
    photometric_p: float = 0.25  # probability of each camera-look augmentation below, per crop
    color_cast: float = 0.1  # warm/cool cast: red and blue gains 1 +- up to this, opposite ways; 0 = off
    gamma: float = 0.3  # gamma drawn from [1 / (1 + this), 1 + this]; 0 = off
    vignette: float = 0.4  # darkening of up to this share towards a random corner; 0 = off
    blur: float = 1.2  # Gaussian blur sigma up to this many pixels; 0 = off
    noise: float = 0.03  # Gaussian sensor noise sigma up to this (pixel values 0-1); 0 = off
    jpeg_quality: int = 40  # JPEG-like 8x8 block artefacts, quality drawn from this to 95; 0 = off


@dataclass
class DataConfig:
    """How frames become tensors: scale, crops, subset, cache (train, evaluate, eda)."""

    scale: float = 1.0  # frames are cached and fed to the model at this share of their own size (aspect kept)
    image_size: Union[int, None] = None  # squash every frame to this square size instead (the study's 256); null = keep the aspect
    crop_size: int = 256  # side of the square training crops, pixels at the model's scale (multiple of 32; squashed frames train whole)
    zoom: List[float] = field(default_factory=lambda: [1.0, 1.0])  # random rescale of each crop, [low, high] (log-uniform); [1, 1] = none
    limit: Union[int, None] = None  # use only N images of each split (quick runs); null = all
    workers: Union[int, None] = None  # processes that decode images into the cache; null = all cores
    skip_bad: bool = False  # drop unreadable image/mask pairs with a warning instead of stopping
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    """How a model is trained (``lunar train``)."""

    recipe: Recipe = "default"  # default: native-scale crops, CE+Dice, AdamW, warm-up + cosine (bench/RESULTS.md); seed: the study's
    backbone: str = "custom"  # custom | vgg11 | resnet18 | mobilenet_v3_large | efficientnet_lite0 | any smp encoder name
    encoder_weights: str = "imagenet"  # imagenet | none | path to a local encoder weights file (custom: none)
    init: Union[str, None] = None  # start from a trained model's weights (fine-tuning): a checkpoint, run folder or builtin
    width: int = 16  # custom U-Net: filters at the top level, doubling at each pooling (the study's: 8)
    depth: int = 4  # custom U-Net: poolings, 1 to 5 (the study's: 3)
    epochs: int = 20  # passes over the train split
    batch_size: int = 8  # images per step (per process under torchrun)
    optimizer: Optimizer = "adamw"  # auto: adam for custom and sgd for smp encoders (the study's)
    lr: Union[float, None] = None  # learning rate; null: 3e-3 for adamw on the custom U-Net, 1e-3 other adam/adamw, 1e-2 sgd
    momentum: float = 0.9  # sgd momentum
    weight_decay: float = 1e-4  # L2 penalty (decoupled for adamw)
    scheduler: Schedule = "cosine"  # learning-rate schedule over the steps of the run (plateau: per epoch, on val mIoU)
    warmup: float = 0.05  # share of the steps over which the rate rises linearly from zero (not with plateau)
    loss: Loss = "ce+dice"  # cross-entropy (the study's), smp Dice or Focal, or cross-entropy + Dice
    class_weights: Union[List[float], Literal["auto"], None] = None  # CE weights per class, e.g. [1, 1, 5, 5]; auto: inverse pixel frequency
    patience: Union[int, None] = None  # stop after N epochs without a better val mIoU; null = never
    name: Union[str, None] = None  # run folder name under runs/train (default: the backbone, numbered)
    exist_ok: bool = False  # reuse runs/train/<name> instead of making <name>2, <name>3, ...
    compile: bool = False  # torch.compile the model (GPU; slow first epoch)
    deterministic: bool = False  # deterministic algorithms (exact resume on CPU; slower on GPU)


@dataclass
class EdaConfig:
    """The exploratory analysis (``lunar eda``)."""

    sample: Union[int, None] = None  # analyse a seeded random subset of N rendered images; null = all
    out: Union[Path, None] = None  # output folder; null = <runs_dir>/eda


@dataclass
class EvaluateConfig:
    """Scoring a trained model (``lunar evaluate``)."""

    splits: List[SplitName] = field(default_factory=lambda: ["test", "test_real"])  # splits to score, each on its own
    tta: bool = False  # also score with flip test-time augmentation and report its effect per class
    batch_size: int = 8  # images per forward pass
    grid: int = 3  # best and worst predictions shown per split


@dataclass
class PredictConfig:
    """Masks for new photos (``lunar predict``)."""

    format: OutputFormat = "rgb"  # palette mask, class-index PNG, overlay on the photo, or probabilities (.npz)
    tile: bool = False  # sliding-window inference at the model's resolution (large frames, bounded memory)
    tile_overlap: float = 0.25  # overlap between tiles, as a share of the tile size
    hazard: bool = False  # also write a hazard/safe-ground map and the largest safe region
    hazard_margin: int = 15  # pixels of clearance around rocks in the hazard map
    uncertainty: bool = False  # also write a per-pixel uncertainty map; records get its mean and out_of_distribution
    tta: bool = False  # test-time augmentation: average the probabilities of the photo and its mirror image
    batch_size: int = 8  # images (or tiles) per forward pass
    strict: bool = False  # stop at the first image that fails instead of skipping it


@dataclass
class ExportConfig:
    """Writing a model for deployment (``lunar export``)."""

    format: ExportFormat = "onnx"  # onnx (ONNX Runtime, torch-free lunar predict) or torchscript


@dataclass
class CompareConfig:
    """Comparing trained runs (``lunar compare``)."""

    images: int = 4  # real images in the side-by-side prediction grid
    out: Union[Path, None] = None  # output folder; null = <runs_dir>/compare


@dataclass
class Config:
    """Everything a lunar command can be told, in one object."""

    data_dir: Path = Path("data")  # where the dataset, manifest and caches live
    runs_dir: Path = Path("runs")  # where runs (train, eval, eda) are written
    seed: int = 42  # one seed for generation, splitting, augmentation and training
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    amp: Union[bool, None] = None  # mixed precision; null: where it runs well (GPU; CPU with AMX or AVX512-BF16)
    channels_last: Union[bool, None] = None  # channels-last memory layout; null: the faster one for the model
    fetch: FetchConfig = field(default_factory=FetchConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eda: EdaConfig = field(default_factory=EdaConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


def validate(cfg: Config) -> None:
    """Check relations between values that single types cannot express."""
    s = cfg.split
    for name in ("train", "val", "test"):
        if not 0.0 <= getattr(s, name) <= 1.0:
            raise LunarError(f"config key 'split.{name}': must be between 0 and 1, got {getattr(s, name)}")
    if abs(s.train + s.val + s.test - 1.0) > 1e-6:
        raise LunarError(
            f"split shares train+val+test must add up to 1, got {s.train + s.val + s.test:.4g}; adjust split.*"
        )
    f = cfg.fetch
    for name in ("count", "width", "height"):
        if getattr(f, name) < 1:
            raise LunarError(f"config key 'fetch.{name}': must be at least 1, got {getattr(f, name)}")
    d = cfg.data
    for key, value in (("data.crop_size", d.crop_size), ("data.image_size", d.image_size)):
        if value is not None and (value < 32 or value % 32):
            nearest = max(32, int(round(value / 32)) * 32)
            raise LunarError(
                f"config key {key!r}: {value} is not a multiple of 32 (the U-Nets halve it 5 times); use {nearest}"
            )
    if not 0.0 < d.scale <= 4.0:
        raise LunarError(f"config key 'data.scale': must be above 0 and at most 4, got {d.scale}")
    if len(d.zoom) != 2 or not 0.0 < d.zoom[0] <= d.zoom[1] <= 8.0:
        raise LunarError(f"config key 'data.zoom': give [low, high] with 0 < low <= high <= 8, got {d.zoom}")
    if d.limit is not None and d.limit < 1:
        raise LunarError(f"config key 'data.limit': must be at least 1, got {d.limit}")
    a = d.augment
    for name in ("hflip", "vflip", "jitter_p", "brightness", "contrast", "saturation", "photometric_p", "vignette"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise LunarError(f"config key 'data.augment.{name}': must be between 0 and 1, got {getattr(a, name)}")
    for name, top in (("hue", 0.5), ("color_cast", 0.9), ("gamma", 4.0), ("blur", 10.0), ("noise", 1.0)):
        if not 0.0 <= getattr(a, name) <= top:
            raise LunarError(f"config key 'data.augment.{name}': must be between 0 and {top}, got {getattr(a, name)}")
    if not (a.jpeg_quality == 0 or 1 <= a.jpeg_quality <= 95):
        raise LunarError(f"config key 'data.augment.jpeg_quality': 0 (off) or 1 to 95, got {a.jpeg_quality}")
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1:
        raise LunarError("config keys 'train.epochs' and 'train.batch_size' must be at least 1")
    if t.width < 1 or not 1 <= t.depth <= 5:
        raise LunarError(f"config keys 'train.width' (>= 1) and 'train.depth' (1 to 5): got {t.width} and {t.depth}")
    if not 0.0 <= t.warmup < 1.0:
        raise LunarError(f"config key 'train.warmup': a share of the steps in [0, 1), got {t.warmup}")
    for key, value, ok, what in (
        ("train.lr", t.lr, t.lr is None or t.lr > 0, "above 0"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "0 or more"),
        ("train.momentum", t.momentum, 0 <= t.momentum < 1, "at least 0 and below 1"),
        ("train.patience", t.patience, t.patience is None or t.patience >= 1, "at least 1"),
        ("data.workers", d.workers, d.workers is None or d.workers >= 0, "0 or more"),
    ):
        if not ok:
            raise LunarError(f"config key {key!r}: must be {what}, got {value}")
    if isinstance(t.class_weights, list) and len(t.class_weights) != 4:
        raise LunarError(f"config key 'train.class_weights': give 4 weights (one per class), got {len(t.class_weights)}")
    if not 0.0 <= cfg.predict.tile_overlap < 0.9:
        raise LunarError("config key 'predict.tile_overlap': must be at least 0 and below 0.9")
    for key, value in (("predict.hazard_margin", cfg.predict.hazard_margin), ("eda.sample", cfg.eda.sample or 1),
                       ("evaluate.batch_size", cfg.evaluate.batch_size), ("predict.batch_size", cfg.predict.batch_size),
                       ("compare.images", cfg.compare.images)):
        if value < (0 if key == "predict.hazard_margin" else 1):
            raise LunarError(f"config key {key!r}: got {value}, which is too small")
    if not cfg.evaluate.splits:
        raise LunarError("config key 'evaluate.splits': name at least one split")
    if f.real_count < 0:
        raise LunarError(f"config key 'fetch.real_count': must be 0 or more, got {f.real_count}")




# What ``lunar train --resume`` does with a value that differs from the run's saved one.
# "refuse": a one-line error naming the flag (the value is part of the run's identity);
# "apply": used, and said in one line; "note": used, and said with a warning that the
# run no longer reproduces an uninterrupted one. Keys outside train/data/seed/device/
# data_dir/runs_dir do not affect training and are ignored on resume.
ON_RESUME: dict[str, tuple[str, str]] = {
    "seed": ("refuse", "the seed fixes the run's shuffles and augmentation"),
    "runs_dir": ("refuse", "a resumed run stays in its own folder"),
    "train.name": ("refuse", "a resumed run stays in its own folder"),
    "train.exist_ok": ("refuse", "a resumed run stays in its own folder"),
    "train.recipe": ("refuse", "the recipe sets how frames are cached and fed"),
    "train.backbone": ("refuse", "the architecture is fixed by the checkpoint"),
    "train.width": ("refuse", "the architecture is fixed by the checkpoint"),
    "train.depth": ("refuse", "the architecture is fixed by the checkpoint"),
    "train.encoder_weights": ("refuse", "the weights come from the checkpoint"),
    "train.init": ("refuse", "the weights come from the checkpoint"),
    "train.optimizer": ("refuse", "the optimiser state in last.pt belongs to the run's optimiser"),
    "train.scheduler": ("refuse", "the schedule state in last.pt belongs to the run's schedule"),
    "data.image_size": ("refuse", "it changes the cached training data"),
    "data.scale": ("refuse", "it changes the cached training data"),
    "data.limit": ("refuse", "it changes which images the run trains on"),
    "data.skip_bad": ("refuse", "it changes which images the run trains on"),
    "train.epochs": ("apply", ""),
    "train.patience": ("apply", ""),
    "data.workers": ("apply", ""),
    "device": ("apply", ""),
    "data_dir": ("note", "it must hold the same dataset"),
    "channels_last": ("apply", ""),
}
RESUME_SECTIONS = ("train.", "data.", "seed", "device", "amp", "channels_last", "data_dir", "runs_dir")


def parse_class_weights(text: str | None) -> Union[List[float], str, None]:
    """Return class weights from a flag: ``auto``, or four comma-separated numbers."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        return [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise LunarError(f"--class-weights {text!r}: give auto or 4 numbers like 1,1,5,5") from exc


# Named recipes: values applied right after the defaults (the "default" recipe is the
# defaults themselves), so the config file and flags still override any of them.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # The study's: every frame squashed to 256x256 and trained whole, cross-entropy, Adam 1e-3
    # (custom) / SGD 1e-2 (smp encoders), no schedule, flips 20%, colour jitter 50%, its
    # custom U-Net (widths 8-64, 3 poolings).
    "seed": {
        "data.image_size": 256, "data.zoom": [1.0, 1.0],
        "data.augment.hflip": 0.2, "data.augment.vflip": 0.2, "data.augment.hue": 0.05,
        "data.augment.photometric_p": 0.0,
        "train.width": 8, "train.depth": 3, "train.optimizer": "auto", "train.weight_decay": 0.0,
        "train.scheduler": "none", "train.warmup": 0.0, "train.loss": "ce", "train.class_weights": None,
    },
}


def _recipe_of(*layers: Mapping[str, Any] | None) -> str:
    """Return the recipe the highest layer that names one asks for (flags, then YAML, then a saved run)."""
    for layer in layers:
        recipe = (layer or {}).get("train", {}).get("recipe")
        if recipe is not None:
            return str(getattr(recipe, "value", recipe))
    return "default"


def load_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None
) -> Config:
    """Build the config: defaults, the recipe's values, ``base`` (a saved run's config), the YAML file at ``path``, ``overrides``.

    ``overrides`` maps dotted keys (``"fetch.source"``) to values; ``None`` values are
    ignored so that flags the user did not give never mask the file.
    """
    flags = nest({k: v for k, v in (overrides or {}).items() if v is not None})
    from_file = read_yaml(path) if path is not None else {}
    cfg = Config()
    recipe = _recipe_of(flags, from_file, base)
    if recipe in RECIPES:  # an unknown name is refused below, where the key is checked
        apply_mapping(cfg, nest(RECIPES[recipe]))
    if base:
        apply_mapping(cfg, base)
    try:
        apply_mapping(cfg, from_file)
    except LunarError as exc:  # name the file: the same key may also come from a flag
        raise LunarError(f"config file {path}: {exc}", exc.exit_code) from exc
    apply_mapping(cfg, flags)
    validate(cfg)
    return cfg


EXAMPLE_HEADER = """\
# lunar configuration: every option with its default and what it does.
# Generated from lunar_cli/config.py by `python -m lunar_cli.config > example.yaml`; do not edit.
# Use it with `lunar <command> --config example.yaml`; flags given on the command line override it.
# Keys you leave out keep their defaults; unknown keys and wrong types are errors.
"""


def example_yaml() -> str:
    """Return the text of example.yaml: every option at its default, with its comment and choices."""
    return render_yaml(Config(), EXAMPLE_HEADER)


if __name__ == "__main__":
    import sys

    sys.stdout.write(example_yaml())
