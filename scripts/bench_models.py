"""Benchmark of the model profile manager against a bare Redis round trip.

Usage: ``python scripts/bench_models.py [--url redis://host:port/db] [--iterations N]`` (also
run by ``scripts/bench.py``, after the pool benchmark).

Without ``--url``, a throw-away ``redis-server`` is started on a free loopback port; ``--url``
must name a Redis server (``redis://``, ``rediss://`` or ``unix://``): anything else,
``memory://`` (the embedded fakeredis) included, exits with status 2 and a one-line message.

Measures, in one run and on one client: a bare round trip (EVALSHA of ``return 1``, see
``scripts/_benchlib.py``), ``select_profile``, ``execute`` with a no-op call (target <= 1.3x
two bare round trips: it costs select + report; its profiles are in their steady state, a
breaker whose window holds only successes) and one failover hop
(``get_next_available_profile``: report and pick in one script, on profiles of its own;
target <= 1.5x one bare round trip). Each hop is the first failure of a healthy
primary, as in production: between two hops (outside the timed region) the primary reports a
success, which ends its failure streak, so every hop is counted by the breaker, with the
selection's current epoch. Prints medians in microseconds and the ratios,
with a reference row: a script that only keeps Redis busy for 30 µs (see ``BUSY_SCRIPT``).

Exit status: 0 when both targets (``execute`` and the failover hop) are met, 1 when either is
MISSED, 2 for a bad option or ``--url``, or when there is no server to run on.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator import Store, connect, generate_key
from coordinator.models.config import BreakerConfig, ModelConfig
from coordinator.models.defaults import default_model_profiles
from coordinator.models.manager import ModelProfileManager
from coordinator.models.types import ModelAuth, ModelCall, ModelProfile, ModelSelection
from scripts._benchlib import (
    BARE_SHA,
    BUSY_SHA,
    BUSY_US,
    Op,
    ServerTimes,
    bare_round_trip,
    busy_round_trip,
    interleaved_medians,
    parser,
    redis_target,
)

BUSY = f"busy {BUSY_US} µs in Redis (reference)"


BARE = "bare round trip (EVALSHA return 1)"
SELECT = "select_profile"
EXECUTE = "execute (no-op call)"
HOP = "failover hop (report + pick)"

EXECUTE_TARGET = 1.3  # execute <= 1.3x two bare round trips (it costs a select and a report)
HOP_TARGET = 1.5  # one failover hop <= 1.5x one bare round trip


@dataclass
class ModelOps:
    """The measured model operations on their own profiles, ready to run."""

    ops: dict[str, Op]  # SELECT, EXECUTE, HOP
    hop_manager: ModelProfileManager
    hop_primary: ModelSelection  # the selection every hop fails over from

    async def recover(self, i: int) -> None:
        """Between iterations (outside the timed region): the hop primary reports a success,
        which ends the failure streak of the last hop (its breaker stays closed and its epoch
        current), so the next hop is again a healthy primary's first failure."""
        await self.hop_manager.record_success(self.hop_primary)


async def model_ops(store: Store) -> ModelOps:
    """Add the five default providers (all enabled, keys encrypted at rest) twice, for
    ``execute`` and ``select_profile`` and, in another namespace on the same client, for the
    failover hop, and return the operations. The hop's primary fails and recovers in turn; on
    the same profiles, every success of execute would then rewrite a breaker that production
    would find in its steady state (a window of successes, which a success leaves as it is).
    The breakers never open during a run (a window of alternating outcomes stays under the
    failure rate threshold of 100%, and no streak grows past one)."""
    config = ModelConfig(
        breaker=BreakerConfig(
            failure_threshold=1_000_000, window_size=20, min_calls=20, failure_rate_threshold=1.0
        )
    )
    manager = ModelProfileManager(store, config)
    hop_store = Store(
        store.client, backend=store.backend, url=store.url, namespace=f"{store.namespace}h",
        box=store.box,
    )  # fmt: skip
    hop_manager = ModelProfileManager(hop_store, config)
    for i, p in enumerate(default_model_profiles({})):
        for target in (manager, hop_manager):
            await target.add_profile(
                ModelProfile(
                    id=p.id, provider=p.provider, base_url=p.base_url, models=p.models,
                    default_model=p.default_model, priority=p.priority, enabled=True,
                    auth=ModelAuth.api_key(f"sk-bench-{i}-0123456789abcdef"),
                )
            )  # fmt: skip

    async def select() -> Any:
        return await manager.select_profile()

    async def noop(call: ModelCall) -> None:
        return None

    async def execute() -> Any:
        return await manager.execute(noop)

    primary = await hop_manager.select_profile()
    assert primary is not None

    async def hop() -> Any:
        return await hop_manager.get_next_available_profile(primary, kind="server")

    ops: dict[str, Op] = {SELECT: select, EXECUTE: execute, HOP: hop}
    return ModelOps(ops, hop_manager, primary)


