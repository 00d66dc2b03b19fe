"""Contract tests of the circuit breaker: every transition, on each backend, time advanced."""

from __future__ import annotations

from typing import Any

from coordinator import Store
from coordinator.testing import advance_time

from .model_helpers import (
    MINUTE_MS,
    SECOND_MS,
    add_three,
    breaker,
    breaker_fields,
    event_types,
    events,
    fail,
    model_manager,
    profile,
    second_replica,
    server_now_ms,
    set_breaker,
    succeed,
)

MARGIN = 1000  # ms of real time a test may take between two steps


async def test_consecutive_failures_open_the_breaker_and_selection_fails_over(
    store: Store,
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 2)
    assert (await breaker(store, "primary"))["state"] == "closed"
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary" and sel.reason == "primary"
    result = await manager.record_failure(sel, "timeout", error="timed out")
    assert (result.status, result.state) == ("recorded", "open")
    nxt = await manager.select_profile()
    assert nxt is not None and (nxt.profile_id, nxt.reason) == ("secondary", "failover")
    types = await event_types(store, "primary")
    assert types.count("profile:failure") == 3
    assert types.count("profile:circuit-opened") == 1
    opened = next(d for t, _, d in await events(store) if t == "profile:circuit-opened")
    assert opened["reason"] == "consecutive-failures" and opened["open_ms"] == MINUTE_MS


async def test_a_success_breaks_the_streak(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 2)
    sel = await manager.select_profile()
    assert sel is not None
    await manager.record_success(sel)
    await fail(manager, 2)
    assert (await breaker(store, "primary"))["state"] == "closed"
    await fail(manager, 1)
    assert (await breaker(store, "primary"))["state"] == "open"


async def test_failure_rate_over_the_window_opens_once_min_calls_are_seen(store: Store) -> None:
    manager = model_manager(
        store,
        breaker={"failure_threshold": 100, "window_size": 20, "min_calls": 10,
                 "failure_rate_threshold": 0.5},
    )  # fmt: skip
    await add_three(manager)
    # 9 calls, 6 failures (67 %): fewer than min_calls, so it stays closed.
    for outcome in "FFSFFSFFS":
        sel = await manager.select_profile()
        assert sel is not None and sel.profile_id == "primary"
        if outcome == "F":
            await manager.record_failure(sel, "server")
        else:
            await manager.record_success(sel)
    state = await breaker(store, "primary")
    assert state["state"] == "closed" and state["window"] == "110110110"
    sel = await manager.select_profile()
    assert sel is not None
    result = await manager.record_failure(sel, "server")
    assert result.state == "open"
    opened = [d for t, _, d in await events(store) if t == "profile:circuit-opened"]
    assert [d["reason"] for d in opened] == ["failure-rate"]


async def test_the_window_slides_so_old_failures_leave_it(store: Store) -> None:
    manager = model_manager(
        store,
        breaker={"failure_threshold": 100, "window_size": 10, "min_calls": 10,
                 "failure_rate_threshold": 0.5},
    )  # fmt: skip
    await add_three(manager)
    for outcome in "FSFSFSFS" + "SSSSSSSS":  # 4 failures, then 8 successes
        sel = await manager.select_profile()
        assert sel is not None
        if outcome == "F":
            await manager.record_failure(sel, "server")
        else:
            await manager.record_success(sel)
    state = await breaker(store, "primary")
    assert state["window"] == "1000000000"  # the 10 newest calls: 3 old failures slid out
    # The old failure leaves as new ones come: 4 more failures make 4/10, the 5th 5/10.
    for _ in range(4):
        sel = await manager.select_profile()
        assert sel is not None
        assert (await manager.record_failure(sel, "server")).state == "closed"
    assert (await breaker(store, "primary"))["window"] == "0000001111"
    sel = await manager.select_profile()
    assert sel is not None
    assert (await manager.record_failure(sel, "server")).state == "open"


async def test_consecutive_failures_older_than_the_decay_no_longer_count(store: Store) -> None:
    manager = model_manager(store, breaker={"failure_decay_ms": 5 * MINUTE_MS})
    await add_three(manager)
    await fail(manager, 1)  # t = 0
    advance_time(store, 4 * MINUTE_MS)
    await fail(manager, 1)  # t = 4 min
    advance_time(store, 2 * MINUTE_MS)
    await fail(manager, 1)  # t = 6 min: the first is 6 min old and no longer counts
    state = await breaker(store, "primary")
    assert state["state"] == "closed" and len(state["streak"]) == 2
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert status.consecutive_failures == 2
    await fail(manager, 1)
    assert (await breaker(store, "primary"))["state"] == "open"


