"""Commands packed by hiredis give the very bytes redis-py's own packer gives, or go through
redis-py unchanged; a standalone store's connections use it."""

from __future__ import annotations

import enum
from typing import Any

import pytest
import redis.exceptions as rexc
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from coordinator import connect
from coordinator.store._packing import with_hiredis_packing
from coordinator.testing import RedisServer


class _Kind(enum.StrEnum):
    SERVER = "server"


_PACKED_BY_HIREDIS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, b"{p}:k1", b"{p}:k2", 0, "p-0", _Kind.SERVER, ""),
    ("SET", "clé", "vàlue ünïcode ✓"),
    ("HGET", b"\x00\xffbinary", -17, 2**70),
    (b"PING",),
    ("XADD", "s", "*", "data", "x" * 20_000),  # redis-py splits this one into chunks
]

_LEFT_TO_REDIS_PY: list[tuple[Any, ...]] = [
    ("CONFIG GET", "maxmemory"),  # redis-py splits the name in two
    (b"CONFIG GET", "maxmemory"),
    ("SET", "k", 1.5),
    ("SET", "k", memoryview(b"abc")),
]


def _redis_py_bytes(args: tuple[Any, ...]) -> bytes:
    return b"".join(bytes(part) for part in Connection().pack_command(*args))


@pytest.mark.parametrize("args", _PACKED_BY_HIREDIS + _LEFT_TO_REDIS_PY)
def test_packed_bytes_are_redis_pys_own(args: tuple[Any, ...]) -> None:
    fast = with_hiredis_packing(Connection)()
    packed = b"".join(bytes(part) for part in fast.pack_command(*args))
    assert packed == _redis_py_bytes(args)


@pytest.mark.parametrize("args", _PACKED_BY_HIREDIS)
def test_plain_arguments_take_the_hiredis_path(
    args: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    def redis_py_packer(self: Connection, *a: Any) -> list[bytes]:
        raise AssertionError("redis-py's packer was used")

    monkeypatch.setattr(Connection, "pack_command", redis_py_packer)
    assert len(with_hiredis_packing(Connection)().pack_command(*args)) == 1


def test_booleans_keep_redis_pys_error() -> None:
    fast = with_hiredis_packing(Connection)()
    with pytest.raises(rexc.DataError):
        fast.pack_command("SET", "k", True)


def test_one_subclass_per_connection_kind() -> None:
    for base in (Connection, SSLConnection, UnixDomainSocketConnection):
        made = with_hiredis_packing(base)
        assert issubclass(made, base)
        assert with_hiredis_packing(base) is made
        assert with_hiredis_packing(made) is made


async def test_a_standalone_store_packs_with_hiredis(redis_server: RedisServer) -> None:
    store = await connect(redis_server.url, namespace="packing")
    try:
        pool = store.client.connection_pool
        assert issubclass(pool.connection_class, Connection)
        assert pool.connection_class is with_hiredis_packing(Connection)
        await store.command("SET", "{packing}:k", "värde")
        assert await store.command("GET", "{packing}:k") == "värde"
        await store.command("DEL", "{packing}:k")
    finally:
        await store.close()


async def test_a_sentinel_store_packs_with_hiredis() -> None:
    from redis.asyncio.sentinel import SentinelManagedConnection

    from coordinator.testing import RedisSentinel

    with RedisSentinel("packing-primary") as sentinel:
        store = await connect(sentinel.url, namespace="packing")
        try:
            pool = store.client.connection_pool
            assert pool.connection_class is with_hiredis_packing(SentinelManagedConnection)
            await store.command("SET", "{packing}:k", "värde")
            assert await store.command("GET", "{packing}:k") == "värde"
        finally:
            await store.close()
