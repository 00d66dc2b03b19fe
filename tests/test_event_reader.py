"""The event reader while Redis is away: it keeps trying with growing pauses, says so once,
and reads again when Redis is back, even if Redis was already away when it started."""

from __future__ import annotations

import asyncio
import logging

import pytest

from coordinator import EventHub, connect
from coordinator.events import Event
from coordinator.testing import RedisServer

from .conftest import unique_namespace
from .helpers import add_keys, manager_for, wait_until


async def test_reader_waits_out_an_outage_that_began_before_it_started(
    secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = RedisServer().start()
    store = await connect(first.url, namespace=unique_namespace(), secret_key=secret_key)
    writer = manager_for(store)
    await add_keys(writer, 1)
    first.stop()

    pauses: list[float] = []

    async def recorded_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0.005)  # only to let the test go on; the length is recorded

    hub = EventHub(store, writer._event_streams, poll_interval_s=0.05, sleep=recorded_sleep)
    seen: list[Event] = []
    caplog.set_level(logging.WARNING, logger="coordinator.events")
    hub.on("*", seen.append)  # starts the reader, which cannot reach Redis
    await wait_until(lambda: len(pauses) >= 8)
    assert pauses[:8] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "retrying until the store answers" in warnings[0]

    second = RedisServer(port=first.port).start()  # the same address, an empty Redis
    try:
        await asyncio.wait_for(hub.wait_started(), 10)
        await add_keys(writer, 1)
        await writer.mark_failed("key-0", "HTTP 500", kind="server")
        # The new pool's stream is found within about a second.
        await wait_until(lambda: any(e.type == "profile:cooldown" for e in seen))
        assert [e.type for e in seen] == ["profile:added", "profile:failed", "profile:cooldown"]
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await hub.close()
        await store.close()
        second.stop()


async def test_a_quiet_stream_is_not_taken_for_an_outage_with_a_short_socket_timeout(
    redis_server: RedisServer, secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The blocking XREAD waits at most half the socket timeout, so with
    # ?socket_timeout=0.4 a stream with nothing new is an empty answer, not a timeout.
    url = f"{redis_server.url}?socket_timeout=0.4"
    store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
    writer = manager_for(store)
    await add_keys(writer, 1)
    hub = EventHub(store, writer._event_streams, poll_interval_s=0.05)
    seen: list[Event] = []
    caplog.set_level(logging.WARNING, logger="coordinator.events")
    try:
        hub.on("*", seen.append)
        await asyncio.wait_for(hub.wait_started(), 10)
        await asyncio.sleep(1.2)  # several blocking reads with nothing to read
        await writer.mark_failed("key-0", "HTTP 500", kind="server")
        await wait_until(lambda: any(e.type == "profile:cooldown" for e in seen))
        assert [r.getMessage() for r in caplog.records] == []
    finally:
        await hub.close()
        await store.close()
