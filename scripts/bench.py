"""Benchmark: each pool operation, then each model-profile operation, as a ratio to a bare
Redis round trip, measured in one run.

Usage: ``python scripts/bench.py [--url redis://...] [--iterations N]`` (``make bench``).
The pool part is this script; the model part is ``scripts/bench_models.py``'s, run on the same
server with the same ``--iterations``. Without ``--url`` it starts a throw-away
``redis-server`` on a free loopback port; ``--url`` must name a Redis server (``redis://``,
``rediss://`` or ``unix://``): anything else, ``memory://`` (the embedded fakeredis) included,
exits with status 2 and a one-line message. The bare round trip is an EVALSHA of ``return 1``
(one key) sent with ``execute_command`` on the same client, the leanest call redis-py makes;
operations and the bare round trip are interleaved so that machine noise hits both alike, and
medians are reported. A reference row, a script that only keeps Redis busy for 30 µs, shows
what that much server time costs a round trip on this machine at the time. Targets: every
operation <= 1.5x the bare round trip, and the 10,000 profile pool within 1.5x of the 10
profile pool (a pick must not scan the pool); then the model targets (see
``scripts/bench_models.py``).

Exit status: 0 when every target is met (pool and model), 1 when any is missed (the pool
table's verdict says "NOT met", or a model row says MISSED), 2 for a bad option or ``--url``,
or when there is no server to run on.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator import (
    AuthConfig,
    AuthProfile,
    AuthProfileManager,
    Secret,
    Store,
    connect,
    generate_key,
)
from scripts import bench_models
from scripts._benchlib import (
    BARE_SHA,
    BUSY_SHA,
    BUSY_US,
    Op,
    ServerTimes,
    Step,
    bare_round_trip,
    busy_round_trip,
    interleaved_medians,
    parser,
    redis_target,
)

SIZES = (10, 1_000, 10_000)
TARGET_RATIO = 1.5


async def _fill_pool(manager: AuthProfileManager, provider: str, size: int) -> None:
    batch: list[Awaitable[AuthProfile]] = []
    for i in range(size):
        batch.append(
            manager.add_profile(
                AuthProfile(
                    id=f"{provider}-{i}", provider=provider, api_key=Secret(f"sk-bench-{i:08d}xx")
                )
            )
        )
        if len(batch) == 50:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)


# The script behind each measured operation (for Redis's own time, see ServerTimes).
_SCRIPTS = {
    "get_next_profile": "pick",
    "mark_success": "mark_success",
    "mark_failed": "mark_failed",
}


BUSY = f"busy {BUSY_US} µs (ref.)"


async def pool_ops(store: Store, size: int) -> tuple[dict[str, Op], Step]:
    """A pool of ``size`` profiles in a replica's steady state and its three operations, with
    the step to take between iterations (it sends Redis nothing): the reports move on to the
    next profile, and once every profile has cooled down, time moves on past the cooldowns."""
    provider = f"bench{size}"
    manager = AuthProfileManager(store, AuthConfig())
    await _fill_pool(manager, provider, size)
    # Steady state: a replica that has run a while has parsed every definition once (one
    # HGETALL here), so a pick hands out a cached profile. Without this, a run of 3,000 picks
    # over 10,000 profiles would see each one for the first time and measure start-up.
    await manager.list_profiles(provider)
    victim = {"id": f"{provider}-0"}

    async def success() -> Any:
        return await manager.mark_success(victim["id"])

    async def failed() -> Any:
        return await manager.mark_failed(victim["id"], "bench", kind="server")

    async def between(i: int) -> None:
        victim["id"] = f"{provider}-{(i + 1) % size}"
        if i % size == size - 1:
            # Every profile is cooling now: bring them back so picks keep succeeding.
            store.time_offset_ms += 2 * 3_600_000

    ops: dict[str, Op] = {
        "get_next_profile": partial(manager.get_next_profile, provider),
        "mark_success": success,
        "mark_failed": failed,
    }
    return ops, between


async def _measure_pool(
    store: Store, bare: Any, busy: Any, size: int, iterations: int, server: ServerTimes | None
) -> list[dict[str, Any]]:
    pool, between = await pool_ops(store, size)
    ops = {"bare": bare, BUSY: busy, **pool}
    timings = await interleaved_medians(ops, iterations, between=between, warmup=50)
    redis_us: dict[str, float] = {}
    if server is not None:

        async def continue_between(i: int) -> None:
            await between(iterations + i)  # the pass goes on where the timed one stopped

        names = {op: store.function_name(script) for op, script in _SCRIPTS.items()}
        scripts: dict[str, str | tuple[str, ...]] = {"bare": BARE_SHA, BUSY: BUSY_SHA, **names}
        redis_us = await server.measure(ops, scripts, between=continue_between)
    bare_median = timings["bare"]["median"]
    return [
        {
            "size": size,
            "op": op,
            "median_us": t["median"],
            "p90_us": t["p90"],
            "ratio": t["median"] / bare_median,
            "redis_us": redis_us.get(op),
        }
        for op, t in timings.items()
    ]


async def measure(url: str, iterations: int, *, server_times: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark; one row per (pool size, operation). With ``server_times`` (only for
    a server this run started) Redis's own time per script is read from its slowlog."""
    store = await connect(url, namespace=f"bench{os.getpid()}", secret_key=generate_key())
    try:
        bare = await bare_round_trip(store)
        busy = await busy_round_trip(store)
        server = ServerTimes(store) if server_times else None
        rows: list[dict[str, Any]] = []
        for size in SIZES:
            rows.extend(await _measure_pool(store, bare, busy, size, iterations, server))
        return rows
    finally:
        await store.close()


