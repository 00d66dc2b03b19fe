"""Gauges of the fleet's state, read from Redis at each scrape: pool profiles and their
cooldowns, model profiles and their breakers, OAuth credentials and their expiry, workers.

:func:`fleet_families` turns one :class:`~coordinator.overview.FleetStatus` into metric
families (pure, no I/O); :class:`FleetCollector` reads that status on the event loop that owns
the store, from the HTTP server's thread, bounded by a timeout, and says whether the read
worked (``coordinator_up``, ``coordinator_scrape_errors_total``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import CoordinatorError
from ..models.types import ModelProfileStatus
from ..overview import FleetStatus, Managers, fleet_status
from ..pools.types import ProfileStatus

__all__ = [
    "BREAKER_STATES",
    "CREDENTIAL_STATUSES",
    "POOL_STATES",
    "FleetCollector",
    "breaker_state",
    "fleet_families",
    "pool_state",
]

log = logging.getLogger("coordinator.metrics")

#: The values of the ``state`` label of ``coordinator_pool_profile_state``.
POOL_STATES = ("ready", "cooling", "benched", "broken")
#: The values of the ``state`` label of ``coordinator_model_profile_breaker_state``.
BREAKER_STATES = ("closed", "open", "half_open", "broken")
#: The values of the ``status`` label of ``coordinator_oauth_credential_status``.
CREDENTIAL_STATUSES = ("active", "needs-reauth")
_JOBS = ("refresh", "sweep")


def pool_state(row: ProfileStatus) -> str:
    """``ready`` (selectable), ``cooling`` (until a deadline), ``benched`` (until an operator
    clears it) or ``broken`` (a stored value coordinator cannot read, or not selectable for
    another reason)."""
    if row.broken_field is None and row.healthy:
        return "ready"
    if row.broken_field is None and row.until_cleared:
        return "benched"
    if row.broken_field is None and row.in_cooldown:
        return "cooling"
    return "broken"


def breaker_state(row: ModelProfileStatus) -> str:
    """The breaker's state, or ``broken`` when its record cannot be read."""
    if row.broken_field is not None or row.state is None:
        return "broken"
    return row.state


