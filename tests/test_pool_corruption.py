"""Contract tests: a pool key of the wrong type (a hand edit) is found before a script writes
anything (issue 15 §5: Redis does not roll back a script that fails halfway).

For every key of a pool and every operation that writes: the operation raises a
:class:`CorruptStateError` naming the key when it touches that key, and then no key of the pool
changed (compared by DUMP); an operation that does not touch the key works. The other pools
keep working, and the repair the operations guide names restores service."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest

from coordinator import AuthProfile, AuthProfileManager, CorruptStateError, ProfileStatus, Store
from coordinator.store.keys import PoolKeys
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


# -- values edited by hand: scores and members of the pool's sorted sets, the counters --------
#
# A pool of key-0, key-1 and key-2 (rotation in that order), then an operator's redis-cli
# edit. For each: what the status shows, what the next four picks are, that every other
# operation works on it (export, import, reports, clear_cooldown: no OverflowError, no
# StoreUnavailableError, an export JSON can hold), and that the repair the guides give
# restores a fair rotation. "{ready}" and the like name the pool's keys; "{ranked:key-0}" the
# priority-index entry of key-0.

# A status row that is not plain healthy: (healthy, in_cooldown, until_cleared, broken_field,
# model_cooldowns).
Row = tuple[bool, bool, bool, str | None, dict[str, int]]
HEALTHY: Row = (True, False, False, None, {})
BENCHED: Row = (False, True, True, None, {})


@dataclass(frozen=True)
class HandEdit:
    """A hand edit, what it shows and does, and the documented repair."""

    edit: tuple[tuple[str, ...], ...]
    picks: tuple[str, ...]
    shown: dict[str, Row] = field(default_factory=dict)
    repair: tuple[tuple[str, ...], ...] = ()  # commands, or ("clear_cooldown", id)
    priority_picks: tuple[str, ...] | None = None  # when the priority strategy differs
    benched: bool = False  # key-0 is benched until cleared: a failure keeps no deadline
    passed_over_by_priority: bool = False  # priority picks may pass key-0 over until repaired


ROTATION = ("key-0", "key-1", "key-2", "key-0")
WITHOUT_KEY_0 = ("key-1", "key-2", "key-1", "key-2")
GHOST: Row = (False, False, False, "definition", {})

HAND_EDITS: dict[str, HandEdit] = {
    # The ready set: a score is a place in the rotation; +inf is the last, -inf the first.
    "ready +inf": HandEdit(
        (("ZADD", "{ready}", "+inf", "key-0"),),
        WITHOUT_KEY_0,
        repair=(("clear_cooldown", "key-0"),),
    ),
    "ready -inf": HandEdit((("ZADD", "{ready}", "-inf", "key-0"),), ROTATION),
    "ready 1e300 (reads as +inf)": HandEdit(
        (("ZADD", "{ready}", "1e300", "key-0"),),
        WITHOUT_KEY_0,
        repair=(("clear_cooldown", "key-0"),),
    ),
    # (The priority index learns of a place edited by hand when a pick reaches the profile's
    # entry: here, after the profile that was ahead of it.)
    "ready between sequences": HandEdit(
        (("ZADD", "{ready}", "2.5", "key-0"),),
        ("key-1", "key-0", "key-2", "key-1"),
        priority_picks=ROTATION,
    ),
    "ready below every sequence": HandEdit(
        (("ZADD", "{ready}", "-5", "key-1"),),
        ("key-1", "key-0", "key-2", "key-1"),
        priority_picks=ROTATION,
    ),
    "ready +inf with a garbage counter": HandEdit(
        (("HSET", "{meta}", "seq", "abc"), ("ZADD", "{ready}", "+inf", "key-0")),
        WITHOUT_KEY_0,
        repair=(("clear_cooldown", "key-0"),),
    ),
    # The rotation counter set back behind the places handed out: the first pick of a profile
    # placed past it restarts it past every place (else that profile would be picked again
    # and again, a hundred times here).
    "rotation counter set back": HandEdit(
        (
            ("ZADD", "{ready}", "100", "key-0", "101", "key-1", "102", "key-2"),
            ("HSET", "{meta}", "seq", "1"),
        ),
        ROTATION,
    ),
    # Set back a little: the rotation is uneven for a while (key-0 twice running); deleting
    # the counter, the repair, restarts it past every place at once.
    "rotation counter set back a little": HandEdit(
        (("HSET", "{meta}", "seq", "1"),),
        ("key-0", "key-0", "key-1", "key-0"),
    ),
    "rotation counter set back, then deleted": HandEdit(
        (("HSET", "{meta}", "seq", "1"), ("HDEL", "{meta}", "seq")),
        ROTATION,
    ),
    "rotation counter at 10^15": HandEdit(
        (("HSET", "{meta}", "seq", "1000000000000000"),),
        ROTATION,
    ),
    "ready member that is no profile": HandEdit(
        (("ZADD", "{ready}", "0", "ghost"),),
        ROTATION,
        {"ghost": GHOST},
        repair=(("ZREM", "{ready}", "ghost"),),
    ),
    # The cooling set: a score is a deadline; +inf (and anything from 10^15 on) until cleared.
    "cooling 1e300 (reads as +inf)": HandEdit(
        (("ZADD", "{cooling}", "1e300", "key-0"),),
        WITHOUT_KEY_0,
        {"key-0": BENCHED},
        repair=(("clear_cooldown", "key-0"),),
        benched=True,
    ),
    "cooling -inf (ended)": HandEdit(
        (("ZADD", "{cooling}", "-inf", "key-0"), ("ZREM", "{ready}", "key-0")),
        ("key-1", "key-2", "key-0", "key-1"),
    ),
    "cooling pair 1e300": HandEdit(
        (("ZADD", "{cooling}", "1e300", "key-1|m"),),
        ROTATION,
        {"key-1": (True, False, False, None, {"m": -1})},
        repair=(("clear_cooldown", "key-1"),),
    ),
    "cooling member that is no profile": HandEdit(
        (("ZADD", "{cooling}", "+inf", "ghost"),),
        ROTATION,
        {"ghost": (False, True, True, "definition", {})},
        repair=(("ZREM", "{cooling}", "ghost"),),
    ),
    "cooling pair of no profile": HandEdit(
        (("ZADD", "{cooling}", "1e13", "ghost|m"),),
        ROTATION,
        {"ghost": (False, False, False, "definition", {"m": 1})},
        repair=(("ZREM", "{cooling}", "ghost|m"),),
    ),
    # The priority index: every score is 0; another sorts the entry after all others.
    "ranked score": HandEdit(
        (("ZADD", "{ranked}", "5", "{ranked:key-0}"),),
        ROTATION,
        {"key-0": (False, False, False, "ranked", {})},
        repair=(("clear_cooldown", "key-0"),),
        priority_picks=WITHOUT_KEY_0,
        passed_over_by_priority=True,
    ),
    "ranked member that names nothing": HandEdit(
        (("ZADD", "{ranked}", "0", "0|garbage"),),
        ROTATION,
        repair=(("ZREM", "{ranked}", "0|garbage"),),
    ),
}


async def _expand(store: Store, keys: PoolKeys, arg: str) -> str:
    if not (arg.startswith("{") and arg.endswith("}")):
        return arg
    name, _, pid = arg[1:-1].partition(":")
    if pid:  # the priority-index entry of a profile
        members = await store.client.zrange(keys.ranked, 0, -1)
        return str(next(m for m in members if m.endswith(f"|{pid}")))
    return str(getattr(keys, name))


async def _apply(
    manager: AuthProfileManager, store: Store, commands: tuple[tuple[str, ...], ...]
) -> None:
    keys = manager._keys(PROVIDER)
    for command in commands:
        if command[0] == "clear_cooldown":
            await manager.clear_cooldown(command[1])
            continue
        await store.command(*[await _expand(store, keys, arg) for arg in command])


def _row(status: ProfileStatus) -> Row:
    cooldowns = {m: min(left, 1) for m, left in status.model_cooldowns.items()}  # -1, 0 or 1
    return (
        status.healthy,
        status.in_cooldown,
        status.until_cleared,
        status.broken_field,
        cooldowns,
    )


async def _rows(manager: AuthProfileManager) -> dict[str, Row]:
    """The status rows that are not plain healthy (all three profiles have a row)."""
    statuses = await manager.get_status(PROVIDER)
    assert {"key-0", "key-1", "key-2"} <= {s.id for s in statuses}
    return {s.id: _row(s) for s in statuses if _row(s) != HEALTHY}


@pytest.mark.parametrize("name", HAND_EDITS)
@pytest.mark.parametrize("strategy", ["round-robin", "priority"])
async def test_a_value_edited_by_hand_never_stops_picks_and_is_named(
    store: Store, name: str, strategy: str
) -> None:
    case = HAND_EDITS[name]
    manager = manager_for(store, strategy=strategy)
    await add_keys(manager, 3)
    await hold_time(store)
    await _apply(manager, store, case.edit)
    assert await _rows(manager) == case.shown
    picks = [await _next_id(manager) for _ in range(4)]
    expected = case.priority_picks if strategy == "priority" and case.priority_picks else case.picks
    assert tuple(picks) == expected
    # Every profile that is not benched can still be picked (a standby when the others fail).
    everyone = {"key-0", "key-1", "key-2"}
    passed_over = case.benched or (case.passed_over_by_priority and strategy == "priority")
    for pid in sorted(everyone - ({"key-0"} if passed_over else set())):
        alone = await manager.get_next_profile(PROVIDER, exclude=sorted(everyone - {pid}))
        assert alone is not None and alone.id == pid
    # Every other operation works on the pool as it is.
    snapshot = await manager.export_state()
    assert orjson.loads(orjson.dumps(snapshot)) == snapshot
    assert await manager.import_state(snapshot) == 3
    assert (await manager.mark_failed("key-2", "HTTP 500", kind="server")).duration_ms == 60_000
    assert await manager.mark_success("key-2")
    failed = await manager.mark_failed("key-0", "HTTP 429", kind="rate_limit", model="m")
    assert failed.status == "cooling"
    if case.benched:
        assert (await manager.mark_failed("key-0", "HTTP 500", kind="server")).until_ms is None
    assert await manager.get_profile_for_session(SESSION, PROVIDER) is None
    # The repair the guides give, and the two reports undone: a fair rotation again.
    await _apply(manager, store, case.repair)
    await manager.clear_cooldown("key-2")
    await manager.clear_cooldown("key-0")
    assert await _rows(manager) == {}
    picks = [await _next_id(manager) for _ in range(12)]
    assert Counter(picks) == {"key-0": 4, "key-1": 4, "key-2": 4}, picks
