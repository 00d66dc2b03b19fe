"""Shared by the benchmarks: their command line, interleaved timing and the bare round trip
they compare with."""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import statistics
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from coordinator import ConfigError, Store, StoreUnavailableError
from coordinator.store.connection import _parse_url  # the one reading of a URL
from coordinator.testing import RedisServer

# Only a standalone server (redis://, rediss://, unix://, as coordinator.connect reads them):
# not memory:// (fakeredis in this process: no round trip to measure), nor redis+sentinel://
# and redis+cluster://: their clients are not the standalone one whose round trip the targets
# are expressed in, and on a cluster the bare round trip's key and each pool's need not share
# a node.
WHY_NOT = {
    "memory": "memory:// is the embedded fakeredis backend, not a Redis server",
    "sentinel": "redis+sentinel:// is not supported here, the targets are ratios to one "
    "server's round trip",
    "cluster": "redis+cluster:// is not supported here, the targets are ratios to one "
    "server's round trip",
}


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 2:  # a p90 needs two samples
        raise argparse.ArgumentTypeError(f"must be at least 2, not {value}")
    return value


def parser(
    doc: str, *, iterations: int, iterations_help: str, missed: str
) -> argparse.ArgumentParser:
    """The command line of both benchmarks: ``--url`` and ``--iterations``, with the exit
    status in the epilog. ``doc`` is the script's docstring (its first paragraph is the
    description); ``missed`` says which targets can make it exit with 1."""
    description = textwrap.fill(" ".join(doc.split("\n\n")[0].split()), width=79)
    status = [
        "0  every target printed was met",
        f"1  a target was missed ({missed})",
        "2  a bad option or --url, or no server to run on (redis-server missing or not "
        "starting, --url unreachable)",
    ]
    epilog = "exit status:\n" + "\n".join(
        textwrap.fill(line, width=79, initial_indent="  ", subsequent_indent="     ")
        for line in status
    )
    result = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    result.add_argument(
        "--url",
        metavar="URL",
        help="the Redis server to run on: a redis://, rediss:// or unix:// URL (keys written "
        "there are left behind); default: start a throw-away redis-server on a free loopback "
        "port, and only then also measure Redis's own time per script (column 'Redis µs')",
    )
    result.add_argument(
        "--iterations",
        metavar="N",
        type=_iterations,
        default=iterations,
        help=f"{iterations_help} (default: %(default)s)",
    )
    return result


def _check_url(parser: argparse.ArgumentParser, url: str) -> None:
    """Exit with status 2 and a one-line message unless ``url`` is a standalone Redis server's
    (read by the store's own URL parser, so the two never disagree)."""
    try:
        backend = _parse_url(url).backend
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: --url: {exc}\n")
    if backend != "redis":
        parser.exit(
            2,
            f"{parser.prog}: error: --url: {WHY_NOT[backend]}; give a redis://, rediss:// or "
            "unix:// URL, or no --url for a throw-away redis-server\n",
        )


