"""The one typed configuration: defaults, then a YAML file, then CLI flags, validated once.

Each section is a dataclass whose fields carry their default and a one-line comment:
``example.yaml`` and the CLI's choices are rendered from them (``lunar_cli.config_tree``),
so every option and every set of choices is declared here and nowhere else. Commands
take the sections they need; library functions trust what they get.

A resumed training adds one layer: defaults -> the run's saved config -> YAML -> flags
(see ``resume.ON_RESUME`` for what a changed value does then).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Literal, Mapping, Union

from lunar_cli.config_tree import apply_mapping, nest, read_yaml, render_yaml
from lunar_cli.console import LunarError
from lunar_cli.data.probe import MAX_PIXELS

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

    source: Union[str, None] = None  # synthetic | kaggle | path to a downloaded zip or unpacked folder | drive:ID | https URL of a zip; null: synthetic, or no dataset when only models is given
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
    cache_dir: Union[Path, None] = None  # where decoded frames are kept (safe to delete: rebuilt when needed); null = <data_dir>/cache
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
    every: int = 1  # videos and folders of numbered frames: predict every Nth frame only
    fps: Union[float, None] = None  # frame rate of a folder of numbered frames, for their time stamps; null: none (an overlay video plays at 30); a video has its own


@dataclass
class ExportConfig:
    """Writing a model for deployment (``lunar export``)."""

    format: ExportFormat = "onnx"  # onnx (ONNX Runtime, torch-free lunar predict) or torchscript
    int8: bool = False  # onnx: statically quantised to int8 (about 4x smaller, faster on CPUs), calibrated on val frames
    calibration_frames: int = 32  # int8: frames of the val split (or rendered scenes without data) that fix the ranges


@dataclass
class BenchmarkConfig:
    """Each form of a model (PyTorch fp32, bf16, ONNX fp32, int8) timed and scored (``lunar benchmark``)."""

    split: SplitName = "test"  # split the mIoU of each form is scored on
    runs: int = 10  # timed runs per form after the warm-up (the median is reported)
    warmup: int = 2  # untimed runs first (allocations, caches, one-off compilation)
    batch_size: int = 4  # frames per pass for images/s (ms per frame is timed one frame at a time)


@dataclass
class ServeConfig:
    """The web page and HTTP API on one loaded model (``lunar serve``)."""

    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0 serves every network (no authentication: trusted networks only)
    port: int = 8000  # TCP port; 0: any free port (the start line says which)
    max_upload_mb: float = 32.0  # largest request body accepted, megabytes (bigger: HTTP 413)
    max_pixels: int = MAX_PIXELS  # largest image accepted, pixels, read from its header before decoding (bigger: HTTP 413)
    batch_size: Union[int, None] = None  # most frames of one size run in one forward pass; null: 4 on a CPU, 8 on a GPU (bench/RESULTS.md)
    batch_window_ms: float = 0.0  # how long a frame waits for others to batch with; 0: only those that queued while the model was busy
    max_pending: int = 32  # requests in progress at once; more are refused with HTTP 503 (bounds memory)


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
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


# The sane range of every numeric option, (lowest, highest), both allowed: ``validate``
# refuses a value outside it in one line naming the key, and each option's --help states it.
LIMITS: dict[str, tuple[float, float]] = {
    "seed": (0, 2**32 - 1),  # what numpy and torch generators take
    "fetch.count": (1, 1_000_000), "fetch.real_count": (0, 1_000_000),
    "fetch.width": (32, 8192), "fetch.height": (32, 8192),
    "split.train": (0, 1), "split.val": (0, 1), "split.test": (0, 1),
    "data.scale": (0.01, 4), "data.image_size": (32, 4096), "data.crop_size": (32, 4096),
    "data.limit": (1, 1_000_000_000), "data.workers": (0, 256),
    **{f"data.augment.{name}": (0, 1) for name in ("hflip", "vflip", "jitter_p", "brightness", "contrast",
                                                    "saturation", "photometric_p", "vignette")},  # fmt: skip
    "data.augment.hue": (0, 0.5), "data.augment.color_cast": (0, 0.9), "data.augment.gamma": (0, 4),
    "data.augment.blur": (0, 10), "data.augment.noise": (0, 1), "data.augment.jpeg_quality": (0, 95),
    "train.width": (1, 512), "train.depth": (1, 5), "train.epochs": (1, 100_000), "train.batch_size": (1, 4096),
    "train.lr": (0, 10), "train.momentum": (0, 0.999), "train.weight_decay": (0, 1), "train.warmup": (0, 0.99),
    "train.patience": (1, 100_000),
    "eda.sample": (1, 1_000_000_000),
    "evaluate.batch_size": (1, 1024), "evaluate.grid": (0, 32),
    "predict.tile_overlap": (0, 0.875), "predict.hazard_margin": (0, 10_000), "predict.batch_size": (1, 1024),
    "predict.every": (1, 1_000_000), "predict.fps": (0.01, 10_000),
    "export.calibration_frames": (1, 10_000),
    "benchmark.runs": (1, 10_000), "benchmark.warmup": (0, 1000), "benchmark.batch_size": (1, 1024),
    "serve.port": (0, 65535), "serve.max_upload_mb": (0.001, 1024), "serve.max_pixels": (1, MAX_PIXELS),
    "serve.batch_size": (1, 256), "serve.batch_window_ms": (0, 1000), "serve.max_pending": (1, 10_000),
    "compare.images": (1, 64),
}
CLASS_WEIGHT_MAX = 10_000.0


def _value(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def limit_text(dotted: str) -> str:
    """Return an option's range for its --help (e.g. "1 to 100000"), or "" when it has none."""
    if dotted not in LIMITS:
        return ""
    return " to ".join(str(v) if isinstance(v, int) else f"{v:g}" for v in LIMITS[dotted])


