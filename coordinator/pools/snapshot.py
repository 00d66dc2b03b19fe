"""The snapshot format of a pool (``export_state`` / ``import_state``), apart from its layout.

Format 2 (this version) keeps a profile's state as plain fields::

    {"profiles": {id: definition JSON},
     "state": {id: {field: value}}, "model_state": {"<id>|<model>": {field: value}},
     "ready": [[id, seq]...], "cooling": [[id, until ms]...],
     "model_cooling": [["<id>|<model>", until ms]...], "meta": {"seq": n, "gen": n}}

Values are the texts stored in Redis (a value edited into garbage travels as it is, and the
importing pool names it in ``get_status``). Format 1 held each state as a JSON record, pairs'
records in ``model_state``, last-pick times in ``usage`` and each profile's generation in its
definition; :func:`pool_from_v1` converts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..errors import ConfigError
from ..store.keys import validate_id

__all__ = ["FAR", "FORMAT", "checked_pool", "pool_from_reply", "pool_from_v1", "score"]

#: The format :meth:`AuthProfileManager.export_state` writes.
FORMAT = 2
#: The formats :meth:`AuthProfileManager.import_state` reads.
READABLE = (1, 2)


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


def pool_from_reply(reply: Sequence[Any]) -> dict[str, Any]:
    """One pool of an export, from export_pool's reply: the flat state fields are grouped by
    member (split on the field name's last ``:``) and (profile, model) pairs kept apart."""
    state: dict[str, dict[str, str]] = {}
    model_state: dict[str, dict[str, str]] = {}
    for key, value in _pairs(reply[2]):
        member, _, name = key.rpartition(":")
        (model_state if "|" in member else state).setdefault(member, {})[name] = value
    cooling: list[list[Any]] = []
    model_cooling: list[list[Any]] = []
    for member, until in _pairs(reply[4]):
        (model_cooling if "|" in member else cooling).append([member, _exact(float(until))])
    # A counter edited into garbage is left out (the next pick or addition repairs it).
    meta = {
        name: int(value)
        for name, value in _pairs(reply[5])
        if name in ("seq", "gen") and str(value).isdigit() and int(value) < FAR
    }
    return {
        "profiles": dict(_pairs(reply[1])),
        "state": state,
        "model_state": model_state,
        "ready": [[k, _exact(float(v))] for k, v in _pairs(reply[3])],
        "cooling": cooling,
        "model_cooling": model_cooling,
        "meta": meta,
    }


#: Scores at or beyond ±10**15 read as ±inf, as they do in the pool scripts: as a deadline
#: (ms) the year 33658, as a rotation sequence more than any counter reaches.
FAR = 10**15


def score(text: str | float) -> int | str:
    """A sorted-set score as an int, or ``"+inf"`` / ``"-inf"`` (``ZADD`` reads them back;
    +inf in the cooling set is a cooldown until cleared, in the ready set the last place of
    the rotation). A score at or beyond ±10**15 is one of the infinities (never a number too
    large for JSON)."""
    value = _exact(float(text))
    return value if isinstance(value, str) else int(value)


def _exact(value: float) -> int | float | str:
    """A score as a snapshot keeps it: ``"+inf"`` / ``"-inf"`` at or beyond ±10**15, else the
    number (an int when whole: a place set by hand between two sequences stays between them)."""
    if value >= FAR:
        return "+inf"
    if value <= -FAR:
        return "-inf"
    return int(value) if value.is_integer() else value


def _text(value: Any) -> str | None:
    """A format-1 JSON value as the text a format-2 field holds (None: leave the field out)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return None


def _fields_from_record(raw: Any) -> dict[str, str]:
    """The fields of a format-1 state record (JSON text); a record that does not decode to an
    object has no fields left (its counters read as zero, as a repaired record's did)."""
    try:
        record = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        return {}
    fields = {str(name): _text(value) for name, value in record.items()}
    return {name: text for name, text in fields.items() if text is not None and ":" not in name}


def pool_from_v1(pool: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 pool converted to format 2: each JSON state record becomes fields, each
    last-pick time (``usage``) the profile's ``last_used_ms`` and the generation in each
    definition its ``gen`` field."""
    state = {pid: _fields_from_record(raw) for pid, raw in dict(pool.get("state") or {}).items()}
    for pid, used in dict(pool.get("usage") or {}).items():
        text = _text(used)
        if text is not None:
            state.setdefault(pid, {})["last_used_ms"] = text
    profiles = pool.get("profiles")
    for pid, raw in dict(profiles if isinstance(profiles, Mapping) else {}).items():
        gen = _text(_fields_from_record(raw).get("gen"))
        if gen is not None:
            state.setdefault(pid, {})["gen"] = gen
    model_state = {
        pair: _fields_from_record(raw) for pair, raw in dict(pool.get("model_state") or {}).items()
    }
    return {
        "profiles": pool.get("profiles"),
        "state": state,
        "model_state": model_state,
        "ready": pool.get("ready") or [],
        "cooling": pool.get("cooling") or [],
        "model_cooling": pool.get("model_cooling") or [],
        "meta": pool.get("meta") or {},
    }


def checked_pool(name: str, pool: Any) -> dict[str, Any]:
    """A format-2 pool with every part in the shape import_pool writes, or ``ConfigError``
    naming the part (nothing is written before every pool is checked)."""
    where = f"snapshot.pools.{name}"
    if not isinstance(pool, Mapping) or not isinstance(pool.get("profiles"), Mapping):
        raise ConfigError(where, "malformed pool")
    for pid, raw in pool["profiles"].items():
        validate_id(pid, f"{where}.profiles")
        if not isinstance(raw, str):
            raise ConfigError(f"{where}.profiles.{pid}", "must be a definition JSON text")
    for part in ("state", "model_state"):
        for member, fields in dict(pool.get(part) or {}).items():
            if not isinstance(member, str) or not isinstance(fields, Mapping):
                raise ConfigError(f"{where}.{part}", f"malformed entry {member!r}")
            for field, value in fields.items():
                if ":" in field or not isinstance(value, str):
                    raise ConfigError(f"{where}.{part}.{member}", f"malformed field {field!r}")
    entries = {part: _entries(where, part, pool.get(part)) for part in _SORTED_SETS}
    meta = pool.get("meta") or {}
    if not isinstance(meta, Mapping) or not all(_is_number(meta.get(k, 0)) for k in ("seq", "gen")):
        raise ConfigError(f"{where}.meta", "seq and gen must be numbers")
    return {
        "profiles": dict(pool["profiles"]),
        "state": dict(pool.get("state") or {}),
        "model_state": dict(pool.get("model_state") or {}),
        **entries,
        # A counter out of range imports as 0: the next pick or addition restarts it past
        # every value in use, as for a counter edited into garbage.
        "meta": {k: _counter(meta.get(k, 0)) for k in ("seq", "gen")},
    }


_SORTED_SETS = ("ready", "cooling", "model_cooling")


def _entries(where: str, part: str, entries: Any) -> list[list[Any]]:
    """The ``[member, score]`` entries of one sorted set, each score a number or ``"+inf"`` /
    ``"-inf"`` (see :func:`_exact`), or ``ConfigError`` naming the part."""
    out: list[list[Any]] = []
    for entry in entries or []:
        if not (
            isinstance(entry, Sequence)
            and not isinstance(entry, str)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and (_is_number(entry[1]) or entry[1] in ("+inf", "-inf"))
        ):
            raise ConfigError(f"{where}.{part}", f"malformed entry {entry!r}")
        value = entry[1]
        out.append([entry[0], value if isinstance(value, str) else _exact(_clamped(value))])
    return out


def _clamped(value: float) -> float:
    """A number as a float, an int too large for one as an infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _counter(value: float) -> int:
    return int(value) if 0 <= value < FAR else 0


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)
