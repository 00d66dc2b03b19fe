"""The test clock: held still, every script sees exactly one time, so deadlines are checked to
the millisecond; released, it goes on from there and never back."""

from __future__ import annotations

from typing import Any

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    BreakerConfig,
    ModelAuth,
    ModelConfig,
    ModelProfile,
    ModelProfileManager,
    Store,
)
from coordinator.fleet import Heartbeat
from coordinator.testing import advance_time, hold_time, release_time


async def _script_time(store: Store) -> int:
    # worker_beat returns the time its script read (now_ms() in _lib.lua).
    return await Heartbeat(store, "clock-probe", 60).beat({})


async def test_held_time_is_what_every_script_sees(store: Store) -> None:
    held = await hold_time(store, 1_900_000_000_000)
    assert held == 1_900_000_000_000
    assert await _script_time(store) == held
    assert await _script_time(store) == held  # still, however long the call took
    assert await store.time_ms() == held
    advance_time(store, 1)
    assert await _script_time(store) == held + 1


async def test_releasing_goes_on_from_the_held_time_never_back(store: Store) -> None:
    now = await hold_time(store)
    advance_time(store, 3_600_000)  # an hour ahead of the real clock
    await release_time(store)
    assert store.held_time_ms is None
    assert await _script_time(store) >= now + 3_600_000


async def test_a_cooldown_ends_at_its_deadline_to_the_millisecond(store: Store) -> None:
    pool = AuthProfileManager(store)
    await pool.add_profile(AuthProfile(id="k1", provider="openai", api_key_env="CLOCK_K1"))
    await pool.add_profile(AuthProfile(id="k2", provider="openai", api_key_env="CLOCK_K2"))
    await hold_time(store)
    result = await pool.mark_failed("k1", "HTTP 429", kind="rate_limit")  # 60 s, the first
    assert result.status == "cooling"
    advance_time(store, 60_000 - 1)
    picks = {(await pool.get_next_profile("openai")).id for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"k2"}  # still cooling 1 ms before its deadline
    advance_time(store, 1)
    picks = {(await pool.get_next_profile("openai")).id for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"k1", "k2"}  # ready at the deadline


async def test_an_open_breaker_half_opens_at_its_deadline_to_the_millisecond(
    store: Store,
) -> None:
    config = ModelConfig(breaker=BreakerConfig(failure_threshold=1, reset_timeout_ms=10_000))
    models = ModelProfileManager(store, config)
    await models.add_profile(
        ModelProfile(id="p", provider="x", auth=ModelAuth.none(), base_url="http://x")
    )
    await hold_time(store)
    selection = await models.select_profile("m")
    assert selection is not None
    await models.record_failure(selection, "server", error="HTTP 503")
    advance_time(store, 10_000 - 1)
    assert await models.select_profile("m") is None  # open 1 ms before the deadline
    advance_time(store, 1)
    probe = await models.select_profile("m")
    assert probe is not None and probe.reason == "testing"  # half-open at the deadline


# -- pools: every deadline and window of the default AuthConfig, to the millisecond ----------
# AuthProfileManager(store) without a config: the defaults are what these tests pin (60 s x 5
# up to an hour, a 24 h failure window), so a changed default fails them too.

HOUR_MS = 3_600_000


async def _pool(store: Store, count: int = 2) -> AuthProfileManager:
    pool = AuthProfileManager(store)
    for i in range(1, count + 1):
        await pool.add_profile(
            AuthProfile(id=f"k{i}", provider="openai", api_key=f"sk-test-clock-{i}-0123456789ab")
        )
    return pool


async def _picks(pool: AuthProfileManager, model: str | None = None, times: int = 4) -> set[str]:
    """The ids the next ``times`` picks return; an empty pick fails the test (a check that
    some profile is left out must not pass because nothing was picked)."""
    ids = set()
    for _ in range(times):
        picked = await pool.get_next_profile("openai", model=model)
        assert picked is not None, "no profile was picked"
        ids.add(picked.id)
    return ids


async def test_a_pair_cooldown_ends_at_its_deadline_to_the_millisecond(store: Store) -> None:
    pool = await _pool(store)
    held = await hold_time(store)
    result = await pool.mark_failed("k1", "HTTP 429", kind="rate_limit", model="m")
    assert (result.scope, result.until_ms, result.duration_ms) == ("model", held + 60_000, 60_000)
    advance_time(store, 60_000 - 1)
    assert await _picks(pool, "m") == {"k2"}  # the pair still cools 1 ms before its deadline
    assert await _picks(pool) == {"k1", "k2"}  # (the profile itself serves other models)
    advance_time(store, 1)
    assert await _picks(pool, "m") == {"k1", "k2"}  # ready at the deadline


