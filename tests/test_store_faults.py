"""Faults of a real Redis under concurrent load: restarts, kill -9, idle timeouts, CLIENT KILL,
a SIGSTOP stall. While Redis is up no call fails; while it is not, calls fail only with
StoreUnavailableError, each within the store's documented bound; no acknowledged pick is lost
(with an append-only file) and none is applied twice (the pool's rotation sequence counts
every pick the server ran).

Run with ``-s`` to see each outage's figures (also kept as ``record_property``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from coordinator import AuthProfile, AuthProfileManager, Store, StoreUnavailableError, connect
from coordinator.testing import RedisCluster, RedisSentinel, RedisServer

from .conftest import unique_namespace
from .helpers import add_keys, manager_for

# Small timeouts keep the stall test fast (the other faults are noticed at once: a refused or
# closed connection); the bound they give is what it checks.
_FAST = "?socket_timeout=0.5&socket_connect_timeout=0.5&pool_timeout=0.5"
_TASKS = 16


@dataclass
class _Call:
    started: float
    ended: float
    error: BaseException | None


@dataclass
class _Load:
    """``_TASKS`` tasks picking a profile and reporting its success, until stopped."""

    manager: AuthProfileManager
    calls: list[_Call] = field(default_factory=list)
    picks: int = 0  # acknowledged picks that returned a profile
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _call(self, operation: Callable[[], Awaitable[object]]) -> object:
        started = time.monotonic()
        try:
            result = await operation()
        except Exception as exc:  # every kind is recorded; the test says which are allowed
            self.calls.append(_Call(started, time.monotonic(), exc))
            await asyncio.sleep(0.01)  # as a client would: no busy loop on a dead server
            return None
        self.calls.append(_Call(started, time.monotonic(), None))
        return result

    async def _worker(self) -> None:
        while not self._stop.is_set():
            profile = await self._call(lambda: self.manager.get_next_profile("openai"))
            if not isinstance(profile, AuthProfile):
                await asyncio.sleep(0.005)
                continue
            self.picks += 1
            await self._call(functools.partial(self.manager.mark_success, profile.id))

    async def run_while(
        self, fault: Callable[[], Awaitable[tuple[float, float]]]
    ) -> tuple[float, float]:
        """Run the load, let it settle, apply ``fault`` (which returns when Redis went down and
        came back up, by the monotonic clock), run on a little, stop."""
        workers = [asyncio.create_task(self._worker()) for _ in range(_TASKS)]
        try:
            await asyncio.sleep(0.3)
            window = await fault()
            await asyncio.sleep(0.5)
        finally:
            self._stop.set()
            await asyncio.gather(*workers)
        return window


def _errors(calls: list[_Call]) -> list[_Call]:
    return [call for call in calls if call.error is not None]


def _check_outage(
    name: str,
    load: _Load,
    window: tuple[float, float],
    store: Store,
    record_property: Callable[[str, object], None],
) -> list[_Call]:
    """The promises of every fault; prints and records the outage's figures."""
    down, up = window
    failed = _errors(load.calls)
    for call in failed:
        assert isinstance(call.error, StoreUnavailableError), repr(call.error)
    before = [c for c in load.calls if c.ended < down]
    after = [c for c in load.calls if c.started > up]
    assert before and not _errors(before), "a call failed before the fault"
    assert after and not _errors(after), [str(c.error) for c in _errors(after)][:3]
    longest = max((c.ended - c.started for c in failed), default=0.0)
    # The bound is a promise, so it is asserted; with a second's margin for a loaded machine.
    assert longest <= store.timeouts.bound_s + 1.0, longest
    figures = {
        "outage_s": round(up - down, 3),
        "calls": len(load.calls),
        "failed_calls": len(failed),
        "longest_failed_call_s": round(longest, 3),
        "bound_s": store.timeouts.bound_s,
    }
    print(f"\n[{name}] {figures}")
    record_property(name, figures)
    return failed


async def _sequence(store: Store) -> int:
    """The pool's rotation sequence: one more for every pick the server ran."""
    return int(await store.client.hget(f"{store.namespace}:{{pool:openai}}:meta", "seq") or 0)


