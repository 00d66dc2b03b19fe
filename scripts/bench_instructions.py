"""Benchmark: Redis's own cost of each operation in CPU instructions, counted by callgrind.

Usage: ``python scripts/bench_instructions.py [--calls N]`` (``make bench-instructions``).
Starts a throw-away ``redis-server`` under ``valgrind --tool=callgrind`` on a free loopback
port, runs the operations of ``make bench`` (pool of 10 and of 10,000 profiles; the model
operations) ``N`` times each, and prints the instructions Redis executed inside their FCALL
calls (functions, the commands they run, converting arguments and replies), per call and as a
multiple of a bare EVALSHA of ``return 1`` (the bare round trip of ``make bench``; a bare FCALL
of a function returning 1 is printed too, for comparison). Not counted: the network, the event
loop, parsing the request. Unlike times, these counts do not move with the machine's load (two
runs agree within ~1%: hashing and garbage collection vary a little), so they show what a
change to a script costs or saves; they hold for the Redis build they were taken on (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator import connect, generate_key
from coordinator.testing import RedisServer
from scripts._benchlib import Op, Step, bare_round_trip
from scripts.bench import pool_ops
from scripts.bench_models import EXECUTE, HOP, SELECT, model_ops

COLLECTED = ("evalShaCommand", "fcallCommand")  # callgrind counts only inside these


class Callgrind:
    """Zero and dump the counters of a server running under callgrind."""

    def __init__(self, pid: int, out_dir: str) -> None:
        self._pid = pid
        self._out_dir = out_dir
        self._dumps = 0

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self._pid)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def total(self) -> int:
        """The instructions counted so far (since the last zero), read without a dump."""
        out = subprocess.run(
            ["callgrind_control", "-e", "Ir", str(self._pid)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        # One line per thread: "   Th 1  300,258"
        return sum(int(n.replace(",", "")) for n in re.findall(r"^\s*Th \d+\s+([\d,]+)", out, re.M))

    def zero(self) -> None:
        """Start counting from zero."""
        self._control("--zero")

    def dump(self) -> int:
        """Write the counters out and return the instructions counted since :meth:`zero`."""
        self._dumps += 1
        reason = f"d{self._dumps}"
        self._control("--dump=" + reason)
        for name in os.listdir(self._out_dir):
            with open(os.path.join(self._out_dir, name)) as handle:
                text = handle.read()
            if re.search(rf"^desc: Trigger: dump {reason}$", text, re.M):
                found = re.search(r"^summary: (\d+)$", text, re.M)
                return int(found.group(1)) if found else 0
        raise RuntimeError(f"callgrind wrote no dump for {reason}")


async def _count(counter: Callgrind, op: Op, calls: int, between: Step | None = None) -> float:
    """Instructions per call of ``op`` (``between`` runs after each call, and must not send
    Redis an EVALSHA or an FCALL: it would be counted)."""
    counter.zero()
    for i in range(calls):
        await op()
        if between is not None:
            await between(i)
    return counter.dump() / calls


async def measure(url: str, counter: Callgrind, calls: int) -> list[tuple[str, int, float]]:
    """Rows of (operation, scripts per call, instructions per call)."""
    store = await connect(url, namespace="instr", secret_key=generate_key())
    rows: list[tuple[str, int, float]] = []
    try:
        bare = await bare_round_trip(store)
        rows.append(("bare round trip (EVALSHA return 1)", 1, await _count(counter, bare, calls)))
        name = "bench_return_1"
        await store.client.function_load(
            f"#!lua name={name}\nredis.register_function('{name}', function() return 1 end)",
            replace=True,
        )

        async def bare_fcall() -> Any:
            return await store.client.execute_command("FCALL", name, 1, b"bench")

        await bare_fcall()
        rows.append(("bare FCALL (return 1)", 1, await _count(counter, bare_fcall, calls)))
        for size in (10, 10_000):
            ops, between = await pool_ops(store, size)
            for name, op in ops.items():
                await op()  # warm: the script is loaded
                per_call = await _count(counter, op, calls, between)
                rows.append((f"{name} (pool {size:,})", 1, per_call))
            if size == 10:
                # A success on a profile that failed once and has succeeded since (its record
                # holds counters at 0): the common success in production. (Above: profiles
                # that never failed, which have no record.)
                success = ops["mark_success"]
                await _count(counter, success, size, between)  # resets the counters
                per_call = await _count(counter, success, calls, between)
                rows.append(("mark_success, counters at 0 (pool 10)", 1, per_call))
        models = await model_ops(store)
        # Steady state: breakers whose window is full of successes, as after the timed
        # benchmark's warm-up.
        for _ in range(30):
            await models.ops[EXECUTE]()
        for name in (SELECT, EXECUTE):
            rows.append(
                (name, 2 if name == EXECUTE else 1, await _count(counter, models.ops[name], calls))
            )
        # The hop: a healthy primary's first failure. Its success in between (which ends the
        # streak, as in the timed benchmark) is an FCALL too, so only the hops are added up,
        # from the counters read around each one (fewer calls: each read takes ~0.2 s).
        hop = models.ops[HOP]
        for i in range(5):
            await hop()
            await models.recover(i)
        counter.zero()
        counted = 0
        hops = max(1, calls // 4)
        for i in range(hops):
            before = counter.total()
            await hop()
            counted += counter.total() - before
            await models.recover(i)
        rows.append((HOP, 1, counted / hops))
        return rows
    finally:
        await store.close()


def report(rows: list[tuple[str, int, float]], version: str) -> str:
    """The table: instructions per call and per script, and the multiple of the bare call."""
    bare = rows[0][2]
    lines = [
        f"Redis {version}: instructions inside EVALSHA and FCALL, per call (callgrind)",
        "",
        f"{'operation':<40}{'scripts':>8}{'instructions':>14}{'× bare':>9}",
        "-" * 71,
    ]
    for name, scripts, per_call in rows:
        lines.append(f"{name:<40}{scripts:>8}{per_call:>14,.0f}{per_call / bare:>9.1f}")
    return "\n".join(lines)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per operation (200)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install the Debian package valgrind", file=sys.stderr)
            return 1
    out_dir = tempfile.mkdtemp(prefix="coordinator-callgrind-")
    wrapper = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        *(f"--toggle-collect={name}" for name in COLLECTED),
        f"--callgrind-out-file={out_dir}/callgrind.%p",
    ]  # fmt: skip
    try:
        with RedisServer(wrapper=wrapper) as server:
            assert server.pid is not None
            version = (
                subprocess.run(
                    ["redis-server", "--version"], capture_output=True, text=True, check=True
                )
                .stdout.split()[2]
                .removeprefix("v=")
            )
            counter = Callgrind(server.pid, out_dir)
            rows = asyncio.run(measure(server.url, counter, args.calls))
        print(report(rows, version))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
