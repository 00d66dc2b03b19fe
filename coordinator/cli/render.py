"""Rendering: rich tables for people, JSON for scripts. No secret reaches either: the rows
come from the library's status types, whose error texts are redacted."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.table import Table

from ..models.types import ModelProfileStatus
from ..oauth.types import OAuthCredential
from ..overview import FleetStatus
from ..pools.types import ProfileStatus

__all__ = [
    "console",
    "duration",
    "fleet_tables",
    "print_json",
    "table",
    "workers_table",
]


def console() -> Console:
    """Standard output; wide when it is not a terminal, so that piped lines are not cut."""
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on standard output (dataclasses as objects)."""
    click.echo(json.dumps(_plain(data), indent=2, default=str))


def _plain(data: Any) -> Any:
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if isinstance(data, list | tuple):
        return [_plain(item) for item in data]
    return data


def duration(ms: int | None) -> str:
    """``ms`` as ``2h03m``, ``4m05s``, ``12.3s`` (``-`` for none; below 0 counts as 0)."""
    if ms is None:
        return "-"
    seconds = max(ms, 0) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def ago(ms: int) -> str:
    """How long ago something happened, ``ms`` before now: ``4m05s ago``. A time ahead of
    Redis's clock (written under a test's held clock) reads ``just now``."""
    return f"{duration(ms)} ago" if ms > 0 else "just now"


def expires_in(ms: int) -> str:
    """The time left before an expiry ``ms`` from now, or ``expired``."""
    return duration(ms) if ms > 0 else "expired"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table of text cells (``None`` shown as ``-``)."""
    out = Table(title=title, title_justify="left", expand=False)
    for name in columns:
        out.add_column(name, overflow="fold")
    for row in rows:
        out.add_row(*("-" if cell is None else str(cell) for cell in row))
    return out


def _short(text: str | None, limit: int = 60) -> str | None:
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pool_state(row: ProfileStatus) -> str:
    """``broken``, ``cooling`` or ``healthy``."""
    if row.broken_field:
        return "broken"
    return "cooling" if row.in_cooldown else "healthy"


def pools_table(rows: Sequence[ProfileStatus]) -> Table:
    """The pool profiles."""
    return table(
        "Pool profiles",
        ["pool", "profile", "state", "remaining", "fail", "bill", "kind", "last error"],
        (
            [
                r.provider,
                r.id,
                pool_state(r),
                ("until cleared" if r.until_cleared else duration(r.cooldown_remaining_ms))
                if r.in_cooldown
                else None,
                r.failures,
                r.billing_failures,
                r.cooldown_kind or r.last_error_kind,
                f"corrupt field {r.broken_field!r}" if r.broken_field else _short(r.last_error),
            ]
            for r in rows
        ),
    )


def breaker_cell(row: ModelProfileStatus) -> str | None:
    """The breaker state, or what is broken (a value that does not stop selection, such as a
    broken failure count, is shown beside the state)."""
    if row.broken_field is None:
        return row.state
    if not row.blocked:
        return f"{row.state}, broken {row.broken_field}"
    return f"broken ({row.broken_field})"


def by_kind(counts: dict[str, int]) -> str | None:
    """Failure counts by kind as ``server 3, timeout 1`` (``None`` for none)."""
    return ", ".join(f"{kind} {n}" for kind, n in counts.items()) or None


def models_table(rows: Sequence[ModelProfileStatus]) -> Table:
    """The model profiles and their breakers."""
    return table(
        "Model profiles",
        [
            "profile",
            "provider",
            "breaker",
            "open for",
            "cooldown",
            "probes",
            "streak",
            "window",
            "failures",
            "by kind",
            "enabled",
            "last error",
        ],
        (
            [
                r.id,
                r.provider,
                breaker_cell(r),
                duration(r.open_remaining_ms) if r.open_remaining_ms else None,
                duration(r.cooldown_remaining_ms) if r.cooldown_remaining_ms else None,
                r.probes_in_flight,
                r.consecutive_failures,
                f"{r.window_failures}/{r.window_calls}",
                r.failures_total,
                by_kind(r.failures_by_kind),
                r.enabled,
                _short(r.last_error),
            ]
            for r in rows
        ),
    )


def credentials_table(rows: Sequence[OAuthCredential], now_ms: int) -> Table:
    """The OAuth credentials (no token: the type holds none)."""
    return table(
        "OAuth credentials",
        [
            "credential",
            "provider",
            "status",
            "default",
            "expires in",
            "refreshed",
            "account",
            "last error",
        ],
        (
            [
                c.id,
                c.provider,
                c.status,
                "yes" if c.is_default else "",
                expires_in(c.expires_at_ms - now_ms) if c.expires_at_ms is not None else None,
                ago(now_ms - c.refreshed_ms) if c.refreshed_ms else None,
                c.email or c.subject,
                _short(c.last_error),
            ]
            for c in rows
        ),
    )


def workers_table(beats: Sequence[dict[str, str]], now_ms: int | None = None) -> Table:
    """The refresh workers' heartbeats."""

    def age(beat: dict[str, str]) -> str | None:
        if now_ms is None or not beat.get("beat_ms", "").isdigit():
            return None
        return ago(now_ms - int(beat["beat_ms"]))

    return table(
        "Workers" if beats else "Workers: none running",
        ["worker", "state", "version", "last beat", "refresh runs", "sweep runs"],
        (
            [
                b.get("id"),
                b.get("state"),
                b.get("version"),
                age(b),
                b.get("refresh_runs", "0"),
                b.get("sweep_runs", "0"),
            ]
            for b in beats
        ),
    )


def fleet_tables(status: FleetStatus, provider: str | None = None) -> RenderableType:
    """Everything ``coordinator status`` shows, one table per kind."""
    pools = [r for r in status.pools if provider is None or r.provider == provider]
    parts: list[RenderableType] = [pools_table(pools)]
    if provider is None:
        parts += [
            models_table(status.models),
            credentials_table(status.credentials, status.now_ms),
            workers_table(status.workers, status.now_ms),
        ]
    return Group(*parts)
