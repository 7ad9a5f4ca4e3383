"""ConfigError, and the range every numeric config field declares (checked in one place).

Every numeric field of every section declares the values it accepts in its section's
RANGES table (mylm_jax/config/schema.py), in a notation read as in maths and echoed by
the error message:

    "> 0"       positive            ">= 0"      zero or more
    "[0, 1)"    0 <= x < 1          "(0, 1]"    0 < x <= 1

`check_fields` (called first in every section's __post_init__, and by generation's
SamplingConfig) checks them all, so a nonsense value (log_every=0, lr=.nan) stops at load
time with one line naming the key, the value and the range, instead of a traceback (or
NaN weights) later.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any

class ConfigError(ValueError):
    """A user mistake in a config file or override; its message is one line."""


_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")
_BOUND = re.compile(r"^(>=|>)\s*(\S+)$")


def _number(text: str) -> float:
    base, _, power = text.partition("**")  # "2**32" reads better than 4294967296
    return float(base) ** float(power) if power else float(base)


@functools.cache
def _parse_range(spec: str) -> tuple[float, float, bool, bool]:
    """"[0, 1)" -> (low, high, low included, high included)."""
    if m := _BOUND.match(spec):
        return _number(m[2]), math.inf, m[1] == ">=", False
    if m := _INTERVAL.match(spec):
        return _number(m[2]), _number(m[3]), m[1] == "[", m[4] == "]"
    raise ValueError(f"bad range notation {spec!r}")  # a mistake in this file, not the user's


def in_range(value: float, spec: str) -> bool:
    low, high, low_in, high_in = _parse_range(spec)
    return (low <= value if low_in else low < value) and (value <= high if high_in else value < high)


def _describe(spec: str) -> str:
    return "positive" if spec == "> 0" else spec if spec[0] == ">" else f"in {spec}"


@functools.cache
def numeric_fields(cls: type) -> dict[str, type]:
    """The int and float fields of a section (Optional[int] counts as int), by name."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if tp in (int, float):
            out[f.name] = tp
    return out


def check_fields(section: Any, name: str | typing.Callable[[str], str]) -> None:
    """Each numeric field of `section`: a number, finite, inside its range. Errors call a field
    `name.key` (`name` is the section's, e.g. "model"), or `name(key)` when `name` is a function."""
    label = name if callable(name) else lambda key: f"{name}.{key}"
    for key, tp in numeric_fields(type(section)).items():
        value = getattr(section, key)
        if value is None:  # an Optional field left unset: its default rule applies
            continue
        if isinstance(value, bool) or not isinstance(value, tp if tp is int else (int, float)):
            raise ConfigError(f"{label(key)}={value!r} is not valid; expected {tp.__name__}")
        if not math.isfinite(value):
            raise ConfigError(f"{label(key)} must be a finite number, got {value}")
        spec = type(section).RANGES[key]
        if not in_range(value, spec):
            raise ConfigError(f"{label(key)} must be {_describe(spec)}, got {value}")
