"""Builders shared by the model profile tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from coordinator import Event, Store, connect
from coordinator.models.config import BreakerConfig, ModelConfig
from coordinator.models.manager import ModelProfileManager
from coordinator.models.types import ModelAuth, ModelProfile
from coordinator.store.keys import ModelKeys

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS


def clock_sleeper(store: Store) -> Callable[[float], Awaitable[None]]:
    """A ``sleep`` that moves the store's clock instead of waiting."""

    async def sleep(seconds: float) -> None:
        store.time_offset_ms += int(seconds * 1000) + 1

    return sleep


def spy_on_scripts(store: Store, record: Callable[[str, Any, Any], object]) -> None:
    """Make ``store`` call ``record(name, keys, args)`` for every script it runs (to count
    round trips and arguments)."""
    original = store.run

    async def spying(name: str, keys: Any, args: Any) -> Any:
        record(name, keys, args)
        return await original(name, keys, args)

    store.run = spying  # type: ignore[method-assign]


def model_manager(store: Store, **settings: Any) -> ModelProfileManager:
    """A manager on ``store``; ``breaker=`` takes a dict of BreakerConfig fields."""
    breaker = BreakerConfig(**settings.pop("breaker", {}))
    config = ModelConfig(breaker=breaker, **settings)
    return ModelProfileManager(store, config, sleep=clock_sleeper(store))


def profile(
    pid: str,
    priority: int,
    models: tuple[str, ...] = ("*",),
    *,
    base_url: str = "http://127.0.0.1:9/v1",
    auth: ModelAuth | None = None,
    **extra: Any,
) -> ModelProfile:
    """A model profile without credential (unless ``auth`` is given)."""
    return ModelProfile(
        id=pid,
        provider=extra.pop("provider", pid),
        auth=auth or ModelAuth.none(),
        base_url=base_url,
        models=models,
        priority=priority,
        **extra,
    )


async def add_three(manager: ModelProfileManager) -> None:
    """primary (100), secondary (90), tertiary (80), all serving every model."""
    await manager.add_profile(profile("primary", 100))
    await manager.add_profile(profile("secondary", 90))
    await manager.add_profile(profile("tertiary", 80))


async def stream_entries(store: Store) -> list[tuple[str, dict[str, str]]]:
    """The raw entries of the {models} stream: (entry id, fields)."""
    entries = await store.command("XRANGE", ModelKeys(store.namespace).events, "-", "+")
    return [
        (
            entry_id,
            dict(zip(fields[0::2], fields[1::2], strict=True))
            if isinstance(fields, list)
            else fields,
        )
        for entry_id, fields in entries
    ]


async def events(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """Every event of the {models} stream as subscribers get them: (type, profile, data)."""
    out = []
    for entry_id, fields in await stream_entries(store):
        for event in Event.from_stream("models", entry_id, fields).expand():
            out.append((event.type, event.profile_id, event.data))
    return out


async def event_types(store: Store, profile_id: str | None = None) -> list[str]:
    """The event types in order (of one profile)."""
    return [t for t, p, _ in await events(store) if profile_id is None or p == profile_id]


_TEXT_FIELDS = ("state", "window", "last_error", "last_error_kind")


async def breaker_fields(store: Store, profile_id: str) -> dict[str, str]:
    """The stored fields of a profile's breaker, as an operator reads them with HGETALL:
    ``<id>:<name>`` -> text, returned as name -> text."""
    raw = await store.command("HGETALL", ModelKeys(store.namespace).breakers)
    pairs = zip(raw[0::2], raw[1::2], strict=True) if isinstance(raw, list) else raw.items()
    out: dict[str, str] = {}
    for name, value in pairs:
        owner, _, field_name = str(name).rpartition(":")
        if owner == profile_id:
            out[field_name] = str(value)
    return out


async def breaker(store: Store, profile_id: str) -> dict[str, Any]:
    """The breaker's stored fields, typed: numbers as int, ``streak`` a list of ms, ``permits``
    a dict token -> expiry ms ({} when the profile has no breaker fields)."""
    out: dict[str, Any] = {}
    for name, text in (await breaker_fields(store, profile_id)).items():
        if name in _TEXT_FIELDS:
            out[name] = text
        elif name == "streak":
            out[name] = [int(t) for t in text.split()]
        elif name == "permits":
            out[name] = {t: int(ms) for t, _, ms in (w.partition("=") for w in text.split())}
        else:
            out[name] = int(text)
    if out:  # absent fields have their defaults (see _model.lua)
        defaults = {"state": "closed", "epoch": 0, "window": "", "streak": [], "permits": {}}
        out = defaults | out
    return out


async def set_breaker(store: Store, profile_id: str, **fields: Any) -> None:
    """Write a breaker by hand: replace every field of the profile's breaker with ``fields``
    (texts as given; lists joined with spaces, dicts as ``token=ms`` words)."""
    key = ModelKeys(store.namespace).breakers
    for name in await breaker_fields(store, profile_id):
        await store.command("HDEL", key, f"{profile_id}:{name}")
    for name, value in fields.items():
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = " ".join(f"{t}={ms}" for t, ms in value.items())
        await store.command("HSET", key, f"{profile_id}:{name}", str(value))


async def fail(manager: ModelProfileManager, times: int, pid: str = "primary") -> None:
    """Select ``pid`` (as the top choice) and report a server failure, ``times`` times."""
    for _ in range(times):
        sel = await manager.select_profile()
        assert sel is not None and sel.profile_id == pid
        await manager.record_failure(sel, "server", error="500 from test")


async def succeed(manager: ModelProfileManager, times: int, pid: str = "primary") -> None:
    """Select ``pid`` (as the top choice) and report a success, ``times`` times."""
    for _ in range(times):
        sel = await manager.select_profile()
        assert sel is not None and sel.profile_id == pid
        await manager.record_success(sel)


async def second_replica(store: Store, backend_url: str, secret_key: str) -> Store:
    """Another store on the same data: its own connection (the embedded backend lives in this
    process, so there it shares the client) and its own clock offset, copied from ``store``."""
    if store.backend == "memory":
        other = Store(
            store.client, backend="memory", url=backend_url, namespace=store.namespace,
            box=store.box,
        )  # fmt: skip
    else:
        other = await connect(backend_url, namespace=store.namespace, secret_key=secret_key)
    other.time_offset_ms = store.time_offset_ms
    return other


async def server_now_ms(store: Store) -> int:
    """The scripts' clock now: Redis ``TIME`` in ms plus the store's test offset."""
    seconds, micros = await store.command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000 + store.time_offset_ms
