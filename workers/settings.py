"""The worker's settings: arguments, else ``COORDINATOR_WORKER_*`` variables, else defaults."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from coordinator.errors import ConfigError

__all__ = ["ENV_PREFIX", "WorkerSettings"]

#: Each setting ``name`` is read from ``COORDINATOR_WORKER_<NAME>`` when not given.
ENV_PREFIX = "COORDINATOR_WORKER_"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What one worker process does, and how often.

    * ``refresh_interval_s``: how often the refresh job reads the expiry index.
    * ``refresh_lead_s``: refresh a token this long before it expires (the worker's lead; keep
      it above the apps' ``OAuthConfig.refresh_lead_s``, 300 s, so that apps find fresh
      tokens). It is also the window read from the expiry index for candidates.
    * ``refresh_lead_fraction``: the lead is capped at this fraction of the token's lifetime
      as issued (from 0 to 1, excluded); above the apps' ``OAuthConfig.refresh_lead_fraction``
      (0.5), so that short-lived tokens too are refreshed by the worker before an app would.
    * ``concurrency``: refreshes in flight at once in this worker.
    * ``jitter_s``: each refresh starts after a random pause up to this long, so that workers
      started together do not all reach for the same credential at the same instant.
    * ``refresh_timeout_s``: the token endpoint's timeout (must stay below ``lock_ttl_s``).
    * ``lock_ttl_s``: the refresh lock's lifetime (renewed while a request is in flight).
    * ``sweep_interval_s``: how often due cooldown ends and breaker half-opens are applied.
    * ``heartbeat_interval_s`` / ``heartbeat_ttl_s``: how often the worker writes its
      heartbeat, and how long it stays visible after the worker stops writing it.
    * ``shutdown_grace_s``: on SIGTERM/SIGINT, how long in-flight refreshes may still finish.
    * ``max_batch``: at most this many due credentials are taken per refresh run.
    * ``retry_base_s`` / ``retry_max_s``: a refresh that failed on a network error, a timeout,
      HTTP 429 or 5xx is tried again after ``retry_base_s * 2**n`` (at most ``retry_max_s``),
      times a random factor from 0.5 to 1, as long as the token has not expired by then.
    * ``metrics_port``: serve Prometheus metrics on ``http://<metrics_host>:<port>/metrics``
      (0, the default: no metrics server).
    * ``metrics_host``: the address the metrics server listens on (``0.0.0.0``: every
      interface, e.g. in a container).
    * ``metrics_timeout_s``: the longest a scrape waits for its read of the fleet from Redis
      (then it reports ``coordinator_up 0``).
    """

    refresh_interval_s: float = 15.0
    refresh_lead_s: float = 600.0
    refresh_lead_fraction: float = 0.75
    concurrency: int = 4
    jitter_s: float = 1.0
    refresh_timeout_s: float = 15.0
    lock_ttl_s: float = 30.0
    sweep_interval_s: float = 1.0
    heartbeat_interval_s: float = 10.0
    heartbeat_ttl_s: float = 30.0
    shutdown_grace_s: float = 10.0
    max_batch: int = 100
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, f.type, getattr(self, f.name))
        if not 0 < self.refresh_lead_fraction < 1:
            raise ConfigError("refresh_lead_fraction", "must be above 0 and below 1")
        intervals = ("refresh_interval_s", "sweep_interval_s", "heartbeat_interval_s")
        for name in (*intervals, "metrics_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be more than 0")
        if self.refresh_timeout_s >= self.lock_ttl_s:
            raise ConfigError("refresh_timeout_s", "must be shorter than lock_ttl_s")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError("heartbeat_ttl_s", "must be longer than heartbeat_interval_s")

    @classmethod
    def from_sources(
        cls, given: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> WorkerSettings:
        """Settings from ``given`` (e.g. parsed arguments; ``None`` values are skipped), else
        ``COORDINATOR_WORKER_<NAME>`` in ``environ`` (default ``os.environ``), else defaults.
        An unknown name in ``given`` or a value that is no number is a ``ConfigError``."""
        environ = os.environ if environ is None else environ
        given = dict(given or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(unknown[0], "is not a worker setting")
        values: dict[str, Any] = {}
        for name, f in known.items():
            value = given.get(name)
            env = f"{ENV_PREFIX}{name.upper()}"
            if value is None and env in environ:
                text = environ[env]
                value = text if f.type == "str" else _number(env, text, f.type == "int")
            if value is not None:
                values[name] = value
        return cls(**values)


# Integer settings that may be 0, with their bounds (the others are counts >= 1).
_INT_RANGES = {"metrics_port": (0, 65_535)}
_SECONDS = "must be a number of seconds from 0 to 86400"


def _check(name: str, kind: object, value: object) -> None:
    """One setting's type and range: a count >= 1 (or a port), a host name, or seconds."""
    if kind == "str":
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise ConfigError(name, "must be a host name or address, without spaces")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, "must be an integer >= 1" if kind == "int" else _SECONDS)
    if kind == "int":
        low, high = _INT_RANGES.get(name, (1, None))
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f">= {low}"
            raise ConfigError(name, f"must be an integer {bounds}")
    elif not math.isfinite(value) or not 0 <= value <= 86_400:
        raise ConfigError(name, _SECONDS)


def _number(field: str, text: str, integer: bool) -> int | float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"{text!r} is not {kind}") from None
