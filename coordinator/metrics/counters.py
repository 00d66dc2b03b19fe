"""Counters fed from the event streams: failures by kind, cooldowns, recoveries, failovers,
breaker transitions, token refreshes.

Every transition is written once to a stream by the Lua function that makes it; a process that
reads the streams (the refresh worker does, from the moment it starts) counts each one once.
Counters start at zero with the process: read them with ``rate()`` or ``increase()``.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter

from ..events import Event
from ..failures import FailureKind

__all__ = ["EVENT_TYPES", "EventCounters", "RefreshCounters"]

#: The event types counted by name in ``coordinator_events_total``; any other is ``other``.
EVENT_TYPES = frozenset(
    {
        "profile:added",
        "profile:removed",
        "profile:failed",
        "profile:cooldown",
        "profile:recovered",
        "profile:failure",
        "profile:failover",
        "profile:circuit-opened",
        "profile:circuit-half-open",
        "profile:circuit-closed",
        "profile:enabled",
        "profile:disabled",
        "pool:imported",
        "token:refreshed",
        "token:expired",
        "token:revoked",
        "credential:needs-reauth",
        "credential:removed",
        "credential:default",
        "auth:started",
        "auth:success",
        "auth:failed",
    }
)
_KINDS = frozenset(k.value for k in FailureKind)
# The state a breaker left, by the reason its opening gives, for events without ``from``.
_OPENED_FROM = {
    "consecutive-failures": "closed",
    "failure-rate": "closed",
    "probe-failed": "half_open",
}
_BREAKER_STATES = frozenset({"closed", "open", "half_open", "corrupt"})


def _left(data: dict[str, object], default: str) -> str:
    """The state a breaker left: the event's ``from`` (an operator's opening or closing may
    leave any state); events written before it carried one: ``default``."""
    value = data.get("from")
    return value if isinstance(value, str) and value in _BREAKER_STATES else default


def _kind(value: object) -> str:
    """A failure kind as a label: one of FailureKind's values, else ``other``."""
    return value if isinstance(value, str) and value in _KINDS else "other"


class EventCounters:
    """The event-fed counters, registered in ``registry``; :meth:`count` takes each event."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, text: str, labels: list[str]) -> Counter:
            return Counter(name, text, labels, registry=registry)

        self.events = counter(
            "coordinator_events_total", "Events seen on the fleet's streams, by type.", ["type"]
        )
        self.pool_failures = counter(
            "coordinator_pool_failures_total",
            "Failures reported for pool profiles, by kind.",
            ["pool", "profile", "kind"],
        )
        self.pool_cooldowns = counter(
            "coordinator_pool_cooldowns_total",
            "Cooldowns started or lengthened for pool profiles (scope: profile or model).",
            ["pool", "profile", "kind", "scope"],
        )
        self.pool_recoveries = counter(
            "coordinator_pool_recoveries_total",
            "Pool profiles (or profile-model pairs) back in rotation after a cooldown.",
            ["pool", "profile"],
        )
        self.model_failures = counter(
            "coordinator_model_failures_total",
            "Failures reported for model profiles, by kind.",
            ["profile", "kind"],
        )
        self.model_cooldowns = counter(
            "coordinator_model_cooldowns_total",
            "Cooldowns started for model profiles (Retry-After, billing), by kind.",
            ["profile", "kind"],
        )
        self.failovers = counter(
            "coordinator_model_failovers_total",
            "Failovers from one model profile to another.",
            ["from_profile", "to_profile"],
        )
        self.breaker_transitions = counter(
            "coordinator_model_breaker_transitions_total",
            "Circuit breaker transitions of model profiles.",
            ["profile", "from_state", "to_state"],
        )
        self.refreshes = counter(
            "coordinator_oauth_refreshes_total",
            "OAuth token refreshes by outcome (refreshed, needs_reauth), by any replica.",
            ["provider", "credential", "outcome"],
        )
        self.expirations = counter(
            "coordinator_oauth_token_expirations_total",
            "Access tokens found expired before they were refreshed.",
            ["provider", "credential"],
        )

    def count(self, event: Event) -> None:
        """Count one event (as :class:`~coordinator.events.EventHub` delivers it)."""
        kind = event.type if event.type in EVENT_TYPES else "other"
        self.events.labels(kind).inc()
        if event.source == "models":
            self._model(event)
        elif event.source == "oauth":
            self._oauth(event)
        elif event.profile_id:
            self._pool(event)

    def _pool(self, event: Event) -> None:
        pool, profile, data = event.source, event.profile_id, event.data
        if event.type == "profile:failed":
            self.pool_failures.labels(pool, profile, _kind(data.get("kind"))).inc()
        elif event.type == "profile:cooldown":
            scope = "model" if data.get("scope") == "model" else "profile"
            self.pool_cooldowns.labels(pool, profile, _kind(data.get("kind")), scope).inc()
        elif event.type == "profile:recovered":
            self.pool_recoveries.labels(pool, profile).inc()

    def _model(self, event: Event) -> None:
        profile, data = event.profile_id, event.data
        if event.type == "profile:failure":
            self.model_failures.labels(profile, _kind(data.get("kind"))).inc()
        elif event.type == "profile:cooldown":
            self.model_cooldowns.labels(profile, _kind(data.get("kind"))).inc()
        elif event.type == "profile:failover":
            self.failovers.labels(profile, str(data.get("to", ""))).inc()
        elif event.type == "profile:circuit-opened":
            left = _left(data, _OPENED_FROM.get(str(data.get("reason")), "unknown"))
            self.breaker_transitions.labels(profile, left, "open").inc()
        elif event.type == "profile:circuit-half-open":
            self.breaker_transitions.labels(profile, "open", "half_open").inc()
        elif event.type == "profile:circuit-closed":
            # Closed by probes (from half-open), or by an operator (reason reset / forced),
            # who may close an open or a half-open breaker (or repair a corrupt one).
            left = _left(data, "unknown" if data.get("reason") else "half_open")
            self.breaker_transitions.labels(profile, left, "closed").inc()

    def _oauth(self, event: Event) -> None:
        provider, credential = str(event.data.get("provider", "")), event.profile_id
        if event.type == "token:refreshed":
            self.refreshes.labels(provider, credential, "refreshed").inc()
        elif event.type == "credential:needs-reauth":
            self.refreshes.labels(provider, credential, "needs_reauth").inc()
        elif event.type == "token:expired":
            self.expirations.labels(provider, credential).inc()


class RefreshCounters:
    """What this worker's own refresh runs did (``coordinator_worker_refresh_attempts_total``),
    from each run's tallies."""

    OUTCOMES = ("refreshed", "fresh", "busy", "abandoned", "needs_reauth", "failed", "retries")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "coordinator_worker_refresh_attempts_total",
            "What this worker's refresh job did per due credential (refreshed, fresh, busy, "
            "abandoned, needs_reauth, failed) and its retries after transient errors (retries).",
            ["outcome"],
            registry=registry,
        )
        for outcome in self.OUTCOMES:
            self.attempts.labels(outcome)  # every outcome shows, at 0, from the start

    def count(self, tallies: Mapping[str, int]) -> None:
        """Add one run's tallies (``{outcome: n}``; other names are ignored)."""
        for outcome in self.OUTCOMES:
            n = tallies.get(outcome, 0)
            if n:
                self.attempts.labels(outcome).inc(n)
