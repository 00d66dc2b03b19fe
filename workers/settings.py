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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f.name, "must be an integer >= 1")
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or value > 86_400:
                raise ConfigError(f.name, "must be a number of seconds from 0 to 86400")
        if not 0 < self.refresh_lead_fraction < 1:
            raise ConfigError("refresh_lead_fraction", "must be above 0 and below 1")
        for name in ("refresh_interval_s", "sweep_interval_s", "heartbeat_interval_s"):
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
            if value is None and f"{ENV_PREFIX}{name.upper()}" in environ:
                value = _number(
                    f"{ENV_PREFIX}{name.upper()}",
                    environ[f"{ENV_PREFIX}{name.upper()}"],
                    f.type == "int",
                )
            if value is not None:
                values[name] = value
        return cls(**values)


def _number(field: str, text: str, integer: bool) -> int | float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"{text!r} is not {kind}") from None
