"""Ready-made HTTP clients for the official SDKs: ``http_client=`` and nothing else changes.

``manager`` decides where credentials come from: an :class:`~coordinator.AuthProfileManager`
(keys of the ``provider`` pool) or a :class:`~coordinator.ModelProfileManager` (model
profiles, each with its own base URL). ``http`` is the HTTP package the SDK expects:
``httpx`` (the default; the ``openai`` SDK takes it) or ``httpx2`` (newer SDKs, such as
``anthropic`` 1.x and later, only take an ``httpx2`` client). Other keyword arguments go to
the client (``timeout=``...).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httpx

from .. import AuthProfileManager, ConfigError, ModelProfileManager
from .credentials import CredentialSource, ModelCredentials, PoolCredentials
from .transport import (
    ANTHROPIC,
    OPENAI,
    ApiStyle,
    CoordinatorTransport,
    Runner,
    SyncCoordinatorTransport,
)

__all__ = [
    "anthropic_http_client",
    "anthropic_http_client_sync",
    "credentials_of",
    "openai_http_client",
    "openai_http_client_sync",
]

Manager = AuthProfileManager | ModelProfileManager


def credentials_of(manager: Manager, provider: str) -> CredentialSource:
    """The credential source of a manager: a pool's keys, or model profiles."""
    if isinstance(manager, AuthProfileManager):
        return PoolCredentials(manager, provider)
    if isinstance(manager, ModelProfileManager):
        return ModelCredentials(manager)
    raise ConfigError("manager", "must be an AuthProfileManager or a ModelProfileManager")


def _async_client(
    manager: Manager, provider: str, api: ApiStyle, options: dict[str, Any], http: ModuleType
) -> Any:
    transport = CoordinatorTransport(
        credentials_of(manager, provider),
        api=api,
        api_base=options.pop("api_base", None),
        max_attempts=options.pop("max_attempts", 3),
        inner=http.AsyncHTTPTransport(),
    )
    return http.AsyncClient(transport=transport, **options)


def _sync_client(
    manager: Manager,
    provider: str,
    api: ApiStyle,
    run: Runner,
    options: dict[str, Any],
    http: ModuleType,
) -> Any:
    transport = SyncCoordinatorTransport(
        credentials_of(manager, provider),
        run=run,
        api=api,
        api_base=options.pop("api_base", None),
        max_attempts=options.pop("max_attempts", 3),
        inner=http.HTTPTransport(),
    )
    return http.Client(transport=transport, **options)


def openai_http_client(
    manager: Manager, *, provider: str = "openai", http: ModuleType = httpx, **options: Any
) -> Any:
    """An ``AsyncClient`` for ``openai.AsyncOpenAI(http_client=..., max_retries=0)``.

    ``options``: ``api_base``, ``max_attempts`` (see :class:`CoordinatorTransport`), and
    the client's own keyword arguments.
    """
    return _async_client(manager, provider, OPENAI, dict(options), http)


def openai_http_client_sync(
    manager: Manager,
    *,
    run: Runner,
    provider: str = "openai",
    http: ModuleType = httpx,
    **options: Any,
) -> Any:
    """A ``Client`` for ``openai.OpenAI(http_client=..., max_retries=0)``; ``run`` runs the
    managers' coroutines on their loop (``BackgroundLoop.run``)."""
    return _sync_client(manager, provider, OPENAI, run, dict(options), http)


def anthropic_http_client(
    manager: Manager, *, provider: str = "anthropic", http: ModuleType = httpx, **options: Any
) -> Any:
    """An ``AsyncClient`` for ``anthropic.AsyncAnthropic(http_client=..., max_retries=0)``
    (pass ``http=httpx2`` for the SDK versions built on ``httpx2``)."""
    return _async_client(manager, provider, ANTHROPIC, dict(options), http)


def anthropic_http_client_sync(
    manager: Manager,
    *,
    run: Runner,
    provider: str = "anthropic",
    http: ModuleType = httpx,
    **options: Any,
) -> Any:
    """A ``Client`` for ``anthropic.Anthropic(http_client=..., max_retries=0)``; ``run`` runs
    the managers' coroutines on their loop (``BackgroundLoop.run``)."""
    return _sync_client(manager, provider, ANTHROPIC, run, dict(options), http)
