"""The one exception tree of coordinator.

Every failure the library raises is a :class:`CoordinatorError`. Lower-level errors (redis,
httpx, cryptography) are translated at one boundary each, with the original kept as
``__cause__``; nothing is swallowed. No message ever carries a secret.

::

    CoordinatorError
    ├── ConfigError                  invalid configuration or input; names the field
    ├── StoreUnavailableError        Redis unreachable, timed out, or answered garbage
    ├── NotFoundError                an unknown id
    │   ├── ProfileNotFoundError
    │   └── CredentialNotFoundError
    ├── CorruptStateError            a value in Redis is not in the form we wrote
    ├── SecretError
    │   ├── DecryptionError          wrong key, or a ciphertext that was tampered with
    │   └── MissingSecretError       a profile names an environment variable that is unset
    ├── NoProfileAvailableError      every profile of a pool is cooling down or excluded
    ├── AllProfilesUnavailableError  execute() tried every model profile and none succeeded
    └── OAuthError
        ├── OAuthStateError          unknown, expired, replayed or foreign ``state``
        ├── OAuthAuthorizationError  the provider redirected back with ``error=``
        ├── OAuthProviderError       the provider answered garbage or an error
        ├── ReauthRequiredError      the refresh token is dead; the user must sign in again
        ├── RefreshInProgressError   another replica holds the refresh lock (single flight)
        └── LoginTimeoutError        no callback / device approval before the login timed out
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AllProfilesUnavailableError",
    "ConfigError",
    "CoordinatorError",
    "CorruptStateError",
    "CredentialNotFoundError",
    "DecryptionError",
    "LoginTimeoutError",
    "MissingSecretError",
    "NoProfileAvailableError",
    "NotFoundError",
    "OAuthAuthorizationError",
    "OAuthError",
    "OAuthProviderError",
    "OAuthStateError",
    "ProfileNotFoundError",
    "ReauthRequiredError",
    "RefreshInProgressError",
    "SecretError",
    "StoreUnavailableError",
]


class CoordinatorError(Exception):
    """Root of every error raised by coordinator."""


class ConfigError(CoordinatorError, ValueError):
    """Invalid configuration or input. ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreUnavailableError(CoordinatorError):
    """The store (Redis) could not be reached, timed out, or answered something unexpected.

    The original redis exception is kept as ``__cause__``.
    """


class NotFoundError(CoordinatorError, LookupError):
    """An id that the store does not know."""


class ProfileNotFoundError(NotFoundError):
    """No profile with this id exists."""

    def __init__(self, profile_id: str) -> None:
        self.profile_id = profile_id
        super().__init__(f"unknown profile id {profile_id!r}")


class CredentialNotFoundError(NotFoundError):
    """No OAuth credential with this id exists."""

    def __init__(self, credential_id: str) -> None:
        self.credential_id = credential_id
        super().__init__(f"unknown credential id {credential_id!r}")


class CorruptStateError(CoordinatorError):
    """A value stored in Redis is not in the form coordinator wrote (e.g. edited by hand)."""

    def __init__(self, subject: str, field: str, detail: str = "") -> None:
        self.subject = subject
        self.field = field
        suffix = f": {detail}" if detail else ""
        super().__init__(f"corrupt stored value for {subject!r}, field {field!r}{suffix}")


class SecretError(CoordinatorError):
    """A secret could not be produced."""


class DecryptionError(SecretError):
    """A ciphertext could not be decrypted: wrong key, or it was tampered with."""


class MissingSecretError(SecretError):
    """A profile names an environment variable that is not set."""


class NoProfileAvailableError(CoordinatorError):
    """No profile of the pool can be used now.

    ``retry_in_ms`` is the time until the soonest cooldown ends (``None`` when no profile is
    cooling down, e.g. every profile was excluded or the pool is empty).
    """

    def __init__(self, provider: str, retry_in_ms: int | None) -> None:
        self.provider = provider
        self.retry_in_ms = retry_in_ms
        when = f"; soonest recovery in {retry_in_ms} ms" if retry_in_ms is not None else ""
        super().__init__(f"no profile available for provider {provider!r}{when}")


class AllProfilesUnavailableError(CoordinatorError):
    """Every model profile was tried (or is unavailable) and none succeeded.

    ``attempts`` lists what was tried, ``retry_in_ms`` the time until the soonest recovery
    (``None`` when nothing recovers by itself, or when ``limit_reached``). ``limit_reached``:
    :meth:`~coordinator.models.ModelProfileManager.execute` stopped at ``max_attempts``, so
    profiles it did not try may still be usable now.
    """

    def __init__(
        self, attempts: Sequence[Any], retry_in_ms: int | None, *, limit_reached: bool = False
    ) -> None:
        self.attempts = list(attempts)
        self.retry_in_ms = retry_in_ms
        self.limit_reached = limit_reached
        when = f"; soonest recovery in {retry_in_ms} ms" if retry_in_ms is not None else ""
        tried = ", ".join(str(a) for a in self.attempts) or "none"
        what = (
            f"max_attempts ({len(self.attempts)}) reached"
            if limit_reached
            else "all profiles unavailable"
        )
        super().__init__(f"{what} (tried: {tried}){when}")


class OAuthError(CoordinatorError):
    """Base of OAuth failures."""


class OAuthStateError(OAuthError):
    """The callback's ``state`` is unknown, expired, already used or issued for another provider."""


class OAuthAuthorizationError(OAuthError):
    """The provider redirected back with ``error=`` (the user refused, or the request was bad)."""

    def __init__(self, error: str, description: str | None = None) -> None:
        self.error = error
        self.description = description
        text = f": {description}" if description else ""
        super().__init__(f"authorization failed with {error!r}{text}")


class OAuthProviderError(OAuthError):
    """The provider's endpoint failed or answered something that is not a valid response.

    ``error`` is the OAuth error code the provider sent (``invalid_grant``, ...) if any, and
    ``status`` the HTTP status; the message never carries a token.
    """

    def __init__(
        self, message: str, *, error: str | None = None, status: int | None = None
    ) -> None:
        self.error = error
        self.status = status
        super().__init__(message)


class ReauthRequiredError(OAuthError):
    """The credential can no longer be refreshed; the user must sign in again."""


class RefreshInProgressError(OAuthError):
    """Another replica is refreshing this credential and did not finish in time."""


class LoginTimeoutError(OAuthError):
    """No authorization callback (or device approval) arrived before the login timed out."""
