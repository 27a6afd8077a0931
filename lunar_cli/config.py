"""The one typed configuration: defaults, then a YAML file, then CLI flags, validated once.

Each section is a dataclass whose fields carry their default and a one-line comment
(the same comment ``example.yaml`` shows). Commands take the sections they need.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

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
class Config:
    """Everything a lunar command can be told, in one object."""

    data_dir: Path = Path("data")  # where the dataset, manifest and caches live
    runs_dir: Path = Path("runs")  # where runs (train, eval, eda) are written
    seed: int = 42  # one seed for generation, splitting, augmentation and training
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    fetch: FetchConfig = field(default_factory=FetchConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


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
    if f.real_count < 0:
        raise LunarError(f"config key 'fetch.real_count': must be 0 or more, got {f.real_count}")


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Build the config: defaults, then the YAML file at ``path``, then ``overrides``.

    ``overrides`` maps dotted keys (``"fetch.source"``) to values; ``None`` values are
    ignored so that flags the user did not give never mask the file.
    """
    cfg = Config()
    if path is not None:
        _apply(cfg, read_yaml(path), "")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
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
