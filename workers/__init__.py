"""The refresh worker: APScheduler jobs that keep every OAuth token fresh, exactly once, and
apply due transitions (cooldown ends, breaker half-opens) with no traffic needed.

Run it with ``python -m workers`` or ``coordinator worker``; embed it with :class:`Worker`.
"""

from __future__ import annotations

from .jobs import RefreshOutcome, refresh_due, sweep
from .providers import load_providers, providers_from_mapping
from .settings import WorkerSettings
from .worker import Worker

__all__ = [
    "RefreshOutcome",
    "Worker",
    "WorkerSettings",
    "load_providers",
    "providers_from_mapping",
    "refresh_due",
    "sweep",
]
