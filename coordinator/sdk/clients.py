"""Ready-made HTTP clients for the official SDKs: ``http_client=`` and nothing else changes.

``manager`` decides where credentials come from: an :class:`~coordinator.AuthProfileManager`
(keys of the ``provider`` pool) or a :class:`~coordinator.ModelProfileManager` (model
profiles, each with its own base URL). ``http`` is the HTTP package the SDK expects:
``httpx`` (the default; the ``openai`` SDK takes it) or ``httpx2`` (newer SDKs, such as
``anthropic`` 1.x and later, only take an ``httpx2`` client). Other keyword arguments go to
the client (``timeout=``...). The ``_sync`` clients also take a sync manager
(``coordinator.sync``), and then need no ``run``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:
    from ..sync import SyncAuthProfileManager, SyncModelProfileManager
    from .credentials import Lease

__all__ = [
    "anthropic_http_client",
    "anthropic_http_client_sync",
    "credentials_of",
    "openai_http_client",
    "openai_http_client_sync",
]

Manager = AuthProfileManager | ModelProfileManager
T = TypeVar("T")


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


class _SyncManagerCredentials:
    """The credentials of a sync manager: of the async manager it drives now (a new one in a
    forked child)."""

    def __init__(self, manager: SyncAuthProfileManager | SyncModelProfileManager, provider: str):
        self._manager = manager
        self._provider = provider

    def __repr__(self) -> str:
        return f"_SyncManagerCredentials({self._manager!r})"

    async def lease(self, model: str | None, session_id: str | None, tried: Sequence[str]) -> Lease:
        """A lease of the async manager's credential source."""
        source = credentials_of(self._manager.manager, self._provider)
        return await source.lease(model, session_id, tried)


def _sync_source(
    manager: Manager | SyncAuthProfileManager | SyncModelProfileManager,
    provider: str,
    run: Runner | None,
) -> tuple[CredentialSource, Runner]:
    """Where a sync client's credentials come from, and how their coroutines are run."""
    from ..sync import SyncManager

    if isinstance(manager, SyncManager):
        if run is not None:
            raise ConfigError("run", "not with a sync manager: it runs on its store's loop")
        sync = manager

        def run_on_store(coro: Coroutine[Any, Any, T], /) -> T:
            sync.manager  # noqa: B018  (in a forked child: made again before the call)
            return sync.store.run(coro)

        return _SyncManagerCredentials(sync, provider), run_on_store
    if run is None:
        raise ConfigError("run", "required with an async manager (e.g. BackgroundLoop.run)")
    return credentials_of(manager, provider), run


def _sync_client(
    manager: Manager | SyncAuthProfileManager | SyncModelProfileManager,
    provider: str,
    api: ApiStyle,
    run: Runner | None,
    options: dict[str, Any],
    http: ModuleType,
) -> Any:
    source, runner = _sync_source(manager, provider, run)
    transport = SyncCoordinatorTransport(
        source,
        run=runner,
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
    manager: Manager | SyncAuthProfileManager | SyncModelProfileManager,
    *,
    run: Runner | None = None,
    provider: str = "openai",
    http: ModuleType = httpx,
    **options: Any,
) -> Any:
    """A ``Client`` for ``openai.OpenAI(http_client=..., max_retries=0)``. ``manager``: a sync
    manager, or an async one with ``run``, which runs its coroutines on the loop it lives on
    (``BackgroundLoop.run``)."""
    return _sync_client(manager, provider, OPENAI, run, dict(options), http)


def anthropic_http_client(
    manager: Manager, *, provider: str = "anthropic", http: ModuleType = httpx, **options: Any
) -> Any:
    """An ``AsyncClient`` for ``anthropic.AsyncAnthropic(http_client=..., max_retries=0)``
    (pass ``http=httpx2`` for the SDK versions built on ``httpx2``)."""
    return _async_client(manager, provider, ANTHROPIC, dict(options), http)


def anthropic_http_client_sync(
    manager: Manager | SyncAuthProfileManager | SyncModelProfileManager,
    *,
    run: Runner | None = None,
    provider: str = "anthropic",
    http: ModuleType = httpx,
    **options: Any,
) -> Any:
    """A ``Client`` for ``anthropic.Anthropic(http_client=..., max_retries=0)``. ``manager``: a
    sync manager, or an async one with ``run``, which runs its coroutines on the loop it lives
    on (``BackgroundLoop.run``)."""
    return _sync_client(manager, provider, ANTHROPIC, run, dict(options), http)
