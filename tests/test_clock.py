"""The test clock: held still, every script sees exactly one time, so deadlines are checked to
the millisecond; released, it goes on from there and never back."""

from __future__ import annotations

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
