"""Contract tests: a {models} key of the wrong type (a hand edit) is found before a script
writes anything (issue 15 §5: Redis does not roll back a script that fails halfway).

For every key and every operation that may write: the operation raises a
:class:`CorruptStateError` naming the key when it touches that key, and then no key changed
(compared by DUMP); an operation that does not touch the key works. The repair the operations
guide names (DEL of the key; profiles lost with it added again) restores service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from coordinator import CorruptStateError, Store
from coordinator.models.manager import ModelProfileManager
from coordinator.store.keys import ModelKeys
from coordinator.testing import advance_time, hold_time

from .model_helpers import add_three, fail, model_manager

SESSION = "sess-1"
EVERY_KEY = ("profiles", "breakers", "events", "ranked", "meta")
ALL_AND_SESSION = (*EVERY_KEY, "session")
Operation = Callable[[ModelProfileManager], Awaitable[object]]

# Each operation that may write, the keys it touches on the state _with_work_due() makes, and
# how it is called.
OPERATIONS: dict[str, tuple[tuple[str, ...], Operation]] = {
    # primary's breaker is due to half-open: the selection writes (transition, probe permit)
    "select": (EVERY_KEY, lambda m: m.select_profile()),
    # the session's profile is kept: only the session key is written, after it was read
    "select, sticky": (
        ("profiles", "breakers", "ranked", "session"),
        lambda m: m.select_profile(session_id=SESSION),
    ),
    "record_failure": (EVERY_KEY, lambda m: m.record_failure("tertiary", "server", error="500")),
    "record_success": (EVERY_KEY, lambda m: m.record_success("tertiary")),  # (its window)
    "failover": (
        ALL_AND_SESSION,
        lambda m: m.get_next_available_profile(
            "secondary", error="500", kind="server", session_id=SESSION
        ),
    ),
    "status": (EVERY_KEY, lambda m: m.get_status()),
    "reset_breaker": (EVERY_KEY, lambda m: m.reset_breaker("primary")),
    "close_breaker": (EVERY_KEY, lambda m: m.close_breaker("primary")),
    "open_breaker": (EVERY_KEY, lambda m: m.open_breaker("tertiary", for_s=30)),
    # only the session key: a release touches nothing else
    "release_session": (("session",), lambda m: m.release_session(SESSION)),
    "disable_profile": (EVERY_KEY, lambda m: m.disable_profile("tertiary")),
    "add_profile": (EVERY_KEY, add_three),
    "remove_profile": (EVERY_KEY, lambda m: m.remove_profile("tertiary")),
}


def _key(store: Store, name: str) -> str:
    keys = ModelKeys(store.namespace)
    return keys.session(SESSION) if name == "session" else str(getattr(keys, name))


async def _with_work_due(store: Store) -> ModelProfileManager:
    """primary (open, due to half-open), secondary (bound to a session), tertiary (closed)."""
    manager = model_manager(store)
    await add_three(manager)
    await hold_time(store)
    await fail(manager, 3)  # (the default failure_threshold) primary opens for 60 s
    sticky = await manager.select_profile(session_id=SESSION)
    assert sticky is not None and sticky.profile_id == "secondary"
    advance_time(store, 60_000)
    return manager


async def _dump(store: Store, keys: list[str]) -> dict[str, object]:
    return {key: await store.client.dump(key) for key in keys}


async def _corrupt(store: Store, key: str, name: str) -> None:
    await store.command("DEL", key)
    if name == "session":
        await store.command("HSET", key, "hand", "written")  # a session is a string
    else:
        await store.command("SET", key, "hand-written")


@pytest.mark.parametrize("name", ALL_AND_SESSION)
async def test_a_models_key_of_the_wrong_type_is_refused_before_anything_is_written(
    store: Store, name: str
) -> None:
    key = _key(store, name)
    everything = [_key(store, n) for n in ALL_AND_SESSION]
    for operation, (touched, call) in OPERATIONS.items():
        manager = await _with_work_due(store)
        await _corrupt(store, key, name)
        before = await _dump(store, everything)
        if name in touched:
            with pytest.raises(CorruptStateError) as info:
                await call(manager)
            assert info.value.subject == key, operation
            assert await _dump(store, everything) == before, f"{operation} wrote before failing"
        else:
            await call(manager)  # it never touches this key: it works
        # The repair: delete the key; add the profiles again (a no-op unless they were lost).
        await store.command("DEL", key)
        await add_three(manager)
        selection = await manager.select_profile()
        assert selection is not None, operation
        assert await manager.get_status()
        for each in everything:
            await store.command("DEL", each)


async def test_a_garbage_probe_counter_never_stops_probes(store: Store) -> None:
    manager = await _with_work_due(store)
    await store.command("HSET", _key(store, "meta"), "probe_seq", "abc")
    probe = await manager.select_profile()  # primary is due to half-open
    assert probe is not None and probe.reason == "testing"
    assert int(await store.command("HGET", _key(store, "meta"), "probe_seq")) > 0
    await manager.record_success(probe)
    assert (await manager.select_profile()).reason == "primary"  # type: ignore[union-attr]