def _gauge(name: str, text: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


def _pool_families(rows: list[ProfileStatus]) -> list[Metric]:
    state = _gauge(
        "coordinator_pool_profile_state",
        "1 for the state a pool profile is in (ready, cooling, benched, broken), else 0.",
        ["pool", "profile", "state"],
    )
    cooldown = _gauge(
        "coordinator_pool_profile_cooldown_seconds",
        "Seconds until a pool profile's cooldown ends (0: none; +Inf: until cleared).",
        ["pool", "profile"],
    )
    pairs = _gauge(
        "coordinator_pool_profile_model_cooldowns",
        "How many (profile, model) pairs of a pool profile are cooling down (model rate limits).",
        ["pool", "profile"],
    )
    for row in rows:
        now_in = pool_state(row)
        for value in POOL_STATES:
            state.add_metric([row.provider, row.id, value], 1.0 if value == now_in else 0.0)
        seconds = math.inf if row.until_cleared else row.cooldown_remaining_ms / 1000
        cooldown.add_metric([row.provider, row.id], seconds)
        pairs.add_metric([row.provider, row.id], sum(1 for v in row.model_cooldowns.values() if v))
    return [state, cooldown, pairs]


def _model_families(rows: list[ModelProfileStatus]) -> list[Metric]:
    labels = ["profile", "provider"]
    state = _gauge(
        "coordinator_model_profile_breaker_state",
        "1 for the state a model profile's breaker is in (closed, open, half_open, broken).",
        [*labels, "state"],
    )
    open_left = _gauge(
        "coordinator_model_profile_open_remaining_seconds",
        "Seconds until an open breaker half-opens (0 unless open).",
        labels,
    )
    cooldown = _gauge(
        "coordinator_model_profile_cooldown_seconds",
        "Seconds until a model profile's cooldown (Retry-After, billing) ends (0: none).",
        labels,
    )
    enabled = _gauge(
        "coordinator_model_profile_enabled", "1 if the model profile is enabled, else 0.", labels
    )
    available = _gauge(
        "coordinator_model_profile_available",
        "1 if a selection could choose the model profile now, else 0.",
        labels,
    )
    for row in rows:
        ids = [row.id, row.provider or ""]
        now_in = breaker_state(row)
        for value in BREAKER_STATES:
            state.add_metric([*ids, value], 1.0 if value == now_in else 0.0)
        open_left.add_metric(ids, row.open_remaining_ms / 1000 if now_in == "open" else 0.0)
        cooldown.add_metric(ids, row.cooldown_remaining_ms / 1000)
        enabled.add_metric(ids, 1.0 if row.enabled else 0.0)
        available.add_metric(ids, 1.0 if row.available else 0.0)
    return [state, open_left, cooldown, enabled, available]


def _credential_families(status: FleetStatus) -> list[Metric]:
    labels = ["credential", "provider"]
    state = _gauge(
        "coordinator_oauth_credential_status",
        "1 for the status of an OAuth credential (active, needs-reauth), else 0.",
        [*labels, "status"],
    )
    expiry = _gauge(
        "coordinator_oauth_credential_expiry_seconds",
        "Seconds until an OAuth credential's access token expires (negative: expired; absent "
        "when the provider did not say).",
        labels,
    )
    for cred in status.credentials:
        for value in CREDENTIAL_STATUSES:
            state.add_metric([cred.id, cred.provider, value], float(value == cred.status))
        if cred.expires_at_ms is not None:
            expiry.add_metric([cred.id, cred.provider], (cred.expires_at_ms - status.now_ms) / 1000)
    return [state, expiry]


def _worker_families(status: FleetStatus) -> list[Metric]:
    workers = _gauge(
        "coordinator_workers",
        "Refresh workers whose heartbeat is live, by state (running, stopping).",
        ["state"],
    )
    by_state = {"running": 0, "stopping": 0}
    for beat in status.workers:
        state = beat.get("state", "")
        if state in by_state:
            by_state[state] += 1
    for state, count in by_state.items():
        workers.add_metric([state], count)
    age = _gauge(
        "coordinator_worker_job_last_run_age_seconds",
        "Seconds since any live worker last completed a run of the job (refresh, sweep).",
        ["job"],
    )
    for job in _JOBS:
        last = max((_int(beat.get(f"{job}_last_ms")) for beat in status.workers), default=0)
        if last > 0:
            age.add_metric([job], max(0, status.now_ms - last) / 1000)
    return [workers, age]


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def fleet_families(status: FleetStatus) -> list[Metric]:
    """Every fleet gauge for one read of the fleet (no I/O)."""
    return [
        *_pool_families(status.pools),
        *_model_families(status.models),
        *_credential_families(status),
        *_worker_families(status),
    ]


class FleetCollector(Collector):
    """A ``prometheus_client`` collector that reads the fleet from Redis at each scrape.

    The read runs on ``loop`` (the event loop the store belongs to) and the scrape waits for
    it at most ``timeout_s``: a dead or slow Redis gives ``coordinator_up 0`` and one more
    ``coordinator_scrape_errors_total``, never a hung scrape. ``collect()`` is meant to be
    called from another thread (the HTTP server's); called on the loop's own thread it
    cannot wait for the loop, and reports ``coordinator_up 0``.
    """

    def __init__(
        self, managers: Managers, *, loop: asyncio.AbstractEventLoop, timeout_s: float = 5.0
    ) -> None:
        self._managers = managers
        self._loop = loop
        self._timeout_s = timeout_s
        self._errors = 0
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (names only: registering reads nothing)."""
        empty = FleetStatus(0, [], [], [], [])
        return [*fleet_families(empty), *self._health(True, 0.0)]

    def collect(self) -> Iterator[Metric]:
        """Read the fleet (bounded) and yield its gauges and the scrape's health."""
        started = time.perf_counter()
        try:
            status = self._read()
        except Exception as exc:  # a scrape reports failure, it never raises
            with self._lock:
                self._errors += 1
            log.warning(
                "metrics: the fleet could not be read: %s", _describe(exc),
                extra={"operation": "scrape"},
            )  # fmt: skip
            yield from self._health(False, time.perf_counter() - started)
            return
        yield from fleet_families(status)
        yield from self._health(True, time.perf_counter() - started)

    def _read(self) -> FleetStatus:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("collected on the store's own event loop thread")
        future = asyncio.run_coroutine_threadsafe(fleet_status(self._managers), self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {self._timeout_s:g} s") from None

    def _health(self, up: bool, seconds: float) -> list[Metric]:
        with self._lock:
            errors = self._errors
        return [
            GaugeMetricFamily(
                "coordinator_up", "1 if this scrape read the fleet from Redis, else 0.", up
            ),
            GaugeMetricFamily(
                "coordinator_scrape_duration_seconds",
                "How long this scrape's read of the fleet took.",
                seconds,
            ),
            CounterMetricFamily(
                "coordinator_scrape_errors",
                "Scrapes whose read of the fleet failed or timed out (since this process began).",
                errors,
            ),
        ]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CoordinatorError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