@contextmanager
def redis_target(parser: argparse.ArgumentParser, url: str | None) -> Iterator[tuple[str, bool]]:
    """The URL to run on and whether this run started its server: ``url`` once checked, else
    a throw-away ``redis-server``, stopped on leaving. A server that cannot be started or
    reached (:class:`StoreUnavailableError`, or :class:`ConfigError` from ``connect``) ends the
    run with status 2 and a message (one line, but for the log of a server that did not start)."""
    if url is not None:
        _check_url(parser, url)
        try:
            yield url, False
        except (StoreUnavailableError, ConfigError) as exc:
            parser.exit(2, f"{parser.prog}: error: --url: {exc}\n")
        return
    server = RedisServer()
    try:
        server.start()
    except RuntimeError as exc:  # no redis-server binary, or it did not start (with its log)
        server.stop()
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    try:
        yield server.url, True
    except (StoreUnavailableError, ConfigError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    finally:
        server.stop()


Op = Callable[[], Awaitable[Any]]
# Run between two iterations, given the iteration's number.
Step = Callable[[int], Awaitable[None]]

BARE_SCRIPT = "return 1"
BARE_SHA = hashlib.sha1(BARE_SCRIPT.encode()).hexdigest()


async def bare_round_trip(store: Store) -> Op:
    """An EVALSHA of ``return 1`` (one key) sent with ``execute_command`` on the store's own
    client: the leanest round trip redis-py makes, and the unit every ratio is expressed in."""
    sha = await store.client.script_load(BARE_SCRIPT)
    op = partial(store.client.execute_command, "EVALSHA", sha, 1, b"bench")
    await op()
    return op


# A reference, not an operation: a script that keeps Redis busy for ARGV[1] µs (on its own
# clock) and does nothing else. Its ratio shows what that much server time costs a round trip
# on this machine at this moment: the time itself, plus whatever the machine adds when a reply
# is not back almost at once (on a VM, waking the client's idle CPU). An operation's ratio
# is best read next to the reference with a similar "Redis µs".
BUSY_SCRIPT = """local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return 1"""
BUSY_SHA = hashlib.sha1(BUSY_SCRIPT.encode()).hexdigest()
BUSY_US = 30


async def busy_round_trip(store: Store, micros: int = BUSY_US) -> Op:
    """An EVALSHA of :data:`BUSY_SCRIPT` keeping Redis busy for ``micros`` µs (one key, like
    the bare round trip)."""
    sha = await store.client.script_load(BUSY_SCRIPT)
    op = partial(store.client.execute_command, "EVALSHA", sha, 1, b"bench", micros)
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


# Calls per operation in the pass that reads Redis's own time.
SERVER_PASS = 500


class ServerTimes:
    """Redis's own time for each script (median µs, from ``SLOWLOG`` with every command
    logged), to tell the server's share of a ratio from the client's. Only for a throw-away
    server that the benchmark started: it changes the server's slowlog settings."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def measure(
        self,
        ops: dict[str, Op],
        scripts: dict[str, str | tuple[str, ...]],
        *,
        between: Callable[[int], Awaitable[None]] | None = None,
    ) -> dict[str, float]:
        """Run ``ops`` for :data:`SERVER_PASS` interleaved rounds with every command logged
        and return :meth:`medians` of ``scripts``. A pass of its own, after the timed one:
        logging every command slows each call a little (more for more arguments)."""
        await self.start()
        await interleaved_medians(ops, SERVER_PASS, between=between, warmup=0)
        return await self.medians(scripts)

    async def start(self) -> None:
        """Log every command from now on (slowlog-log-slower-than 0)."""
        client = self._store.client
        await client.config_set("slowlog-max-len", 1_000_000)
        await client.config_set("slowlog-log-slower-than", 0)
        await client.slowlog_reset()

    async def medians(self, scripts: dict[str, str | tuple[str, ...]]) -> dict[str, float]:
        """Median duration per name of the calls of each script given, as name -> its SHA1
        (EVALSHA) or function name (FCALL), or name -> (either, text, ...) for only the calls
        with, for each text, a key or argument starting with it (one script serving several
        operations); then the log is cleared and logging switched off again."""
        client = self._store.client
        entries = await client.execute_command("SLOWLOG", "GET", 1_000_000)
        await client.config_set("slowlog-log-slower-than", 10_000)
        await client.slowlog_reset()
        wanted = {name: (s,) if isinstance(s, str) else s for name, s in scripts.items()}
        durations: dict[str, list[float]] = {name: [] for name in scripts}
        for entry in entries:
            words = entry["command"].split() if isinstance(entry, dict) else entry[3]
            words = [w.decode() if isinstance(w, bytes) else str(w) for w in words]
            if len(words) < 2 or words[0].upper() not in ("EVALSHA", "FCALL"):
                continue
            for name, (sha, *texts) in wanted.items():
                if words[1] == sha and all(
                    any(w.startswith(text) for w in words[2:]) for text in texts
                ):
                    duration = entry["duration"] if isinstance(entry, dict) else entry[2]
                    durations[name].append(float(duration))
        return {name: statistics.median(v) for name, v in durations.items() if v}
