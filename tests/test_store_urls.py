"""Store URLs: what is refused and why, the timeouts they carry, credentials masked everywhere,
and the embedded backend's state file (writable, held by one store at a time, read strictly)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from coordinator import (
    ConfigError,
    CorruptStateError,
    StoreUnavailableError,
    connect,
)
from coordinator.store.connection import Timeouts, redact_url
from coordinator.testing import RedisServer, free_port

from .conftest import unique_namespace
from .helpers import add_keys, manager_for


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw-1@host:6379/0", "redis://user:****@host:6379/0"),
        ("redis://:pw-1@host:6379/0", "redis://:****@host:6379/0"),
        ("redis+cluster://pw-1@a:1,b:2", "redis+cluster://****@a:1,b:2"),
        ("redis://host/0?password=pw-1&db=0", "redis://host/0?password=****&db=0"),
        (
            "redis+sentinel://h:26379/svc?sentinel_password=pw-1",
            "redis+sentinel://h:26379/svc?sentinel_password=****",
        ),
        (
            "rediss://h/0?ssl_password=pw-1&x_token=pw-1",
            "rediss://h/0?ssl_password=****&x_token=****",
        ),
        ("redis://h:6379/0?socket_timeout=1", "redis://h:6379/0?socket_timeout=1"),
        ("memory:///var/state.json", "memory:///var/state.json"),
    ],
)
def test_credentials_in_a_url_are_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://",
        "redis:///0",
        "rediss://:pw-hidden@/0",
        "unix://",
        "redis://host:6379/abc",
        "redis://host:6379/0?socket_timeout=abc",
        "redis://host:6379/0?socket_timeout=0",
        "redis://host:6379/0?socket_connect_timeout=nan",
        "redis://host:6379/0?pool_timeout=-1",
        "redis://host:6379/0?timeout=1",
        "redis://host:6379/0?no_such_option=1",
        "redis://host:6379/0?max_connections=many",
        "redis+cluster://",
        "redis+cluster://a:1?ssl=yes",
        "redis+cluster://a:1?max_connections=0",
        "redis+sentinel://127.0.0.1:1/service/db-one",
        "redis+sentinel://127.0.0.1:1",
        "memory://relative/state.json",
        "memory://?persist=1",
    ],
)
async def test_urls_that_cannot_be_meant_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        await connect(url, namespace=unique_namespace())
    assert info.value.field == "url"
    assert "pw-hidden" not in str(info.value)


async def test_timeouts_come_from_the_url_with_documented_defaults(
    redis_server: RedisServer,
) -> None:
    assert Timeouts() == Timeouts(socket_timeout=2.0, socket_connect_timeout=2.0, pool_timeout=5.0)
    assert Timeouts().bound_s == 9.0
    url = f"{redis_server.url}?socket_timeout=3&socket_connect_timeout=1.5&pool_timeout=0.25"
    store = await connect(url, namespace=unique_namespace())
    try:
        assert store.timeouts == Timeouts(3.0, 1.5, 0.25) and store.timeouts.bound_s == 4.75
        pool = store.client.connection_pool
        assert pool.timeout == 0.25
        assert pool.connection_kwargs["socket_timeout"] == 3.0
        assert pool.connection_kwargs["socket_connect_timeout"] == 1.5
    finally:
        await store.close()


async def test_a_password_in_the_query_authenticates_and_never_shows(
    secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with RedisServer() as server:
        async with aioredis.Redis(port=server.port) as admin:
            await admin.config_set("requirepass", "pw-query-right")
        url = f"{server.url}?password=pw-query-right"
        store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            assert "pw-query" not in f"{store!r} {store.url}" and "password=****" in store.url
            manager = manager_for(store)
            await add_keys(manager, 1)
            assert await manager.get_next_profile("openai") is not None
            server.stop()
            with pytest.raises(StoreUnavailableError) as failed:
                await manager.get_next_profile("openai")
            assert "pw-query" not in str(failed.value)
        finally:
            await store.close()
    unreachable = [
        f"redis://127.0.0.1:{free_port()}/0?password=pw-query-lost",
        f"redis+sentinel://127.0.0.1:{free_port()}/svc?sentinel_password=pw-query-lost",
        f"redis+cluster://127.0.0.1:{free_port()}?password=pw-query-lost",
    ]
    for url in unreachable:
        with pytest.raises(StoreUnavailableError) as refused:
            await connect(url, namespace=unique_namespace())
        assert "pw-query" not in f"{refused.value} {refused.value.__cause__}"
        assert "****" in str(refused.value)
    assert "pw-query" not in caplog.text


async def test_an_unwritable_state_path_is_refused_at_connect(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as info:
        await connect(f"memory://{blocker}/state.json")
    assert "cannot keep the embedded state" in str(info.value)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ConfigError):
        await connect(f"memory://{tmp_path / 'folder.json'}")


async def test_a_state_file_lost_after_connect_is_a_store_error_not_a_raw_one(
    tmp_path: Path, secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "state"
    store = await connect(f"memory://{folder / 's.json'}", secret_key=secret_key)
    manager = manager_for(store)
    shutil.rmtree(folder)
    folder.write_text("a file where the folder was")
    store._persist_interval_s = 0
    await add_keys(manager, 1)  # its background write fails: a warning, no lost task error
    assert store._persist_task is not None
    await store._persist_task
    assert "cannot write the embedded state" in caplog.text
    with pytest.raises(StoreUnavailableError, match="cannot write the embedded state"):
        await store.close()
    # The lock went with the store, though: the file can be used again.
    folder.unlink()
    again = await connect(f"memory://{folder / 's.json'}", secret_key=secret_key)
    await again.close()


async def test_one_store_at_a_time_keeps_its_state_in_a_file(tmp_path: Path) -> None:
    url = f"memory://{tmp_path / 'shared.json'}"
    first = await connect(url)
    try:
        with pytest.raises(ConfigError, match="in use by another store"):
            await connect(url)
    finally:
        await first.close()
    second = await connect(url)
    await second.close()


async def test_a_second_process_on_one_state_file_is_refused(tmp_path: Path) -> None:
    url = f"memory://{tmp_path / 'shared.json'}"
    holder = textwrap.dedent(
        f"""
        import asyncio, sys
        from coordinator import connect

        async def main():
            store = await connect({url!r})
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.read)
            await store.close()

        asyncio.run(main())
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        with pytest.raises(ConfigError, match=f"process {process.pid}"):
            await connect(url)
    finally:
        process.communicate("", timeout=30)
    store = await connect(url)  # free again once the holder closed
    await store.close()


@pytest.mark.parametrize(
    "entry",
    [
        {"key": "k", "type": "string", "value": None, "ttl_ms": None},
        {"key": "h", "type": "hash", "value": {"field": None}, "ttl_ms": None},
        {"key": "z", "type": "zset", "value": [["member", None]], "ttl_ms": None},
    ],
)
async def test_a_snapshot_holding_a_null_is_corrupt_state(
    tmp_path: Path, entry: dict[str, object]
) -> None:
    import orjson

    path = tmp_path / "s.json"
    path.write_bytes(orjson.dumps({"format": 1, "keys": [entry]}))
    with pytest.raises(CorruptStateError):
        await connect(f"memory://{path}")
    store = await connect(f"memory://{path.with_name('other.json')}")  # nothing stays held
    await store.close()
    await asyncio.sleep(0)
