"""Shared by the benchmarks: interleaved timing and the bare round trip they compare with."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from coordinator import Store

Op = Callable[[], Awaitable[Any]]


async def bare_round_trip(store: Store) -> Op:
    """An EVALSHA of ``return 1`` (one key) sent with ``execute_command`` on the store's own
    client: the leanest round trip redis-py makes, and the unit every ratio is expressed in."""
    sha = await store.client.script_load("return 1")
    op = partial(store.client.execute_command, "EVALSHA", sha, 1, b"bench")
    await op()
    return op


async def interleaved_medians(
    ops: dict[str, Op],
    iterations: int,
    *,
    between: Callable[[int], Awaitable[None]] | None = None,
    warmup: int = 200,
) -> dict[str, dict[str, float]]:
    """Median and p90 (µs) of each operation, all measured in turn within every iteration, so
    that load from other processes weighs on all of them alike. The order is shuffled every
    iteration (seeded, so runs are repeatable): in a fixed order, an operation always runs
    right after the same neighbour and inherits its after-effects (CPU caches, the server's
    Lua garbage). The garbage collector is off while timing."""
    for i in range(min(warmup, iterations)):
        for op in ops.values():
            await op()
        if between is not None:
            await between(i)
    samples: dict[str, list[float]] = {name: [] for name in ops}
    order = list(ops)
    shuffler = random.Random(20261127)
    gc.disable()
    try:
        for i in range(iterations):
            shuffler.shuffle(order)
            for name in order:
                op = ops[name]
                start = time.perf_counter_ns()
                await op()
                samples[name].append((time.perf_counter_ns() - start) / 1000.0)
            if between is not None:
                await between(i)
    finally:
        gc.enable()
    return {
        name: {"median": statistics.median(v), "p90": statistics.quantiles(v, n=10)[-1]}
        for name, v in samples.items()
    }
