"""Eight OS processes race for a half-open profile on one real Redis."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from coordinator import connect
from coordinator.testing import RedisServer

from .conftest import unique_namespace
from .model_helpers import (
    MINUTE_MS,
    SECOND_MS,
    add_three,
    breaker,
    event_types,
    fail,
    model_manager,
)
from .model_worker import race_select

PROCESSES = 8
BREAKER = {"half_open_max_probes": 2, "probe_timeout_ms": 30 * SECOND_MS}


def _race(ctx: Any, url: str, namespace: str, key: str, offset: int) -> tuple[list[Any], list[Any]]:
    """Start 8 processes, release them at once; their selections and process handles."""
    start = ctx.Event()
    outbox = ctx.Queue()
    procs = [
        ctx.Process(target=race_select, args=(url, namespace, key, offset, BREAKER, start, outbox))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        assert outbox.get(timeout=60)[0] == "ready"
    start.set()
    results = [outbox.get(timeout=60) for _ in procs]
    return results, procs


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=10)


async def test_eight_processes_exactly_max_probes_get_the_half_open_profile(
    redis_server: RedisServer, secret_key: str
) -> None:
    namespace = unique_namespace()
    store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
    manager = model_manager(store, breaker=BREAKER)
    await add_three(manager)
    await fail(manager, 3)
    store.time_offset_ms += MINUTE_MS  # open -> half-open is due
    ctx = mp.get_context("spawn")
    first: list[Any] = []
    second: list[Any] = []
    third: list[Any] = []
    try:
        results, first = _race(ctx, redis_server.url, namespace, secret_key, store.time_offset_ms)
        picks = [(r[2], r[3]) for r in results]
        assert picks.count(("primary", "testing")) == BREAKER["half_open_max_probes"]
        assert picks.count(("secondary", "failover")) == PROCESSES - 2
        probers = {r[1] for r in results if r[3] == "testing"}
        assert len({r[4] for r in results if r[3] == "testing"}) == 2
        assert (await event_types(store, "primary")).count("profile:circuit-half-open") == 1

        # Kill the probers mid-call: their permits are held until the probe timeout.
        for p in first:
            if p.pid in probers:
                p.kill()
        _stop(first)
        results, second = _race(ctx, redis_server.url, namespace, secret_key, store.time_offset_ms)
        # Every process selected something (a check of "no primary" must not pass on no
        # selection at all), and each got the failover, none the half-open primary.
        assert [(r[2], r[3]) for r in results] == [("secondary", "failover")] * PROCESSES
        _stop(second)

        # After the probe timeout, new probes are granted (exactly max again).
        store.time_offset_ms += BREAKER["probe_timeout_ms"]
        results, third = _race(ctx, redis_server.url, namespace, secret_key, store.time_offset_ms)
        picks = [(r[2], r[3]) for r in results]
        assert picks.count(("primary", "testing")) == BREAKER["half_open_max_probes"]
        state = await breaker(store, "primary")
        assert state["state"] == "half_open" and len(state["permits"]) == 2
    finally:
        _stop(first + second + third)
        await store.close()
