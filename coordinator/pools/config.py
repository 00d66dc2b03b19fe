"""Validated configuration of the credential-pool manager.

Configuration is per process and passed to every script call; replicas of one application
should share it (as they share their code). Values are checked when built: a bad one raises
:class:`~coordinator.errors.ConfigError` naming the field, and :meth:`AuthConfig.from_mapping`
rejects unknown keys instead of silently ignoring a misspelt one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, cast, get_args

from ..errors import ConfigError
from ..store.keys import validate_name
from ..validation import number, reject_unknown

__all__ = ["AuthConfig", "CooldownPolicy", "Strategy"]

Strategy = Literal["round-robin", "priority", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

_MINUTE_MS = 60_000
_HOUR_MS = 60 * _MINUTE_MS
# Upper bounds of durations: beyond them a value is a mistake (and past ~2^53 ms, Redis time
# plus the value is no longer an exact integer in Lua).
_MAX_MS = 10 * 365 * 24 * _HOUR_MS
_MAX_SESSION_TTL_S = 365 * 24 * 3600.0
_MAX_MULTIPLIER = 1000.0


def _positive(name: str, value: object, high: float = _MAX_MS) -> float:
    return number(name, value, strict=True, high=high)


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    """Cooldown schedule: ``min(cap_ms, base_ms * multiplier ** (n - 1))`` for failure ``n``."""

    base_ms: int
    multiplier: float
    cap_ms: int

    def __post_init__(self) -> None:
        _positive("base_ms", self.base_ms)
        _positive("cap_ms", self.cap_ms)
        if _positive("multiplier", self.multiplier, _MAX_MULTIPLIER) < 1:
            raise ConfigError("multiplier", "must be >= 1 (cooldowns never shrink)")
        if self.cap_ms < self.base_ms:
            raise ConfigError("cap_ms", "must be >= base_ms")

    def duration_ms(self, failures: int) -> int:
        """The cooldown after ``failures`` failures in a row (documentation and tests)."""
        if failures < 1:
            return 0
        return int(min(self.cap_ms, self.base_ms * self.multiplier ** (failures - 1)))


def _ordinary() -> CooldownPolicy:
    return CooldownPolicy(base_ms=_MINUTE_MS, multiplier=5, cap_ms=_HOUR_MS)


def _billing() -> CooldownPolicy:
    return CooldownPolicy(base_ms=5 * _HOUR_MS, multiplier=2, cap_ms=24 * _HOUR_MS)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Configuration of :class:`~coordinator.profiles.AuthProfileManager`.

    * ``strategy``: rotation of pools without an entry in ``strategies``.
    * ``session_sticky`` / ``session_ttl_s``: sticky sessions and their sliding lifetime.
    * ``cooldown`` / ``billing_cooldown``: the two schedules (billing has its own counter).
    * ``failure_window_ms``: counters reset after this long without a failure.
    * ``max_retry_after_ms``: the longest provider ``Retry-After`` honoured.
    * ``event_poll_interval_s``: how often the event subscriber polls the streams on a Cluster
      or the embedded backend (and retries after an error); standalone Redis blocks instead.

    Every number must be finite and positive; durations in ms are at most ten years,
    ``session_ttl_s`` at most a year, a ``multiplier`` at most 1000 and
    ``event_poll_interval_s`` at most an hour.
    """

    strategy: Strategy = "round-robin"
    strategies: Mapping[str, Strategy] = field(default_factory=dict)
    session_sticky: bool = True
    session_ttl_s: float = 3600.0
    cooldown: CooldownPolicy = field(default_factory=_ordinary)
    billing_cooldown: CooldownPolicy = field(default_factory=_billing)
    failure_window_ms: int = 24 * _HOUR_MS
    max_retry_after_ms: int = 24 * _HOUR_MS
    event_poll_interval_s: float = 0.1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"{self.strategy!r} is not one of {STRATEGIES}")
        for provider, strategy in dict(self.strategies).items():
            validate_name(provider, "strategies")
            if strategy not in STRATEGIES:
                raise ConfigError(f"strategies.{provider}", f"{strategy!r} not in {STRATEGIES}")
        object.__setattr__(self, "strategies", dict(self.strategies))
        if not isinstance(self.session_sticky, bool):
            raise ConfigError("session_sticky", "must be true or false")
        _positive("session_ttl_s", self.session_ttl_s, _MAX_SESSION_TTL_S)
        _positive("failure_window_ms", self.failure_window_ms)
        _positive("max_retry_after_ms", self.max_retry_after_ms)
        _positive("event_poll_interval_s", self.event_poll_interval_s, 3600.0)
        for name in ("cooldown", "billing_cooldown"):
            if not isinstance(getattr(self, name), CooldownPolicy):
                raise ConfigError(name, "must be a CooldownPolicy")

    def strategy_for(self, provider: str) -> Strategy:
        """The rotation strategy of one pool."""
        return self.strategies.get(provider, self.strategy)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AuthConfig:
        """Build from plain data (e.g. parsed JSON/TOML); unknown keys are an error."""
        reject_unknown(data, (f.name for f in fields(cls)))
        values = dict(data)
        for name in ("cooldown", "billing_cooldown"):
            if isinstance(values.get(name), Mapping):
                policy = cast(Mapping[str, Any], values[name])
                reject_unknown(policy, ("base_ms", "multiplier", "cap_ms"), prefix=f"{name}.")
                base = _billing() if name == "billing_cooldown" else _ordinary()
                values[name] = replace(base, **policy)
        return cls(**values)
