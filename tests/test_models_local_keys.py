"""Keys a replica holds itself (an ``env`` variable, an ``api_key`` it decrypts): a replica
that cannot use one skips the profile on its own, and the profile's own key never reaches a
stored error."""

from __future__ import annotations

import pytest

from coordinator import SecretBox, Store, generate_key
from coordinator.models.manager import ModelProfileManager
from coordinator.models.types import ModelAuth, ModelCall

from .model_helpers import (
    MINUTE_MS,
    breaker,
    event_types,
    events,
    model_manager,
    profile,
    spy_on_scripts,
)

VAR = "COORDINATOR_TEST_LOCAL_KEY"
RECHECK_MS = 30_000  # ModelConfig.unusable_cooldown_ms, the default


class Clock:
    """The manager's local clock (Unix seconds), moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def manager_with_clock(store: Store, clock: Clock, **breaker_settings: int) -> ModelProfileManager:
    base = model_manager(store, breaker=breaker_settings)
    return ModelProfileManager(store, base.config, sleep=base._sleep, clock=clock)


async def test_a_variable_unset_here_skips_the_profile_on_this_replica_only(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    clock = Clock()
    here = manager_with_clock(store, clock)
    await here.add_profile(profile("keyed", 100, auth=ModelAuth.env(VAR)))
    await here.add_profile(profile("spare", 90))
    calls: list[str] = []
    spy_on_scripts(store, lambda name, _keys, _args: calls.append(name))

    sel = await here.select_profile()
    assert sel is not None and (sel.profile_id, sel.reason) == ("spare", "failover")
    assert calls == ["model_select", "model_select"]  # picked again without it, once
    # Nothing was held against the profile: no failure, no cooldown, no event.
    assert await breaker(store, "keyed") == {}
    assert await event_types(store, "keyed") == ["profile:added"]

    # Remembered: the next selections skip it in one round trip.
    calls.clear()
    sel = await here.select_profile()
    assert sel is not None and sel.profile_id == "spare" and calls == ["model_select"]

    # A replica that holds the key uses the profile meanwhile.
    monkeypatch.setenv(VAR, "value-of-the-key")
    there = model_manager(store)
    sel = await there.select_profile()
    assert sel is not None and (sel.profile_id, sel.reason) == ("keyed", "primary")

    # This replica looks again after unusable_cooldown_ms of its own clock.
    clock.now += RECHECK_MS / 1000 - 1
    sel = await here.select_profile()
    assert sel is not None and sel.profile_id == "spare"
    clock.now += 2
    sel = await here.select_profile()
    assert sel is not None and sel.profile_id == "keyed"


async def test_a_failover_pick_skips_a_profile_whose_key_is_not_here(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    manager = manager_with_clock(store, Clock())
    await manager.add_profile(profile("first", 100))
    await manager.add_profile(profile("keyed", 90, auth=ModelAuth.env(VAR)))
    await manager.add_profile(profile("last", 80))
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "first"
    nxt = await manager.get_next_available_profile(sel, kind="server")
    assert nxt is not None and nxt.profile_id == "last"
    failover = [d for t, p, d in await events(store) if t == "profile:failover"]
    assert [(d["from"], d["to"]) for d in failover] == [("first", "keyed")]
    assert await breaker(store, "keyed") == {}


async def test_a_half_open_probe_is_given_back_when_the_key_is_not_here(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VAR, raising=False)
    settings = {"failure_threshold": 1, "reset_timeout_ms": MINUTE_MS, "half_open_max_probes": 1}
    here = manager_with_clock(store, Clock(), **settings)
    await here.add_profile(profile("keyed", 100, auth=ModelAuth.env(VAR)))
    await here.add_profile(profile("spare", 90))
    await here.record_failure("keyed", "server", error="500")  # opens it (threshold 1)
    store.time_offset_ms += MINUTE_MS + 1
    sel = await here.select_profile()  # takes the one permit, cannot use the key, gives it back
    assert sel is not None and sel.profile_id == "spare"
    assert (await breaker(store, "keyed")).get("permits") in ({}, [])
    monkeypatch.setenv(VAR, "value-of-the-key")
    probe = await model_manager(store, breaker=settings).select_profile()
    assert probe is not None and (probe.profile_id, probe.reason) == ("keyed", "testing")


async def test_a_key_this_replica_cannot_decrypt_never_counts_against_the_breaker(
    store: Store,
) -> None:
    owner = model_manager(store)
    await owner.add_profile(profile("sealed", 100, auth=ModelAuth.api_key("sk-sealed-0123456789")))
    await owner.add_profile(profile("spare", 90))
    # Another replica configured with another secret_key (a rotation gone wrong).
    other_store = Store(
        store.client, backend=store.backend, url=store.url, namespace=store.namespace,
        box=SecretBox.from_text(generate_key()),
    )  # fmt: skip
    other = model_manager(other_store)
    served: list[str] = []

    async def call(c: ModelCall) -> str:
        served.append(c.profile.id)
        return "ok"

    for _ in range(4):
        assert await other.execute(call) == "ok"
    assert served == ["spare"] * 4
    assert await breaker(store, "sealed") == {}
    sel = await owner.select_profile()
    assert sel is not None and (sel.profile_id, sel.reason) == ("sealed", "primary")


@pytest.mark.parametrize("by_id", [False, True])
async def test_a_reported_error_never_carries_the_profiles_own_key(
    store: Store, by_id: bool
) -> None:
    key = "plainword1234"  # nothing token-shaped about it: only knowing it finds it
    manager = model_manager(store)
    await manager.add_profile(profile("mine", 100, auth=ModelAuth.api_key(key)))
    await manager.add_profile(profile("spare", 90))
    sel = await manager.select_profile()
    assert sel is not None
    target = sel.profile_id if by_id else sel
    error = RuntimeError(f"upstream rejected key {key}")
    await manager.record_failure(target, "auth", error=error)
    await manager.get_next_available_profile(target, error=error, kind="auth")
    stored = (await breaker(store, "mine")).get("last_error", "")
    assert "upstream rejected key" in stored and key not in stored
    for _type, _pid, data in await events(store):
        assert key not in repr(data)
