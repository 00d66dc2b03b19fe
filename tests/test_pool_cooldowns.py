"""Contract tests: cooldown schedules, counters, retry-after, per-model cooldowns, recovery."""

from __future__ import annotations

from coordinator import AuthProfileManager, CooldownPolicy, Store
from coordinator.testing import advance_time

from .helpers import HOUR_MS, MINUTE_MS, add_keys, manager_for


async def _fail_after_recovery(
    store: Store, manager: AuthProfileManager, kind: str, times: int
) -> list[int]:
    """Fail a profile ``times`` times, each after the previous cooldown ended; the durations.

    The profile is left cooling from the last failure.
    """
    durations: list[int] = []
    for _ in range(times):
        if durations:
            advance_time(store, durations[-1] + 1)
        result = await manager.mark_failed("key-0", "failure", kind=kind)
        assert result.status == "cooling" and result.duration_ms is not None
        durations.append(result.duration_ms)
    return durations


async def test_ordinary_cooldown_is_one_minute_times_five_capped_at_an_hour(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    durations = await _fail_after_recovery(store, manager, "rate_limit", 5)
    assert durations == [MINUTE_MS, 5 * MINUTE_MS, 25 * MINUTE_MS, HOUR_MS, HOUR_MS]


async def test_billing_cooldown_has_its_own_schedule_and_counter(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    durations = await _fail_after_recovery(store, manager, "billing", 4)
    assert durations == [5 * HOUR_MS, 10 * HOUR_MS, 20 * HOUR_MS, 24 * HOUR_MS]
    # The ordinary counter was untouched by billing failures (and the longer billing
    # deadline stays in force).
    ordinary = await manager.mark_failed("key-0", "500", kind="server")
    assert ordinary.failures == 1 and ordinary.duration_ms is not None
    assert ordinary.duration_ms > 23 * HOUR_MS
    status = (await manager.get_status("openai"))[0]
    assert status.billing_failures == 4 and status.failures == 1


async def test_every_base_multiplier_and_cap_is_configurable(store: Store) -> None:
    manager = manager_for(
        store,
        cooldown={"base_ms": 1000, "multiplier": 2, "cap_ms": 5000},
        billing_cooldown=CooldownPolicy(base_ms=10_000, multiplier=3, cap_ms=50_000),
    )
    await add_keys(manager, 1)
    assert await _fail_after_recovery(store, manager, "timeout", 4) == [1000, 2000, 4000, 5000]
    assert await _fail_after_recovery(store, manager, "billing", 3) == [10_000, 30_000, 50_000]


async def test_counters_reset_after_the_failure_window(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    assert await _fail_after_recovery(store, manager, "server", 2) == [MINUTE_MS, 5 * MINUTE_MS]
    assert (await manager.get_status("openai"))[0].failures == 2
    advance_time(store, 24 * HOUR_MS + 1)
    assert (await manager.get_status("openai"))[0].failures == 0
    again = await manager.mark_failed("key-0", "500", kind="server")
    assert again.duration_ms == MINUTE_MS and again.failures == 1


async def test_failure_window_is_configurable(store: Store) -> None:
    manager = manager_for(store, failure_window_ms=10 * MINUTE_MS)
    await add_keys(manager, 1)
    await _fail_after_recovery(store, manager, "server", 1)
    advance_time(store, 10 * MINUTE_MS + 1)
    assert (await manager.mark_failed("key-0", "500", kind="server")).failures == 1


async def test_success_resets_counters(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    await _fail_after_recovery(store, manager, "rate_limit", 2)
    await _fail_after_recovery(store, manager, "billing", 1)
    assert await manager.mark_success("key-0") is True
    status = (await manager.get_status("openai"))[0]
    assert (status.failures, status.billing_failures) == (0, 0)
    assert await manager.clear_cooldown("key-0")
    assert (await manager.mark_failed("key-0", "429", kind="rate_limit")).duration_ms == MINUTE_MS


async def test_a_success_with_nothing_to_reset_writes_nothing(store: Store) -> None:
    # Most calls succeed: in the steady state a success is a read, not a write.
    manager = manager_for(store)
    await add_keys(manager, 1)
    state_key = manager._keys("openai").state
    assert await manager.mark_success("key-0") is True
    assert await store.client.hgetall(state_key) == {"key-0:gen": "1"}
    await manager.mark_failed("key-0", "500", kind="server")
    assert await manager.mark_success("key-0") is True
    assert await store.client.hget(state_key, "key-0:failures") == "0"
    # A counter that already reads zero is not written again: a zero spelt "0.0" by hand
    # stays as it is (a rewrite would store "0").
    await store.client.hset(state_key, "key-0:failures", "0.0")
    assert await manager.mark_success("key-0") is True
    assert await store.client.hget(state_key, "key-0:failures") == "0.0"
    assert await manager.mark_success("nobody") is False


async def test_retry_after_lengthens_but_never_shortens(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    longer = await manager.mark_failed("key-0", "429", kind="rate_limit", retry_after_s=300)
    assert longer.duration_ms == 300_000
    shorter = await manager.mark_failed("key-1", "429", kind="rate_limit", retry_after_s=5)
    assert shorter.duration_ms == MINUTE_MS


async def test_new_failure_never_moves_a_deadline_earlier(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    first = await manager.mark_failed("key-0", "429", kind="rate_limit", retry_after_s=1800)
    advance_time(store, 1000)
    second = await manager.mark_failed("key-0", "500", kind="server")
    assert second.until_ms == first.until_ms


async def test_reports_during_a_running_cooldown_do_not_escalate(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    results = [await manager.mark_failed("key-0", "429", kind="rate_limit") for _ in range(5)]
    assert {r.failures for r in results} == {1}
    assert results[-1].until_ms == results[0].until_ms


async def test_billing_during_rate_limit_cooldown_escalates_to_billing(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    billing = await manager.mark_failed("key-0", "402", kind="billing")
    assert billing.duration_ms == 5 * HOUR_MS
    status = (await manager.get_status("openai"))[0]
    assert status.cooldown_kind == "billing"


async def test_caller_errors_do_not_cool_down(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    result = await manager.mark_failed("key-0", "400 bad request", kind="caller")
    assert result.status == "ignored"
    assert (await manager.get_next_profile("openai")) is not None
    assert (await manager.get_status("openai"))[0].failures == 0


async def test_rate_limit_with_model_cools_only_that_pair(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    result = await manager.mark_failed("key-0", "429", kind="rate_limit", model="gpt-4o")
    assert result.scope == "model"
    assert await manager.get_next_profile("openai", model="gpt-4o") is None
    other = await manager.get_next_profile("openai", model="gpt-4o-mini")
    assert other is not None and other.id == "key-0"
    assert await manager.get_next_profile("openai") is not None
    status = (await manager.get_status("openai"))[0]
    assert status.in_cooldown is False and 0 < status.model_cooldowns["gpt-4o"] <= MINUTE_MS
    advance_time(store, MINUTE_MS + 1)
    again = await manager.get_next_profile("openai", model="gpt-4o")
    assert again is not None


async def test_billing_and_auth_with_model_bench_the_whole_profile(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    assert (await manager.mark_failed("key-0", "402", kind="billing", model="m")).scope == "profile"
    assert (await manager.mark_failed("key-1", "401", kind="auth", model="m")).scope == "profile"
    assert await manager.get_next_profile("openai", model="other") is None


async def test_recovery_needs_no_timer_and_is_announced_once(store: Store) -> None:
    replicas = [manager_for(store) for _ in range(3)]
    await add_keys(replicas[0], 1)
    await replicas[0].mark_failed("key-0", "429", kind="rate_limit")
    for replica in replicas:
        assert await replica.get_next_profile("openai") is None
    advance_time(store, MINUTE_MS)
    for replica in replicas:  # every replica sees it back; only the first sweep announces it
        profile = await replica.get_next_profile("openai")
        assert profile is not None and profile.id == "key-0"
    await replicas[1].get_status()
    entries = await store.client.xrange(replicas[0]._keys("openai").events)
    recovered = [f for _id, f in entries if f["type"] == "profile:recovered"]
    assert len(recovered) == 1 and recovered[0]["profile"] == "key-0"


async def test_a_failure_after_an_unobserved_recovery_announces_it_once(store: Store) -> None:
    # mark_failed does not sweep the pool: when its own profile's cooldown ended with nobody
    # looking, it announces the recovery itself, before the new failure, and no later sweep
    # announces it again.
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    await manager.mark_failed("key-1", "429", kind="rate_limit", model="m")
    advance_time(store, MINUTE_MS + 1)
    again = await manager.mark_failed("key-0", "429", kind="rate_limit")
    assert again.duration_ms == 5 * MINUTE_MS  # the second failure in the window escalates
    await manager.mark_failed("key-1", "429", kind="rate_limit", model="m")
    advance_time(store, 5 * MINUTE_MS + 1)
    assert await manager.get_next_profile("openai") is not None  # sweeps what is due now
    entries = await store.client.xrange(manager._keys("openai").events)
    kinds = [(f["type"], f["profile"]) for _id, f in entries if f["type"] != "profile:added"]
    assert kinds == [
        ("profile:failed", "key-0"),
        ("profile:cooldown", "key-0"),
        ("profile:failed", "key-1"),
        ("profile:cooldown", "key-1"),
        ("profile:recovered", "key-0"),
        ("profile:failed", "key-0"),
        ("profile:cooldown", "key-0"),
        ("profile:recovered", "key-1"),
        ("profile:failed", "key-1"),
        ("profile:cooldown", "key-1"),
        ("profile:recovered", "key-0"),
        ("profile:recovered", "key-1"),
    ]


async def test_clear_cooldown_really_clears_it(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    await manager.mark_failed("key-0", "402", kind="billing")
    await manager.mark_failed("key-0", "429", kind="rate_limit", model="m")
    assert await manager.clear_cooldown("key-0") is True
    status = (await manager.get_status("openai"))[0]
    assert status.healthy and not status.in_cooldown and status.billing_failures == 0
    assert status.model_cooldowns == {}
    assert (await manager.get_next_profile("openai", model="m")) is not None
    assert await manager.clear_cooldown("key-0") is False


async def test_cooldown_survives_update_of_the_profile(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    await add_keys(manager, 1)  # upsert, same id
    status = (await manager.get_status("openai"))[0]
    assert status.in_cooldown and status.failures == 1
    assert await manager.get_next_profile("openai") is None
