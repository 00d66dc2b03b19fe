"""The contract tests, run again against the synchronous managers (``coordinator.sync``).

The test bodies are the async contract tests' own, taken unchanged from their modules: pools
(rotation, cooldowns, sessions), model profiles (breaker open, half-open, probes; failover
through ``execute``) and OAuth (tokens saved, read and refreshed under the lock, logins). Only
what they are given changes:

* the ``store`` fixture is the async store of a :class:`~coordinator.SyncStore`; what the
  bodies do with it directly (``advance_time``, reading keys) runs on that store's loop;
* ``AuthProfileManager``, ``ModelProfileManager`` and ``OAuthManager``, as the bodies and
  their helpers build them, are sync managers, each of whose methods is called from a worker
  thread (``asyncio.to_thread``), as synchronous code calls it, while the body awaits it; a
  coroutine function the body passes (``execute``'s ``call``, ``login``'s ``on_url``) is
  handed over as a plain function that runs it on the body's loop, from the calling thread.

Each runs on memory, Redis and Cluster, like the originals.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import pytest

import coordinator.oauth
from coordinator import (
    AuthProfileManager,
    ModelProfileManager,
    OAuthManager,
    SyncAuthProfileManager,
    SyncModelProfileManager,
    SyncOAuthManager,
    SyncStore,
    connect_sync,
)
from coordinator.sync import SyncManager, SyncSubscription

from . import (
    helpers,
    model_helpers,
    oauth_fixtures,
    test_models_breaker,
    test_models_execute,
    test_oauth_integration,
    test_oauth_scripts,
    test_pool_cooldowns,
    test_pool_rotation,
    test_pool_sessions,
)
from .conftest import unique_namespace
from .oauth_fixtures import manager, oidc_server, provider  # noqa: F401  (fixtures)
from .test_models_execute import http, providers  # noqa: F401  (fixtures)
from .test_oauth_integration import replica_stores  # noqa: F401  (a fixture)

CASES: dict[ModuleType, list[str]] = {
    test_pool_rotation: [
        "test_round_robin_gives_each_profile_exactly_k_picks",
        "test_round_robin_is_global_across_replicas",
        "test_priority_highest_first_and_equal_priority_rotates",
        "test_exclude_skips_profiles_and_all_excluded_gives_none",
        "test_acquire_reports_time_until_soonest_recovery",
        "test_acquire_waits_for_recovery_within_wait_s",
    ],
    test_pool_cooldowns: [
        "test_ordinary_cooldown_is_one_minute_times_five_capped_at_an_hour",
        "test_billing_cooldown_has_its_own_schedule_and_counter",
        "test_success_resets_counters",
        "test_retry_after_lengthens_but_never_shortens",
        "test_rate_limit_with_model_cools_only_that_pair",
        "test_recovery_needs_no_timer_and_is_announced_once",
        "test_clear_cooldown_really_clears_it",
    ],
    test_pool_sessions: [
        "test_session_keeps_its_profile_on_every_replica",
        "test_session_is_rebound_when_its_profile_cools_down",
        "test_session_binding_slides_and_expires_on_redis_time",
        "test_release_session_forgets_the_binding",
    ],
    test_models_breaker: [
        "test_consecutive_failures_open_the_breaker_and_selection_fails_over",
        "test_open_becomes_half_open_after_the_reset_timeout_lazily",
        "test_a_successful_probe_closes_and_the_primary_wins_again",
        "test_a_failed_probe_reopens_and_the_open_period_doubles_up_to_the_cap",
        "test_late_reports_do_not_corrupt_the_breaker",
        "test_reset_breaker_closes_it_at_once",
    ],
    test_models_execute: [
        "test_failover_breaker_probe_close_and_return_to_primary",
        "test_a_caller_error_is_raised_at_once_without_harming_the_profile",
        "test_a_probe_that_ends_in_a_caller_error_gives_its_permit_back",
        "test_after_every_profile_failed_once_execute_knows_when_to_try_again",
    ],
    test_oauth_scripts: [
        "test_due_for_refresh_reads_the_expiry_index_on_redis_time",
        "test_manager_lists_defaults_and_removes_without_secrets",
        "test_a_wrong_secret_key_fails_get_access_token_itself",
    ],
    test_oauth_integration: [
        "test_pkce_login_through_the_loopback_server",
        "test_refresh_rotates_and_the_old_refresh_token_is_dead",
        "test_get_access_token_refreshes_only_within_the_lead_time",
        "test_concurrent_get_access_token_sends_one_refresh",
    ],
}
# The bodies run here, as tests of this module (so this module's fixtures serve them).
for _module, _names in CASES.items():
    for _name in _names:
        assert _name not in globals(), _name
        globals()[_name] = getattr(_module, _name)


# -- the adapter ------------------------------------------------------------------------------


class OnLoop:
    """An object of the SyncStore's loop (its async store, its client, a manager's events),
    usable from the test body's loop: a coroutine its methods return is run on its own loop.
    Attributes are read and written through (``store.time_offset_ms += ...``)."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name in ("client", "events"):  # (objects of that loop too)
            return OnLoop(value, self._loop)
        if not callable(value):
            return value
        return functools.partial(self._call, value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        if not inspect.isawaitable(result):
            return result
        if asyncio.get_running_loop() is self._loop:
            return result

        async def awaited() -> Any:
            return await result

        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(awaited(), self._loop))


