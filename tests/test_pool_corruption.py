"""Contract tests: a pool key of the wrong type (a hand edit) is found before a script writes
anything (issue 15 §5: Redis does not roll back a script that fails halfway).

For every key of a pool and every operation that writes: the operation raises a
:class:`CorruptStateError` naming the key when it touches that key, and then no key of the pool
changed (compared by DUMP); an operation that does not touch the key works. The other pools
keep working, and the repair the operations guide names restores service."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from coordinator import AuthProfile, AuthProfileManager, CorruptStateError, Store
from coordinator.testing import advance_time, hold_time

from .helpers import add_keys, manager_for

PROVIDER = "openai"
SESSION = "sess-1"
EVERY_KEY = ("profiles", "state", "cooling", "ready", "events", "ranked", "meta")
POOL_AND_SESSION = (*EVERY_KEY, "session")
Operation = Callable[[AuthProfileManager], Awaitable[object]]


def _new_profile(manager: AuthProfileManager) -> Awaitable[object]:
    profile = AuthProfile(id="added", provider=PROVIDER, api_key="sk-test-added-0123456789ab")
    return manager.add_profile(profile)


# Each writing operation, the keys it touches (on a pool with work due: a cooldown and a
# (profile, model) cooldown ended, a session bound) and how it is called.
OPERATIONS: dict[str, tuple[tuple[str, ...], Operation]] = {
    "pick": (EVERY_KEY, lambda m: m.get_next_profile(PROVIDER)),
    "pick, sticky": (POOL_AND_SESSION, lambda m: m.get_next_profile(PROVIDER, session_id=SESSION)),
    "pick for a model": (EVERY_KEY, lambda m: m.get_next_profile(PROVIDER, model="m")),
    "session lookup": (POOL_AND_SESSION, lambda m: m.get_profile_for_session(SESSION, PROVIDER)),
    "mark_failed": (
        ("profiles", "state", "cooling", "ready", "events"),
        lambda m: m.mark_failed("key-2", "HTTP 500", kind="server"),
    ),
    "mark_failed for a model": (
        ("profiles", "state", "cooling", "ready", "events"),
        lambda m: m.mark_failed("key-2", "HTTP 429", kind="rate_limit", model="m"),
    ),
    "mark_success": (("profiles", "state"), lambda m: m.mark_success("key-2", model="m")),
    "clear_cooldown": (EVERY_KEY, lambda m: m.clear_cooldown("key-0")),
    "add_profile": (EVERY_KEY, _new_profile),
    "remove_profile": (EVERY_KEY, lambda m: m.remove_profile("key-2")),
}


def _key(manager: AuthProfileManager, name: str) -> str:
    keys = manager._keys(PROVIDER)
    return keys.session(SESSION) if name == "session" else str(getattr(keys, name))


async def _pool_with_work_due(store: Store, strategy: str) -> AuthProfileManager:
    """Three keys; key-0 cooled down and key-1 cooled for model m, both due to recover; a
    session bound to key-2. Another pool (anthropic) beside it."""
    manager = manager_for(store, strategy=strategy)
    await add_keys(manager, 3)
    await add_keys(manager, 1, provider="anthropic", prefix="claude")
    await hold_time(store)
    await manager.mark_failed("key-0", "HTTP 500", kind="server")
    await manager.mark_failed("key-1", "HTTP 429", kind="rate_limit", model="m")
    picked = await manager.get_next_profile(PROVIDER, session_id=SESSION, model="m")
    assert picked is not None and picked.id == "key-2"
    advance_time(store, 60_000)
    return manager


async def _next_id(manager: AuthProfileManager) -> str:
    """The id of the next pick; no pick at all fails the test."""
    picked = await manager.get_next_profile(PROVIDER)
    assert picked is not None, "no profile was picked"
    return picked.id


async def _dump(store: Store, keys: list[str]) -> dict[str, bytes | None]:
    return {key: await store.client.dump(key) for key in keys}


async def _corrupt(store: Store, key: str, name: str) -> None:
    await store.client.delete(key)
    if name == "session":
        await store.client.hset(key, "hand", "written")  # a session is a string
    else:
        await store.client.set(key, "hand-written")


async def _repair(manager: AuthProfileManager, store: Store, name: str, key: str) -> None:
    """The repair the operations guide gives: a session is released; any other key deleted
    (DEL); then the profiles lost with it are added again, and a rotation key (cooling,
    ready, ranked) rebuilt by clear_cooldown of every profile."""
    if name == "session":
        assert await manager.release_session(SESSION, PROVIDER)
        return
    await store.client.delete(key)
    if name == "profiles":
        await add_keys(manager, 3)
    if name in ("cooling", "ready", "ranked"):
        for pid in ("key-0", "key-1", "key-2"):
            await manager.clear_cooldown(pid)


@pytest.mark.parametrize("name", POOL_AND_SESSION)
@pytest.mark.parametrize("strategy", ["round-robin", "priority"])
async def test_a_key_of_the_wrong_type_is_refused_before_anything_is_written(
    store: Store, name: str, strategy: str
) -> None:
    for operation, (touched, call) in OPERATIONS.items():
        manager = await _pool_with_work_due(store, strategy)
        key = _key(manager, name)
        everything = [_key(manager, n) for n in POOL_AND_SESSION]
        everything += manager._keys("anthropic").all_static()
        await _corrupt(store, key, name)
        before = await _dump(store, everything)
        if name in touched:
            with pytest.raises(CorruptStateError) as info:
                await call(manager)
            assert info.value.subject == key, operation
            assert await _dump(store, everything) == before, f"{operation} wrote before failing"
        else:
            await call(manager)  # it never touches this key: it works
        # The other pool keeps working; the repair restores this one.
        assert await manager.get_next_profile("anthropic") is not None, operation
        await _repair(manager, store, name, key)
        picks = Counter([await _next_id(manager) for _ in range(12)])
        # Every ready profile takes its turn as often as the others (a rotation that restarted
        # ahead of the profiles waiting in it would pick one again and again).
        assert set(picks) >= {"key-0", "key-1"} and len(set(picks.values())) == 1, picks
        assert await manager.get_status(PROVIDER)  # (it raised while the key was broken)
        await _forget(store, everything)


async def _forget(store: Store, keys: list[str]) -> None:
    for key in keys:
        await store.client.delete(key)


async def test_a_priority_edited_out_of_range_makes_only_that_definition_broken(
    store: Store,
) -> None:
    manager = manager_for(store, strategy="priority")
    await add_keys(manager, 2)
    keys = manager._keys(PROVIDER)
    raw = await store.client.hget(keys.profiles, "key-0")
    await store.client.hset(keys.profiles, "key-0", raw.replace('"priority":0', '"priority":1e300'))
    assert [await _next_id(manager) for _ in range(3)] == ["key-1"] * 3
    status = {s.id: s for s in await manager.get_status(PROVIDER)}
    assert status["key-0"].broken_field == "priority" and not status["key-0"].healthy
    await manager.mark_failed("key-0", "HTTP 500", kind="server")  # reports still work
    advance_time(store, 60_000)
    assert await _next_id(manager) == "key-1"
    await add_keys(manager, 2)  # the repair: add the profile again
    assert {await _next_id(manager) for _ in range(2)} == {"key-0", "key-1"}
