"""A failover report writes its failure and the failover as one stream entry (one XADD fewer on
the hop), delivered as two events in the order they happened."""

from __future__ import annotations

import orjson

from coordinator import Event, Store

from .model_helpers import add_three, events, model_manager, stream_entries


async def _raw_types(store: Store) -> list[str]:
    return [fields["type"] for _id, fields in await stream_entries(store)]


async def test_a_failover_rides_in_the_failure_entry(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None
    before = len(await _raw_types(store))
    nxt = await manager.get_next_available_profile(sel, error="boom", kind="server")
    assert nxt is not None and nxt.profile_id == "secondary"
    assert (await _raw_types(store))[before:] == ["profile:failure"]
    delivered = [(t, p) for t, p, _ in await events(store)][-2:]
    assert delivered == [("profile:failure", "primary"), ("profile:failover", "primary")]
    failure, failover = [d for _, _, d in await events(store)][-2:]
    assert "failover" not in failure and failure["kind"] == "server"
    assert failover == {
        "from": "primary", "to": "secondary", "model": nxt.model or "", "kind": "server",
        "reason": "failover",
    }  # fmt: skip


async def test_events_of_the_pick_keep_their_order(store: Store) -> None:
    # The failure opens primary's breaker and secondary's turns half-open during the pick:
    # every event is written in the order it happened, the held failure first.
    manager = model_manager(
        store, breaker={"failure_threshold": 1, "reset_timeout_ms": 1000, "max_open_ms": 1000}
    )
    await add_three(manager)
    await manager.record_failure("secondary", "server", error="down")
    store.time_offset_ms += 2_000
    sel = await manager.select_profile(exclude=["secondary"])
    assert sel is not None and sel.profile_id == "primary"
    before = len(await events(store))
    nxt = await manager.get_next_available_profile(sel, kind="timeout")
    assert nxt is not None and (nxt.profile_id, nxt.reason) == ("secondary", "testing")
    after = [(t, p) for t, p, _ in await events(store)][before:]
    assert after == [
        ("profile:failure", "primary"),
        ("profile:circuit-opened", "primary"),
        ("profile:circuit-half-open", "secondary"),
        ("profile:failover", "primary"),
    ]


def test_an_entry_without_a_failover_is_one_event() -> None:
    fields = {"type": "profile:failure", "profile": "p", "ts": "5", "data": '{"kind":"server"}'}
    assert [e.type for e in Event.from_stream("models", "1-0", fields).expand()] == [
        "profile:failure"
    ]
    odd = {**fields, "data": orjson.dumps({"failover": "garbage"}).decode()}
    assert len(Event.from_stream("models", "1-0", odd).expand()) == 1
