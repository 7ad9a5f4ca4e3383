"""Configs from YAML files, dicts and `section.key=value` overrides, and back.

Every key is checked against the schema (mylm_jax/config/schema.py) with its type: a
mistake is a ConfigError whose one-line message names the key and what was expected.
Keys that moved (RENAMED_KEYS) are read under their new names with a one-line note.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mylm_jax.config.schema import Config
from mylm_jax.config.validation import ConfigError

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (e.g. list -> tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
        return value
    if origin is tuple:  # tuple[int, ...]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not valid; expected a list")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; accept what Python reads as a number.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid; expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _build(cls: type, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}'; valid keys: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):  # an empty section (`model:`) is the defaults; `model: 0` is a mistake
            kwargs[key] = _build(tp, {} if value is None else value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


# Keys that moved: old name -> new name. Old configs and checkpoints still load, with a
# one-line note (once per key and process).
RENAMED_KEYS = {
    "model.moe_aux_loss_weight": "loss.load_balance",
    "model.moe_z_loss_weight": "loss.router_z",
}
_noted: set[str] = set()


def _rename_old_keys(values: dict) -> dict:
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = values.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = values.setdefault(new_section, {})
        if isinstance(target, dict):
            if new_key in target and target[new_key] != value:
                raise ConfigError(f"both '{old}' (its old name) and '{new}' are set, to {value!r} and "
                                  f"{target[new_key]!r}; keep only '{new}'")
            target[new_key] = value
        if old not in _noted:
            _noted.add(old)
            print(f"mylm: note: '{old}' is now '{new}' (read as such; rename it in your config)",
                  file=sys.stderr)
    return values


def config_from_dict(values: dict) -> Config:
    if isinstance(values, dict):
        values = _rename_old_keys(values)
    return _build(Config, values, "")


def config_to_dict(config: Config) -> dict:
    def plain(x):
        return list(x) if isinstance(x, tuple) else x
    return {
        section: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, section)).items()}
        for section in (f.name for f in dataclasses.fields(config))
    }


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict (a copy); values are parsed as YAML."""
    for section, v in values.items():
        if v is not None and not isinstance(v, dict):  # `model: 5` in a file
            raise ConfigError(f"{section} must be a mapping of keys, got {v!r}")
    values = {k: dict(v or {}) for k, v in values.items()}
    sections = [f.name for f in dataclasses.fields(Config)]
    for item in overrides:
        path, sep, raw = item.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        if section not in sections:
            raise ConfigError(f"override '{item}': unknown section '{section}'; "
                              f"valid sections: {', '.join(sections)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        values.setdefault(section, {})[key] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults) and apply dotted overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_bytes().decode("utf-8")  # YAML is UTF-8, whatever the locale says
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                              f"save the file as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return config_from_dict(apply_overrides(values, list(overrides)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
