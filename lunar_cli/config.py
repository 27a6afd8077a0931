"""The one typed configuration: defaults, then a YAML file, then CLI flags, validated once.

Each section is a dataclass whose fields carry their default and a one-line comment
(the same comment ``example.yaml`` shows). Commands take the sections they need.
"""

from __future__ import annotations

import dataclasses
import enum
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Literal, Mapping, Union

from lunar_cli.console import LunarError

KAGGLE_DATASET = "romainpessia/artificial-lunar-rocky-landscape-dataset"


@dataclass
class FetchConfig:
    """Where the dataset comes from (``lunar fetch``)."""

    source: str = "synthetic"  # synthetic | kaggle | path to a downloaded zip or unpacked folder
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
    mask_source: Literal["clean", "ground"] = "clean"  # label folder: images/clean or images/ground
    strict: bool = False  # a missing or unreadable image/mask mate is an error, not a warning


@dataclass
class AugmentConfig:
    """Training augmentation as in the original study (off for val/test)."""

    hflip: float = 0.2  # probability of a horizontal flip (image and mask together)
    vflip: float = 0.2  # probability of a vertical flip (image and mask together)
    jitter_p: float = 0.5  # probability of colour jitter (image only)
    brightness: float = 0.2  # colour jitter: brightness factor range 1 +- this
    contrast: float = 0.2  # colour jitter: contrast factor range 1 +- this
    saturation: float = 0.2  # colour jitter: saturation factor range 1 +- this
    hue: float = 0.05  # colour jitter: hue shift range +- this (fraction of a turn, max 0.5)


@dataclass
class DataConfig:
    """How images become tensors: size, subset, cache (train, evaluate, eda)."""

    image_size: int = 256  # square training size in pixels; a multiple of 32
    limit: Union[int, None] = None  # use only N images of each split (quick runs); null = all
    workers: Union[int, None] = None  # processes that decode images into the cache; null = all cores
    skip_bad: bool = False  # drop unreadable image/mask pairs with a warning instead of stopping
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    """How a model is trained (``lunar train``)."""

    backbone: str = "custom"  # custom | vgg11 | resnet18 | mobilenet_v3_large | any smp encoder name
    encoder_weights: str = "imagenet"  # imagenet | none | path to a local encoder weights file (custom: none)
    epochs: int = 20  # passes over the train split
    batch_size: int = 8  # images per step (per process under torchrun)
    optimizer: Literal["auto", "adam", "adamw", "sgd"] = "auto"  # auto: adam for custom, sgd for smp encoders
    lr: Union[float, None] = None  # learning rate; null: 1e-3 for adam/adamw, 1e-2 for sgd
    momentum: float = 0.9  # sgd momentum
    weight_decay: float = 0.0  # L2 penalty
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"  # learning-rate schedule
    loss: Literal["ce", "dice", "focal", "ce+dice"] = "ce"  # cross-entropy as in the study, or smp Dice/Focal
    class_weights: Union[List[float], Literal["auto"], None] = None  # CE weights per class; auto: inverse frequency
    patience: Union[int, None] = None  # stop after N epochs without a better val mIoU; null = never
    name: Union[str, None] = None  # run folder name under runs/train (default: the backbone, numbered)
    exist_ok: bool = False  # reuse runs/train/<name> instead of making <name>2, <name>3, ...
    amp: bool = True  # mixed precision on GPU (bf16 where supported); ignored on CPU
    channels_last: bool = True  # channels-last memory layout on GPU
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

    splits: List[Literal["train", "val", "test", "test_real"]] = field(default_factory=lambda: ["test", "test_real"])  # splits to score, each on its own
    batch_size: int = 8  # images per forward pass
    grid: int = 3  # best and worst predictions shown per split


