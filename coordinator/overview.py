"""One read of the whole fleet for operators: pools, model profiles, OAuth credentials, workers,
sticky sessions and recent events.

The command line (``coordinator status``, ``sessions show|release``, ``events tail``) renders
what these functions return; they only call the managers' public methods and read the event
streams.
Nothing returned holds a secret: error texts are passed through :func:`redact` once more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .events import Event
from .fleet import read_heartbeats
from .models.manager import ModelProfileManager
from .models.types import ModelProfileStatus
from .oauth.manager import OAuthManager
from .oauth.types import OAuthCredential
from .pools.manager import AuthProfileManager
from .pools.types import ProfileStatus
from .store.connection import Store
from .store.keys import IndexKeys, ModelKeys, OAuthKeys, PoolKeys, validate_session_id
from .store.secrets import redact

__all__ = [
    "FleetStatus",
    "Managers",
    "SessionBinding",
    "event_streams",
    "fleet_status",
    "recent_events",
    "release_session",
    "session_bindings",
]


@dataclass(frozen=True, slots=True)
class Managers:
    """The three managers over one store, as an operator's tool builds them (default
    configuration: the reads do not depend on it). ``close`` closes them, not the store."""

    store: Store
    pools: AuthProfileManager
    models: ModelProfileManager
    oauth: OAuthManager

    @classmethod
    def over(cls, store: Store) -> Managers:
        """Managers for ``store``; the model manager knows the pool manager."""
        pools = AuthProfileManager(store)
        models = ModelProfileManager(store, auth_manager=pools)
        return cls(store, pools, models, OAuthManager(store))

    async def close(self) -> None:
        """Stop the managers' event readers and HTTP client."""
        await self.pools.close()
        await self.models.close()
        await self.oauth.close()


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """Everything ``coordinator status`` shows, read on Redis time (``now_ms``)."""

    now_ms: int
    pools: list[ProfileStatus]
    models: list[ModelProfileStatus]
    credentials: list[OAuthCredential]
    workers: list[dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json`` (no secret: credentials carry none)."""
        return {
            "now_ms": self.now_ms,
            "pools": [asdict(row) for row in self.pools],
            "models": [{**asdict(row), "available": row.available} for row in self.models],
            "credentials": [asdict(c) for c in self.credentials],
            "workers": self.workers,
        }


def _masked(text: str | None) -> str | None:
    return redact(text) if text else text


async def fleet_status(managers: Managers) -> FleetStatus:
    """Pools, model profiles with their breakers, OAuth credentials and worker heartbeats."""
    pools = [
        replace(row, last_error=_masked(row.last_error))
        for row in await managers.pools.get_status()
    ]
    models = [
        replace(row, last_error=_masked(row.last_error))
        for row in await managers.models.get_status()
    ]
    credentials = [
        replace(c, last_error=_masked(c.last_error))
        for c in await managers.oauth.list_credentials()
    ]
    workers = await read_heartbeats(managers.store)
    now = await managers.store.time_ms()
    return FleetStatus(now, pools, models, credentials, workers)


@dataclass(frozen=True, slots=True)
class SessionBinding:
    """Where one sticky session is pinned: a pool key (``kind="pool"``, ``scope`` the
    provider) or a model profile (``kind="model"``)."""

    kind: str
    scope: str
    profile_id: str
    ttl_ms: int = field(default=-1)


async def session_bindings(
    managers: Managers, session_id: str, provider: str | None = None
) -> list[SessionBinding]:
    """The pool keys and the model profile a session is pinned to now (a pool binding that no
    longer holds is dropped by the pool manager's read)."""
    validate_session_id(session_id)
    store = managers.store
    providers = [provider] if provider else await _providers(store)
    out: list[SessionBinding] = []
    for name in providers:
        bound = await managers.pools.get_profile_for_session(session_id, name)
        if bound is not None:
            ttl = await store.command("PTTL", PoolKeys(store.namespace, name).session(session_id))
            out.append(SessionBinding("pool", name, bound.id, int(ttl)))
    if provider is None:
        key = ModelKeys(store.namespace).session(session_id)
        model_bound = await store.command("GET", key)
        if model_bound:
            ttl = await store.command("PTTL", key)
            out.append(SessionBinding("model", "models", str(model_bound), int(ttl)))
    return out


async def release_session(
    managers: Managers, session_id: str, provider: str | None = None
) -> list[str]:
    """Unpin a session: from its pool keys (in ``provider``'s pool only, when given) and, when
    no provider is given, from its model profile. Returns what it was pinned in (``pool
    <provider>``, ``model profiles``), empty when nothing."""
    validate_session_id(session_id)
    released: list[str] = []
    for name in [provider] if provider else await _providers(managers.store):
        if await managers.pools.release_session(session_id, name):
            released.append(f"pool {name}")
    if provider is None and await managers.models.release_session(session_id):
        released.append("model profiles")
    return released


async def _providers(store: Store) -> list[str]:
    return sorted(str(p) for p in await store.command("SMEMBERS", IndexKeys(store.namespace).pools))


async def event_streams(store: Store) -> dict[str, str]:
    """Every event stream: ``{key: source}`` (each pool's, the models', the OAuth one)."""
    ns = store.namespace
    streams = {PoolKeys(ns, p).events: p for p in await _providers(store)}
    streams[ModelKeys(ns).events] = "models"
    streams[OAuthKeys(ns).events] = "oauth"
    return streams


async def recent_events(store: Store, limit: int = 20, types: Iterable[str] = ()) -> list[Event]:
    """The ``limit`` newest events of every stream (of the given ``types``), oldest first."""
    wanted = set(types)
    found: list[Event] = []
    for key, source in (await event_streams(store)).items():
        # A filter may skip many entries: read a bounded window more than asked for.
        count = limit * 10 if wanted else limit
        entries = await store.command("XREVRANGE", key, "+", "-", "COUNT", count)
        for stream_id, fields in entries or []:
            event = Event.from_stream(source, str(stream_id), _text_fields(fields))
            found.extend(e for e in event.expand() if not wanted or e.type in wanted)
    found.sort(key=lambda e: (e.ts_ms, e.stream_id or ""))
    return found[-limit:] if limit > 0 else found


def _text_fields(fields: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    if isinstance(fields, dict):
        return {str(k): str(v) for k, v in fields.items()}
    return {str(k): str(v) for k, v in zip(fields[0::2], fields[1::2], strict=True)}