async def test_a_retry_after_lengthens_a_cooldown_to_the_millisecond(store: Store) -> None:
    pool = await _pool(store)
    held = await hold_time(store)
    result = await pool.mark_failed("k1", "HTTP 429", kind="rate_limit", retry_after_s=90.5)
    assert (result.until_ms, result.duration_ms) == (held + 90_500, 90_500)
    advance_time(store, 90_500 - 1)
    assert await _picks(pool) == {"k2"}
    advance_time(store, 1)
    assert await _picks(pool) == {"k1", "k2"}


async def test_a_retry_after_never_shortens_a_running_cooldown(store: Store) -> None:
    pool = await _pool(store)
    held = await hold_time(store)
    await pool.mark_failed("k1", "HTTP 500", kind="server")  # 60 s
    await pool.mark_failed("k1", "HTTP 429", kind="rate_limit", model="m")  # the pair: 60 s
    advance_time(store, 10_000)
    for model in (None, "m"):
        result = await pool.mark_failed(
            "k1", "HTTP 429", kind="rate_limit", retry_after_s=1, model=model
        )
        assert result.until_ms == held + 60_000, model  # kept, not moved to now + 1 s
    advance_time(store, 50_000 - 1)  # 1 ms before the first deadline; 49 s past the retry-after
    assert await _picks(pool) == {"k2"}
    advance_time(store, 1)
    assert await _picks(pool, "m") == {"k1", "k2"}  # both deadlines reached together


async def test_an_ordinary_failure_escalates_within_24_hours_of_the_last_one(store: Store) -> None:
    pool = await _pool(store)
    held = await hold_time(store)
    for pid in ("k1", "k2"):
        assert (await pool.mark_failed(pid, "HTTP 500", kind="server")).duration_ms == 60_000
    advance_time(store, 23 * HOUR_MS)
    for pid in ("k1", "k2"):
        result = await pool.mark_failed(pid, "HTTP 500", kind="server")
        assert (result.failures, result.duration_ms) == (2, 300_000), pid  # 60 s x 5
    # The window counts from the last failure: at 24 h exactly it still escalates, 1 ms
    # later the count starts again.
    advance_time(store, 24 * HOUR_MS)
    assert store.held_time_ms == held + 47 * HOUR_MS
    third = await pool.mark_failed("k1", "HTTP 500", kind="server")
    assert (third.failures, third.duration_ms) == (3, 1_500_000)
    advance_time(store, 1)
    again = await pool.mark_failed("k2", "HTTP 500", kind="server")
    assert (again.failures, again.duration_ms) == (1, 60_000)


# -- models: the default BreakerConfig and ModelConfig, to the millisecond -------------------
# ModelProfileManager(store) without a config: failure_threshold 3, failure_rate_threshold 0.5
# of at least min_calls 10 in a window of 20, failure_decay 5 min, open 60 s doubling up to
# 10 min, one probe, one success closes; billing 1 h. A changed default fails these tests.


async def _models(store: Store) -> ModelProfileManager:
    models = ModelProfileManager(store)
    for pid, priority in (("primary", 100), ("secondary", 90)):
        await models.add_profile(
            ModelProfile(
                id=pid, provider=pid, auth=ModelAuth.none(), base_url="http://x",
                priority=priority,
            )
        )  # fmt: skip
    return models


async def _chosen(models: ModelProfileManager) -> tuple[str, str]:
    """(profile id, reason) of a selection; none at all fails the test."""
    selection = await models.select_profile()
    assert selection is not None, "nothing was selected"
    if selection.probe:
        await models.release(selection)  # (the probe permit goes back)
    return selection.profile_id, selection.reason


async def _fail(models: ModelProfileManager, kind: str = "server") -> None:
    selection = await models.select_profile()
    assert selection is not None and selection.profile_id == "primary"
    await models.record_failure(selection, kind, error="HTTP 503")


async def _succeed(models: ModelProfileManager) -> None:
    selection = await models.select_profile()
    assert selection is not None and selection.profile_id == "primary"
    await models.record_success(selection)


async def _status(models: ModelProfileManager) -> dict[str, Any]:
    return {s.id: s for s in await models.get_status()}


async def test_a_model_retry_after_cooldown_ends_at_its_deadline(store: Store) -> None:
    models = await _models(store)
    await hold_time(store)
    selection = await models.select_profile()
    assert selection is not None
    await models.record_success(selection, retry_after_s=30)  # a quota reset 30 s away
    advance_time(store, 30_000 - 1)
    assert await _chosen(models) == ("secondary", "failover")
    advance_time(store, 1)
    assert await _chosen(models) == ("primary", "primary")