def report(rows: list[dict[str, Any]]) -> bool:
    """Print the table and the verdict on the targets; returns whether all were met."""
    print(
        f"{'pool':>7} {'operation':<18} {'median µs':>10} {'p90 µs':>9} {'× bare':>7}"
        f" {'Redis µs':>9}"
    )
    ok = True
    for row in rows:
        flag = ""
        if row["op"] not in ("bare", BUSY) and row["ratio"] > TARGET_RATIO:
            flag, ok = "  over target", False
        redis_us = "" if row.get("redis_us") is None else f"{row['redis_us']:.0f}"
        print(
            f"{row['size']:>7} {row['op']:<18} {row['median_us']:>10.1f} "
            f"{row['p90_us']:>9.1f} {row['ratio']:>7.2f} {redis_us:>9}{flag}"
        )
    print()
    for op in ("get_next_profile", "mark_success", "mark_failed"):
        small = next(r for r in rows if r["size"] == SIZES[0] and r["op"] == op)
        large = next(r for r in rows if r["size"] == SIZES[-1] and r["op"] == op)
        growth = large["ratio"] / small["ratio"]
        flag = "" if growth <= TARGET_RATIO else "  over target"
        ok = ok and growth <= TARGET_RATIO
        print(f"{op:<18} pool {SIZES[-1]:,} vs {SIZES[0]}: {growth:.2f}×{flag}")
    verdict = "met" if ok else "NOT met"
    print(f"\ntargets (≤ {TARGET_RATIO}× bare, ≤ {TARGET_RATIO}× growth): {verdict}")
    print(
        f"({BUSY} is a reference, not an operation: a script that only keeps Redis busy for"
        f" {BUSY_US} µs;\n its ratio is what that much server time costs a round trip on this"
        " machine now.)"
    )
    return ok


def main() -> int:
    """Entry point: 0 when every target (pool and model) is met, 1 when any is missed."""
    cli = parser(
        __doc__,
        iterations=3000,
        iterations_help="timed iterations per pool size, and for the model benchmark",
        missed="the pool verdict says 'NOT met', or a model row says MISSED",
    )
    args = cli.parse_args()
    with redis_target(cli, args.url) as (url, own_server):
        print(f"coordinator pool benchmark on {url} ({args.iterations} iterations per size)\n")
        # Redis's own time per script comes from its slowlog, so only on a server we started.
        rows = asyncio.run(measure(url, args.iterations, server_times=own_server))
        pool_ok = report(rows)
        print(f"\nmodel profiles ({args.iterations} iterations)\n")
        results, redis_us = asyncio.run(
            bench_models.run(url, args.iterations, server_times=own_server)
        )
        print(bench_models.report(results, redis_us))
    return 0 if pool_ok and bench_models.targets_met(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
