"""Prometheus metrics (``prometheus_client``).

* :class:`FleetMetrics`: what the refresh worker serves on ``/metrics``: the fleet's state read
  from Redis at each scrape (:class:`FleetCollector`: pool profiles and cooldowns, breakers,
  OAuth credentials and their expiry, workers) and counters fed from the event streams
  (:class:`EventCounters`: failures by kind, failovers, breaker transitions, refreshes).
* :class:`AppMetrics`: an app's own metrics (selection latency, round trips to Redis, the
  outcomes it reported), attached to its managers.

Every name starts with ``coordinator_``; label values are ids and names from the
configuration, states and kinds, never free text. See ``docs/metrics.md``.
"""

from __future__ import annotations

from .app import SELECTION_BUCKETS, AppMetrics
from .counters import EVENT_TYPES, EventCounters, RefreshCounters
from .fleet import (
    BREAKER_STATES,
    CREDENTIAL_STATUSES,
    POOL_STATES,
    FleetCollector,
    fleet_families,
)
from .serve import FleetMetrics

__all__ = [
    "BREAKER_STATES",
    "CREDENTIAL_STATUSES",
    "EVENT_TYPES",
    "POOL_STATES",
    "SELECTION_BUCKETS",
    "AppMetrics",
    "EventCounters",
    "FleetCollector",
    "FleetMetrics",
    "RefreshCounters",
    "fleet_families",
]