def validate(cfg: Config) -> None:
    """Check every numeric option against LIMITS, then relations between values that single types cannot express."""
    for key, (low, high) in LIMITS.items():
        value = _value(cfg, key)
        if value is not None and not low <= value <= high:
            raise LunarError(f"config key {key!r}: must be {limit_text(key)}, got {value}")
    s = cfg.split
    if abs(s.train + s.val + s.test - 1.0) > 1e-6:
        raise LunarError(
            f"split shares train+val+test must add up to 1, got {s.train + s.val + s.test:.4g}; adjust split.*"
        )
    f = cfg.fetch
    if f.width * f.height > MAX_PIXELS:
        raise LunarError(f"config keys 'fetch.width' and 'fetch.height': {f.width}x{f.height} is over the "
                         f"{MAX_PIXELS // 1_000_000} megapixels lunar decodes at once; make the images smaller")  # fmt: skip
    d = cfg.data
    for key, value in (("data.crop_size", d.crop_size), ("data.image_size", d.image_size)):
        if value is not None and value % 32:
            nearest = max(32, int(round(value / 32)) * 32)
            raise LunarError(
                f"config key {key!r}: {value} is not a multiple of 32 (the U-Nets halve it 5 times); use {nearest}"
            )
    if len(d.zoom) != 2 or not 0.0 < d.zoom[0] <= d.zoom[1] <= 8.0:
        raise LunarError(f"config key 'data.zoom': give [low, high] with 0 < low <= high <= 8, got {d.zoom}")
    if not (d.augment.jpeg_quality == 0 or d.augment.jpeg_quality >= 1):
        raise LunarError(f"config key 'data.augment.jpeg_quality': 0 (off) or 1 to 95, got {d.augment.jpeg_quality}")
    t = cfg.train
    if t.lr is not None and t.lr <= 0:
        raise LunarError(f"config key 'train.lr': must be above 0 and at most {LIMITS['train.lr'][1]:g}, got {t.lr}")
    if isinstance(t.class_weights, list):
        weights = t.class_weights
        if len(weights) != 4:
            raise LunarError(f"config key 'train.class_weights': give 4 weights (one per class), got {len(weights)}")
        if not all(0 <= w <= CLASS_WEIGHT_MAX for w in weights) or not any(w > 0 for w in weights):
            raise LunarError(f"config key 'train.class_weights': each weight 0 to {CLASS_WEIGHT_MAX:g}, at least "
                             f"one above 0, got {weights}")  # fmt: skip
    if cfg.export.int8 and cfg.export.format != "onnx":
        raise LunarError(f"config key 'export.int8': int8 is for ONNX files, not export.format {cfg.export.format!r}")
    if not cfg.evaluate.splits:
        raise LunarError("config key 'evaluate.splits': name at least one split")


# Where each command's flags live, most specific section first ("" is the top level): a flag
# named like a field of one of these sections sets that field (train's --lr: train.lr,
# --limit: data.limit, --seed: seed). This is the one flag -> config key mapping.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "fetch": ("fetch", ""), "split": ("split", ""), "eda": ("eda", "split", "data", ""),
    "train": ("train", "data", ""), "evaluate": ("evaluate", "data", ""), "predict": ("predict", ""),
    "compare": ("compare", "data", ""), "export": ("export", "data", ""), "benchmark": ("benchmark", "export", "data", ""),
    "serve": ("serve", "predict", ""),
}


def flag_key(command: str, name: str) -> str:
    """Return the dotted config key that ``command``'s flag (parameter ``name``) sets; KeyError if none."""
    for section in COMMAND_SECTIONS[command]:
        node = getattr(Config(), section) if section else Config()
        if name in {f.name for f in fields(node)} and not is_dataclass(getattr(node, name)):
            return f"{section}.{name}" if section else name
    raise KeyError(f"lunar {command}: no config key for its flag {name!r}")


def flag_keys(command: str, flags: Mapping[str, Any]) -> dict[str, Any]:
    """Return a command's flags (parameter name -> value, None: not given) as dotted config keys, values parsed."""
    keyed = {flag_key(command, name): value for name, value in flags.items()}
    if isinstance(keyed.get("train.class_weights"), str):
        keyed["train.class_weights"] = parse_class_weights(keyed["train.class_weights"])
    return keyed


def command_config(command: str, path: Path | None, flags: Mapping[str, Any]) -> Config:
    """Return the config of ``lunar COMMAND``: defaults -> the YAML file at ``path`` -> its flags."""
    return load_config(path, flag_keys(command, flags))


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
