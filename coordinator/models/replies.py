"""Decoding the replies of the model scripts: a report's head and a status row.

Plain data in, value objects out; nothing here talks to Redis (see ``_model.lua`` for the
fields of a breaker, and ``model_report.lua`` / ``model_status.lua`` for the replies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson

from ..failures import FailureKind
from .types import BreakerState, ModelProfileStatus, ReportResult

__all__ = ["report_result", "status_row"]


def report_result(reply: Sequence[Any]) -> ReportResult:
    """Decode the head of a ``model_report`` reply: status, breaker state ('' if unknown),
    epoch (-1 if unknown), broken field ('' if none)."""
    status, state, epoch, broken = (str(x) for x in reply[:4])
    return ReportResult(
        status=cast(Any, status),
        state=cast("BreakerState | None", state or None),
        epoch=int(epoch) if int(epoch) >= 0 else None,
        broken_field=broken or None,
    )


def _as_dict(raw: str) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return int(value)
    return 0


def _counts(raw: str) -> dict[str, int]:
    """The failure counts by kind of a status row (the script checked them), in the order of
    :class:`FailureKind`."""
    data = _as_dict(raw) or {}
    return {k.value: _num(data[k.value]) for k in FailureKind if _num(data.get(k.value)) > 0}


def status_row(now: int, decay_ms: int, row: Sequence[Any]) -> ModelProfileStatus:
    """One profile's status from a row of ``status_row`` in ``_model.lua`` (id, definition
    JSON, breaker JSON, broken field, failure counts by kind JSON, broken count field), on
    Redis time ``now``; values of the wrong type read as absent. A broken count is named in
    ``broken_field`` only when nothing else is broken (it does not stop selection)."""
    pid, raw_def, raw_breaker, broken, raw_counts, broken_count = (
        str(x) for x in (*row, "", "")[:6]
    )
    definition = _as_dict(raw_def) or {}
    breaker = _as_dict(raw_breaker) or {}
    # (a corrupt breaker has no state, unless selections still take it: see status_row in
    # _model.lua)
    state = breaker.get("state", "closed") if breaker or not broken.startswith("breaker") else None
    if state not in ("closed", "open", "half_open"):
        state = None
    streak = breaker.get("streak")
    streak_items = list(streak.values()) if isinstance(streak, dict) else streak or []
    consecutive = sum(1 for t in streak_items if isinstance(t, int | float) and now - t <= decay_ms)
    window = breaker.get("window") if isinstance(breaker.get("window"), str) else ""
    permits = breaker.get("permits")
    in_flight = (
        sum(1 for t in permits.values() if isinstance(t, int | float) and t > now)
        if isinstance(permits, dict)
        else 0
    )
    open_until = _num(breaker.get("open_until_ms")) if state == "open" else 0
    priority = definition.get("priority")
    enabled = definition.get("enabled")
    last_error = breaker.get("last_error")
    last_kind = breaker.get("last_error_kind")
    return ModelProfileStatus(
        id=pid,
        provider=definition.get("provider")
        if isinstance(definition.get("provider"), str)
        else None,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
        enabled=enabled if isinstance(enabled, bool) else None,
        state=cast("BreakerState | None", state),
        epoch=_num(breaker.get("epoch")),
        open_remaining_ms=max(0, open_until - now),
        cooldown_remaining_ms=max(0, _num(breaker.get("cooldown_until_ms")) - now),
        consecutive_failures=consecutive,
        window_calls=len(window or ""),
        window_failures=(window or "").count("1"),
        probes_in_flight=in_flight,
        reopens=_num(breaker.get("reopens")),
        failures_total=_num(breaker.get("failures_total")),
        last_error=last_error if isinstance(last_error, str) else None,
        last_error_kind=last_kind if isinstance(last_kind, str) else None,
        broken_field=broken or broken_count or None,
        failures_by_kind=_counts(raw_counts),
    )
