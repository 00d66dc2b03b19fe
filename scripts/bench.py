"""Fleet benchmark: what replicas sharing one Redis feel, printed as one table.

Usage: ``python scripts/bench.py [--quick] [--duration S] [--url URL] [--compare REV]``
(``make bench``). See docs/performance.md for what each figure means.

Every workload runs in worker subprocesses of this very script (``--worker``), each with its
own event loop and store, and ``PYTHONPATH`` set to the tree under test, so that ``import
coordinator`` resolves there. The workers only use names importable from ``coordinator``, so
an older tree (``--compare REV``, checked out into a temporary ``git worktree``) runs the same
workloads, on the same server; the columns of a workload take turns in short rounds.

Without ``--url`` a throw-away ``redis-server`` is started on a free loopback port. ``--url``
must name a standalone Redis server (``redis://``, ``rediss://``, ``unix://``): Redis's CPU
figures come from that one server's ``INFO``. Exit status: 0 after printing the table; 1 when
a worker failed (its stderr is shown); 2 for a bad option, a ``--url`` that is no Redis server
(``memory://`` included), a ``REV`` git does not know, or no server to run on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()

CONCURRENCY = (1, 32, 256)  # asyncio tasks in one process
FLEET_PROCESSES = 4
FLEET_TASKS = 32  # tasks per process in the busy fleet row
POOL_SIZES = (10, 10_000)
WARMUP_S = 0.5
# Each workload's timed seconds are split into this many rounds per column. A round stays
# longer than the store's pool timeout (1 s), so a task starved of a connection fails as it
# would in production instead of being let off at the round's end.
ROUNDS = 4
QUICK_S = 1.6  # --quick: timed seconds per workload and column
THROUGHPUT_LIMIT = 0.90  # the issue: the simplified code keeps at least 90 % of the old throughput

Op = Callable[[], Awaitable[Any]]


# ---------------------------------------------------------------------------------------------
# Worker side: runs in a subprocess, with ``coordinator`` imported from the tree under test.
# Protocol, one line each way: the worker prepares (not timed) and says {"ready": ...}; then,
# for every "go", it runs one round and prints the round's result; any other line ends it.
# A round is short and the driver alternates the trees' rounds, so that load from elsewhere
# on the machine weighs on every tree alike.
# ---------------------------------------------------------------------------------------------


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _go() -> bool:
    return sys.stdin.readline().strip() == "go"


def _micros_since(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1000.0


async def _noop(call: object = None) -> None:
    """The guarded call: does nothing, so all that is measured is the guard."""


async def _add_model_profiles(store: Any) -> None:
    """The five default providers, enabled, with encrypted API keys."""
    from coordinator import ModelAuth, ModelProfile, ModelProfileManager, default_model_profiles

    manager = ModelProfileManager(store)
    for i, p in enumerate(default_model_profiles({})):
        await manager.add_profile(
            ModelProfile(
                id=p.id, provider=p.provider, base_url=p.base_url, models=p.models,
                default_model=p.default_model, priority=p.priority, enabled=True,
                auth=ModelAuth.api_key(f"sk-bench-{i}-0123456789abcdef"),
            )
        )  # fmt: skip


async def _pick_op(store: Any, size: int) -> Op:
    """A pool of ``size`` profiles (filled here, not timed) and its pick. Every profile is
    listed once first, as a replica that has run a while has seen them all."""
    from coordinator import AuthConfig, AuthProfile, AuthProfileManager, Secret

    manager = AuthProfileManager(store, AuthConfig())
    provider = f"pool{size}"
    for start in range(0, size, 40):  # fewer at once than the pool has connections
        batch = range(start, min(start + 40, size))
        await asyncio.gather(
            *(
                manager.add_profile(
                    AuthProfile(
                        id=f"{provider}-{i}", provider=provider, api_key=Secret(f"sk-bench-{i:08d}")
                    )
                )
                for i in batch
            )
        )
    await manager.list_profiles(provider)

    async def pick() -> Any:
        return await manager.get_next_profile(provider)

    return pick


async def _timed(op: Op, tasks: int, seconds: float) -> dict[str, Any]:
    """Run ``op`` in ``tasks`` concurrent loops for ``seconds``: each successful call's
    latency (µs), the calls that raised (a caller would see them fail: counted, not timed)
    and the time it all took (s)."""
    samples: list[float] = []
    failed: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter_ns()
            try:
                await op()
            except Exception as exc:
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
                continue
            samples.append(_micros_since(start))

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(tasks)))
    return {"samples": samples, "failed": failed, "elapsed": time.perf_counter() - start}


async def _noop_alone() -> list[float]:
    """The no-op's own latency (µs), the baseline of the added latency."""
    samples: list[float] = []
    for _ in range(20_000):
        start = time.perf_counter_ns()
        await _noop(None)
        samples.append(_micros_since(start))
    return samples