async def test_open_becomes_half_open_after_the_reset_timeout_lazily(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    advance_time(store, MINUTE_MS - MARGIN)  # real time passes too: keep a margin
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    assert "profile:circuit-half-open" not in await event_types(store)
    advance_time(store, MARGIN)
    probe = await manager.select_profile()
    assert probe is not None and (probe.profile_id, probe.reason) == ("primary", "testing")
    assert probe.permit is not None and probe.probe
    # Other selections meanwhile go elsewhere (one probe at a time, by default).
    other = await manager.select_profile()
    assert other is not None and other.profile_id == "secondary"
    assert (await event_types(store, "primary")).count("profile:circuit-half-open") == 1
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert status.state == "half_open" and status.probes_in_flight == 1


async def test_a_successful_probe_closes_and_the_primary_wins_again(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    advance_time(store, MINUTE_MS)
    probe = await manager.select_profile()
    assert probe is not None and probe.reason == "testing"
    result = await manager.record_success(probe)
    assert (result.status, result.state) == ("recorded", "closed")
    back = await manager.select_profile()
    assert back is not None and (back.profile_id, back.reason) == ("primary", "primary")
    types = await event_types(store, "primary")
    assert types[-2:] == ["profile:circuit-half-open", "profile:circuit-closed"]


async def test_a_failed_probe_reopens_and_the_open_period_doubles_up_to_the_cap(
    store: Store,
) -> None:
    manager = model_manager(store, breaker={"reset_timeout_ms": 1000, "max_open_ms": 3500})
    await add_three(manager)
    await fail(manager, 3)
    periods = [(await breaker(store, "primary"))["open_ms"]]
    for _ in range(3):
        advance_time(store, periods[-1])
        probe = await manager.select_profile()
        assert probe is not None and probe.reason == "testing"
        result = await manager.record_failure(probe, "server")
        assert result.state == "open"
        periods.append((await breaker(store, "primary"))["open_ms"])
    assert periods == [1000, 2000, 3500, 3500]
    # Just before the end it stays open; closing resets the doubling.
    advance_time(store, 3500 - MARGIN)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    advance_time(store, MARGIN)
    probe = await manager.select_profile()
    assert probe is not None and probe.reason == "testing"
    await manager.record_success(probe)
    await fail(manager, 3)
    assert (await breaker(store, "primary"))["open_ms"] == 1000
    reasons = [d["reason"] for t, _, d in await events(store) if t == "profile:circuit-opened"]
    assert reasons == ["consecutive-failures", "probe-failed", "probe-failed", "probe-failed",
                       "consecutive-failures"]  # fmt: skip


async def test_half_open_probe_limit_holds_across_replicas(store: Store, backend_url: str,
                                                           secret_key: str) -> None:  # fmt: skip
    replicas = [model_manager(store, breaker={"half_open_max_probes": 2})]
    other_store = await second_replica(store, backend_url, secret_key)
    try:
        replicas.append(model_manager(other_store, breaker={"half_open_max_probes": 2}))
        await add_three(replicas[0])
        await fail(replicas[0], 3)
        advance_time(store, MINUTE_MS)
        advance_time(other_store, MINUTE_MS)
        picks = [await replicas[i % 2].select_profile() for i in range(6)]
        reasons = [(p.profile_id, p.reason) for p in picks if p is not None]
        assert reasons.count(("primary", "testing")) == 2
        assert reasons.count(("secondary", "failover")) == 4
        assert len({p.permit for p in picks if p is not None and p.permit}) == 2
    finally:
        if other_store.backend != "memory":
            await other_store.close()


async def test_a_probe_permit_expires_so_a_dead_prober_does_not_wedge_the_breaker(
    store: Store,
) -> None:
    manager = model_manager(store, breaker={"probe_timeout_ms": 30 * SECOND_MS})
    await add_three(manager)
    await fail(manager, 3)
    advance_time(store, MINUTE_MS)
    lost = await manager.select_profile()
    assert lost is not None and lost.reason == "testing"
    advance_time(store, 30 * SECOND_MS - MARGIN)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    advance_time(store, MARGIN)
    again = await manager.select_profile()
    assert again is not None and again.reason == "testing" and again.permit != lost.permit
    # The dead prober's late success does not count: its permit expired.
    late = await manager.record_success(lost)
    assert (late.status, late.state) == ("stale", "half_open")
    done = await manager.record_success(again)
    assert (done.status, done.state) == ("recorded", "closed")


async def test_success_threshold_needs_that_many_successful_probes(store: Store) -> None:
    manager = model_manager(store, breaker={"success_threshold": 2})
    await add_three(manager)
    await fail(manager, 3)
    advance_time(store, MINUTE_MS)
    first = await manager.select_profile()
    assert first is not None and first.reason == "testing"
    assert (await manager.record_success(first)).state == "half_open"
    second = await manager.select_profile()
    assert second is not None and second.reason == "testing"
    assert (await manager.record_success(second)).state == "closed"


async def test_late_reports_do_not_corrupt_the_breaker(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    in_flight = [await manager.select_profile() for _ in range(5)]
    assert all(s is not None and s.epoch == 0 for s in in_flight)
    for sel in in_flight[:3]:
        assert sel is not None
        await manager.record_failure(sel, "server")
    state = await breaker(store, "primary")
    assert state["state"] == "open"
    # A success of a call selected before it opened: counted nowhere, breaker stays open.
    assert in_flight[3] is not None
    late = await manager.record_success(in_flight[3])
    assert (late.status, late.state) == ("stale", "open")
    assert (await breaker(store, "primary"))["open_until_ms"] == state["open_until_ms"]
    # Recover; a late failure of the first epoch then does not start a new streak.
    advance_time(store, MINUTE_MS)
    probe = await manager.select_profile()
    assert probe is not None
    await manager.record_success(probe)
    assert in_flight[4] is not None
    stale = await manager.record_failure(in_flight[4], "server")
    assert (stale.status, stale.state) == ("stale", "closed")
    assert (await breaker(store, "primary"))["streak"] in ([], {})
    # An ordinary (non-probe) report while half-open does not close it either.
    await fail(manager, 3)
    old = await manager.select_profile()  # secondary, but pretend it were primary by id
    assert old is not None
    advance_time(store, 2 * MINUTE_MS)
    assert (await manager.record_success("primary")).status == "stale"
    assert (await breaker(store, "primary"))["state"] == "half_open"


async def test_add_profile_does_not_reset_an_open_breaker_nor_does_remove_and_add(
    store: Store,
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    from .model_helpers import profile

    await manager.add_profile(profile("primary", 100))
    assert (await breaker(store, "primary"))["state"] == "open"
    assert await manager.remove_profile("primary")
    await manager.add_profile(profile("primary", 100))
    assert (await breaker(store, "primary"))["state"] == "open"
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    # A closed breaker is deleted with its profile, but for its epoch (one higher, see
    # test_epochs_never_repeat_after_remove_and_add).
    assert await manager.remove_profile("tertiary")
    assert await breaker_fields(store, "tertiary") == {"epoch": "1"}


async def test_reports_on_a_removed_profile_are_missing_with_or_without_a_kept_breaker(
    store: Store,
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    # A closed breaker whose record holds nothing that matters (a success): it goes with the
    # profile (one that holds a failure or a cooldown stays: tests/test_models_remove.py).
    await succeed(manager, 1)
    late = await manager.select_profile()
    assert late is not None and late.profile_id == "primary"
    assert (await breaker(store, "primary"))["state"] == "closed"
    assert await manager.remove_profile("primary")
    assert (await manager.record_success(late)).status == "missing"
    assert (await manager.record_failure(late, "server")).status == "missing"
    assert await breaker_fields(store, "primary") == {"epoch": "1"}  # (epochs never repeat)
    # An open breaker outlives its profile; a report on the removed profile changes nothing.
    await fail(manager, 3, "secondary")
    kept = await breaker(store, "secondary")
    assert kept["state"] == "open"
    assert await manager.remove_profile("secondary")
    kept["epoch"] += 1  # (removal ends the epoch)
    assert await breaker(store, "secondary") == kept
    assert (await manager.record_success("secondary")).status == "missing"
    assert (await manager.record_failure("secondary", "server")).status == "missing"
    assert await breaker(store, "secondary") == kept


async def test_caller_errors_neither_count_nor_cool_down(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    for _ in range(5):
        sel = await manager.select_profile()
        assert sel is not None and sel.profile_id == "primary"
        assert (await manager.record_failure(sel, "caller")).status == "ignored"
    state = await breaker(store, "primary")
    assert state.get("streak") in (None, [], {}) and state.get("failures_total") is None


async def test_retry_after_and_exhausted_quota_cool_the_profile_down(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None
    await manager.record_failure(sel, "rate_limit", retry_after_s=30)
    nxt = await manager.select_profile()
    assert nxt is not None and nxt.profile_id == "secondary"
    # A success that says the quota is exhausted cools down secondary until the reset too.
    await manager.record_success(nxt, retry_after_s=10)
    third = await manager.select_profile()
    assert third is not None and third.profile_id == "tertiary"
    advance_time(store, 10 * SECOND_MS)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    advance_time(store, 20 * SECOND_MS)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    assert (await breaker(store, "primary"))["state"] == "closed"
    assert "profile:cooldown" in await event_types(store, "secondary")


async def test_billing_failure_cools_down_for_the_billing_period(store: Store) -> None:
    manager = model_manager(store, billing_cooldown_ms=10 * MINUTE_MS)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None
    await manager.record_failure(sel, "billing", error="402 payment required")
    advance_time(store, 10 * MINUTE_MS - MARGIN)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    advance_time(store, MARGIN)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"


async def test_nothing_available_reports_the_soonest_recovery(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    for pid in ("primary", "secondary", "tertiary"):
        await fail(manager, 3, pid)
    assert await manager.select_profile() is None
    _sel, retry_in = await manager._select(None, None, ())
    assert retry_in is not None and 0 < retry_in <= MINUTE_MS
    # Excluding everything: nothing recovers "by itself" for this request.
    advance_time(store, MINUTE_MS)
    _sel, retry_in = await manager._select(None, None, ("primary", "secondary", "tertiary"))
    assert _sel is None and retry_in is None


async def test_reset_breaker_closes_it_at_once(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    assert await manager.reset_breaker("primary") == "open"
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    assert (await event_types(store, "primary"))[-1] == "profile:circuit-closed"


async def test_selection_reads_hand_written_breaker_fields_at_once(store: Store) -> None:
    # The breaker is flat fields of the breakers hash: what an operator writes with HSET is
    # what the next selection decides on.
    manager = model_manager(store, breaker={"window_size": 4, "min_calls": 4})
    await add_three(manager)

    async def chosen_after(**fields: Any) -> tuple[str, int] | None:
        await set_breaker(store, "primary", **fields)
        sel = await manager.select_profile()
        return None if sel is None else (sel.profile_id, sel.epoch)

    now = await server_now_ms(store)
    assert await chosen_after(epoch=7) == ("primary", 7)
    assert await chosen_after(state="closed", window="", epoch=7) == ("primary", 7)
    past, future = now - MINUTE_MS, now + MINUTE_MS
    assert await chosen_after(state="closed", cooldown_until_ms=past, epoch=3) == ("primary", 3)
    assert await chosen_after(state="closed", cooldown_until_ms=future, epoch=3) == (
        "secondary",
        0,
    )
    assert await chosen_after(state="open", open_until_ms=future, epoch=4) == ("secondary", 0)
    # A broken value that a selection reads skips the profile: of a closed breaker, its state,
    # epoch or cooldown; of another, any field.
    assert await chosen_after(state="closed", epoch="2x") == ("secondary", 0)
    assert await chosen_after(epoch=1, cooldown_until_ms="later") == ("secondary", 0)
    assert await chosen_after(state="open", open_until_ms=past, window="1x") == ("secondary", 0)
    # Another field of a closed breaker decides nothing there: a report says it is broken.
    assert await chosen_after(state="closed", epoch=1, window="1x") == ("primary", 1)
    result = await manager.record_success("primary")
    assert (result.status, result.broken_field) == ("corrupt", "breaker.window")


async def test_a_success_on_a_steady_breaker_leaves_its_fields_as_they_are(store: Store) -> None:
    manager = model_manager(store, breaker={"window_size": 4, "min_calls": 4})
    await add_three(manager)
    await set_breaker(store, "primary", window="0000", epoch=5, state="closed", failures_total=9)
    steady = await breaker_fields(store, "primary")
    sel = await manager.select_profile()
    assert sel is not None and sel.epoch == 5
    result = await manager.record_success(sel)
    assert (result.status, result.state, result.epoch) == ("recorded", "closed", 5)
    assert await breaker_fields(store, "primary") == steady
    # Not steady: a streak to end, a window of another size, a late report (older epoch).
    for fields, window in (
        ({"streak": [1], "window": "0001", "epoch": 5, "state": "closed"}, "0010"),
        ({"window": "00000", "epoch": 5, "state": "closed"}, "0000"),
        ({"window": "000", "epoch": 5, "state": "closed"}, "0000"),
        ({"window": "0000", "epoch": 6, "state": "closed"}, None),
    ):
        await set_breaker(store, "primary", **fields)
        before = await breaker(store, "primary")
        result = await manager.record_success(sel)
        assert result.status == ("recorded" if window else "stale"), fields
        after = await breaker(store, "primary")
        if window:
            assert after["window"] == window and not after["streak"], fields
        else:
            assert after == before


async def test_each_call_reads_its_own_keys_and_configuration(store: Store) -> None:
    """The functions keep their helpers between calls: a call must still act on its own
    namespace's keys and its own breaker settings."""
    other = Store(
        store.client, backend=store.backend, url=store.url, namespace=f"{store.namespace}b",
        box=store.box,
    )  # fmt: skip
    strict = model_manager(store, breaker={"failure_threshold": 1})
    lenient = model_manager(other, breaker={"failure_threshold": 5})
    await add_three(strict)
    await add_three(lenient)
    await fail(lenient, 1)
    await fail(strict, 1)
    await fail(lenient, 1)
    assert (await breaker(store, "primary"))["state"] == "open"
    assert (await breaker(store, "primary"))["failures_total"] == 1
    held = await breaker(other, "primary")
    assert held["state"] == "closed" and held["failures_total"] == 2 and len(held["streak"]) == 2


async def test_a_record_that_changes_on_every_call_is_read_anew_each_time(store: Store) -> None:
    """A breaker that changes on every call (and is changed by another function, reset) is
    read as it is now, each time."""
    manager = model_manager(
        store, breaker={"failure_threshold": 10**6, "min_calls": 10**6, "window_size": 10**6}
    )
    await add_three(manager)
    for i in range(60):
        sel = await manager.select_profile()
        assert sel is not None and (sel.profile_id, sel.epoch) == ("primary", i // 20), i
        await manager.record_failure(sel, "server", error=f"500 #{i}")
        if i % 20 == 19:
            await manager.reset_breaker("primary")
    record = await breaker(store, "primary")
    assert record["state"] == "closed" and record["epoch"] == 3 and record["failures_total"] == 60
    assert len(record["streak"]) == 0 and record["last_error"] == "500 #59"


async def test_epochs_never_repeat_after_remove_and_add(store: Store) -> None:
    # Selections made before a removal carry an epoch the re-added profile never uses again:
    # their late reports are stale, not counted into the new breaker.
    manager = model_manager(store, breaker={"failure_threshold": 2})
    await add_three(manager)
    before = [await manager.select_profile() for _ in range(2)]
    assert all(s is not None and (s.profile_id, s.epoch) == ("primary", 0) for s in before)
    for _ in range(2):  # remove + add twice: a breaker with nothing to keep is deleted each time
        assert await manager.remove_profile("primary")
        await manager.add_profile(profile("primary", 100))
    fresh = await manager.select_profile()
    assert fresh is not None and fresh.profile_id == "primary" and fresh.epoch == 2
    for sel in before:
        assert sel is not None
        result = await manager.record_failure(sel, "server", error="late")
        assert (result.status, result.state) == ("stale", "closed")
    assert (await breaker(store, "primary"))["streak"] == []
    # The epoch also survives a repair of a breaker whose other fields are corrupt.
    await store.command("HSET", manager.keys.breakers, "primary:window", "xx")
    assert await manager.reset_breaker("primary") == "corrupt"
    assert (await breaker(store, "primary"))["epoch"] == 3
