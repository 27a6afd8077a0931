"""Nested dataclasses and plain mappings: typed merging with clear errors, and commented YAML.

Generic machinery behind ``lunar_cli.config`` (which holds lunar's own options): it knows
nothing about lunar. Values are checked against the field types (``int``, ``float``,
``Literal[...]``, ``Optional``, lists, ``Path``, nested dataclasses); an unknown key gets
a "did you mean" suggestion. Each field's trailing ``# comment`` in its class source is
its documentation, so ``example.yaml`` is rendered from the classes, never written by hand.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union

from lunar_cli.console import LunarError, map_leaves


def type_name(tp: Any) -> str:
    """Return a short human name for a field type (``'ce' | 'dice'``, ``int or null``)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def literal_choices(tp: Any) -> tuple[str, ...]:
    """Return the values a ``Literal`` field (optionally inside Optional or list) allows, else ()."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return tuple(typing.get_args(tp))
    if origin in (list, tuple):
        return literal_choices(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):  # Optional[Literal[...]]; a union with other types is open
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return literal_choices(options[0]) if len(options) == 1 else ()
    return ()


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and gently converted) to type ``tp``, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    bad = LunarError(f"config key {key!r}: expected {type_name(tp)}, got {value!r}")
    if isinstance(value, enum.Enum):  # choice Enums as Typer hands them over
        value = value.value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, key)
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
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    checks = {
        type(None): lambda v: v is None,
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
        Path: lambda v: isinstance(v, (str, Path)) and bool(str(v)),
    }
    if tp in checks and checks[tp](value):
        return None if tp is type(None) else tp(value)
    raise bad


def suggest(key: str, valid: list[str]) -> str:
    """Return "did you mean 'x'?" for a close name, else the list of valid names."""
    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"


def apply_mapping(obj: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """Set ``values`` (a nested mapping) onto dataclass ``obj``, validating every key and type."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        full = f"{prefix}{key}"
        if key not in names:
            raise LunarError(f"unknown config key {full!r}: {suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise LunarError(f"config key {full!r}: expected a section (mapping), got {value!r}")
            apply_mapping(getattr(obj, key), value, f"{full}.")
        else:
            setattr(obj, key, coerce(value, tp, full))


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``{"a.b": 1}`` as ``{"a": {"b": 1}}``."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return a nested mapping as dotted keys (the inverse of ``nest``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def as_plain(obj: Any) -> Any:
    """Return a dataclass tree as YAML/JSON-ready values (paths as strings)."""
    return map_leaves(dataclasses.asdict(obj), lambda v: str(v) if isinstance(v, Path) else v)


def read_yaml(path: Path) -> dict[str, Any]:
    """Return the mapping in a YAML config file; an empty file gives an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise LunarError(f"config file {path} not found: check the path given to --config")
    import yaml  # read only when a --config file is given: lunar --help never pays for it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LunarError(f"config file {path}: invalid YAML{where}; fix the syntax") from exc
    except UnicodeDecodeError as exc:
        raise LunarError(f"config file {path}: not UTF-8 text") from exc
    except RecursionError as exc:  # YAML's reader recurses once per level of nesting
        raise LunarError(f"config file {path}: nested too deeply to be a lunar config; fix the file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LunarError(f"config file {path}: expected a mapping of keys at the top level")
    return data


_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^=#]+=[^#]*#\s?(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """Return each field's trailing ``# comment`` in the source of dataclass ``cls``."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def field_help(cls: type, name: str) -> str:
    """Return the documentation of one field: its comment, with its choices first for a Literal."""
    comment = field_comments(cls).get(name, "")
    choices = literal_choices(typing.get_type_hints(cls)[name])
    return f"[{' | '.join(choices)}] {comment}" if choices else comment


def _yaml_value(value: Any) -> str:
    import yaml  # only to render example.yaml

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def render_yaml(obj: Any, header: str, indent: str = "", column: int = 26) -> str:
    """Return dataclass ``obj`` as commented YAML: one ``key: value  # comment`` line per field."""
    lines = [header] if header else []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            about = (inspect.getdoc(hints[f.name]) or "").splitlines()[0].rstrip(".").replace("``", "")
            section = f"{indent}{f.name}:".ljust(column - 2)
            lines += ["", f"{section}  # {about}", render_yaml(value, "", indent + "  ", column).rstrip("\n")]
            continue
        plain = str(value) if isinstance(value, Path) else value
        text = f"{indent}{f.name}: {_yaml_value(plain)}"
        lines.append(f"{text.ljust(column - 2)}  # {field_help(type(obj), f.name)}".rstrip())
    return "\n".join(lines) + "\n"
