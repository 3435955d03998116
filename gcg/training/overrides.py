"""Changing a `TrainConfig` from text: ``--set key=value`` (`apply_overrides`) and a run's
config.json (`load_config_file`), every value type-checked against the dataclass annotations.

Network fields are overridden with a ``model.`` prefix (``--set model.model_channels=64``); they
patch the network preset named by ``model`` and are typed against that network's config.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path

from gcg.training.config import NETWORK_PRESETS, TrainConfig, validate

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse_value(text: str, annotation, key: str):
    """Convert `text` to `annotation` (int, float, bool, str, X | None, tuple[X, ...], bare tuple)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(text, inner, key)
    if origin is tuple or annotation is tuple:
        inner = args[0] if args else _number
        items = [s.strip() for s in text.strip("()[] ").split(",") if s.strip()]
        return tuple(_parse_value(s, inner, key) for s in items)
    if annotation is _number:
        try:
            return _parse_value(text, int, key)
        except ValueError:
            try:
                return _parse_value(text, float, key)
            except ValueError:
                raise ValueError(f"--set {key}={text}: expected numbers, e.g. {key}=1,2,2") from None
    if annotation is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"--set {key}={text}: expected a boolean (true/false)")
    if annotation in (int, float):
        try:
            number = float(text)
            value = number if annotation is float else int(number)
        except (ValueError, OverflowError):
            raise ValueError(f"--set {key}={text}: expected {_kind(annotation)}") from None
        if not math.isfinite(number):
            raise ValueError(f"--set {key}={text}: expected a finite number")
        if annotation is int and number != value:
            raise ValueError(f"--set {key}={text}: expected {_kind(annotation)}")
        return value
    if annotation is dict:
        raise ValueError(f"--set {key}=...: set network fields one by one as model.<field>=value")
    return text


class _number:
    """Marker: an int or a float (the items of the networks' bare ``tuple`` fields)."""


def _kind(annotation) -> str:
    return {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string",
            dict: "an object", _number: "a number"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _coerce(value, annotation, key: str, source: str):
    """Check a value that is already typed (JSON, a Python dict) against `annotation`; lists become
    tuples. Raises ValueError naming `source` and the field."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: field {key!r} must be a list, got {value!r}")
        inner = args[0] if args else _number
        return tuple(_coerce(v, inner, key, source) for v in value)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          _number: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str), dict: lambda v: isinstance(v, dict)}.get(annotation)
    if ok is not None and not ok(value):
        raise ValueError(f"{source}: field {key!r} must be {_kind(annotation)}, got {value!r}")
    return float(value) if annotation is float else value


def _network_fields(model: str) -> dict | None:
    """{field: annotation} of the network config that model preset `model` builds (None if unknown)."""
    base = NETWORK_PRESETS.get(model)
    if base is None:
        return None
    hints = typing.get_type_hints(type(base))
    fields = {}
    for f in dataclasses.fields(base):
        annotation = hints[f.name]
        if f.default is None and typing.get_origin(annotation) not in (typing.Union, types.UnionType):
            annotation = annotation | None  # `out_channels: int = None`
        fields[f.name] = annotation
    return fields


def _model_override(config: "TrainConfig", name: str, value, source: str | None = None):
    """One network field override, typed against the network config of `config.model`: text from
    ``--set`` is parsed; a value from a file (`source`) or a Python dict is type-checked."""
    fields = _network_fields(config.model)
    if fields is None:  # an unknown model preset: building the model says so
        return _literal(value) if isinstance(value, str) and source is None else value
    if name not in fields:
        raise ValueError(f"{source + ': ' if source else ''}unknown network field model.{name} for model "
                         f"{config.model!r}; valid fields: {', '.join(sorted(fields))}")
    if isinstance(value, str) and source is None:
        return _parse_value(value, fields[name], f"model.{name}")
    return _coerce(value, fields[name], f"model.{name}", source or "model_overrides")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        return text


def apply_overrides(config: TrainConfig, overrides: list[str] | dict) -> TrainConfig:
    """Return a copy of `config` with ``key=value`` strings (or a dict) applied, types checked.

    ``model.<field>=value`` entries go to `config.model_overrides`, typed and checked against the
    fields of the network config that ``model`` names (after the other keys are applied, so
    ``model=X`` may come in any position). Unknown keys raise, listing the valid ones.
    """
    hints = typing.get_type_hints(TrainConfig)
    items = list(overrides.items()) if isinstance(overrides, dict) else [_split(s) for s in overrides]
    changes, network = {}, []
    for key, value in items:
        if key.startswith("model."):
            network.append((key[len("model."):], value))
            continue
        if key not in hints:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(hints))} "
                             "(network fields: model.<field>)")
        changes[key] = _parse_value(value, hints[key], key) if isinstance(value, str) else value
    config = dataclasses.replace(config, **changes, model_overrides=dict(config.model_overrides))
    for name, value in network:
        config.model_overrides[name] = _model_override(config, name, value)
    validate(config)
    return config


def config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    """A `TrainConfig` from a dict such as `TrainConfig.to_dict` wrote (e.g. a run's config.json),
    every field type-checked; an unknown field raises ValueError naming it and `source`. Fields
    the dict lacks (written by an older gcg) take TrainConfig's defaults."""
    hints = typing.get_type_hints(TrainConfig)
    if "kind" in data and "task" not in data:
        raise ValueError(f"{source} describes a network (kind={data['kind']!r}), not a training run; "
                         "pass the config.json that gcg.train wrote in the run's --out-dir")
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r}"
                         + (f" (and {unknown[1:]})" if unknown[1:] else "")
                         + " is not a TrainConfig field of this gcg; remove it from the file")
    values = {k: _coerce(v, hints[k], k, source) for k, v in data.items() if k != "model_overrides"}
    config = dataclasses.replace(TrainConfig(), **values)
    overrides = _coerce(data.get("model_overrides", {}), dict, "model_overrides", source)
    for name, value in overrides.items():
        config.model_overrides[name] = _model_override(config, name, value, source)
    try:
        validate(config)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return config


def load_config_file(path) -> TrainConfig:
    """The `TrainConfig` of a run's config.json (``python -m gcg.train --config PATH``); one-line
    ValueError for a missing, non-JSON or foreign file, naming the offending field."""
    path, source = Path(path), f"--config {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file; pass the config.json a run wrote in its --out-dir")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source} is not a JSON file ({exc}); pass the config.json a run wrote "
                         "in its --out-dir") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source} holds a JSON {type(data).__name__}, not a config object; pass the "
                         "config.json a run wrote in its --out-dir")
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in data]
    config = config_from_dict(data, source)
    if missing:
        print(f"gcg.train: {source} has no {', '.join(missing)} (written by an older gcg): using the "
              "defaults", file=sys.stderr)
    return config


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()
