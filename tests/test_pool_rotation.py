"""Contract tests: selection strategies, exclusions and acquire(), on every backend."""

from __future__ import annotations

from collections import Counter

import pytest

from coordinator import AuthProfile, NoProfileAvailableError, Store
from coordinator.testing import advance_time

from .helpers import MINUTE_MS, add_keys, manager_for


async def test_round_robin_gives_each_profile_exactly_k_picks(store: Store) -> None:
    manager = manager_for(store)
    ids = await add_keys(manager, 5)
    picks = Counter()
    for _ in range(5 * 7):
        profile = await manager.get_next_profile("openai")
        assert profile is not None
        picks[profile.id] += 1
    assert picks == dict.fromkeys(ids, 7)


async def test_round_robin_is_global_across_replicas(store: Store) -> None:
    replicas = [manager_for(store) for _ in range(3)]
    ids = await add_keys(replicas[0], 4)
    picks = Counter()
    for i in range(4 * 6):
        profile = await replicas[i % 3].get_next_profile("openai")
        assert profile is not None
        picks[profile.id] += 1
    assert picks == dict.fromkeys(ids, 6)


async def test_priority_highest_first_and_equal_priority_rotates(store: Store) -> None:
    manager = manager_for(store, strategy="priority")
    await add_keys(manager, 1, prefix="low", priority=1)
    await add_keys(manager, 2, prefix="high", priority=10)
    picks = [(await manager.get_next_profile("openai")).id for _ in range(4)]  # type: ignore[union-attr]
    assert picks == ["high-0", "high-1", "high-0", "high-1"]
    await manager.mark_failed("high-0", "boom", kind="server")
    await manager.mark_failed("high-1", "boom", kind="server")
    low = await manager.get_next_profile("openai")
    assert low is not None and low.id == "low-0"


async def test_oauth_profiles_come_before_api_keys_at_equal_priority(store: Store) -> None:
    manager = manager_for(store, strategy="priority")
    await add_keys(manager, 1, prefix="api", priority=5)
    await manager.add_profile(
        AuthProfile(
            id="oauth-1", provider="openai", type="oauth", oauth_credential_id="cred-1", priority=5
        )
    )
    picks = [(await manager.get_next_profile("openai")).id for _ in range(3)]  # type: ignore[union-attr]
    assert picks == ["oauth-1", "oauth-1", "oauth-1"]
    await manager.mark_failed("oauth-1", "expired", kind="auth")
    nxt = await manager.get_next_profile("openai")
    assert nxt is not None and nxt.id == "api-0"


async def test_priority_change_by_update_reranks(store: Store) -> None:
    manager = manager_for(store, strategy="priority")
    await add_keys(manager, 2)
    first = await manager.get_next_profile("openai")
    assert first is not None and first.id == "key-0"
    await manager.add_profile(
        AuthProfile(
            id="key-1", provider="openai", api_key="sk-test-updated-0123456789", priority=50
        )
    )
    picks = {(await manager.get_next_profile("openai")).id for _ in range(3)}  # type: ignore[union-attr]
    assert picks == {"key-1"}


async def test_random_picks_only_eligible_profiles_and_covers_the_pool(store: Store) -> None:
    manager = manager_for(store, strategy="random")
    ids = await add_keys(manager, 4)
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    seen = Counter()
    for _ in range(80):
        profile = await manager.get_next_profile("openai")
        assert profile is not None
        seen[profile.id] += 1
    assert "key-0" not in seen
    assert set(seen) == set(ids[1:])


async def test_exclude_skips_profiles_and_all_excluded_gives_none(store: Store) -> None:
    manager = manager_for(store)
    ids = await add_keys(manager, 3)
    for _ in range(6):
        profile = await manager.get_next_profile("openai", exclude=["key-0", "key-2"])
        assert profile is not None and profile.id == "key-1"
    assert await manager.get_next_profile("openai", exclude=ids) is None
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai", exclude=ids)
    assert info.value.retry_in_ms is None


async def test_empty_or_unknown_pool_gives_none(store: Store) -> None:
    manager = manager_for(store)
    assert await manager.get_next_profile("nobody") is None


async def test_acquire_reports_time_until_soonest_recovery(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.mark_failed("key-0", "429", kind="rate_limit", retry_after_s=90)
    await manager.mark_failed("key-1", "429", kind="rate_limit")
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai")
    assert info.value.retry_in_ms is not None
    assert MINUTE_MS - 2_000 <= info.value.retry_in_ms <= MINUTE_MS
    assert "openai" in str(info.value)


async def test_retry_hint_ignores_model_cooldowns_of_other_models(store: Store) -> None:
    # Whole-profile and (profile, model) cooldowns share one sorted set; the hint for a caller
    # that found nothing must come from the whole-profile ones, not from a sooner pair.
    manager = manager_for(store)
    await add_keys(manager, 2)
    await manager.mark_failed("key-1", "429", kind="rate_limit", model="gpt-x")
    advance_time(store, 30_000)
    await manager.mark_failed("key-0", "500", kind="server")
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai", exclude=["key-1"])
    assert info.value.retry_in_ms is not None
    assert MINUTE_MS - 2_000 <= info.value.retry_in_ms <= MINUTE_MS
    # A caller asking for that model sees the pair's recovery (30 s left) as the sooner one.
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai", model="gpt-x")
    assert info.value.retry_in_ms is not None
    assert 28_000 <= info.value.retry_in_ms <= 30_000


async def test_retry_hint_stays_bounded_behind_many_model_cooldowns(store: Store) -> None:
    # The search for the soonest whole-profile cooldown reads at most 64 entries; past them
    # the hint is a lower bound (a caller retries early, never late) and the pick stays cheap.
    manager = manager_for(store)
    await add_keys(manager, 2)
    for i in range(70):
        await manager.mark_failed("key-1", "429", kind="rate_limit", model=f"m{i}")
    advance_time(store, 30_000)
    await manager.mark_failed("key-0", "500", kind="server")
    with pytest.raises(NoProfileAvailableError) as info:
        await manager.acquire("openai", exclude=["key-1"])
    assert info.value.retry_in_ms is not None
    assert 28_000 <= info.value.retry_in_ms <= 30_000


async def test_acquire_waits_for_recovery_within_wait_s(store: Store) -> None:
    manager = manager_for(store)  # its sleep moves the store clock instead of waiting
    await add_keys(manager, 1)
    await manager.mark_failed("key-0", "429", kind="rate_limit")
    with pytest.raises(NoProfileAvailableError):
        await manager.acquire("openai", wait_s=30)
    profile = await manager.acquire("openai", wait_s=61)
    assert profile.id == "key-0"


async def test_pick_does_not_rotate_on_sticky_hits(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 3)
    bound = await manager.get_next_profile("openai", session_id="s-1")
    assert bound is not None and bound.id == "key-0"
    for _ in range(5):
        again = await manager.get_next_profile("openai", session_id="s-1")
        assert again is not None and again.id == "key-0"
    rotation = [(await manager.get_next_profile("openai")).id for _ in range(3)]  # type: ignore[union-attr]
    assert rotation == ["key-1", "key-2", "key-0"]
