"""Checks shared by every configuration and input type; each failure is a ``ConfigError``
that names the field."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .errors import ConfigError

__all__ = ["int_at_least", "json_mapping", "number", "reject_unknown", "retry_after_ms"]

# A provider's retry-after beyond ten years is garbage; it is cut there before the policy cap.
_RETRY_CAP_S = 10 * 365 * 86400


def int_at_least(name: str, value: object, low: int) -> int:
    """An integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, not {value!r}")
    if value < low:
        raise ConfigError(name, f"must be >= {low}")
    return value


def number(
    name: str, value: object, *, low: float = 0, high: float | None = None, strict: bool = False
) -> float:
    """A finite number (not a bool) within ``[low, high]``; ``strict`` excludes ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(name, f"must be a number, not {value!r}")
    below = value <= low if strict else value < low
    if below or math.isinf(value) or (high is not None and value > high):
        if high is not None:
            bound = f"between {low} and {high}"
        else:
            bound = f"> {low}" if strict else f">= {low}"
        raise ConfigError(name, f"must be a finite number {bound}")
    return float(value)


def json_mapping(name: str, value: object) -> None:
    """A mapping that JSON can store (free ``metadata``)."""
    if not isinstance(value, Mapping):
        raise ConfigError(name, "must be a mapping")
    try:
        orjson.dumps(dict(value))
    except TypeError as exc:
        raise ConfigError(name, f"must be JSON-serialisable ({exc})") from None


def retry_after_ms(retry_after_s: object) -> int | str:
    """A caller's ``retry_after_s`` as the scripts' argument: whole ms, or ``""`` for none."""
    if retry_after_s is None:
        return ""
    seconds = number("retry_after_s", retry_after_s)
    return math.ceil(min(seconds, _RETRY_CAP_S) * 1000)


def reject_unknown(
    data: Mapping[str, Any], known: Iterable[str], *, prefix: str = "", what: str = "setting"
) -> None:
    """Refuse keys that are not ``known`` (a misspelt setting must not be silently ignored)."""
    allowed = set(known)
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{prefix}{key}", f"unknown {what} (known: {', '.join(sorted(allowed))})"
            )