@dataclass
class PredictConfig:
    """Masks for new photos (``lunar predict``)."""

    format: Literal["rgb", "index", "overlay", "probs"] = "rgb"  # palette mask | class-index PNG | overlay | probabilities .npz
    tile: bool = False  # sliding-window inference at the model's resolution (large frames, bounded memory)
    tile_overlap: float = 0.25  # overlap between tiles, as a share of the tile size
    hazard: bool = False  # also write a hazard/safe-ground map and the largest safe region
    hazard_margin: int = 15  # pixels of clearance around rocks in the hazard map
    batch_size: int = 8  # images (or tiles) per forward pass
    amp: bool = True  # mixed precision on GPU
    strict: bool = False  # stop at the first image that fails instead of skipping it


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
    fetch: FetchConfig = field(default_factory=FetchConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eda: EdaConfig = field(default_factory=EdaConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and gently converted) to type ``tp``, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    bad = LunarError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except LunarError:
                continue
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp, *_rest) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise bad
    raise bad


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"


def _apply(obj: Any, values: Mapping[str, Any], prefix: str) -> None:
    """Set ``values`` (a nested mapping) onto dataclass ``obj``, validating every key."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        full = f"{prefix}{key}"
        if key not in names:
            raise LunarError(f"unknown config key {full!r}: {_suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise LunarError(f"config key {full!r}: expected a section (mapping), got {value!r}")
            _apply(getattr(obj, key), value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, tp, full))


def read_yaml(path: Path) -> dict[str, Any]:
    """Return the mapping in a YAML config file; empty file gives an empty mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LunarError(f"config file {path} not found: check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LunarError(f"config file {path}: invalid YAML{where}; fix the syntax") from exc
    except UnicodeDecodeError as exc:
        raise LunarError(f"config file {path}: not UTF-8 text") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LunarError(f"config file {path}: expected a mapping of keys at the top level")
    return data


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


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
    if d.image_size < 32 or d.image_size % 32:
        nearest = max(32, int(round(d.image_size / 32)) * 32)
        raise LunarError(
            f"config key 'data.image_size': {d.image_size} is not a multiple of 32 (the U-Nets halve it 5 times); "
            f"use {nearest}"
        )
    if d.limit is not None and d.limit < 1:
        raise LunarError(f"config key 'data.limit': must be at least 1, got {d.limit}")
    for name in ("hflip", "vflip", "jitter_p"):
        if not 0.0 <= getattr(d.augment, name) <= 1.0:
            raise LunarError(f"config key 'data.augment.{name}': a probability between 0 and 1")
    if not 0.0 <= d.augment.hue <= 0.5:
        raise LunarError("config key 'data.augment.hue': must be between 0 and 0.5")
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1:
        raise LunarError("config keys 'train.epochs' and 'train.batch_size' must be at least 1")
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


def parse_class_weights(text: str | None) -> Union[List[float], str, None]:
    """Return class weights from a flag: ``auto``, or four comma-separated numbers."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        return [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise LunarError(f"--class-weights {text!r}: give auto or 4 numbers like 1,1,5,5") from exc


def _plain_flag(value: Any) -> Any:
    """Return a flag value as the config stores it: choice Enums (as Typer gives them) become their values."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain_flag(v) for v in value]
    return value


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the config: defaults, then the YAML file at ``path``, then ``overrides``.

    ``overrides`` maps dotted keys (``"fetch.source"``) to values; ``None`` values are
    ignored so that flags the user did not give never mask the file.
    """
    cfg = Config()
    if path is not None:
        values = read_yaml(path)
        try:
            _apply(cfg, values, "")
        except LunarError as exc:  # name the file: the same key may also come from a flag
            raise LunarError(f"config file {path}: {exc}", exc.exit_code) from exc
    given = {k: _plain_flag(v) for k, v in (overrides or {}).items() if v is not None}
    _apply(cfg, _nest(given), "")
    validate(cfg)
    return cfg


def as_dict(cfg: Any) -> dict[str, Any]:
    """Return the config as plain YAML/JSON-ready values (paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))