async def test_a_billing_cooldown_lasts_an_hour_and_no_retry_after_shortens_it(
    store: Store,
) -> None:
    models = await _models(store)
    await hold_time(store)
    await _fail(models, "billing")
    advance_time(store, 10_000)
    await models.record_failure("primary", "rate_limit", error="429", retry_after_s=1)
    assert (await _status(models))["primary"].cooldown_remaining_ms == HOUR_MS - 10_000
    advance_time(store, HOUR_MS - 10_000 - 1)
    assert await _chosen(models) == ("secondary", "failover")
    advance_time(store, 1)
    assert await _chosen(models) == ("primary", "primary")


async def test_the_default_breaker_opens_on_the_third_consecutive_failure(store: Store) -> None:
    models = await _models(store)
    await hold_time(store)
    await _fail(models)
    await _fail(models)
    assert await _chosen(models) == ("primary", "primary")  # two in a row: still closed
    await _fail(models)
    assert await _chosen(models) == ("secondary", "failover")


async def test_the_default_failure_decay_is_five_minutes_to_the_millisecond(
    store: Store,
) -> None:
    models = await _models(store)
    await hold_time(store)
    await _fail(models)  # the oldest of the streak, at t0
    advance_time(store, 1)
    await _fail(models)
    advance_time(store, 5 * 60_000)  # t0 + 5 min + 1 ms: the first failure no longer counts
    await _fail(models)
    assert await _chosen(models) == ("primary", "primary")
    await models.reset_breaker("primary")
    held = await hold_time(store)
    await _fail(models)
    advance_time(store, 1)
    await _fail(models)
    advance_time(store, 5 * 60_000 - 1)  # t0 + 5 min exactly: the first one still counts
    assert store.held_time_ms == held + 5 * 60_000
    await _fail(models)
    assert await _chosen(models) == ("secondary", "failover")


async def test_the_default_failure_rate_threshold_is_one_half(store: Store) -> None:
    models = await _models(store)
    await hold_time(store)
    # Never two failures in a row: only the failure rate can open the breaker.
    for _ in range(4):
        await _succeed(models)
        await _fail(models)
    await _succeed(models)
    await _fail(models)  # 5 of 10 calls (min_calls reached): 0.5 opens it
    assert await _chosen(models) == ("secondary", "failover")
    await models.reset_breaker("primary")
    # 22 calls, never two failures in a row; the breaker must stay closed until the last one:
    # 4 of the first 10 (0.4), 9 of 20 (0.45); then the window of 20 drops the two oldest
    # successes and holds 10 of 20 (0.5). (A window of 19 or 21 would hold 9/19 or 10/21.)
    calls = "SSFSFSFSFSFSFSFSFSFSSF"
    for i, call in enumerate(calls, 1):
        assert await _chosen(models) == ("primary", "primary"), i
        await (_fail(models) if call == "F" else _succeed(models))
    assert await _chosen(models) == ("secondary", "failover")


async def test_the_default_open_period_doubles_from_a_minute_up_to_ten(store: Store) -> None:
    models = await _models(store)
    await hold_time(store)
    await _fail(models)
    await _fail(models)
    await _fail(models)  # open: 60 s
    for period in (60_000, 120_000, 240_000, 480_000, 600_000, 600_000):
        advance_time(store, period - 1)
        assert await _chosen(models) == ("secondary", "failover"), period
        advance_time(store, 1)
        probe = await models.select_profile()
        assert probe is not None and probe.reason == "testing", period
        assert await _chosen(models) == ("secondary", "failover")  # one probe at a time
        await models.record_failure(probe, "server", error="HTTP 503")  # re-opens, doubled
    advance_time(store, 600_000)
    probe = await models.select_profile()
    assert probe is not None and probe.reason == "testing"
    await models.record_success(probe)  # one success closes it
    assert await _chosen(models) == ("primary", "primary")


async def test_the_default_probe_permit_expires_after_30_seconds(store: Store) -> None:
    models = await _models(store)
    await hold_time(store)
    for _ in range(3):
        await _fail(models)
    advance_time(store, 60_000)
    probe = await models.select_profile()  # a prober that never reports
    assert probe is not None and probe.reason == "testing"
    advance_time(store, 30_000 - 1)
    assert await _chosen(models) == ("secondary", "failover")  # its permit still holds
    advance_time(store, 1)
    assert await _chosen(models) == ("primary", "testing")  # expired: a new probe