async def _connected(
    server: RedisServer, secret_key: str, query: str = ""
) -> tuple[Store, AuthProfileManager]:
    store = await connect(server.url + query, namespace=unique_namespace(), secret_key=secret_key)
    manager = manager_for(store)
    await add_keys(manager, 4)
    return store, manager


def _restart(
    server: RedisServer, stop: Callable[[], None]
) -> Callable[[], Awaitable[tuple[float, float]]]:
    async def fault() -> tuple[float, float]:
        down = time.monotonic()
        await asyncio.to_thread(stop)  # in a thread: the load keeps running meanwhile
        await asyncio.sleep(0.2)
        await asyncio.to_thread(server.start)
        return down, time.monotonic()

    return fault


@pytest.mark.parametrize("how", ["graceful", "kill-9"])
async def test_a_restart_with_an_append_only_file_loses_and_repeats_nothing(
    how: str, secret_key: str, record_property: Callable[[str, object], None]
) -> None:
    with RedisServer(aof=True) as server:
        store, manager = await _connected(server, secret_key)
        try:
            first = await _sequence(store)
            load = _Load(manager)
            stop = server.shutdown if how == "graceful" else server.kill
            window = await load.run_while(_restart(server, stop))
            failed = _check_outage(f"restart {how}, aof", load, window, store, record_property)
            ran = await _sequence(store) - first
            # Every acknowledged pick survived; a failed call may have run (it is never sent
            # twice), so the server ran at most one more pick per failed call.
            assert load.picks <= ran <= load.picks + len(failed)
        finally:
            await store.close()


async def test_a_kill_without_persistence_starts_empty_and_calls_work_again(
    secret_key: str, record_property: Callable[[str, object], None]
) -> None:
    with RedisServer() as server:
        store, manager = await _connected(server, secret_key)
        try:
            load = _Load(manager)
            window = await load.run_while(_restart(server, server.kill))
            _check_outage("kill-9, no persistence", load, window, store, record_property)
            # The state went with the server; the functions were loaded again on first use.
            assert await manager.get_next_profile("openai") is None
            await add_keys(manager, 1)
            assert await manager.get_next_profile("openai") is not None
        finally:
            await store.close()


async def test_a_stall_fails_calls_within_the_bound_then_they_work_again(
    secret_key: str, record_property: Callable[[str, object], None]
) -> None:
    with RedisServer() as server:
        store, manager = await _connected(server, secret_key, _FAST)
        assert store.timeouts.bound_s == 1.5
        try:
            first = await _sequence(store)

            async def stall() -> tuple[float, float]:
                down = time.monotonic()
                server.pause()
                await asyncio.sleep(store.timeouts.bound_s + 0.5)
                server.resume()
                return down, time.monotonic()

            load = _Load(manager)
            window = await load.run_while(stall)
            failed = _check_outage("SIGSTOP stall", load, window, store, record_property)
            assert failed, "the stall was not noticed"
            # A call that timed out was written: the server ran it when it woke up (which is
            # why it is never sent again).
            ran = await _sequence(store) - first
            assert load.picks <= ran <= load.picks + len(failed)
        finally:
            await store.close()


async def _burst(manager: AuthProfileManager) -> list[BaseException]:
    results = await asyncio.gather(
        *(manager.get_next_profile("openai") for _ in range(_TASKS)), return_exceptions=True
    )
    return [r for r in results if isinstance(r, BaseException)]


async def _client_count(admin: aioredis.Redis) -> int:
    return len(await admin.client_list(_type="normal")) - 1  # not the admin itself


async def _closed_by_server(
    server: RedisServer, close: Callable[[aioredis.Redis], Awaitable[object]]
) -> None:
    """Burst to fill the pool, let the server close every connection, burst again."""
    async with aioredis.Redis(port=server.port) as admin:
        await close(admin)
        deadline = time.monotonic() + 10
        while await _client_count(admin) > 0:
            assert time.monotonic() < deadline, "the server kept the idle connections"
            await asyncio.sleep(0.05)
        await admin.config_set("timeout", 0)


