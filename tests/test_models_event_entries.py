"""Every model event is its own stream entry, in the order it happened; entries written by
earlier versions (a failure carrying its failover) are still delivered as two events."""

from __future__ import annotations

import orjson

from coordinator import Event, Store

from .model_helpers import add_three, events, model_manager, stream_entries


async def _raw_types(store: Store) -> list[str]:
    return [fields["type"] for _id, fields in await stream_entries(store)]


async def test_a_failover_is_its_own_entry_after_the_failure(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None
    before = len(await _raw_types(store))
    nxt = await manager.get_next_available_profile(sel, error="boom", kind="server")
    assert nxt is not None and nxt.profile_id == "secondary"
    assert (await _raw_types(store))[before:] == ["profile:failure", "profile:failover"]
    failure, failover = [d for _, _, d in await events(store)][-2:]
    assert "failover" not in failure and failure["kind"] == "server"
    assert failover == {
        "from": "primary", "to": "secondary", "model": nxt.model or "", "kind": "server",
        "reason": "failover",
    }  # fmt: skip


async def test_events_of_the_pick_keep_their_order(store: Store) -> None:
    # The failure opens primary's breaker and secondary's turns half-open during the pick:
    # every event is written in the order it happened.
    manager = model_manager(
        store, breaker={"failure_threshold": 1, "reset_timeout_ms": 1000, "max_open_ms": 1000}
    )
    await add_three(manager)
    await manager.record_failure("secondary", "server", error="down")
    store.time_offset_ms += 2_000
    sel = await manager.select_profile(exclude=["secondary"])
    assert sel is not None and sel.profile_id == "primary"
    before = len(await _raw_types(store))
    nxt = await manager.get_next_available_profile(sel, kind="timeout")
    assert nxt is not None and (nxt.profile_id, nxt.reason) == ("secondary", "testing")
    after = [(fields["type"], fields["profile"]) for _, fields in await stream_entries(store)]
    assert after[before:] == [
        ("profile:failure", "primary"),
        ("profile:circuit-opened", "primary"),
        ("profile:circuit-half-open", "secondary"),
        ("profile:failover", "primary"),
    ]


def test_an_entry_of_an_earlier_version_with_a_failover_is_two_events() -> None:
    failover = {"from": "p", "to": "q", "model": "m", "kind": "server", "reason": "failover"}
    merged = {
        "type": "profile:failure", "profile": "p", "ts": "5",
        "data": orjson.dumps({"kind": "server", "failover": failover}).decode(),
    }  # fmt: skip
    delivered = Event.from_stream("models", "1-0", merged).expand()
    assert [(e.type, e.data) for e in delivered] == [
        ("profile:failure", {"kind": "server"}),
        ("profile:failover", failover),
    ]


def test_an_entry_without_a_failover_is_one_event() -> None:
    fields = {"type": "profile:failure", "profile": "p", "ts": "5", "data": '{"kind":"server"}'}
    assert [e.type for e in Event.from_stream("models", "1-0", fields).expand()] == [
        "profile:failure"
    ]
    odd = {**fields, "data": orjson.dumps({"failover": "garbage"}).decode()}
    assert len(Event.from_stream("models", "1-0", odd).expand()) == 1
