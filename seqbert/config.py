"""Configs: YAML files -> frozen, validated dataclasses. The only module that reads YAML.

`load_config(cls, path, overrides)` fills a (possibly nested) frozen dataclass from a YAML mapping; unknown
keys fail with the file and the dotted key named, and the dataclass's own `__post_init__` validates values.
Overrides are `dotted.key=value` strings (values parsed as YAML scalars), as given on a command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; expected some of {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from e
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(inner[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept what Python reads as a number
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
) -> T:
    """Build `cls` from the YAML file at `path` (or nothing) plus `key.sub=value` overrides.

    `ignore`: top-level keys read by someone else (e.g. `job`, which `seqbert train` dispatches on).
    """
    data: dict = {}
    where = cls.__name__
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if loaded is not None:
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: the top level must be a mapping")
            data = {k: v for k, v in loaded.items() if k not in ignore}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not a YAML scalar") from None
        _set_dotted(data, key.strip(), value)
    return _build(cls, data, where)


def build_config(cls: type[T], data: dict, where: str | None = None) -> T:
    """Build `cls` from a plain mapping (as read from YAML), validated like `load_config`."""
    return _build(cls, data, where or cls.__name__)


def config_to_dict(config: Any) -> dict:
    """A config dataclass as plain JSON/YAML-able data (for run directories)."""
    return dataclasses.asdict(config)