@pytest.mark.parametrize("how", ["CLIENT KILL", "idle timeout", "graceful restart"])
async def test_connections_the_server_closed_are_replaced_unseen(how: str, secret_key: str) -> None:
    with RedisServer(aof=True) as server:
        store, manager = await _connected(server, secret_key)
        try:
            assert await _burst(manager) == []  # a pool of _TASKS open connections
            if how == "CLIENT KILL":
                await _closed_by_server(
                    server, lambda admin: admin.client_kill_filter(_type="normal", skipme=True)
                )
            elif how == "idle timeout":
                await _closed_by_server(server, lambda admin: admin.config_set("timeout", 1))
            else:
                await asyncio.to_thread(server.shutdown)
                await asyncio.to_thread(server.start)
            first = await _sequence(store)
            assert await _burst(manager) == []
            assert await _sequence(store) - first == _TASKS  # each pick ran once
        finally:
            await store.close()


async def _first_success(manager: AuthProfileManager, timeout_s: float = 10) -> None:
    """Wait until a call succeeds again (the client has found the new primary)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await manager.get_next_profile("openai")
            return
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "no call succeeded after the failover"
            await asyncio.sleep(0.05)


async def test_a_cluster_primary_crash_fails_calls_until_its_replica_serves(
    secret_key: str, record_property: Callable[[str, object], None]
) -> None:
    with RedisCluster(3, replicas=1, node_timeout_ms=1000) as cluster:
        store = await connect(cluster.url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            manager = manager_for(store)
            await add_keys(manager, 4)
            first = await _sequence(store)

            async def crash() -> tuple[float, float]:
                primary = cluster.primary_of("{pool:openai}")
                assert primary is not None
                down = time.monotonic()
                primary.kill()
                await asyncio.to_thread(cluster.wait_for_failover, "{pool:openai}", primary)
                await _first_success(manager)
                return down, time.monotonic()

            load = _Load(manager)
            window = await load.run_while(crash)
            failed = _check_outage("cluster primary crash", load, window, store, record_property)
            # Replication is asynchronous: a pick acknowledged just before the crash may be
            # lost with the primary. None is applied twice.
            ran = await _sequence(store) - first
            assert ran <= load.picks + len(failed)
            print(f"[cluster primary crash] picks acknowledged {load.picks}, kept {ran}")
        finally:
            await store.close()


async def test_a_sentinel_primary_kill_fails_calls_until_the_replica_is_promoted(
    secret_key: str, record_property: Callable[[str, object], None]
) -> None:
    with RedisSentinel("faults", replica=True, down_after_ms=500) as sentinel:
        store = await connect(sentinel.url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            assert not store.client.connection_pool.maint_notifications_enabled()
            manager = manager_for(store)
            await add_keys(manager, 4)
            first = await _sequence(store)

            async def kill() -> tuple[float, float]:
                down = time.monotonic()
                sentinel.primary.kill()
                await asyncio.to_thread(sentinel.wait_for_failover)
                await _first_success(manager)
                return down, time.monotonic()

            load = _Load(manager)
            window = await load.run_while(kill)
            failed = _check_outage("sentinel primary kill", load, window, store, record_property)
            ran = await _sequence(store) - first
            assert ran <= load.picks + len(failed)  # asynchronous replication: may lose some
            print(f"[sentinel primary kill] picks acknowledged {load.picks}, kept {ran}")
        finally:
            await store.close()


async def test_a_burst_of_256_concurrent_calls_in_one_process_all_succeed(
    redis_server: RedisServer, secret_key: str
) -> None:
    # More concurrent calls than the pool has connections, on a healthy Redis: callers wait
    # for a connection (redis-py's pool does not serve them in order) but none fails.
    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        manager = manager_for(store)
        await add_keys(manager, 4)
        errors: list[BaseException] = []
        picks = 0
        stop = time.monotonic() + 3.0

        async def caller() -> None:
            nonlocal picks
            while time.monotonic() < stop:
                try:
                    profile = await manager.get_next_profile("openai")
                    assert profile is not None
                    await manager.mark_success(profile.id)
                    picks += 1
                except StoreUnavailableError as exc:
                    errors.append(exc)

        await asyncio.gather(*(caller() for _ in range(256)))
        print(f"\n256 callers for 3 s: {picks} picks and reports, {len(errors)} errors")
        assert errors == [] and picks > 256
    finally:
        await store.close()
