"""`make demo`'s script, run as it is run: on the embedded backend, and against a real Redis
when COORDINATOR_REDIS_URL is set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.testing import RedisServer

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def _run_demo(url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_REDIS_URL"}
    if url is not None:
        env["COORDINATOR_REDIS_URL"] = url
    done = subprocess.run(
        [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _check(output: str) -> None:
    # The schedule's incidents, each printed once however many replicas reported it.
    cooldowns = re.findall(r"\] (\S+) +cooling down +(\d+) s +\((\w+), from (\d+) failed", output)
    assert [(pid, kind) for pid, _, kind, _ in cooldowns] == [
        ("openai-team-a", "rate_limit"),
        ("anthropic-main", "server"),
        ("openai-team-a", "rate_limit"),
        ("openai-team-b", "billing"),
        ("anthropic-backup", "server"),
    ]
    # Retry-After 90 s, then the second ordinary failure: 1 min x 5; billing: 5 h.
    assert [int(seconds) for _, seconds, _, _ in cooldowns][2:4] == [300, 18000]
    assert output.count("recovered: back in rotation") == 4
    assert re.search(r"checked \d+ picks against \d+ cooldown deadlines: 0 handed out", output)
    assert "sk-demo" not in output  # the keys never reach the output


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_demo_runs_and_never_hands_out_a_cooling_key(
    backend: str, redis_server: RedisServer
) -> None:
    _check(_run_demo(None if backend == "memory" else redis_server.url))
