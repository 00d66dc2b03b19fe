"""Failure kinds: what went wrong with a call, as the cooldown and breaker rules see it."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FailureKind"]


class FailureKind(StrEnum):
    """Why a call failed. Every kind but ``CALLER`` counts against the profile."""

    RATE_LIMIT = "rate_limit"
    """429 or an exhausted rate-limit window: ordinary cooldown (per model when one is named)."""
    BILLING = "billing"
    """402, insufficient quota or credit: the long billing cooldown, with its own counter."""
    AUTH = "auth"
    """401/403: the credential is refused. Ordinary cooldown of the whole profile."""
    SERVER = "server"
    """5xx or an overloaded provider: ordinary cooldown."""
    TIMEOUT = "timeout"
    """Timeout or connection failure: ordinary cooldown."""
    UNKNOWN = "unknown"
    """Anything else that is not clearly the caller's fault: ordinary cooldown."""
    CALLER = "caller"
    """A malformed request (other 4xx): not the profile's fault; no cooldown, no breaker."""

    @classmethod
    def parse(cls, value: object) -> FailureKind:
        """Accept a :class:`FailureKind` or its string value (``-`` or ``_`` separated)."""
        if isinstance(value, str):  # a FailureKind is a str too
            # A dict lookup first: this runs on every failure report (the hot path).
            kind = _BY_VALUE.get(value)
            if kind is None:
                kind = _BY_VALUE.get(value.strip().lower().replace("-", "_"))
            if kind is not None:
                return kind
        from .errors import ConfigError

        allowed = ", ".join(k.value for k in cls)
        raise ConfigError("kind", f"{value!r} is not a failure kind ({allowed})")


_BY_VALUE: dict[str, FailureKind] = {k.value: k for k in FailureKind}
