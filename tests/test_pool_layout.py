"""Contract tests of the pool's Redis layout: flat state fields, one stream entry per event,
corrupt fields contained, and snapshots of the previous format still importing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import orjson

from coordinator import AuthConfig, AuthProfile, AuthProfileManager, Store, connect

from .conftest import unique_namespace
from .helpers import MINUTE_MS, add_keys, manager_for

DATA = Path(__file__).parent / "data"
# The key the format-1 fixture was exported with (a test key, made for this file only): the
# encrypted api_key of team-a decrypts with it.
V1_SECRET_KEY = "IR7satEwlcAfKziU0qZUB8-sNNJMT2NwFn3DYTHwleA"


async def test_state_is_flat_fields_an_operator_reads_with_hgetall(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.mark_failed("key-0", "500", kind="server")
    await manager.mark_failed("key-1", "429", kind="rate_limit", model="gpt:4o")
    keys = manager._keys("openai")
    # Every failure writes the profile's five counters and times (absent: 0) and its last
    # error; a profile-wide one also its cooldown; a model's rate limit the pair's counter.
    counters = ["failures", "billing_failures", "last_failure_ms", "last_billing_ms"]
    history = ["failures_total", "last_error", "last_error_kind", "last_error_ms", "gen"]
    expected = {f"{pid}:{name}" for pid in ("key-0", "key-1") for name in counters + history}
    expected |= {"key-0:cooldown_until_ms", "key-0:cooldown_kind"}
    expected |= {"key-1|gpt:4o:failures", "key-1|gpt:4o:last_failure_ms"}
    assert set(await store.client.hgetall(keys.state)) == expected
    assert await store.client.hget(keys.state, "key-0:cooldown_kind") == "server"
    assert await store.client.hget(keys.state, "key-1|gpt:4o:failures") == "1"
    picked = await manager.get_next_profile("openai")
    assert picked is not None and picked.id == "key-1"
    used = int(await store.client.hget(keys.state, "key-1:last_used_ms"))
    assert {s.id: s for s in await manager.get_status()}["key-1"].last_used_ms == used
    assert set(await store.client.hgetall(keys.meta)) == {"seq", "gen"}
    await manager.close()


async def test_ids_and_models_with_colons_split_on_the_last_colon(
    store: Store, backend_url: str, secret_key: str
) -> None:
    manager = manager_for(store)
    await manager.add_profile(AuthProfile(id="org:a", provider="openai", api_key_env="K"))
    await manager.add_profile(AuthProfile(id="org:a:b", provider="openai", api_key_env="K"))
    await manager.mark_failed("org:a", "500", kind="server")
    await manager.mark_failed("org:a:b", "429", kind="rate_limit", model="m:1")
    pool = (await manager.export_state())["pools"]["openai"]
    assert set(pool["state"]) == {"org:a", "org:a:b"} and set(pool["model_state"]) == {
        "org:a:b|m:1"
    }
    assert pool["state"]["org:a"]["failures"] == "1" and pool["state"]["org:a:b"]["failures"] == "0"
    # Removing org:a leaves every field of org:a:b.
    before = pool["state"]["org:a:b"]
    assert await manager.remove_profile("org:a")
    after = (await manager.export_state())["pools"]["openai"]
    assert set(after["state"]) == {"org:a:b"} and after["state"]["org:a:b"] == before
    await manager.close()


async def test_a_failure_that_starts_a_cooldown_is_two_stream_entries(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    events = manager._keys("openai").events
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    await manager.mark_failed("key-0", "429", kind="rate_limit")  # keeps the running deadline
    entries = [f for _id, f in await store.client.xrange(events) if f["type"] != "profile:added"]
    assert [f["type"] for f in entries] == ["profile:failed", "profile:cooldown", "profile:failed"]
    failed, cooldown = (orjson.loads(f["data"]) for f in entries[:2])
    assert "until_ms" not in failed and failed["kind"] == "rate_limit"
    assert cooldown["duration_ms"] == MINUTE_MS and cooldown["scope"] == "profile"
    assert cooldown["until_ms"] == int(cooldown["duration_ms"]) + int(entries[1]["ts"])
    await manager.close()


async def test_broken_fields_are_named_contained_and_repaired(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.mark_failed("key-0", "500", kind="server")
    await manager.clear_cooldown("key-0")
    keys = manager._keys("openai")
    await store.client.hset(
        keys.state,
        mapping={"key-0:last_error_ms": "-5", "key-0:last_used_ms": "soon", "key-1:failures": "[]"},
    )
    # Selection goes on; status names the first broken field and reads nothing from it.
    picks = {(await manager.get_next_profile("openai")).id for _ in range(2)}  # type: ignore[union-attr]
    assert picks == {"key-0", "key-1"}
    await store.client.hset(keys.state, "key-0:last_used_ms", "soon")
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].broken_field == "last_error_ms" and status["key-0"].last_used_ms is None
    assert status["key-1"].broken_field == "failures" and not status["key-1"].healthy
    exported = (await manager.export_state())["pools"]["openai"]["state"]
    assert exported["key-0"]["last_used_ms"] == "soon"
    # clear_cooldown deletes what is broken and keeps what still reads.
    for pid in ("key-0", "key-1"):
        assert await manager.clear_cooldown(pid) is False
    status = {s.id: s for s in await manager.get_status()}
    assert [status[p].broken_field for p in ("key-0", "key-1")] == [None, None]
    assert status["key-0"].last_error == "500" and status["key-0"].healthy
    await manager.close()


def _v1_snapshot() -> dict[str, Any]:
    return dict(orjson.loads((DATA / "pool_export_v1.json").read_bytes()))


def _status_rows(statuses: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for status in statuses:
        row = dataclasses.asdict(status)
        row.pop("cooldown_remaining_ms")
        assert row.pop("until_cleared") is False  # (a field the format-1 version did not have)
        row["model_cooldowns"] = sorted(row["model_cooldowns"])
        rows.append(row)
    return rows


async def test_an_export_of_format_1_still_imports_with_the_same_state(backend_url: str) -> None:
    """tests/data/pool_export_v1.json was exported by the version with JSON state records;
    pool_export_v1_status.json is what that version's get_status() said after importing it."""
    snapshot = _v1_snapshot()
    assert snapshot["format"] == 1
    store = await connect(backend_url, namespace=unique_namespace(), secret_key=V1_SECRET_KEY)
    try:
        # Redis time as at the export, so that the cooldowns in the file are still running.
        store.time_offset_ms = snapshot["exported_at_ms"] - int(time.time() * 1000)
        config = AuthConfig(strategies={"anthropic": "priority"})
        manager = AuthProfileManager(store, config)
        assert await manager.import_state(snapshot) == 5
        expected = orjson.loads((DATA / "pool_export_v1_status.json").read_bytes())
        by_id = {row["id"]: row for row in _status_rows(await manager.get_status())}
        assert by_id == {row["id"]: row for row in expected}
        secret = (await manager.get_profile("team-a")).secret()
        assert secret is not None and secret.reveal() == "sk-fixture-team-a-0123456789abcdef"
        again = (await manager.export_state())["pools"]["openai"]
        assert again["state"]["team-c"]["last_used_ms"] == "1796225574542"
        assert again["model_state"] == {
            "team-a|gpt-4o": {"failures": "1", "last_failure_ms": "1796225574544"}
        }
        await _behaves_as_the_format_1_version_did(store, manager)
    finally:
        await store.close()


