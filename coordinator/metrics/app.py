"""An app's own metrics: how long its selections take, its round trips to Redis, and the
outcomes it reported, measured in this process only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from ..errors import ConfigError
from ..failures import FailureKind
from ..store.connection import Store

__all__ = ["SELECTION_BUCKETS", "AppMetrics"]

#: The selection histogram's buckets (seconds): a selection is one round trip to Redis.
SELECTION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

# The operations that select: a pool's pick, a model profile's selection.
_SELECTIONS = {"pick": "pool", "model_select": "model"}
_KINDS = frozenset(k.value for k in FailureKind)


class _HasStore(Protocol):
    @property
    def store(self) -> Any: ...


def _store_of(target: Store | _HasStore) -> Store:
    """The store of a manager (async or sync: a sync manager's ``store`` is a ``SyncStore``,
    whose ``store`` is the async one), or the store itself."""
    found: Any = target
    for _ in range(3):
        if isinstance(found, Store):
            return found
        found = getattr(found, "store", None)
    raise ConfigError("target", f"{type(target).__name__} is no manager or store")


def _outcome(operation: str, args: Sequence[Any]) -> tuple[str, str] | None:
    """The outcome a report carries, as ``(manager, kind)``, read from the operation's
    arguments as its Lua contract header lays them out (``args`` start at ARGV[2])."""
    if operation == "mark_success":
        return "pool", "success"
    if operation == "mark_failed" and len(args) > 1:
        return "pool", _kind(args[1])  # ARGV[3] kind
    if operation == "model_report" and len(args) > 3:
        outcome = args[2]  # ARGV[4] outcome, ARGV[5] kind
        if outcome == "success":
            return "model", "success"
        if outcome == "failure":
            return "model", _kind(args[3])
    return None


def _kind(value: object) -> str:
    text = str(value)
    return text if text in _KINDS else "other"


class AppMetrics:
    """Metrics of this process's use of the coordinator, in ``registry`` (default:
    ``prometheus_client``'s global one):

    * ``coordinator_selection_duration_seconds{manager}``: a histogram of the time one
      selection takes (a pool's pick, a model profile's selection: one round trip each);
    * ``coordinator_redis_round_trips_total{operation}``: round trips to Redis by operation
      (a Lua function's name, or a plain command such as ``HGET``);
    * ``coordinator_outcomes_total{manager, kind}``: outcomes this replica reported
      (``success`` or a failure kind), for pool keys (``manager="pool"``) and model profiles.

    :meth:`attach` it to managers (or stores): it observes each round trip as it returns, in
    process, with no extra round trip. Nothing is measured for a store it is not attached to.
    One per registry: ``prometheus_client`` refuses the same metric names twice in one.
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        buckets: Sequence[float] = SELECTION_BUCKETS,
    ) -> None:
        self.selection_duration = Histogram(
            "coordinator_selection_duration_seconds",
            "Time one selection took (pool pick, model profile selection), in this process.",
            ["manager"],
            registry=registry,
            buckets=tuple(buckets),
        )
        self.round_trips = Counter(
            "coordinator_redis_round_trips_total",
            "Round trips to Redis made by this process, by operation.",
            ["operation"],
            registry=registry,
        )
        self.outcomes = Counter(
            "coordinator_outcomes_total",
            "Outcomes this process reported (success or a failure kind), by manager.",
            ["manager", "kind"],
            registry=registry,
        )
        self._trips: dict[str, Any] = {}
        self._stores: list[Store] = []

    def attach(self, *targets: Store | _HasStore) -> AppMetrics:
        """Measure the round trips of these managers' stores (or these stores); attaching
        twice to one store measures once. Returns ``self``. A sync manager's store is the one
        of this process: after a fork, attach in the child again."""
        for target in targets:
            store = _store_of(target)
            if self._observe not in store.observers:
                store.observers.append(self._observe)
                self._stores.append(store)
        return self

    def detach(self) -> None:
        """Stop measuring (the metrics keep their values)."""
        for store in self._stores:
            if self._observe in store.observers:
                store.observers.remove(self._observe)
        self._stores.clear()

    def _observe(self, operation: str, args: Sequence[Any], seconds: float) -> None:
        """One round trip returned (or failed) after ``seconds``."""
        trips = self._trips.get(operation)
        if trips is None:
            label = operation.removeprefix("command ")
            trips = self._trips[operation] = self.round_trips.labels(label)
        trips.inc()
        manager = _SELECTIONS.get(operation)
        if manager is not None:
            self.selection_duration.labels(manager).observe(seconds)
        outcome = _outcome(operation, args)
        if outcome is not None:
            self.outcomes.labels(*outcome).inc()
