"""Where the SDK transport gets a credential for each attempt, and where it reports the outcome.

Two sources, both through the managers' public API (the Lua in Redis decides everything):

* :class:`PoolCredentials`: an :class:`~coordinator.AuthProfileManager` pool; each attempt
  ``acquire``\\ s a key (rotation, sticky sessions, cooldowns) and reports it with
  ``mark_success`` / ``mark_failed``.
* :class:`ModelCredentials`: a :class:`~coordinator.ModelProfileManager`; each attempt
  ``select_profile``\\ s a model profile (priority, circuit breaker) and reports it with
  ``record_success`` / ``record_failure`` / ``release``. The profile's ``base_url`` replaces
  the SDK's.

A :class:`Lease` is one credential handed out for one attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import (
    AllProfilesUnavailableError,
    AuthProfile,
    AuthProfileManager,
    Classification,
    ConfigError,
    DecryptionError,
    FailureKind,
    MissingSecretError,
    ModelProfileManager,
    ModelSelection,
    Secret,
)

__all__ = ["CredentialSource", "Lease", "ModelCredentials", "PoolCredentials"]

log = logging.getLogger("coordinator.sdk")


class Lease(Protocol):
    """One credential handed out for one attempt, and how to report what it came to."""

    @property
    def id(self) -> str:
        """The pool key's or model profile's id (safe to log)."""
        ...

    @property
    def secret(self) -> Secret | None:
        """The API key to send (``None``: send no credential)."""
        ...

    @property
    def base_url(self) -> str | None:
        """Where to send the request instead of the SDK's base URL (``None``: unchanged)."""
        ...

    async def succeeded(self, verdict: Classification) -> None:
        """Report a success (``verdict.retry_after_s``: a quota the answer said is exhausted)."""
        ...

    async def failed(self, verdict: Classification, message: str) -> None:
        """Report a failure the credential or its provider is to blame for."""
        ...

    async def release(self) -> None:
        """The attempt ended without a verdict on the credential (a caller error)."""
        ...


class CredentialSource(Protocol):
    """Hands out one :class:`Lease` per attempt."""

    async def lease(self, model: str | None, session_id: str | None, tried: Sequence[str]) -> Lease:
        """A credential not in ``tried``; raises a :class:`~coordinator.CoordinatorError`
        (``NoProfileAvailableError`` / ``AllProfilesUnavailableError``) when none is usable."""
        ...


@dataclass(frozen=True, slots=True)
class _PoolLease:
    manager: AuthProfileManager
    key: AuthProfile
    model: str | None
    secret: Secret | None
    base_url: str | None = None

    @property
    def id(self) -> str:
        return self.key.id

    async def succeeded(self, verdict: Classification) -> None:
        await self.manager.mark_success(self.key.id, self.model)

    async def failed(self, verdict: Classification, message: str) -> None:
        kind = verdict.kind or FailureKind.UNKNOWN
        await self.manager.mark_failed(
            self.key.id, message, kind, verdict.retry_after_s, self.model
        )

    async def release(self) -> None:
        return None  # a pool has nothing to give back: a caller error says nothing of the key


class PoolCredentials:
    """Keys of one :class:`~coordinator.AuthProfileManager` pool (``provider``)."""

    def __init__(self, manager: AuthProfileManager, provider: str) -> None:
        if not isinstance(manager, AuthProfileManager):
            raise ConfigError("manager", "must be an AuthProfileManager")
        self.manager = manager
        self.provider = provider

    def __repr__(self) -> str:
        return f"PoolCredentials(provider={self.provider!r})"

    async def lease(self, model: str | None, session_id: str | None, tried: Sequence[str]) -> Lease:
        """The pool's next key (``acquire``), skipping the keys already tried and the keys this
        replica cannot use (an unset variable, a key it cannot decrypt): those are not the
        key's fault, other replicas may hold them, so nothing is reported against them."""
        skipped: list[str] = []
        while True:  # ends: each turn excludes one more key, then acquire raises
            key = await self.manager.acquire(
                self.provider, session_id, model, exclude=[*tried, *skipped]
            )
            secret = key.secret()
            if secret is None:
                # An OAuth key's token comes from the OAuth manager, which this transport
                # does not hold; ModelProfileManager.execute serves those.
                raise ConfigError("provider", f"key {key.id!r} is an OAuth key: not supported")
            try:
                secret.reveal()
            except (MissingSecretError, DecryptionError) as exc:
                log.warning(
                    "key %s skipped on this replica: %s",
                    key.id,
                    type(exc).__name__,
                    extra={"profile": key.id},
                )
                skipped.append(key.id)
                continue
            return _PoolLease(self.manager, key, model, secret)


@dataclass(frozen=True, slots=True)
class _ModelLease:
    manager: ModelProfileManager
    selection: ModelSelection
    secret: Secret | None

    @property
    def id(self) -> str:
        return self.selection.profile_id

    @property
    def base_url(self) -> str:
        return self.selection.profile.base_url

    async def succeeded(self, verdict: Classification) -> None:
        await self.manager.record_success(self.selection, retry_after_s=verdict.retry_after_s)

    async def failed(self, verdict: Classification, message: str) -> None:
        await self.manager.record_failure(
            self.selection,
            verdict.kind or FailureKind.UNKNOWN,
            error=message,
            retry_after_s=verdict.retry_after_s,
        )

    async def release(self) -> None:
        if self.selection.probe:
            await self.manager.release(self.selection)


# The model profiles whose key this transport can send: the others need the pool or OAuth
# plumbing that lives in ModelProfileManager.execute.
_DIRECT = frozenset({"api_key", "env", "none"})


class ModelCredentials:
    """Model profiles of a :class:`~coordinator.ModelProfileManager` (priority, breakers)."""

    def __init__(self, manager: ModelProfileManager) -> None:
        if not isinstance(manager, ModelProfileManager):
            raise ConfigError("manager", "must be a ModelProfileManager")
        self.manager = manager

    def __repr__(self) -> str:
        return "ModelCredentials()"

    async def lease(self, model: str | None, session_id: str | None, tried: Sequence[str]) -> Lease:
        """The profile to call now (``select_profile``), skipping the profiles already tried."""
        selection = await self.manager.select_profile(model, session_id, exclude=tried)
        if selection is None:
            raise AllProfilesUnavailableError([], None)
        auth = selection.profile.auth.kind
        if auth not in _DIRECT:
            await self.manager.release(selection)
            raise ConfigError(
                "auth",
                f"model profile {selection.profile_id!r} uses {auth} auth: the SDK transport "
                "sends api_key, env and none profiles (use execute() for the others)",
            )
        # select_profile has checked that this replica holds the key (env set, decryptable).
        return _ModelLease(self.manager, selection, selection.profile.secret())
