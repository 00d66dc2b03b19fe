"""Round trips counted on the wire (MONITOR on every node), standalone and Cluster: one command
per operation. Cluster errors that redis-py raises outside its RedisError tree
reach the caller as StoreUnavailableError."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from coordinator import AuthProfileManager, StoreUnavailableError, connect
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


async def test_connections_a_cluster_node_closed_fail_once_and_never_run_twice(
    secret_key: str,
) -> None:
    """redis-py's cluster nodes hand out idle connections unchecked (unlike its standalone
    pool): a call on one the server closed fails, as StoreUnavailableError, and is not sent
    again; redis-py then drops the node's idle connections and the next calls work."""
    burst = 16
    with RedisCluster(3) as cluster:
        store = await connect(cluster.url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            manager = manager_for(store)
            await add_keys(manager, 2)
            meta = f"{store.namespace}:{{pool:openai}}:meta"

            async def picks() -> list[object]:
                calls = (manager.get_next_profile("openai") for _ in range(burst))
                return list(await asyncio.gather(*calls, return_exceptions=True))

            assert not [r for r in await picks() if isinstance(r, BaseException)]
            first = int(await store.command("HGET", meta, "seq"))
            for node in cluster.nodes:
                async with aioredis.Redis(port=node.port) as admin:
                    await admin.client_kill_filter(_type="normal", skipme=True)
            results = await picks()
            failed = [r for r in results if isinstance(r, BaseException)]
            assert all(isinstance(r, StoreUnavailableError) for r in failed), failed
            ran = int(await store.command("HGET", meta, "seq")) - first
            assert burst - len(failed) <= ran <= burst
            assert not [r for r in await picks() if isinstance(r, BaseException)]
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