async def _async_worker(spec: dict[str, Any]) -> int:
    from coordinator import ModelProfileManager, connect

    store = await connect(spec["url"], namespace=spec["namespace"], secret_key=spec["key"])
    try:
        if spec["kind"] == "setup":
            await _add_model_profiles(store)
            _send({"ready": True, "baseline": []})
            return 0
        op: Op
        if spec["kind"] == "execute":
            manager = ModelProfileManager(store)

            async def op() -> Any:
                return await manager.execute(_noop)

        else:
            op = await _pick_op(store, spec["size"])
        await _timed(op, spec["tasks"], WARMUP_S)
        _send({"ready": True, "baseline": await _noop_alone()})
        while _go():
            _send(await _timed(op, spec["tasks"], spec["seconds"]))
        return 0
    finally:
        await store.close()


def _pybreaker_worker(spec: dict[str, Any]) -> int:
    """The same no-op guarded by pybreaker, its state in Redis (a sync client: pybreaker's
    storage calls redis-py's blocking API, and its breaker holds a lock around each call, so
    one caller per process)."""
    import pybreaker
    import redis

    client = redis.Redis.from_url(spec["url"])  # bytes replies, as pybreaker's storage expects
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=spec["namespace"]
    )
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)

    def noop() -> None:
        """The guarded call."""

    def run(seconds: float, call: Callable[[], Any]) -> dict[str, Any]:
        samples: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter_ns()
            call()
            samples.append(_micros_since(t0))
        return {"samples": samples, "elapsed": time.perf_counter() - start}

    def guarded() -> None:
        breaker.call(noop)

    run(WARMUP_S, guarded)
    _send({"ready": True, "baseline": run(0.1, noop)["samples"]})
    while _go():
        _send(run(spec["seconds"], guarded))
    client.close()
    return 0


def _timed_sync(seconds: float, call: Callable[[], Any]) -> dict[str, Any]:
    """Call ``call`` in a loop in this thread for ``seconds``: as :func:`_timed`, blocking."""
    samples: list[float] = []
    failed: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        try:
            call()
        except Exception as exc:
            failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
            continue
        samples.append(_micros_since(t0))
    return {"samples": samples, "failed": failed, "elapsed": time.perf_counter() - start}


def _sync_worker(spec: dict[str, Any]) -> int:
    """The same ``execute(no-op)`` through the synchronous manager (``coordinator.sync``),
    called from one thread per process, as a Flask or Celery worker process calls it."""
    from coordinator import SyncModelProfileManager, connect_sync

    store = connect_sync(spec["url"], namespace=spec["namespace"], secret_key=spec["key"])
    try:
        manager = SyncModelProfileManager(store)

        def noop(call: object = None) -> None:
            """The guarded call."""

        def guarded() -> None:
            manager.execute(noop)

        _timed_sync(WARMUP_S, guarded)
        _send({"ready": True, "baseline": _timed_sync(0.1, noop)["samples"]})
        while _go():
            _send(_timed_sync(spec["seconds"], guarded))
        return 0
    finally:
        store.close()


