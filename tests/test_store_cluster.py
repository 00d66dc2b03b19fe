"""Round trips counted on the wire (MONITOR on every node), standalone and Cluster: one command
per operation. Cluster errors that redis-py raises outside its RedisError tree
reach the caller as StoreUnavailableError."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from coordinator import AuthProfile, AuthProfileManager, StoreUnavailableError, connect
from coordinator.store.connection import _ClusterConnection
from coordinator.testing import RedisCluster, free_port

from .conftest import unique_namespace
from .helpers import add_keys, manager_for
from .wire import Wire, wire_target


def _hot_operations(manager: AuthProfileManager) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "get_next_profile": lambda: manager.get_next_profile(
            "openai", session_id="s", model="m", exclude=["x"]
        ),
        "mark_success": lambda: manager.mark_success("key-0"),
        "mark_failed": lambda: manager.mark_failed(
            "key-1", "x", kind="rate_limit", retry_after_s=3
        ),
    }


@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_each_hot_operation_is_one_command_on_the_wire(
    backend: str, request: pytest.FixtureRequest, secret_key: str
) -> None:
    url, ports = wire_target(backend, request)
    store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        manager = manager_for(store)
        await add_keys(manager, 3)
        for operation in _hot_operations(manager).values():  # warm: connections, caches
            await operation()
        async with Wire(ports) as wire:
            await wire.sent("start")
            for name, operation in _hot_operations(manager).items():
                await operation()
                assert await wire.sent(f"after-{name}") == ["FCALL"], name
            # A plain command is routed by redis-py, from its own table of key positions.
            await store.command("HGET", f"{store.namespace}:{{pool:openai}}:meta", "seq")
            assert await wire.sent("after-HGET") == ["HGET"]
    finally:
        await store.close()


async def test_connecting_to_an_unreachable_cluster_is_store_unavailable() -> None:
    url = f"redis+cluster://:pw-cluster-secret@127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailableError) as info:
        await connect(url, namespace=unique_namespace())
    assert isinstance(info.value.__cause__, rexc.RedisClusterException)
    assert "pw-cluster-secret" not in str(info.value)


async def test_calls_with_every_cluster_node_down_are_store_unavailable(secret_key: str) -> None:
    with RedisCluster(3) as cluster:
        store = await connect(cluster.url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            manager = manager_for(store)
            await add_keys(manager, 2)
            assert await manager.get_next_profile("openai") is not None
            cluster.stop()
            # The first call meets a refused connection (a RedisError); the next ones find
            # no node to learn the slots from (RedisClusterException, no RedisError).
            causes = []
            for call in (
                lambda: manager.get_next_profile("openai"),
                lambda: manager.get_next_profile("openai"),
                manager.get_status,
            ):
                with pytest.raises(StoreUnavailableError) as info:
                    await call()
                causes.append(type(info.value.__cause__))
            assert any(issubclass(c, rexc.RedisClusterException) for c in causes), causes
        finally:
            await store.close()


async def _normal_clients(admin: aioredis.Redis) -> int:
    return len(await admin.client_list(_type="normal")) - 1  # not the admin itself


async def _close_idle_connections(cluster: RedisCluster, how: str) -> None:
    """Make every node close the connections of its clients (the admin's own aside), by
    CLIENT KILL or by its idle timeout, and wait until none is left."""
    admins = [aioredis.Redis(port=node.port, decode_responses=True) for node in cluster.nodes]
    try:
        for admin in admins:
            if how == "CLIENT KILL":
                await admin.client_kill_filter(_type="normal", skipme=True)
            else:
                await admin.config_set("timeout", 1)
        deadline = time.monotonic() + 10
        for admin in admins:
            while await _normal_clients(admin) > 0:
                assert time.monotonic() < deadline, "a node kept its idle connections"
                await asyncio.sleep(0.05)
    finally:
        for admin in admins:
            await admin.config_set("timeout", 0)
            await admin.aclose()


@pytest.mark.parametrize("how", ["CLIENT KILL", "idle timeout"])
async def test_connections_a_cluster_node_closed_are_replaced_unseen(
    how: str, redis_cluster: RedisCluster, secret_key: str
) -> None:
    """A connection a node closed while it sat idle is replaced before anything is written on
    it: a burst of concurrent calls afterwards sees no error, each call is sent once (counted
    on the wire) and applied once (the rotation sequence counts the picks the server ran)."""
    burst = 16
    store = await connect(redis_cluster.url, namespace=unique_namespace(), secret_key=secret_key)
    ports = [node.port for node in redis_cluster.nodes]
    try:
        manager = manager_for(store)
        await add_keys(manager, 2)
        meta = f"{store.namespace}:{{pool:openai}}:meta"

        async def picks_and_reports() -> list[BaseException]:
            picked = await asyncio.gather(
                *(manager.get_next_profile("openai") for _ in range(burst)),
                return_exceptions=True,
            )
            reports = await asyncio.gather(
                *(manager.mark_success(p.id) for p in picked if isinstance(p, AuthProfile)),
                return_exceptions=True,
            )
            return [r for r in [*picked, *reports] if isinstance(r, BaseException)]

        assert await picks_and_reports() == []  # a node pool of `burst` open connections
        await _close_idle_connections(redis_cluster, how)
        first = int(await store.command("HGET", meta, "seq"))
        async with Wire(ports) as wire:
            await wire.sent("start")
            errors = await picks_and_reports()
            sent = Counter(await wire.sent("after-burst"))
        assert errors == [], errors
        assert int(await store.command("HGET", meta, "seq")) - first == burst  # each ran once
        # Each call went out once, straight to its node: no second try, no slot-map refresh
        # (a failed call would have made the client ask CLUSTER SLOTS), no COMMAND GETKEYS.
        # The only other command is each new connection's handshake (HELLO).
        assert sent["FCALL"] == 2 * burst, sent
        assert set(sent) <= {"FCALL", "HELLO"} and sent["HELLO"] <= burst, sent
        # Once reconnected, an operation is one command on the wire again.
        async with Wire(ports) as wire:
            await wire.sent("start")
            await manager.get_next_profile("openai")
            assert await wire.sent("after-pick") == ["FCALL"]
    finally:
        await store.close()


async def test_cluster_nodes_make_connections_that_are_checked_before_use(
    redis_cluster: RedisCluster,
) -> None:
    # (The class is set on redis-py's shared connection settings: a redis-py that stopped
    # reading them would make the test above fail; this one says why.)
    store = await connect(redis_cluster.url, namespace=unique_namespace())
    try:
        await store.ping()
        nodes = store.client.get_nodes()
        assert nodes and all(n.connection_class is _ClusterConnection for n in nodes)
    finally:
        await store.close()


async def test_cluster_urls_carry_the_timeouts_and_the_connection_limit(
    redis_cluster: RedisCluster,
) -> None:
    url = f"{redis_cluster.url}?max_connections=7&socket_timeout=3&socket_connect_timeout=1.5"
    store = await connect(url, namespace=unique_namespace())
    try:
        assert store.timeouts.socket_timeout == 3.0 and store.timeouts.bound_s == 9.5
        node = store.client.get_node_from_key("{pool:openai}")
        assert node.max_connections == 7
        assert node.connection_kwargs["socket_timeout"] == 3.0
        assert node.connection_kwargs["socket_connect_timeout"] == 1.5
    finally:
        await store.close()
