"""The values the OAuth manager hands out: configuration, credentials, pending logins.

None of them holds a token in a form that ``repr`` or ``str`` would show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Self

import orjson

from ..errors import ConfigError, CorruptStateError
from ..store.secrets import Secret, mask

__all__ = [
    "AccessToken",
    "AuthorizationRequest",
    "DeviceAuthorization",
    "OAuthConfig",
    "OAuthCredential",
]


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(name, f"must be a number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ConfigError(name, "must be a finite number of seconds > 0")
    return float(value)


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(name, f"must be a number above 0 and below 1, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """Configuration of :class:`~coordinator.oauth.OAuthManager`.

    * ``refresh_lead_s``: :meth:`get_access_token` returns tokens valid at least this long,
      or ``refresh_lead_fraction`` of their lifetime as issued when that is shorter (tokens
      that live 300 s are refreshed 150 s before they expire, not on every call).
    * ``refresh_lead_fraction``: that cap, from 0 to 1 (excluded), default 0.5. A refresh
      worker uses a larger one (``WorkerSettings.refresh_lead_fraction``, 0.75) so that it
      refreshes before the apps would and apps do not wait for the provider.
    * ``state_ttl_s``: how long a login may take between the URL and the callback.
    * ``lock_ttl_s``: lifetime of a refresh lock; ``refresh_timeout_s`` (the token endpoint
      timeout during a refresh) must be shorter, so a lock never expires while its holder's
      request can still succeed.
    * ``wait_timeout_s``: how long a caller waits for another replica's refresh.
    * ``http_timeout_s``: timeout of the code exchange, user info, revocation, device calls.
    * ``event_poll_interval_s``: how often the event hub polls the stream on a Cluster or the
      embedded backend (and retries after an error); standalone Redis blocks instead.
    """

    refresh_lead_s: float = 300.0
    refresh_lead_fraction: float = 0.5
    state_ttl_s: float = 600.0
    lock_ttl_s: float = 30.0
    refresh_timeout_s: float = 15.0
    wait_timeout_s: float = 40.0
    http_timeout_s: float = 15.0
    event_poll_interval_s: float = 0.2

    def __post_init__(self) -> None:
        _seconds("refresh_lead_s", self.refresh_lead_s, allow_zero=True)
        _fraction("refresh_lead_fraction", self.refresh_lead_fraction)
        _seconds("state_ttl_s", self.state_ttl_s)
        _seconds("lock_ttl_s", self.lock_ttl_s)
        _seconds("refresh_timeout_s", self.refresh_timeout_s)
        _seconds("wait_timeout_s", self.wait_timeout_s)
        _seconds("http_timeout_s", self.http_timeout_s)
        _seconds("event_poll_interval_s", self.event_poll_interval_s)
        if self.refresh_timeout_s >= self.lock_ttl_s:
            raise ConfigError(
                "refresh_timeout_s", "must be shorter than lock_ttl_s (the lock must outlive it)"
            )

    @property
    def refresh_lead_ms(self) -> int:
        """``refresh_lead_s`` in milliseconds."""
        return int(self.refresh_lead_s * 1000)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token with what the caller may want to know about it
    (:meth:`~coordinator.oauth.OAuthManager.get_token`).

    ``expires_at_ms`` is Redis time (``None``: the provider did not say); ``version`` the
    credential's version it belongs to; ``waited`` whether this call waited for a refresh (its
    own or another replica's) instead of reading a fresh token: with a refresh worker running
    it should almost never be ``True``.
    """

    token: Secret = field(repr=False)
    expires_at_ms: int | None
    version: int
    waited: bool = False


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A started login: send the user to ``url``; the callback may land on any replica.

    ``state`` is also in the URL; keep it if you bind logins to your own session cookie.
    ``expires_at_ms`` is Redis time.
    """

    url: str = field(repr=False)
    state: str = field(repr=False)
    expires_at_ms: int
    provider: str
    redirect_uri: str
    scopes: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"AuthorizationRequest(provider={self.provider!r}, redirect_uri="
            f"{self.redirect_uri!r}, scopes={self.scopes!r}, state={mask(self.state)!r}, "
            f"expires_at_ms={self.expires_at_ms})"
        )


@dataclass(frozen=True, slots=True)
class DeviceAuthorization:
    """A started device login (RFC 8628): show ``user_code`` and ``verification_uri``."""

    provider: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in_s: float
    interval_s: float
    scopes: tuple[str, ...]
    device_code: Secret = field(repr=False)


@dataclass(frozen=True, slots=True)
class OAuthCredential:
    """A stored credential without its secrets (tokens stay encrypted in Redis).

    ``status`` is ``active`` or ``needs-reauth``; times are Redis time in ms;
    ``expires_at_ms`` is ``None`` when the provider did not say when the token expires.
    """

    id: str
    provider: str
    status: str
    version: int
    subject: str | None
    email: str | None
    name: str | None
    scopes: tuple[str, ...]
    token_type: str
    expires_at_ms: int | None
    created_ms: int
    updated_ms: int
    refreshed_ms: int | None
    has_refresh_token: bool
    is_default: bool
    last_error: str | None
    userinfo: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, credential_id: str, raw: dict[str, str], *, is_default: bool) -> Self:
        """Decode a credential hash as stored by the OAuth scripts."""

        def number(name: str, default: int | None = None) -> int | None:
            value = raw.get(name)
            if value is None or value == "":
                return default
            try:
                return int(value)
            except ValueError:
                raise CorruptStateError(credential_id, name, "not an integer") from None

        try:
            info = orjson.loads(raw.get("userinfo", "{}"))
        except orjson.JSONDecodeError:
            raise CorruptStateError(credential_id, "userinfo", "not JSON") from None
        if not isinstance(info, dict):
            raise CorruptStateError(credential_id, "userinfo", "not a JSON object")
        expires = number("expires_at_ms", -1)
        return cls(
            id=credential_id,
            provider=raw.get("provider", ""),
            status=raw.get("status", "active"),
            version=number("version", 0) or 0,
            subject=raw.get("subject") or None,
            email=raw.get("email") or None,
            name=raw.get("name") or None,
            scopes=tuple(raw.get("scopes", "").split()),
            token_type=raw.get("token_type", "Bearer"),
            expires_at_ms=expires if expires is not None and expires >= 0 else None,
            created_ms=number("created_ms", 0) or 0,
            updated_ms=number("updated_ms", 0) or 0,
            refreshed_ms=number("refreshed_ms"),
            has_refresh_token=bool(raw.get("refresh_token")),
            is_default=is_default,
            last_error=raw.get("last_error") or None,
            userinfo=info,
        )