async def run(
    url: str, iterations: int, *, server_times: bool = False
) -> tuple[dict[str, float], dict[str, float]]:
    """Measure every operation; returns medians in microseconds and, with ``server_times``
    (only for a server this run started), Redis's own time per operation from its slowlog
    (``execute`` is two scripts: the pick and the success report, added up)."""
    store = await connect(url, namespace=f"bench{uuid.uuid4().hex[:8]}", secret_key=generate_key())
    try:
        measured = await model_ops(store)
        recover = measured.recover
        bare = await bare_round_trip(store)
        busy = await busy_round_trip(store)
        ops = {BARE: bare, BUSY: busy, **measured.ops}
        timings = await interleaved_medians(ops, iterations, between=recover)
        redis_us: dict[str, float] = {}
        if server_times:
            pick = store.function_name("model_select")
            report = store.function_name("model_report")
            times = await ServerTimes(store).measure(
                ops,
                {
                    BARE: BARE_SHA,
                    BUSY: BUSY_SHA,
                    SELECT: pick,
                    # (execute's own success reports: the hop's recoveries are in another
                    # namespace, whose keys start with the hop namespace's name)
                    "success report": (report, "success,", f"{store.namespace}:"),
                    HOP: (report, "failure,"),
                },
                between=recover,
            )
            redis_us = {name: times[name] for name in (BARE, BUSY, SELECT, HOP) if name in times}
            if SELECT in times and "success report" in times:
                redis_us[EXECUTE] = times[SELECT] + times["success report"]
        return {name: t["median"] for name, t in timings.items()}, redis_us
    finally:
        await store.close()


def _met(results: dict[str, float]) -> dict[str, bool]:
    """Whether each target (``execute``, the hop) is met by these medians."""
    bare = results[BARE]
    return {
        EXECUTE: results[EXECUTE] / (2 * bare) <= EXECUTE_TARGET,
        HOP: results[HOP] / bare <= HOP_TARGET,
    }


def targets_met(results: dict[str, float]) -> bool:
    """Whether both targets are met: no row of :func:`report` says MISSED."""
    return all(_met(results).values())


def report(results: dict[str, float], redis_us: dict[str, float] | None = None) -> str:
    """The results table with the ratios to the bare round trip (and Redis's own time per
    operation, when measured)."""
    bare = results[BARE]
    execute = results[EXECUTE]
    hop = results[HOP]
    server = redis_us or {}
    met = _met(results)

    def row(name: str, median: float, ratio: float, note: str = "") -> str:
        redis = f"{server[name]:.0f}" if name in server else ""
        return f"{name:<38}{median:>12.1f}{ratio:>10.2f}{redis:>10}  {note}".rstrip()

    lines = [f"{'operation':<38}{'median µs':>12}{'ratio':>10}{'Redis µs':>10}  target"]
    lines.append("-" * 82)
    lines.append(row(BARE, bare, 1.0))
    lines.append(row(BUSY, results[BUSY], results[BUSY] / bare, "(vs 1 bare)"))
    lines.append(row(SELECT, results[SELECT], results[SELECT] / bare, "(vs 1 bare)"))
    verdict = "ok" if met[EXECUTE] else "MISSED"
    target = f"<= {EXECUTE_TARGET:.2f} (vs 2 bare) {verdict}"
    lines.append(row(EXECUTE, execute, execute / (2 * bare), target))
    verdict = "ok" if met[HOP] else "MISSED"
    lines.append(row(HOP, hop, hop / bare, f"<= {HOP_TARGET:.2f} (vs 1 bare) {verdict}"))
    return "\n".join(lines)


def main() -> int:
    """Parse arguments, start a throw-away server if needed, run and print; 0 when both
    targets are met, 1 when either is missed."""
    cli = parser(
        __doc__,
        iterations=5000,
        iterations_help="timed iterations",
        missed="a row says MISSED",
    )
    args = cli.parse_args()
    with redis_target(cli, args.url) as (url, own_server):
        results, redis_us = asyncio.run(run(url, args.iterations, server_times=own_server))
    print(report(results, redis_us))
    return 0 if targets_met(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
