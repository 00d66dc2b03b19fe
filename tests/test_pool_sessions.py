"""Contract tests: sticky sessions shared by replicas, and profile lifecycle."""

from __future__ import annotations

import pytest

from coordinator import AuthProfile, ConfigError, ProfileNotFoundError, Store
from coordinator.testing import advance_time

from .helpers import MINUTE_MS, add_keys, manager_for


async def test_session_keeps_its_profile_on_every_replica(store: Store) -> None:
    a, b = manager_for(store), manager_for(store)
    await add_keys(a, 3)
    bound = await a.get_next_profile("openai", session_id="chat-1")
    assert bound is not None
    for _ in range(5):
        on_b = await b.get_next_profile("openai", session_id="chat-1")
        assert on_b is not None and on_b.id == bound.id
    found = await b.get_profile_for_session("chat-1")
    assert found is not None and found.id == bound.id


async def test_session_is_rebound_when_its_profile_cools_down(store: Store) -> None:
    a, b = manager_for(store), manager_for(store)
    await add_keys(a, 2)
    bound = await a.get_next_profile("openai", session_id="chat-1")
    assert bound is not None
    await b.mark_failed(bound.id, "429", kind="rate_limit")
    assert await a.get_profile_for_session("chat-1") is None  # the binding is dropped
    moved = await a.get_next_profile("openai", session_id="chat-1")
    assert moved is not None and moved.id != bound.id
    advance_time(store, MINUTE_MS + 1)  # the old profile recovers; the session stays put
    again = await b.get_next_profile("openai", session_id="chat-1")
    assert again is not None and again.id == moved.id


async def test_session_binding_slides_and_expires_on_redis_time(store: Store) -> None:
    manager = manager_for(store, session_ttl_s=600)
    await add_keys(manager, 3)
    bound = await manager.get_next_profile("openai", session_id="s")
    assert bound is not None
    for _ in range(3):  # each use within the TTL extends it
        advance_time(store, 500_000)
        same = await manager.get_next_profile("openai", session_id="s")
        assert same is not None and same.id == bound.id
    advance_time(store, 600_001)
    assert await manager.get_profile_for_session("s") is None


async def test_release_session_forgets_the_binding(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 3)
    await manager.get_next_profile("openai", session_id="s")
    assert await manager.release_session("s") is True
    assert await manager.get_profile_for_session("s") is None
    assert await manager.release_session("s") is False


async def test_sessions_can_be_turned_off(store: Store) -> None:
    manager = manager_for(store, session_sticky=False)
    await add_keys(manager, 2)
    picks = {(await manager.get_next_profile("openai", session_id="s")).id for _ in range(2)}  # type: ignore[union-attr]
    assert picks == {"key-0", "key-1"}


async def test_remove_profile_unbinds_its_sessions(store: Store) -> None:
    a, b = manager_for(store), manager_for(store)
    await add_keys(a, 2)
    bound = await a.get_next_profile("openai", session_id="s")
    assert bound is not None
    assert await b.remove_profile(bound.id) is True
    assert await a.get_profile_for_session("s") is None
    # Adding a profile with the same id again does not revive the old binding.
    await add_keys(a, 2)
    other = await a.get_next_profile("openai", session_id="s2")
    assert other is not None
    assert await b.remove_profile("no-such") is False


async def test_readded_profile_does_not_inherit_sessions(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1)
    await manager.get_next_profile("openai", session_id="s")
    await manager.remove_profile("key-0")
    await add_keys(manager, 1)
    assert await manager.get_profile_for_session("s") is None


async def test_reports_on_a_profile_removed_by_another_replica_are_harmless(store: Store) -> None:
    a, b = manager_for(store), manager_for(store)
    await add_keys(a, 2)
    profile = await a.get_next_profile("openai")
    assert profile is not None
    await b.remove_profile(profile.id)
    assert (await a.mark_failed(profile.id, "429", kind="rate_limit")).status == "missing"
    assert await a.mark_success(profile.id) is False
    remaining = [(await a.get_next_profile("openai")).id for _ in range(2)]  # type: ignore[union-attr]
    assert profile.id not in remaining
    assert (await a.mark_failed("never-existed", "x")).status == "missing"


async def test_get_and_list_profiles(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2, provider="openai")
    await add_keys(manager, 1, provider="anthropic", prefix="claude")
    assert [p.id for p in await manager.list_profiles()] == ["claude-0", "key-0", "key-1"]
    assert [p.id for p in await manager.list_profiles("openai")] == ["key-0", "key-1"]
    fetched = await manager.get_profile("claude-0")
    assert fetched.provider == "anthropic"
    secret = fetched.secret()
    assert secret is not None and secret.reveal().startswith("sk-test-anthropic")
    with pytest.raises(ProfileNotFoundError):
        await manager.get_profile("nope")


async def test_profile_id_belongs_to_one_provider(store: Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 1, provider="openai")
    with pytest.raises(ConfigError) as info:
        await add_keys(manager, 1, provider="anthropic")
    assert info.value.field == "id"


async def test_env_profiles_keep_secrets_out_of_redis(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-from-env-0123456789abcdef")
    manager = manager_for(store)
    await manager.add_profile(
        AuthProfile(id="env-1", provider="openai", api_key_env="TEST_OPENAI_KEY", metadata={"m": 1})
    )
    profile = await manager.get_next_profile("openai")
    assert profile is not None and profile.metadata == {"m": 1}
    secret = profile.secret()
    assert secret is not None and secret.reveal() == "sk-from-env-0123456789abcdef"


async def test_metadata_is_stored_byte_for_byte(store: Store) -> None:
    manager = manager_for(store)
    metadata = {"base_url": "https://api.example/v1", "big": 12345678901234567, "f": 0.1, "e": {}}
    await manager.add_profile(
        AuthProfile(id="m-1", provider="openai", api_key_env="X", metadata=metadata)
    )
    assert (await manager.get_profile("m-1")).metadata == metadata
