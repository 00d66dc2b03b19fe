"""One manager of each kind per process, all sharing one store per URL and namespace.

``get_auth_profile_manager()``, ``get_model_profile_manager()`` and ``get_oauth_manager()``
create their manager (and, the first time a URL and namespace are asked for, its store) on the
first call and return the same object afterwards. A later call that asks for other settings
raises :class:`~coordinator.errors.ConfigError` instead of silently handing back a manager
configured otherwise; call the matching ``reset_…()`` first. A store opened here is closed when
the last manager using it is reset. The model manager is wired to the process-wide pool manager
(for ``ModelAuth.pool`` profiles) and OAuth manager (as its token source) when those exist.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError
from .models.config import ModelConfig
from .models.manager import ModelProfileManager
from .oauth.manager import OAuthManager
from .oauth.providers import OAuthProvider
from .oauth.types import OAuthConfig
from .pools.config import AuthConfig
from .pools.manager import AuthProfileManager
from .store.connection import ENV_URL, Store, connect

__all__ = [
    "get_auth_profile_manager",
    "get_model_profile_manager",
    "get_oauth_manager",
    "reset_auth_profile_manager",
    "reset_model_profile_manager",
    "reset_oauth_manager",
]

M = TypeVar("M")
_StoreKey = tuple[str, str]  # (URL, namespace)


@dataclass
class _SharedStore:
    store: Store
    owned: bool  # opened here (closed with its last manager), or handed in by the caller
    users: set[str] = field(default_factory=set)


@dataclass
class _Slot(Generic[M]):
    """The process-wide manager of one kind, and the settings it was made with."""

    kind: str
    manager: M | None = None
    settings: tuple[Any, ...] | None = None
    store_key: _StoreKey | None = None


_stores: dict[_StoreKey, _SharedStore] = {}
_lock = asyncio.Lock()
_auth: _Slot[AuthProfileManager] = _Slot("auth")
_models: _Slot[ModelProfileManager] = _Slot("models")
_oauth: _Slot[OAuthManager] = _Slot("oauth")


async def _store_for(kind: str, url: str | None, namespace: str, store: Store | None) -> _StoreKey:
    if store is not None:
        key: _StoreKey = (f"store:{id(store)}", store.namespace)
        _stores.setdefault(key, _SharedStore(store, owned=False))
    else:
        key = (url or os.environ.get(ENV_URL) or "memory://", namespace)
        if key not in _stores:
            _stores[key] = _SharedStore(await connect(key[0], namespace=namespace), owned=True)
    _stores[key].users.add(kind)
    return key


def _existing(slot: _Slot[M], settings: tuple[Any, ...]) -> M | None:
    if slot.manager is None:
        return None
    if settings != slot.settings:
        raise ConfigError(
            "config",
            f"get_{_NAMES[slot.kind]}() was already called with other settings; "
            f"call reset_{_NAMES[slot.kind]}() first",
        )
    return slot.manager


async def _release(slot: _Slot[Any]) -> None:
    manager, key = slot.manager, slot.store_key
    slot.manager, slot.settings, slot.store_key = None, None, None
    if manager is not None:
        await manager.close()
    shared = _stores.get(key) if key is not None else None
    if shared is None or key is None:
        return
    shared.users.discard(slot.kind)
    if not shared.users:
        del _stores[key]
        if shared.owned:
            await shared.store.close()


_NAMES = {
    "auth": "auth_profile_manager",
    "models": "model_profile_manager",
    "oauth": "oauth_manager",
}


async def get_auth_profile_manager(
    url: str | None = None,
    *,
    config: AuthConfig | None = None,
    namespace: str = "coord",
    store: Store | None = None,
) -> AuthProfileManager:
    """The process-wide :class:`AuthProfileManager`, created (and connected) on first call."""
    config = config or AuthConfig()
    settings = (url, namespace, id(store) if store else None, config)
    async with _lock:
        existing = _existing(_auth, settings)
        if existing is not None:
            return existing
        key = await _store_for("auth", url, namespace, store)
        _auth.manager = AuthProfileManager(_stores[key].store, config)
        _auth.settings, _auth.store_key = settings, key
        return _auth.manager


async def get_model_profile_manager(
    url: str | None = None,
    *,
    config: ModelConfig | None = None,
    namespace: str = "coord",
    store: Store | None = None,
) -> ModelProfileManager:
    """The process-wide :class:`ModelProfileManager`, created (and connected) on first call.

    It uses the process-wide pool manager and OAuth manager that exist at that moment (for
    ``ModelAuth.pool`` and ``ModelAuth.oauth`` profiles); create those first to wire them in.
    """
    config = config or ModelConfig()
    settings = (url, namespace, id(store) if store else None, config)
    async with _lock:
        existing = _existing(_models, settings)
        if existing is not None:
            return existing
        key = await _store_for("models", url, namespace, store)
        _models.manager = ModelProfileManager(
            _stores[key].store,
            config,
            auth_manager=_auth.manager if _auth.store_key == key else None,
            token_source=_oauth.manager if _oauth.store_key == key else None,
        )
        _models.settings, _models.store_key = settings, key
        return _models.manager


async def get_oauth_manager(
    url: str | None = None,
    *,
    providers: Iterable[OAuthProvider] = (),
    config: OAuthConfig | None = None,
    namespace: str = "coord",
    store: Store | None = None,
) -> OAuthManager:
    """The process-wide :class:`~coordinator.oauth.OAuthManager`, created on first call.

    ``providers`` counts among the settings: a second call naming other providers is a
    ``ConfigError`` (add one later with ``manager.add_provider``).
    """
    providers = tuple(providers)
    config = config or OAuthConfig()
    settings = (url, namespace, id(store) if store else None, config, providers)
    async with _lock:
        existing = _existing(_oauth, settings)
        if existing is not None:
            return existing
        key = await _store_for("oauth", url, namespace, store)
        _oauth.manager = OAuthManager(_stores[key].store, providers, config=config)
        _oauth.settings, _oauth.store_key = settings, key
        return _oauth.manager


async def reset_auth_profile_manager() -> None:
    """Forget the process-wide pool manager (closing its event reader, and its store when no
    other process-wide manager uses it)."""
    async with _lock:
        await _release(_auth)


async def reset_model_profile_manager() -> None:
    """Forget the process-wide model manager (as :func:`reset_auth_profile_manager`)."""
    async with _lock:
        await _release(_models)


async def reset_oauth_manager() -> None:
    """Forget the process-wide OAuth manager (as :func:`reset_auth_profile_manager`)."""
    async with _lock:
        await _release(_oauth)