def worker_main(spec_text: str) -> int:
    """Entry point of a worker subprocess (``--worker SPEC``)."""
    spec = json.loads(spec_text)
    if spec["kind"] == "pybreaker":
        return _pybreaker_worker(spec)
    if spec["kind"] == "sync":
        return _sync_worker(spec)
    return asyncio.run(_async_worker(spec))


# ---------------------------------------------------------------------------------------------
# Driver side: starts the server and the workers, reads Redis's INFO around each round.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Who is measured: a tree's ``coordinator`` (``kind`` None: the workload's own), its
    synchronous managers (``kind`` "sync") or pybreaker (``kind`` "pybreaker"), under a
    column label, in a namespace."""

    label: str
    path: Path
    namespace: str
    kind: str | None = None


@dataclass
class Phase:
    """What one group measured in a workload: every call's latency, the no-op's own, and
    Redis's counters summed over the group's rounds."""

    samples: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    fcalls: int = 0
    fcall_usec: int = 0
    commands: int = 0
    cpu_s: float = 0.0
    rates: list[float] = field(default_factory=list)  # decisions per second, round by round
    failed: dict[str, int] = field(default_factory=dict)  # exception name -> calls that raised

    @property
    def count(self) -> int:
        """Decisions (guarded calls or picks) made in the timed rounds."""
        return len(self.samples)


@dataclass
class Workload:
    """One row group of the table: a kind of worker, how many, and its parameters."""

    name: str
    kind: str
    processes: int = 1
    tasks: int = 1
    size: int = 0
    with_pybreaker: bool = False
    results: dict[str, Phase] = field(default_factory=dict)  # column label -> phase


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SCRIPT_COMMANDS = ("fcall", "fcall_ro", "evalsha", "evalsha_ro", "eval", "eval_ro")


def _redis_counters(client: Any) -> tuple[int, int, int, float]:
    """Script calls and their µs (FCALL, and EVAL* for any tree that used them), all commands
    (those run inside scripts included) and the server's CPU seconds (user + sys)."""
    calls = usec = 0
    for name, entry in client.info("commandstats").items():
        if name.removeprefix("cmdstat_") in SCRIPT_COMMANDS:
            calls += int(entry["calls"])
            usec += int(entry["usec"])
    commands = int(client.info("stats")["total_commands_processed"])
    cpu = client.info("cpu")
    return calls, usec, commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class WorkerError(RuntimeError):
    """A worker subprocess failed (its stderr is in the message)."""


