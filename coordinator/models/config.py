"""Validated configuration of the model profile manager and its circuit breakers.

The configuration is per process and passed to every script call: replicas of one application
must share it (as they share their code). A bad value raises
:class:`~coordinator.errors.ConfigError` naming the field; :meth:`ModelConfig.from_mapping`
rejects unknown keys instead of silently ignoring a misspelt one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..validation import int_at_least, number, reject_unknown

__all__ = ["BreakerConfig", "ModelConfig"]

_SECOND_MS = 1000
_MINUTE_MS = 60 * _SECOND_MS
_HOUR_MS = 60 * _MINUTE_MS


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The circuit breaker of every model profile.

    * closed → open after ``failure_threshold`` consecutive failures, each younger than
      ``failure_decay_ms``, or when at least ``min_calls`` of the last ``window_size`` calls were
      seen and their failure rate reaches ``failure_rate_threshold`` (0 to 1).
    * open → half-open after ``reset_timeout_ms`` (lazily, on Redis time). Each re-open without
      closing in between doubles the open period, up to ``max_open_ms``.
    * half-open admits ``half_open_max_probes`` calls across all replicas; a probe permit expires
      after ``probe_timeout_ms``. ``success_threshold`` successful probes close the breaker; a
      failed probe re-opens it at once.
    """

    failure_threshold: int = 3
    window_size: int = 20
    min_calls: int = 10
    failure_rate_threshold: float = 0.5
    failure_decay_ms: int = 5 * _MINUTE_MS
    reset_timeout_ms: int = _MINUTE_MS
    max_open_ms: int = 10 * _MINUTE_MS
    half_open_max_probes: int = 1
    probe_timeout_ms: int = 30 * _SECOND_MS
    success_threshold: int = 1

    def __post_init__(self) -> None:
        int_at_least("failure_threshold", self.failure_threshold, 1)
        int_at_least("window_size", self.window_size, 1)
        int_at_least("min_calls", self.min_calls, 1)
        if self.min_calls > self.window_size:
            raise ConfigError("min_calls", "must be <= window_size")
        rate = number("failure_rate_threshold", self.failure_rate_threshold, low=0, high=1)
        if rate == 0:
            raise ConfigError("failure_rate_threshold", "must be > 0")
        int_at_least("failure_decay_ms", self.failure_decay_ms, 1)
        int_at_least("reset_timeout_ms", self.reset_timeout_ms, 1)
        int_at_least("max_open_ms", self.max_open_ms, 1)
        if self.max_open_ms < self.reset_timeout_ms:
            raise ConfigError("max_open_ms", "must be >= reset_timeout_ms")
        int_at_least("half_open_max_probes", self.half_open_max_probes, 1)
        int_at_least("probe_timeout_ms", self.probe_timeout_ms, 1)
        int_at_least("success_threshold", self.success_threshold, 1)

    def open_period_ms(self, reopens: int) -> int:
        """How long the breaker stays open after ``reopens`` re-opens without closing."""
        return int(min(self.max_open_ms, self.reset_timeout_ms * 2 ** min(reopens, 40)))


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Configuration of :class:`~coordinator.models.ModelProfileManager`.

    * ``breaker``: the circuit breaker (see :class:`BreakerConfig`).
    * ``billing_cooldown_ms``: a billing failure (402, no credit) keeps the profile out this long.
    * ``max_retry_after_ms``: the longest ``Retry-After`` / rate-limit reset honoured.
    * ``unusable_cooldown_ms``: how long a profile whose key cannot be used is skipped: by every
      replica, a pool-backed profile whose pool has no usable key (and no known recovery
      time); by this replica only, a profile whose ``env`` variable is unset here or whose
      ``api_key`` it cannot decrypt (then it looks again).
    * ``session_sticky`` / ``session_ttl_s``: a session keeps its profile while that profile's
      breaker is closed (sliding lifetime).
    * ``max_attempts``: default limit of profiles one :meth:`execute` tries.
    * ``event_poll_interval_s``: how often the event subscriber polls the stream on a Cluster
      or the embedded backend (and retries after an error); standalone Redis blocks instead.
    """

    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    billing_cooldown_ms: int = _HOUR_MS
    max_retry_after_ms: int = _HOUR_MS
    unusable_cooldown_ms: int = 30 * _SECOND_MS
    session_sticky: bool = True
    session_ttl_s: float = 3600.0
    max_attempts: int = 10
    event_poll_interval_s: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.breaker, BreakerConfig):
            raise ConfigError("breaker", "must be a BreakerConfig")
        int_at_least("billing_cooldown_ms", self.billing_cooldown_ms, 0)
        int_at_least("max_retry_after_ms", self.max_retry_after_ms, 0)
        int_at_least("unusable_cooldown_ms", self.unusable_cooldown_ms, 1)
        if not isinstance(self.session_sticky, bool):
            raise ConfigError("session_sticky", "must be true or false")
        if number("session_ttl_s", self.session_ttl_s, low=0) <= 0:
            raise ConfigError("session_ttl_s", "must be > 0")
        int_at_least("max_attempts", self.max_attempts, 1)
        if number("event_poll_interval_s", self.event_poll_interval_s, low=0) <= 0:
            raise ConfigError("event_poll_interval_s", "must be > 0")

    def script_args(self) -> list[str]:
        """ARGV[2] of every model script: the breaker settings as one JSON object (see
        ``coordinator/models/_model.lua``)."""
        b = self.breaker
        settings = {
            "failure_threshold": b.failure_threshold,
            "window_size": b.window_size,
            "min_calls": b.min_calls,
            "failure_rate_threshold": float(b.failure_rate_threshold),
            "failure_decay_ms": b.failure_decay_ms,
            "reset_timeout_ms": b.reset_timeout_ms,
            "max_open_ms": b.max_open_ms,
            "half_open_max_probes": b.half_open_max_probes,
            "probe_timeout_ms": b.probe_timeout_ms,
            "success_threshold": b.success_threshold,
            "billing_cooldown_ms": self.billing_cooldown_ms,
            "max_retry_after_ms": self.max_retry_after_ms,
        }
        return [json.dumps(settings)]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from plain data (parsed JSON/TOML); unknown keys are an error."""
        reject_unknown(data, (f.name for f in fields(cls)))
        values = dict(data)
        breaker = values.get("breaker")
        if isinstance(breaker, Mapping):
            reject_unknown(breaker, (f.name for f in fields(BreakerConfig)), prefix="breaker.")
            values["breaker"] = BreakerConfig(**dict(breaker))
        return cls(**values)
