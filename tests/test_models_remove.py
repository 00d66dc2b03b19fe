"""Contract tests of remove_profile and the breaker fields (model_remove.lua), on each backend.

Removing and re-adding a profile is no way around its breaker: its fields are deleted with the
profile only when it holds nothing that matters (closed, no cooldown running, no failure in the
streak that still counts, none in the window). An open breaker outliving remove + add is tested
in tests/test_models_breaker.py (test_add_profile_does_not_reset_an_open_breaker_nor_does_remove_
and_add, test_reports_on_a_removed_profile_are_missing_with_or_without_a_kept_breaker).
"""

from __future__ import annotations

from coordinator import Store
from coordinator.models.manager import ModelProfileManager
from coordinator.testing import advance_time

from .model_helpers import (
    MINUTE_MS,
    add_three,
    breaker,
    breaker_fields,
    fail,
    model_manager,
    profile,
    server_now_ms,
    set_breaker,
    succeed,
)

HOUR_MS = 60 * MINUTE_MS
MARGIN = 1000  # ms of real time a test may take between two steps


async def remove_and_add(manager: ModelProfileManager, pid: str = "primary") -> None:
    """Remove ``pid`` and add it again with the priority ``add_three`` gave it (100)."""
    assert await manager.remove_profile(pid)
    await manager.add_profile(profile(pid, 100))


async def kept(manager: ModelProfileManager, pid: str) -> bool:
    """Whether the breakers hash holds any field of ``pid``'s breaker but its epoch (which
    outlives removal, so that epochs never repeat)."""
    return bool(set(await breaker_fields(manager.store, pid)) - {"epoch"})


async def test_a_billing_cooldown_survives_remove_and_add(store: Store) -> None:
    manager = model_manager(store)  # billing_cooldown_ms: 1 h (the default)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    await manager.record_failure(sel, "billing", error="402 payment required")
    advance_time(store, 10 * MINUTE_MS)  # the failure no longer counts in the streak
    await remove_and_add(manager)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert status.state == "closed" and not status.available
    assert 50 * MINUTE_MS - MARGIN < status.cooldown_remaining_ms <= 50 * MINUTE_MS
    advance_time(store, 50 * MINUTE_MS)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"


async def test_a_cooldown_without_failures_is_kept_while_it_runs_and_deleted_once_it_ended(
    store: Store,
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    await manager.record_success(sel, retry_after_s=600)  # an exhausted quota: no failure
    record = await breaker(store, "primary")
    assert record["state"] == "closed" and "1" not in record["window"]
    assert not record.get("streak")
    await remove_and_add(manager)
    assert await breaker(store, "primary") == {**record, "epoch": record["epoch"] + 1}
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert 10 * MINUTE_MS - MARGIN < status.cooldown_remaining_ms <= 10 * MINUTE_MS
    advance_time(store, 10 * MINUTE_MS)  # the cooldown has ended: nothing left to keep
    assert await manager.remove_profile("primary")
    assert not await kept(manager, "primary")


async def test_a_failure_streak_survives_remove_and_add(store: Store) -> None:
    manager = model_manager(store, breaker={"failure_threshold": 3})
    await add_three(manager)
    await fail(manager, 2)
    await remove_and_add(manager)
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert (status.state, status.consecutive_failures) == ("closed", 2)
    await fail(manager, 1)
    assert (await breaker(store, "primary"))["state"] == "open"
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "secondary"


async def test_a_failure_in_the_window_survives_remove_and_add(store: Store) -> None:
    manager = model_manager(
        store,
        breaker={"failure_threshold": 100, "window_size": 3, "min_calls": 3,
                 "failure_rate_threshold": 0.5},
    )  # fmt: skip
    await add_three(manager)
    await fail(manager, 1)
    await succeed(manager, 1)  # ends the streak; the failure stays in the window
    await remove_and_add(manager)
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert (status.consecutive_failures, status.window_calls, status.window_failures) == (0, 2, 1)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    result = await manager.record_failure(sel, "server")  # window "101": 2 of 3 failed
    assert (result.status, result.state) == ("recorded", "open")


async def test_the_record_is_deleted_once_the_last_failure_has_left_the_window(
    store: Store,
) -> None:
    manager = model_manager(
        store,
        breaker={"failure_threshold": 100, "window_size": 3, "min_calls": 3,
                 "failure_rate_threshold": 0.9},
    )  # fmt: skip
    await add_three(manager)
    await fail(manager, 1)
    await succeed(manager, 2)
    assert (await breaker(store, "primary"))["window"] == "100"
    await remove_and_add(manager)
    assert (await breaker(store, "primary"))["window"] == "100"
    await succeed(manager, 1)
    assert (await breaker(store, "primary"))["window"] == "000"  # successes only
    assert await manager.remove_profile("primary")
    assert not await kept(manager, "primary")


async def test_a_streak_is_kept_until_it_decays(store: Store) -> None:
    # In a record this library writes, the streak's last failure is also the window's newest
    # call, so the window alone keeps it; records written directly (a hand edit, an earlier
    # version) show the streak's own rule: a failure counts for failure_decay_ms.
    manager = model_manager(store, breaker={"failure_decay_ms": 5 * MINUTE_MS})
    await add_three(manager)
    now = await server_now_ms(store)
    counting = {"state": "closed", "epoch": 2, "window": "000", "streak": [now - MINUTE_MS]}
    decayed = {**counting, "streak": [now - 5 * MINUTE_MS - MARGIN]}
    await set_breaker(store, "primary", **counting)
    await set_breaker(store, "secondary", **decayed)
    written = await breaker_fields(store, "primary")
    assert await manager.remove_profile("primary")
    assert await manager.remove_profile("secondary")
    assert await breaker_fields(store, "primary") == {**written, "epoch": "3"}
    assert not await kept(manager, "secondary")


async def test_a_corrupt_breaker_is_kept_for_the_operator(store: Store) -> None:
    # (The script kept corrupt records before this change too: a guard, not a fix.)
    manager = model_manager(store)
    await add_three(manager)
    await set_breaker(store, "primary", state="closed", epoch=1, cooldown_until_ms="later")
    garbage = await breaker_fields(store, "primary")
    await remove_and_add(manager)
    assert await breaker_fields(store, "primary") == garbage
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert status.broken_field == "breaker.cooldown_until_ms"
    assert await manager.reset_breaker("primary") == "corrupt"
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