@contextmanager
def _workers(group: Group, specs: list[dict[str, Any]]) -> Iterator[list[subprocess.Popen[str]]]:
    """Worker subprocesses importing ``coordinator`` from the group's tree; stopped on
    leaving. Their stderr goes to a temporary file, shown if one fails."""
    env = {**os.environ, "PYTHONPATH": str(group.path), "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryFile("w+") as errors:
        procs = [
            subprocess.Popen(
                [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=env,
                cwd=group.path,
            )
            for spec in specs
        ]
        try:
            yield procs
        except WorkerError as exc:
            errors.seek(0)
            text = errors.read().strip()
            if not text:
                raise
            raise WorkerError(f"{exc}\n[{group.label}'s workers said]\n{text}") from None
        finally:
            for proc in procs:
                _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        with suppress(BrokenPipeError):
            proc.stdin.close()  # a worker ends when its stdin does
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise WorkerError("a worker exited early")
    message: dict[str, Any] = json.loads(line)
    return message


def _say(proc: subprocess.Popen[str], word: str) -> None:
    stdin: IO[str] | None = proc.stdin
    assert stdin is not None
    stdin.write(word + "\n")
    stdin.flush()


@dataclass(frozen=True)
class Run:
    """Where and how long: the server (and a client reading its INFO), the secret key every
    worker shares, the seconds of each round and how many rounds."""

    url: str
    key: str
    info: Any
    seconds: float
    rounds: int


def setup_models(group: Group, run: Run) -> None:
    """Add the model profiles the ``execute`` workers of ``group`` share."""
    spec = {"kind": "setup", "url": run.url, "namespace": group.namespace, "key": run.key}
    with _workers(group, [spec]) as procs:
        _read(procs[0])


def _round(procs: list[subprocess.Popen[str]], phase: Phase, info: Any) -> None:
    """One timed round of one group's workers, all let go at once, with Redis's counters read
    right before and after."""
    before = _redis_counters(info)
    for proc in procs:
        _say(proc, "go")
    results = [_read(proc) for proc in procs]
    after = _redis_counters(info)
    calls, usec, commands, cpu = (b - a for a, b in zip(before, after, strict=True))
    phase.samples.extend(s for r in results for s in r["samples"])
    elapsed = max(r["elapsed"] for r in results)
    phase.elapsed += elapsed
    phase.rates.append(sum(len(r["samples"]) for r in results) / elapsed)
    phase.fcalls += int(calls)
    phase.fcall_usec += int(usec)
    phase.commands += int(commands)
    phase.cpu_s += float(cpu)
    for r in results:
        for name, n in r.get("failed", {}).items():
            phase.failed[name] = phase.failed.get(name, 0) + n


def run_workload(work: Workload, groups: list[Group], run: Run) -> None:
    """Start every group's workers (they prepare side by side), then alternate the groups'
    rounds: A B, B A, A B, ..., so that neither always runs right after the other."""
    spec = {
        "url": run.url, "key": run.key, "tasks": work.tasks, "size": work.size,
        "seconds": run.seconds,
    }  # fmt: skip
    with ExitStack() as stack:
        procs = {
            g.label: stack.enter_context(
                _workers(
                    g,
                    [{**spec, "kind": g.kind or work.kind, "namespace": g.namespace}]
                    * work.processes,
                )
            )
            for g in groups
        }
        for label, group_procs in procs.items():
            phase = work.results[label] = Phase()
            for proc in group_procs:
                phase.baseline.extend(_read(proc)["baseline"])
        labels = list(procs)
        for i in range(run.rounds):
            for label in labels if i % 2 == 0 else labels[::-1]:
                _round(procs[label], work.results[label], run.info)


def workloads() -> list[Workload]:
    """Every workload, in order; the sync managers and pybreaker join the fleet of one caller
    per process."""
    rows = [Workload(f"1 process × {_tasks(n)}", "execute", tasks=n) for n in CONCURRENCY]
    fleet = FLEET_PROCESSES
    rows.append(Workload(f"{fleet} processes × 1 task", "execute", fleet, with_pybreaker=True))
    rows.append(Workload(f"{fleet} processes × {FLEET_TASKS} tasks", "execute", fleet, FLEET_TASKS))
    rows.extend(Workload(f"pool of {n:,}", "pick", size=n) for n in POOL_SIZES)
    return rows


def _tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


def measure(trees: list[Group], run: Run) -> list[Workload]:
    """Run every workload on every tree, and the sync managers (of this tree, on its model
    profiles) and pybreaker where they join."""
    for tree in trees:
        setup_models(tree, run)
    sync = Group("sync", trees[0].path, trees[0].namespace, "sync")
    pybreaker = Group("pybreaker", trees[0].path, f"{trees[0].namespace}pb", "pybreaker")
    work = workloads()
    for w in work:
        groups = [*trees, sync, pybreaker] if w.with_pybreaker else trees
        _progress(f"{w.kind}, {w.name}: {', '.join(g.label for g in groups)}")
        run_workload(w, groups, run)
    return work


def _progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------------------------

Figure = Callable[[Phase], float]


def added(q: float) -> Figure:
    """The ``q`` quantile of the latency minus the same quantile of the bare no-op (µs)."""
    return lambda p: _percentile(p.samples, q) - _percentile(p.baseline, q)


def latency(q: float) -> Figure:
    """The ``q`` quantile of the latency (µs)."""
    return lambda p: _percentile(p.samples, q)


def per_second(p: Phase) -> float:
    """Decisions per second, all processes together."""
    return p.count / p.elapsed


def fcalls_per_decision(p: Phase) -> float:
    """Script calls (round trips that decide) per decision."""
    return p.fcalls / p.count


def usec_per_fcall(p: Phase) -> float:
    """Redis's own time per script call (``INFO commandstats``)."""
    return p.fcall_usec / max(p.fcalls, 1)


def fcall_usec_per_decision(p: Phase) -> float:
    """Redis's time in scripts per decision (``execute``: select + report)."""
    return p.fcall_usec / p.count


def cpu_per_decision(p: Phase) -> float:
    """Redis process CPU (user + sys, network included) per decision, µs."""
    return p.cpu_s * 1e6 / p.count


def commands_per_decision(p: Phase) -> float:
    """Commands Redis ran per decision, those inside scripts included."""
    return p.commands / p.count


def _cell(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


WIDTH = 16  # of a value column


class Table:
    """One table: sections of rows, a value per column and the ratio of the first two."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.lines: list[str] = []

    def section(self, title: str, columns: list[str] | None = None) -> None:
        """Start a section; ``columns`` renames the value columns for it."""
        names = columns or self.columns
        ratio = f"{names[0]}/{names[1]}" if len(names) > 1 else ""
        self.lines.append("")
        heads = "".join(f"{n:>{WIDTH}}" for n in names)
        self.lines.append(f"{title:<46}{heads}{ratio:>{WIDTH}}".rstrip())

    def row(self, label: str, phases: list[Phase], figure: Figure, digits: int = 1) -> None:
        """One figure of each column's phase (and their ratio)."""
        values = [figure(p) for p in phases]
        cells = "".join(f"{_cell(v, digits):>{WIDTH}}" for v in values)
        ratio = f"{values[0] / values[1]:.2f}" if len(values) > 1 and values[1] else ""
        self.lines.append(f"  {label:<44}{cells}{ratio:>{WIDTH}}".rstrip())

    def text(self) -> str:
        """The table as printed."""
        return "\n".join(self.lines).lstrip("\n")


def _execute_rows(table: Table, work: list[Workload], labels: list[str]) -> None:
    for w in (w for w in work if w.kind == "execute"):
        table.section(f"execute(no-op), {w.name}")
        phases = [w.results[x] for x in labels]
        table.row("p50 added latency µs", phases, added(0.50))
        table.row("p99 added latency µs", phases, added(0.99))
        table.row("decisions per second", phases, per_second, 0)
    busy = work[len(CONCURRENCY) + 1]
    table.section(f"Redis per execute, {busy.name}")
    phases = [busy.results[x] for x in labels]
    table.row("FCALLs per execute", phases, fcalls_per_decision, 2)
    table.row("µs per FCALL (commandstats)", phases, usec_per_fcall)
    table.row("FCALL µs per execute (select + report)", phases, fcall_usec_per_decision)
    table.row("Redis CPU µs per execute (user+sys)", phases, cpu_per_decision)


def _pick_rows(table: Table, work: list[Workload], labels: list[str]) -> None:
    for w in (w for w in work if w.kind == "pick"):
        table.section(f"pick (get_next_profile), {w.name}, 1 task")
        phases = [w.results[x] for x in labels]
        table.row("p50 latency µs", phases, latency(0.50))
        table.row("p99 latency µs", phases, latency(0.99))
        table.row("FCALL µs per pick", phases, fcall_usec_per_decision)
        table.row("Redis CPU µs per pick (user+sys)", phases, cpu_per_decision)


def _pybreaker_rows(table: Table, ours: Phase, theirs: Phase) -> None:
    table.section(f"vs pybreaker, {FLEET_PROCESSES} processes × 1 caller", ["ours", "pybreaker"])
    pair = [ours, theirs]
    table.row("decisions per second", pair, per_second, 0)
    table.row("p50 added latency µs", pair, added(0.50))
    table.row("p99 added latency µs", pair, added(0.99))
    table.row("Redis commands per decision", pair, commands_per_decision, 2)
    table.row("Redis CPU µs per decision (user+sys)", pair, cpu_per_decision)


def _sync_rows(table: Table, sync: Phase, theirs: Phase, ours: Phase) -> None:
    """The synchronous managers beside pybreaker (both blocking, one thread per process), and
    the async column for reference."""
    title = f"sync execute(no-op), {FLEET_PROCESSES} processes × 1 thread"
    table.section(title, ["sync", "pybreaker", "async"])
    trio = [sync, theirs, ours]
    table.row("decisions per second", trio, per_second, 0)
    table.row("p50 added latency µs", trio, added(0.50))
    table.row("p99 added latency µs", trio, added(0.99))
    table.row("Redis commands per decision", trio, commands_per_decision, 2)
    table.row("Redis CPU µs per decision (user+sys)", trio, cpu_per_decision)


def verdict(work: list[Workload], labels: list[str]) -> str:
    """The issue's rule: new keeps at least 90 % of old's fleet throughput. Each round of new
    is compared with old's round right beside it; the median of those ratios is the verdict,
    and their range shows how much the machine moved during the run."""
    lines = [f"fleet throughput of {labels[0]} vs {labels[1]}, round by round:"]
    medians = []
    for w in (w for w in work if w.kind == "execute" and w.processes > 1):
        new, old = w.results[labels[0]].rates, w.results[labels[1]].rates
        ratios = sorted(a / b for a, b in zip(new, old, strict=True))
        medians.append(statistics.median(ratios))
        spread = f"rounds from {ratios[0]:.0%} to {ratios[-1]:.0%}"
        lines.append(f"  {w.name}: median {medians[-1]:.0%} ({spread})")
    met = "met" if min(medians) >= THROUGHPUT_LIMIT else "NOT met"
    lines.append(f"the rule asks new for at least {THROUGHPUT_LIMIT:.0%} of old: {met}")
    return "\n".join(lines)


def report(work: list[Workload], labels: list[str]) -> str:
    """The whole table, and with two trees the throughput verdict of the issue."""
    table = Table(labels)
    _execute_rows(table, work, labels)
    _pick_rows(table, work, labels)
    fleet = work[len(CONCURRENCY)].results
    _pybreaker_rows(table, fleet[labels[0]], fleet["pybreaker"])
    _sync_rows(table, fleet["sync"], fleet["pybreaker"], fleet[labels[0]])
    text = table.text()
    failures = [
        f"  {w.kind}, {w.name}, {label}: "
        + ", ".join(f"{n:,} {name}" for name, n in sorted(phase.failed.items()))
        for w in work
        for label, phase in w.results.items()
        if phase.failed
    ]
    if failures:
        text += "\n\ncalls that raised (not in the latencies):\n" + "\n".join(failures)
    if len(labels) > 1:
        text += "\n\n" + verdict(work, labels)
    return text


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.1 <= value <= 600:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 600 seconds, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line (see the module's docstring)."""
    cli = argparse.ArgumentParser(
        description="Fleet benchmark of coordinator against pybreaker, on a real Redis.",
        epilog="exit status: 0 after printing the table; 1 when a worker failed; 2 for a bad "
        "option, --url or REV, or no server to run on",
    )
    cli.add_argument(
        "--duration", type=_duration, default=6.0, metavar="S",
        help="timed seconds per workload and column (default: %(default)s)",
    )  # fmt: skip
    cli.add_argument("--quick", action="store_true", help=f"{QUICK_S:g} s per workload")
    cli.add_argument(
        "--url", metavar="URL",
        help="an existing Redis server (redis://, rediss://, unix://); its other clients "
        "weigh on the CPU figures; default: a throw-away redis-server on a free port",
    )  # fmt: skip
    cli.add_argument(
        "--compare", metavar="REV",
        help="also run the tree at git revision REV (a temporary worktree), side by side",
    )  # fmt: skip
    return cli


def _check_url(cli: argparse.ArgumentParser, url: str) -> None:
    """Exit with 2 unless ``url`` names one standalone Redis server (read by the store's own
    URL parser, so the two never disagree)."""
    from coordinator import ConfigError
    from coordinator.store.connection import _parse_url

    try:
        backend = _parse_url(url).backend
    except ConfigError as exc:
        cli.exit(2, f"{cli.prog}: error: --url: {exc}\n")
    if backend != "redis":
        cli.exit(
            2,
            f"{cli.prog}: error: --url: {backend} is not a standalone Redis server; give a "
            "redis://, rediss:// or unix:// URL, or no --url for a throw-away redis-server\n",
        )


@contextmanager
def _server(cli: argparse.ArgumentParser, url: str | None) -> Iterator[str]:
    """``url`` once checked, else a throw-away ``redis-server``, stopped on leaving."""
    from coordinator.testing import RedisServer

    if url is not None:
        _check_url(cli, url)
        yield url
        return
    server = RedisServer()
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        cli.exit(2, f"{cli.prog}: error: {exc}\n")
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def _worktree(cli: argparse.ArgumentParser, rev: str) -> Iterator[Path]:
    """``rev`` checked out (detached) into a temporary ``git worktree``, removed on leaving."""
    folder = Path(tempfile.mkdtemp(prefix="coordinator-bench-")) / "tree"
    done = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), rev],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        folder.parent.rmdir()
        cli.exit(2, f"{cli.prog}: error: --compare {rev}: {done.stderr.strip()}\n")
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
            capture_output=True,
            check=False,
        )
        folder.parent.rmdir()


def _revision() -> str:
    """This tree's commit, and whether it has changes not committed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip()

    changed = (
        " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    )
    return (git("rev-parse", "--short", "HEAD") or "no git") + changed


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the table; 0 when done, 1 when a worker failed, 2 for bad options."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--worker"] and len(args) == 2:
        return worker_main(args[1])
    sys.path.insert(0, str(ROOT))  # the driver imports coordinator from this tree
    cli = parser()
    opts = cli.parse_args(args)
    duration = QUICK_S if opts.quick else opts.duration
    started = time.monotonic()
    with _server(cli, opts.url) as url, _compared(cli, opts.compare) as old:
        import redis

        from coordinator import generate_key

        tag = f"bench{os.getpid()}"
        trees = [Group("new", ROOT, f"{tag}new")]
        if old is not None:
            trees.append(Group("old", old, f"{tag}old"))
        info = redis.Redis.from_url(url)
        try:
            version = info.info("server")["redis_version"]
        except redis.RedisError as exc:
            cli.exit(2, f"{cli.prog}: error: no server to run on at {url}: {exc}\n")
        run = Run(url, generate_key(), info, duration / ROUNDS, ROUNDS)
        print(f"coordinator fleet benchmark: Redis {version}, {url}")
        print(f"{_machine()}; {duration:g} s per workload and column, in {ROUNDS} rounds")
        if old is not None:
            print(f"new = this tree ({_revision()}), old = {opts.compare}")
        print()
        try:
            work = measure(trees, run)
        except WorkerError as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            info.close()
        print(report(work, [t.label for t in trees]))
    print(f"\n(run took {time.monotonic() - started:.0f} s)")
    return 0


@contextmanager
def _compared(cli: argparse.ArgumentParser, rev: str | None) -> Iterator[Path | None]:
    if rev is None:
        yield None
        return
    with _worktree(cli, rev) as folder:
        yield folder


if __name__ == "__main__":
    raise SystemExit(main())
