"""Contract tests: hand-edited pool keys stay contained (issue 15 §5) and pool input is
validated (§9). Each case names what an operator did with redis-cli, or what a caller passed."""

from __future__ import annotations

import math

import pytest

from coordinator import (
    AuthConfig,
    ConfigError,
    CooldownPolicy,
    CorruptStateError,
    NoProfileAvailableError,
    Store,
)
from coordinator.testing import hold_time

from .helpers import MINUTE_MS, add_keys, manager_for


async def test_a_garbage_rotation_counter_never_stops_picks(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 3)
    keys = manager._keys("openai")
    assert [(await manager.get_next_profile("openai")).id for _ in range(2)] == ["key-0", "key-1"]  # type: ignore[union-attr]
    await store.client.hset(keys.meta, "seq", "abc")
    # The counter restarts past the highest rotation sequence: the order goes on as it was.
    picks = [(await manager.get_next_profile("openai")).id for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["key-2", "key-0", "key-1", "key-2"]
    assert (await store.client.hget(keys.meta, "seq")).isdigit()
    await store.client.hset(keys.meta, mapping={"seq": "9223372036854775807", "gen": "x"})
    assert await manager.get_next_profile("openai") is not None  # (HINCRBY would overflow)
    await add_keys(manager, 1, prefix="new")
    gen = await store.client.hget(keys.state, "new-0:gen")
    assert int(gen) > 3  # a generation no profile of this pool had before
    assert (await manager.export_state())["pools"]["openai"]["meta"]["seq"] > 0
    await manager.close()


async def test_a_cooldown_set_to_infinity_benches_until_cleared(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    keys = manager._keys("openai")
    await store.client.zadd(keys.cooling, {"key-0": math.inf, "key-1|gpt-x": math.inf})
    # Picks skip it although it was still in the rotation, and give no retry hint for it.
    assert [(await manager.get_next_profile("openai")).id for _ in range(3)] == ["key-1"] * 3  # type: ignore[union-attr]
    assert await manager.get_next_profile("openai", model="gpt-x") is None
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai", model="gpt-x")
    assert info.value.retry_in_ms is None
    status = {s.id: s for s in await manager.get_status()}
    benched = status["key-0"]
    assert benched.until_cleared and benched.in_cooldown and not benched.healthy
    assert benched.cooldown_until_ms is None and status["key-1"].model_cooldowns == {"gpt-x": -1}
    # A failure is counted and recorded; the deadline stays; nothing blames Redis.
    result = await manager.mark_failed("key-0", "500", kind="server")
    assert (result.status, result.until_ms, result.failures) == ("cooling", None, 1)
    assert (
        await manager.mark_failed("key-1", "429", kind="rate_limit", model="gpt-x")
    ).until_ms is None
    # An export carries it and imports back as it was.
    snapshot = await manager.export_state()
    assert ["key-0", "+inf"] in snapshot["pools"]["openai"]["cooling"]
    assert await manager.import_state(snapshot) == 2
    assert {s.id: s.until_cleared for s in await manager.get_status()}["key-0"] is True
    assert await manager.clear_cooldown("key-0") is True
    assert await manager.clear_cooldown("key-1") is True
    picks = {(await manager.get_next_profile("openai", model="gpt-x")).id for _ in range(2)}  # type: ignore[union-attr]
    assert picks == {"key-0", "key-1"}
    await manager.close()


async def test_a_key_of_the_wrong_type_is_named_and_contained(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    await add_keys(manager, 1, provider="anthropic", prefix="claude")
    keys = manager._keys("openai")
    await store.client.delete(keys.state)
    await store.client.set(keys.state, "hand-written")
    with pytest.raises(CorruptStateError) as info:
        await manager.get_next_profile("openai")
    assert info.value.subject == keys.state and "string" in str(info.value)
    with pytest.raises(CorruptStateError):
        await manager.get_status("openai")
    # The other pools keep working, and the status of all pools leaves the broken one out.
    assert [s.id for s in await manager.get_status()] == ["claude-0"]
    assert (await manager.get_next_profile("anthropic")) is not None
    # Deleting the key repairs the pool (its counters are lost, nothing else).
    await store.client.delete(keys.state)
    assert (await manager.get_next_profile("openai")) is not None


async def test_a_failure_report_writes_nothing_when_a_key_it_writes_is_broken(
    store: Store,
) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    keys = manager._keys("openai")
    await store.client.delete(keys.events)
    await store.client.set(keys.events, "hand-written")
    with pytest.raises(CorruptStateError) as info:
        await manager.mark_failed("key-0", "500", kind="server")
    assert info.value.subject == keys.events
    assert await store.client.hgetall(keys.state) == {"key-0:gen": "1"}
    assert await store.client.zcard(keys.cooling) == 0
    assert await store.client.zscore(keys.ready, "key-0") is not None
    await store.client.delete(keys.events)
    assert (await manager.mark_failed("key-0", "500", kind="server")).duration_ms == MINUTE_MS


async def test_pool_input_out_of_range_is_a_config_error(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    with pytest.raises(ConfigError) as info:
        await manager.acquire("openai", wait_s=math.nan)
    assert info.value.field == "wait_s"
    for settings, field in [
        ({"session_ttl_s": 1e20}, "session_ttl_s"),
        ({"failure_window_ms": 1e300}, "failure_window_ms"),
        ({"cooldown": {"base_ms": 1e300}}, "base_ms"),
        ({"cooldown": {"multiplier": 1e300}}, "multiplier"),
    ]:
        with pytest.raises(ConfigError) as info:
            AuthConfig.from_mapping(settings)
        assert info.value.field == field, settings
    with pytest.raises(ConfigError):
        CooldownPolicy(base_ms=1e300, multiplier=2, cap_ms=1e300)  # type: ignore[arg-type]
    long_model = "m" * 257
    for call in (
        manager.get_next_profile("openai", model=long_model),
        manager.mark_failed("key-0", "x", kind="rate_limit", model=long_model),
        manager.mark_success("key-0", model="two words"),
        manager.get_next_profile("openai", exclude="key-0"),
    ):
        with pytest.raises(ConfigError):
            await call
    assert (await manager.get_next_profile("openai", model="m" * 256)) is not None


async def test_a_session_key_lives_as_long_as_its_binding(store: Store) -> None:
    manager = manager_for(store, session_ttl_s=30)
    await add_keys(manager, 1)
    await manager.get_next_profile("openai", session_id="chat")
    ttl = await store.client.pttl(manager._keys("openai").session("chat"))
    assert 29_000 < ttl <= 30_000


async def test_a_pool_key_of_any_shape_echoed_in_an_error_is_never_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither key looks like a token, so only knowing the keys can remove them.
    from coordinator import AuthProfile

    monkeypatch.setenv("TEAM_B_KEY", "OtherPlainKey7")
    manager = manager_for(store)
    await manager.add_profile(AuthProfile(id="team-a", provider="openai", api_key="PlainAbc12Zq9."))
    await manager.add_profile(AuthProfile(id="team-b", provider="openai", api_key_env="TEAM_B_KEY"))
    assert {(await manager.get_next_profile("openai")).id for _ in range(2)} == {"team-a", "team-b"}  # type: ignore[union-attr]
    text = "Incorrect API key provided: PlainAbc12Zq9. (also tried OtherPlainKey7)"
    await manager.mark_failed("team-a", text, kind="auth")
    await manager.mark_failed("team-b", ValueError(text), kind="auth")
    keys = manager._keys("openai")
    stored = [
        str(await store.client.hgetall(keys.state)),
        str(await store.client.xrange(keys.events)),
        str(await manager.get_status()),
        str(await manager.export_state()),
    ]
    assert all("PlainAbc12Zq9" not in s and "OtherPlainKey7" not in s for s in stored)
    status = {s.id: s for s in await manager.get_status()}
    assert status["team-a"].last_error == "Incorrect API key provided: **** (also tried ****)"
    await manager.close()


async def test_a_definition_only_the_client_rejects_is_named_in_the_status(store: Store) -> None:
    import orjson

    manager = manager_for(store)
    await add_keys(manager, 3)
    keys = manager._keys("openai")
    raw = orjson.loads(await store.client.hget(keys.profiles, "key-1"))
    raw["credential"]["kind"] = "secrte"  # misspelt
    await store.client.hset(keys.profiles, "key-1", orjson.dumps(raw).decode())
    del raw["id"]
    await store.client.hset(keys.profiles, "key-2", orjson.dumps(raw).decode())
    picks = {(await manager.get_next_profile("openai")).id for _ in range(3)}  # type: ignore[union-attr]
    assert picks == {"key-0"}
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].healthy and status["key-0"].broken_field is None
    assert (status["key-1"].healthy, status["key-1"].broken_field) == (False, "credential.kind")
    assert (status["key-2"].healthy, status["key-2"].broken_field) == (False, "definition")
    # Adding the profile again repairs it.
    await add_keys(manager, 3)
    assert all(s.healthy for s in await manager.get_status())


async def test_an_import_holding_numbers_too_large_for_a_score_reads_them_as_infinite(
    store: Store,
) -> None:
    # A snapshot edited by hand (or written by another tool): scores and counters past what a
    # sorted set or JSON holds are neither a raw OverflowError nor a TypeError.
    manager = manager_for(store)
    await add_keys(manager, 3)
    snapshot = await manager.export_state()
    pool = snapshot["pools"]["openai"]
    pool["ready"] = [["key-0", 10**300], ["key-1", 1e300], ["key-2", -(10**20)]]
    pool["cooling"] = [["key-0", 10**30]]
    pool["meta"] = {"seq": 10**30, "gen": -1}
    assert await manager.import_state(snapshot) == 3
    again = (await manager.export_state())["pools"]["openai"]
    assert again["ready"] == [["key-2", "-inf"], ["key-0", "+inf"], ["key-1", "+inf"]]
    assert again["cooling"] == [["key-0", "+inf"]]
    # key-0 is benched; key-1, last in the rotation, waits behind key-2 (seq imported as 0:
    # the pick restarts it), which every pick moves to the end of the places it hands out.
    picks = [(await manager.get_next_profile("openai")).id for _ in range(3)]  # type: ignore[union-attr]
    assert picks == ["key-2"] * 3
    assert (await manager.get_next_profile("openai", exclude=["key-2"])).id == "key-1"  # type: ignore[union-attr]
    assert (await manager.export_state())["pools"]["openai"]["meta"]["seq"] == 4
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].until_cleared and status["key-1"].healthy
    await manager.close()


async def test_a_cooling_entry_of_no_profile_is_no_reason_to_wait(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    keys = manager._keys("openai")
    now = await hold_time(store)
    await store.client.zadd(keys.cooling, {"ghost": now + MINUTE_MS})
    await manager.mark_failed("key-0", "HTTP 402", kind="billing")
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai")
    # key-0's own cooldown (5 h) is the soonest recovery, not the ghost's earlier deadline.
    assert info.value.retry_in_ms == 5 * 60 * MINUTE_MS
    await manager.close()


@pytest.mark.parametrize("place", ["+inf", "-inf", "2.5"])
async def test_a_place_in_the_rotation_set_by_hand_travels_and_clearing_makes_it_ordinary(
    store: Store, place: str
) -> None:
    manager = manager_for(store)
    await add_keys(manager, 3)
    keys = manager._keys("openai")
    await store.command("ZADD", keys.ready, place, "key-0")
    snapshot = await manager.export_state()
    exported = dict(snapshot["pools"]["openai"]["ready"])["key-0"]
    assert exported == (2.5 if place == "2.5" else place)
    assert await manager.import_state(snapshot) == 3
    assert await store.client.zscore(keys.ready, "key-0") == float(place)
    assert all(s.healthy for s in await manager.get_status())  # a place, not damage
    assert await manager.clear_cooldown("key-0") is False
    # An ordinary place at the end: a whole sequence past every other.
    ready = await store.client.zrange(keys.ready, 0, -1, withscores=True)
    assert ready[-1][0] == "key-0" and ready[-1][1] == int(ready[-1][1]) > ready[-2][1]
    picks = [(await manager.get_next_profile("openai")).id for _ in range(3)]  # type: ignore[union-attr]
    assert picks == ["key-1", "key-2", "key-0"]
    await manager.close()
