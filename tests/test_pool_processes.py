"""Four OS processes on one real Redis behave as one pool; a restart loses nothing."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter

from coordinator import AuthProfileManager, connect
from coordinator.testing import RedisServer

from .conftest import unique_namespace
from .helpers import MINUTE_MS, add_keys
from .proc_worker import Replica

PROFILES = 8


async def test_four_processes_share_rotation_sessions_cooldowns_and_survive_restart(
    redis_server: RedisServer, secret_key: str
) -> None:
    namespace = unique_namespace()
    store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
    try:
        await add_keys(AuthProfileManager(store), PROFILES)
    finally:
        await store.close()
    ctx = mp.get_context("spawn")
    replicas = [Replica(ctx, redis_server.url, namespace, secret_key) for _ in range(4)]
    try:
        # Exact global round-robin: 5 x 8 picks from four processes at once.
        for replica in replicas:
            replica.send("pick", 10, None)
        counts = Counter(pid for r in replicas for pid, _ts in r.reply()[1])
        assert counts == {f"key-{i}": 5 for i in range(PROFILES)}

        # A session bound by one process is honoured by the others.
        bound = replicas[0].call("pick", 1, "sess-A")[0][0]
        for replica in replicas[1:]:
            assert [pid for pid, _ in replica.call("pick", 3, "sess-A")] == [bound] * 3

        # A cooldown set by one process holds for all, from the moment mark_failed returns.
        for replica in (replicas[0], replicas[2], replicas[3]):
            replica.send("pick", 40, None)
        until, duration, failures = replicas[1].call("fail", bound, "rate_limit")
        failed_at = until - duration
        assert failures == 1 and duration == MINUTE_MS
        racing = [pick for r in (replicas[0], replicas[2], replicas[3]) for pick in r.reply()[1]]
        assert len(racing) == 3 * 40  # every pick found a profile (none was skipped)
        # Scripts run one at a time: every pick of the profile ran before the failure, at most
        # in the same millisecond (Redis time has ms resolution here).
        assert all(ts <= failed_at for pid, ts in racing if pid == bound)
        for replica in replicas:
            replica.send("pick", 16, None)
        after = [pid for r in replicas for pid, _ in r.reply()[1]]
        # Every one of the 64 picks happened (so the check below cannot pass on no picks),
        # and every profile but the cooling one took its turn.
        assert len(after) == 4 * 16
        assert set(after) == {f"key-{i}" for i in range(PROFILES)} - {bound}
        rebound = replicas[3].call("pick", 1, "sess-A")[0][0]
        assert rebound != bound

        # ... until it ends (every process's clock moves on together).
        for replica in replicas:
            replica.call("advance", MINUTE_MS + 1)
        back = [pid for pid, _ in replicas[2].call("pick", PROFILES, None)]
        assert bound in back
        replicas[0].call("fail", bound, "rate_limit")
        before_restart = replicas[0].call("status")
    finally:
        for replica in replicas:
            replica.stop()

    # Restart: every process stopped; new ones find profiles, counters and cooldowns intact.
    fresh = [Replica(ctx, redis_server.url, namespace, secret_key) for _ in range(4)]
    try:
        for replica in fresh:
            replica.call("advance", MINUTE_MS + 1)
        for replica in fresh:
            assert replica.call("status") == before_restart
        row = next(r for r in before_restart if r[0] == bound)
        assert row[1] == 2 and row[3] is True  # second failure: counter kept, cooling
        picks = [pid for r in fresh for pid, _ in r.call("pick", 7, None)]
        assert bound not in picks and len(set(picks)) == PROFILES - 1
    finally:
        for replica in fresh:
            replica.stop()