class StoreOnLoop(OnLoop):
    """The ``store`` a body gets: the SyncStore's async store; closing it closes the
    SyncStore (loop and thread included)."""

    def __init__(self, sync_store: SyncStore) -> None:
        super().__init__(sync_store.store, sync_store.loop.loop)
        object.__setattr__(self, "sync_store", sync_store)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync_store.close)


def _unwrap(value: Any) -> Any:
    """A manager or store the body passes, as the sync manager takes it."""
    if isinstance(value, SyncFacade):
        return value.sync
    if isinstance(value, StoreOnLoop):
        return value.sync_store
    return value


def _plain(value: Any, body_loop: asyncio.AbstractEventLoop) -> Any:
    """A coroutine function the body passes to a method becomes a plain function (called in
    the sync manager's calling thread) that runs it on the body's loop."""
    value = _unwrap(value)
    if not inspect.iscoroutinefunction(value):
        return value

    def plain(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(value(*args, **kwargs), body_loop).result()

    return plain


class SyncFacade:
    """A sync manager, as the async body expects a manager: its blocking methods awaited in
    a worker thread; what the sync manager does not have (``keys``, ``events``) read from the
    async manager it drives."""

    def __init__(self, sync: SyncManager[Any], async_class: type) -> None:
        self.sync = sync
        self._async_class = async_class

    def __getattr__(self, name: str) -> Any:
        if name == "store":
            return StoreOnLoop(self.sync.store)
        if name == "subscribe":
            return self._subscribe
        if not hasattr(type(self.sync), name):
            return OnLoop(self.sync.manager, self.sync.store.loop.loop).__getattr__(name)
        value = getattr(self.sync, name)
        if not inspect.iscoroutinefunction(getattr(self._async_class, name, None)):
            return value  # a property, or a method that is not async in the async manager

        async def blocking(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            args = tuple(_plain(a, loop) for a in args)
            kwargs = {k: _plain(v, loop) for k, v in kwargs.items()}
            return await asyncio.to_thread(value, *args, **kwargs)

        return blocking

    async def _subscribe(self, *event_types: str) -> AsyncIterator[Any]:
        subscription: SyncSubscription = self.sync.subscribe(*event_types)
        try:
            while True:
                yield await asyncio.to_thread(next, subscription)
        finally:
            subscription.close()

    async def __aenter__(self) -> SyncFacade:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def factory(sync_class: type[SyncManager[Any]], async_class: type) -> Callable[..., SyncFacade]:
    """What the bodies call as ``AuthProfileManager(store, ...)``: the sync manager."""

    def make(store: StoreOnLoop, *args: Any, **kwargs: Any) -> SyncFacade:
        # (an async ``sleep`` stays async: the async manager awaits it on its loop)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return SyncFacade(sync_class(store.sync_store, *args, **kwargs), async_class)

    return make


async def _connect(url: str, *, namespace: str, secret_key: str | None = None) -> StoreOnLoop:
    """``connect`` for the bodies that open other replicas' stores: a SyncStore each."""
    sync_store = await asyncio.to_thread(
        connect_sync, url, namespace=namespace, secret_key=secret_key
    )
    return StoreOnLoop(sync_store)


@pytest.fixture
async def store(backend_url: str, secret_key: str) -> AsyncIterator[StoreOnLoop]:
    """The async store of a SyncStore on the test's backend (this module's ``store``)."""
    sync_store = await asyncio.to_thread(
        connect_sync, backend_url, namespace=unique_namespace(), secret_key=secret_key
    )
    try:
        yield StoreOnLoop(sync_store)
    finally:
        await asyncio.to_thread(sync_store.close)


@pytest.fixture(autouse=True)
def sync_managers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The managers the bodies (and their helpers) build are sync managers."""
    twins = {
        "AuthProfileManager": factory(SyncAuthProfileManager, AuthProfileManager),
        "ModelProfileManager": factory(SyncModelProfileManager, ModelProfileManager),
        "OAuthManager": factory(SyncOAuthManager, OAuthManager),
    }
    modules = [helpers, model_helpers, oauth_fixtures, coordinator.oauth, *CASES]
    for module in modules:
        for name, make in twins.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, make)
    monkeypatch.setattr(test_oauth_integration, "connect", _connect)


async def test_the_bodies_get_sync_managers(store: StoreOnLoop) -> None:
    # (the adapter's own check: what the bodies build really is the sync surface)
    models = model_helpers.model_manager(store)
    assert isinstance(models, SyncFacade)
    assert isinstance(models.sync, SyncModelProfileManager)
    assert models.sync.store is store.sync_store
    assert store.sync_store.loop.loop is not asyncio.get_running_loop()

    async def call(c: Any) -> str:
        return "ok"

    assert not inspect.iscoroutinefunction(_plain(call, asyncio.get_running_loop()))
    await model_helpers.add_three(models)  # type: ignore[arg-type]
    assert await models.execute(call) == "ok"
