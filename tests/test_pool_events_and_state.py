"""Contract tests: events across replicas, status, corrupt values, snapshots, secrets at rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from coordinator import (
    AuthProfile,
    ConfigError,
    Event,
    Store,
    connect,
)
from coordinator.testing import RedisServer, advance_time

from .conftest import unique_namespace
from .helpers import MINUTE_MS, add_keys, manager_for, wait_until


async def _collect_until(events: list[Event], predicate: Callable[[Event], bool]) -> None:
    await wait_until(lambda: any(predicate(e) for e in events))


async def test_subscribers_on_any_replica_see_every_transition(store: Store) -> None:
    writer, reader = manager_for(store), manager_for(store)
    seen: list[Event] = []
    reader.on("*", seen.append)
    await reader.events.wait_started()
    await add_keys(writer, 2)
    await writer.mark_failed("key-0", "429 for sk-secretsecretsecret1234", kind="rate_limit")
    advance_time(store, MINUTE_MS + 1)
    await writer.get_next_profile("openai")
    await writer.remove_profile("key-1")
    await _collect_until(seen, lambda e: e.type == "profile:removed")
    types = [e.type for e in seen]
    assert types == [
        "profile:added",
        "profile:added",
        "profile:failed",
        "profile:cooldown",
        "profile:recovered",
        "profile:removed",
    ]
    failed = seen[2]
    assert failed.profile_id == "key-0" and failed.source == "openai"
    assert failed.data["kind"] == "rate_limit"
    assert "secretsecret" not in orjson.dumps([e.data for e in seen]).decode()
    await reader.close()


async def test_selected_is_local_only(store: Store) -> None:
    picker, other = manager_for(store), manager_for(store)
    await add_keys(picker, 1)
    local: list[Event] = []
    remote: list[Event] = []
    picker.on("profile:selected", local.append)
    other.on("profile:selected", remote.append)
    await other.events.wait_started()
    await picker.get_next_profile("openai", session_id="s")
    assert [e.profile_id for e in local] == ["key-0"]
    assert local[0].data["session"] == "s"
    # Let the stream reader go past the selection: nothing is written to Redis for it, so
    # the next event the other replica sees is this failure. (Subscribed first: the reader
    # may deliver the failure before mark_failed's own reply is read.)
    seen_other: list[Event] = []
    other.on("*", seen_other.append)
    await picker.mark_failed("key-0", "x", kind="server")
    await _collect_until(seen_other, lambda e: e.type == "profile:cooldown")
    assert remote == []
    await picker.close()
    await other.close()


async def test_async_iterator_yields_events(store: Store) -> None:
    manager = manager_for(store)
    iterator = manager.subscribe("profile:cooldown")
    first = asyncio.ensure_future(iterator.__anext__())
    await manager.events.wait_started()
    await add_keys(manager, 1)
    await manager.mark_failed("key-0", "x", kind="timeout")
    event = await asyncio.wait_for(first, 10)
    assert event.type == "profile:cooldown" and event.data["duration_ms"] == MINUTE_MS
    await iterator.aclose()  # type: ignore[attr-defined]
    await manager.close()


async def test_on_standalone_redis_the_reader_waits_in_redis_not_between_polls(
    redis_server: RedisServer, secret_key: str
) -> None:
    # With a poll interval of a minute, only a reader blocked in XREAD sees an event written
    # after its first (empty) read within the 10 s allowed here; a polling reader would be
    # asleep. (Cluster and the embedded backend poll; the tests above cover them.)
    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    writer, reader = manager_for(store), manager_for(store, event_poll_interval_s=60)
    await add_keys(writer, 1)
    iterator = reader.subscribe("profile:cooldown")
    first = asyncio.ensure_future(iterator.__anext__())
    await reader.events.wait_started()
    await asyncio.sleep(0)  # let the reader issue its first read
    await writer.mark_failed("key-0", "x", kind="server")
    event = await asyncio.wait_for(first, 10)
    assert event.profile_id == "key-0"
    await iterator.aclose()  # type: ignore[attr-defined]
    await reader.close()
    await store.close()


async def test_closing_cancels_again_a_reader_that_swallowed_the_cancellation(
    store: Store,
) -> None:
    # Python 3.11's asyncio.wait_for, which redis-py wraps around every socket write, drops a
    # cancellation that arrives just as the write completes; the reader then goes on into a
    # blocking XREAD. close() must not wait for that read (or hang on a reader that never
    # reads again): it cancels until the task ends.
    manager = manager_for(store)
    cancellations = 0

    async def swallows_one_cancellation() -> None:
        nonlocal cancellations
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancellations += 1
        await asyncio.Event().wait()  # goes on as if nothing happened, until cancelled again

    manager.events._task = asyncio.ensure_future(swallows_one_cancellation())
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(manager.close())
    finished, _ = await asyncio.wait({closing}, timeout=10)
    if not finished:
        closing.cancel()
    assert finished, "close() hung on a reader that swallowed its cancellation"
    assert manager.events._task.done() and cancellations == 1


async def test_status_reports_health_and_masks_secrets(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.get_next_profile("openai")
    await manager.mark_failed(
        "key-1", "Incorrect API key provided: sk-proj-abcdefghijklmnop", kind="auth"
    )
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].healthy and status["key-0"].last_used_ms is not None
    assert status["key-1"].last_used_ms is None
    cooling = status["key-1"]
    assert not cooling.healthy and cooling.in_cooldown and cooling.cooldown_kind == "auth"
    assert 0 < cooling.cooldown_remaining_ms <= MINUTE_MS
    assert cooling.last_error is not None and "abcdefghijklmnop" not in cooling.last_error
    assert cooling.last_error_kind == "auth"


async def test_hand_edited_garbage_never_breaks_selection(store: Store) -> None:
    manager = manager_for(store, strategy="priority")
    await add_keys(manager, 4)
    keys = manager._keys("openai")
    await store.client.hset(keys.state, "key-0:billing_failures", "{not json")
    await store.client.hset(keys.state, "key-1:failures", "many")
    await store.client.hset(keys.profiles, "key-2", '{"id":"key-2","type":"api-key"}')
    await store.client.hset(keys.profiles, "key-3", "garbage")
    # A broken definition is never handed out; broken state fields do not matter to
    # selection (cooldowns live in the cooling sets), so the others keep rotating.
    picks = [(await manager.get_next_profile("openai")).id for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(picks) == ["key-0", "key-0", "key-1", "key-1"]
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].broken_field == "billing_failures" and not status["key-0"].healthy
    assert status["key-1"].broken_field == "failures"
    assert status["key-2"].broken_field == "priority"
    assert status["key-3"].broken_field == "definition"
    # A failure on a broken counter still cools the profile down (the field is replaced).
    seen: list[Event] = []
    manager.on("profile:failed", seen.append)
    await manager.events.wait_started()
    result = await manager.mark_failed("key-1", "x", kind="server")
    assert result.status == "cooling" and result.failures == 1
    await _collect_until(seen, lambda e: e.profile_id == "key-1")
    assert seen[0].data["repaired"] == "failures"
    assert await manager.mark_success("key-0")
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].broken_field is None and status["key-1"].in_cooldown
    assert [(await manager.get_next_profile("openai")).id for _ in range(2)] == ["key-0"] * 2  # type: ignore[union-attr]
    # list_profiles skips the broken definitions instead of failing.
    assert [p.id for p in await manager.list_profiles()] == ["key-0", "key-1"]
    await manager.close()


async def test_round_robin_skips_definitions_that_do_not_parse(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # A plain pick does not decode the definition in Lua (it reads the generation that
    # add_profile appends); one that still fails to parse on the client is skipped there, and
    # one rewritten by hand in another valid shape is decoded and still served.
    manager = manager_for(store)
    await add_keys(manager, 4)
    keys = manager._keys("openai")
    reformatted = orjson.loads(await store.client.hget(keys.profiles, "key-1"))
    await store.client.hset(
        keys.profiles, "key-1", orjson.dumps(reformatted, option=orjson.OPT_INDENT_2).decode()
    )
    bogus = (await store.client.hget(keys.profiles, "key-2")).replace(
        '"kind":"secret"', '"kind":"x"'
    )
    await store.client.hset(keys.profiles, "key-2", bogus)
    await store.client.hset(keys.profiles, "key-3", "garbage")
    picks = [(await manager.get_next_profile("openai")).id for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(picks) == ["key-0", "key-0", "key-1", "key-1"]
    assert "key-2" in caplog.text and "sk-test" not in caplog.text
    # The reformatted definition keeps its generation, so a session bound to it holds.
    sessions = {}
    for n in range(4):
        bound = await manager.get_next_profile("openai", session_id=f"chat-{n}")
        assert bound is not None
        sessions[bound.id] = f"chat-{n}"
    assert "key-1" in sessions
    again = [
        await manager.get_next_profile("openai", session_id=sessions["key-1"]) for _ in range(3)
    ]
    assert [p.id for p in again if p is not None] == ["key-1"] * 3
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-1"].broken_field is None and status["key-3"].broken_field == "definition"


async def test_priority_edited_by_hand_is_reindexed(store: Store) -> None:
    manager = manager_for(store, strategy="priority")
    await add_keys(manager, 2)
    keys = manager._keys("openai")
    raw = orjson.loads(await store.client.hget(keys.profiles, "key-1"))
    raw["priority"] = 99
    await store.client.hset(keys.profiles, "key-1", orjson.dumps(raw).decode())
    picks = [(await manager.get_next_profile("openai")).id for _ in range(3)]  # type: ignore[union-attr]
    assert picks[1:] == ["key-1", "key-1"]


async def test_export_and_import_round_trip(
    store: Store, backend_url: str, secret_key: str
) -> None:
    manager = manager_for(store)
    await add_keys(manager, 3)
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    await manager.mark_failed("key-1", "402", kind="billing")
    await manager.mark_failed("key-2", "429", kind="rate_limit", model="gpt-x")
    await manager.get_next_profile("openai")
    snapshot = await manager.export_state()
    text = orjson.dumps(snapshot).decode()
    assert "sk-test" not in text and snapshot["format"] == 2
    # Pairs share the profiles' hashes and sets in Redis, but the snapshot keeps them apart,
    # and a profile's state is its fields, so that the format does not follow the key layout.
    pool = snapshot["pools"]["openai"]
    assert [entry[0] for entry in pool["model_cooling"]] == ["key-2|gpt-x"]
    assert sorted(pool["cooling"], key=lambda e: e[0])[0][0] == "key-0"
    assert all("|" not in entry[0] for entry in pool["cooling"])
    assert set(pool["model_state"]) == {"key-2|gpt-x"}
    assert set(pool["model_state"]["key-2|gpt-x"]) == {"failures", "last_failure_ms"}
    assert "key-2|gpt-x" not in pool["state"]
    assert pool["state"]["key-0"]["failures"] == "1"
    assert "last_used_ms" in pool["state"]["key-2"] and set(pool["meta"]) == {"seq", "gen"}
    target_store = await connect(backend_url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        target_store.time_offset_ms = store.time_offset_ms
        target = manager_for(target_store)
        assert await target.import_state(snapshot) == 3
        status = {s.id: s for s in await target.get_status()}
        assert status["key-0"].in_cooldown and status["key-0"].failures == 1
        assert status["key-1"].cooldown_kind == "billing" and status["key-1"].billing_failures == 1
        assert status["key-2"].last_used_ms is not None
        assert set(status["key-2"].model_cooldowns) == {"gpt-x"}
        again = await target.export_state()
        assert again["pools"] == snapshot["pools"]
        picked = await target.get_next_profile("openai")
        assert picked is not None and picked.id == "key-2"
        secret = picked.secret()
        assert secret is not None and secret.reveal().startswith("sk-test-openai")
        with pytest.raises(ConfigError):
            await target.import_state({"format": 99})
        bad_field = orjson.loads(orjson.dumps(snapshot))
        bad_field["pools"]["openai"]["state"]["key-0"]["x:y"] = "1"
        with pytest.raises(ConfigError):
            await target.import_state(bad_field)
        assert {s.id: s.failures for s in await target.get_status()}["key-0"] == 1
    finally:
        await target_store.close()


async def test_api_keys_are_encrypted_at_rest(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.get_next_profile("openai", session_id="s")
    await manager.mark_failed("key-0", "bad key sk-test-openai-key-0-0123456789abcdef", kind="auth")
    dump = []
    async for key in store.client.scan_iter(match=f"{store.namespace}:*"):
        kind = await store.client.type(key)
        if kind == "hash":
            dump.append(str(await store.client.hgetall(key)))
        elif kind == "string":
            dump.append(str(await store.client.get(key)))
        elif kind == "stream":
            dump.append(str(await store.client.xrange(key)))
    assert dump and all("sk-test" not in entry for entry in dump)


async def test_a_ciphertext_moved_to_another_profile_does_not_decrypt(store: Store) -> None:
    from coordinator import DecryptionError

    manager = manager_for(store)
    await add_keys(manager, 2)
    keys = manager._keys("openai")
    first = orjson.loads(await store.client.hget(keys.profiles, "key-0"))
    second = orjson.loads(await store.client.hget(keys.profiles, "key-1"))
    second["credential"] = first["credential"]
    await store.client.hset(keys.profiles, "key-1", orjson.dumps(second).decode())
    stolen = (await manager.get_profile("key-1")).secret()
    assert stolen is not None
    with pytest.raises(DecryptionError):
        stolen.reveal()


async def test_invalid_profiles_name_the_field() -> None:
    cases = [
        ({"id": "", "provider": "openai", "api_key": "k"}, "id"),
        ({"id": "a b", "provider": "openai", "api_key": "k"}, "id"),
        ({"id": "a", "provider": "Open AI", "api_key": "k"}, "provider"),
        ({"id": "a", "provider": "openai"}, "credential"),
        ({"id": "a", "provider": "openai", "api_key": "k", "api_key_env": "K"}, "credential"),
        ({"id": "a", "provider": "openai", "type": "token", "api_key": "k"}, "type"),
        ({"id": "a", "provider": "openai", "api_key": "k", "priority": "high"}, "priority"),
        ({"id": "a", "provider": "openai", "api_key_env": "1X"}, "api_key_env"),
        ({"id": "a", "provider": "openai", "type": "oauth", "api_key": "k"}, "oauth_credential_id"),
        (
            {"id": "a", "provider": "openai", "api_key": "k", "metadata": {"x": object()}},
            "metadata",
        ),
        ({"id": "a", "provider": "openai", "api_key": "k", "colour": "red"}, "colour"),
    ]
    for data, field in cases:
        with pytest.raises(ConfigError) as info:
            AuthProfile.from_mapping(data)
        assert info.value.field == field, data


async def test_a_success_resets_counters_and_repairs_unreadable_ones(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    keys = manager._keys("openai")

    async def fields(member: str) -> dict[str, str]:
        everything = await store.client.hgetall(keys.state)
        prefix = f"{member}:"
        return {k[len(prefix) :]: v for k, v in everything.items() if k.startswith(prefix)}

    await manager.mark_failed("key-0", "x", kind="server")
    assert await manager.mark_success("key-0")
    state = await fields("key-0")
    assert (state["failures"], state["billing_failures"], state["failures_total"]) == (
        "0",
        "0",
        "1",
    )
    # A success with a model forgets that pair's counters (its cooldown runs on).
    await manager.mark_failed("key-1", "x", kind="rate_limit", model="m")
    assert await fields("key-1|m") != {}
    assert await manager.mark_success("key-1", model="m")
    assert await fields("key-1|m") == {}
    assert {s.id: s for s in await manager.get_status("openai")}["key-1"].model_cooldowns
    # A success looks at the counters only: a field broken elsewhere is left for a failure
    # (or clear_cooldown) to repair and for the status to name.
    await store.client.hset(keys.state, "key-0:failures_total", "x")
    assert await manager.mark_success("key-0")
    status = {s.id: s for s in await manager.get_status("openai")}["key-0"]
    assert status.broken_field == "failures_total"
    # Counters that are not non-negative finite numbers are reset.
    for garbage in ("x", "-1", "nan", "inf", "1e400", ""):
        await store.client.hset(keys.state, "key-0:failures", garbage)
        await store.client.hset(keys.state, "key-0:billing_failures", garbage)
        assert await manager.mark_success("key-0")
        state = await fields("key-0")
        assert (state["failures"], state["billing_failures"]) == ("0", "0"), garbage
    assert await manager.clear_cooldown("key-0") is True  # still cooling from the failure
    status = {s.id: s for s in await manager.get_status("openai")}["key-0"]
    assert status.broken_field is None and "failures_total" not in await fields("key-0")
    await manager.close()


async def test_a_failure_reads_the_state_fields_as_they_are_now(store: Store) -> None:
    """Counters edited by hand (or written by another operation or version) are what the next
    failure counts from."""
    manager = manager_for(store)
    await add_keys(manager, 1)
    keys = manager._keys("openai")
    first = await manager.mark_failed("key-0", "x", kind="server")
    assert first.failures == 1
    advance_time(store, 2 * MINUTE_MS)  # past the cooldown, within the failure window
    again = await manager.mark_failed("key-0", "x", kind="server")
    assert again.failures == 2
    await store.client.hset(keys.state, mapping={"key-0:failures": 4, "key-0:failures_total": 40})
    advance_time(store, 10 * MINUTE_MS)
    edited = await manager.mark_failed("key-0", "x", kind="server")
    assert edited.failures == 5
    assert await store.client.hget(keys.state, "key-0:failures_total") == "41"
    await manager.close()