async def _behaves_as_the_format_1_version_did(store: Store, manager: AuthProfileManager) -> None:
    """What the format-1 version answered after importing the same file (recorded with it)."""
    picks = [await manager.get_next_profile("openai") for _ in range(2)]
    assert [p.id for p in picks if p] == ["team-a", "team-a"]
    assert await manager.get_next_profile("openai", model="gpt-4o") is None
    claude = [await manager.get_next_profile("anthropic") for _ in range(2)]
    assert [p.id for p in claude if p] == ["claude-1", "claude-1"]
    duplicate = await manager.mark_failed("team-b", "x", kind="server")
    assert (duplicate.until_ms, duplicate.failures) == (1796225874543, 2)
    store.time_offset_ms += 300_001
    third = await manager.mark_failed("team-b", "x", kind="server")
    assert (third.failures, third.duration_ms) == (3, 25 * MINUTE_MS)
    pair = await manager.mark_failed("team-a", "x", kind="rate_limit", model="gpt-4o")
    assert (pair.failures, pair.duration_ms, pair.scope) == (2, 5 * MINUTE_MS, "model")


async def test_a_generation_deleted_by_hand_ends_stickiness_until_repaired(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    keys = manager._keys("openai")
    first = await manager.get_next_profile("openai", session_id="chat")
    assert first is not None
    bound = await store.client.get(keys.session("chat"))
    assert bound.split("\t")[1] == await store.client.hget(keys.state, f"{first.id}:gen")
    await store.client.hdel(keys.state, f"{first.id}:gen")
    # The binding no longer holds (nothing crashes): the session moves on, as after a removal.
    assert await manager.get_profile_for_session("chat") is None
    moved = await manager.get_next_profile("openai", session_id="chat")
    assert moved is not None and moved.id != first.id
    # clear_cooldown (or an update of the profile) gives it a new generation.
    assert await manager.clear_cooldown(first.id) is False
    gen = await store.client.hget(keys.state, f"{first.id}:gen")
    assert gen is not None and gen not in ("1", "2")
    again = await manager.get_next_profile("openai", session_id="other")
    assert again is not None and again.id == first.id
    for _ in range(2):
        sticky = await manager.get_next_profile("openai", session_id="other")
        assert sticky is not None and sticky.id == first.id
    await manager.close()
