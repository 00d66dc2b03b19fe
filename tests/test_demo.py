"""`make demo`'s script, run as `make demo` runs it (``python scripts/demo.py`` from the
repository root, in a subprocess): its plain log on the embedded backend and against a real
Redis (``COORDINATOR_REDIS_URL``), and its live view on a terminal. The closing summary must
agree with the scripted incidents of ``scripts/demo_scenario.py``."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.testing import RedisServer
from scripts.demo_scenario import (
    CHAT_PER_TICK,
    DURATION_S,
    GEMINI_PER_TICK,
    INCIDENTS,
    REPLICAS,
    TICK_S,
    TOKEN_LIFETIME_S,
    USERS,
    WORKER_LEAD_S,
    clock,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["scripts/demo.py"]


def _env(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_REDIS_URL"}
    if url is not None:
        env["COORDINATOR_REDIS_URL"] = url
    return env


def _run_demo(url: str | None) -> str:
    done = subprocess.run(
        [sys.executable, *DEMO], cwd=ROOT, env=_env(url), capture_output=True, text=True,
        timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr == ""
    return done.stdout


def _number(pattern: str, output: str) -> tuple[int, ...]:
    found = re.search(pattern, output)
    assert found is not None, f"no {pattern!r} in the summary"
    return tuple(int(g) for g in found.groups())


def _check_totals(out: str) -> None:
    steps = DURATION_S // TICK_S
    expected = steps * REPLICAS * (CHAT_PER_TICK + GEMINI_PER_TICK)
    sent, answered, failed = _number(
        r"requests +(\d+) sent, (\d+) answered \(100\.0 %\), (\d+) failed", out
    )
    assert (sent, answered, failed) == (expected, expected, 0)
    # Every call that met an incident failed over inside execute() (none was lost), by kind.
    hops, billing, rate_limit, server, met = _number(
        r"failovers +(\d+) hops inside execute\(\) \(billing (\d+), rate_limit (\d+), "
        r"server (\d+)\), for (\d+) calls that met an incident",
        out,
    )
    assert hops == met == billing + rate_limit + server
    assert min(billing, rate_limit, server) > 0
    cooling, picks = _number(r"(\d+) of (\d+) picks handed out a cooling key", out)
    assert cooling == 0 and picks > 0
    seen, transitions = _number(r"received (\d+) of the (\d+) transitions", out)
    assert seen == transitions > 0  # every replica received every transition
    assert _number(r"unexpected +(\d+) ", out) == (0,)


def _check_breakers(out: str) -> None:
    # One trip per provider outage, the OpenAI probe at +06:00 failing (still down), and each
    # breaker closing again on a successful probe.
    opened, first, probes, half_open, closed = _number(
        r"breaker trips +(\d+) opened \(consecutive-failures (\d+), probe-failed (\d+)\), "
        r"(\d+) half-open, (\d+) closed again",
        out,
    )
    outages = [i for i in INCIDENTS if i.expect == "breaker"]
    assert first == closed == len(outages)
    assert opened == first + probes and half_open == closed + probes and probes >= 1


def _check_refreshes(out: str) -> None:
    # Workers refresh each token once its lifetime minus the worker's lead has passed: every
    # token that came due is refreshed exactly once, with a refresh token never sent twice.
    refreshed, due, requests, reused, waits = _number(
        r"OAuth refreshes +(\d+) for (\d+) tokens that came due .*?; (\d+) refresh requests "
        r"reached the provider, (\d+) reused a refresh token; apps waited for (\d+) of the",
        out,
    )
    per_user = (DURATION_S - TICK_S) // int(TOKEN_LIFETIME_S - WORKER_LEAD_S)
    assert refreshed == due == requests == len(USERS) * per_user > 0
    assert (reused, waits) == (0, 0)


def _check_incidents(out: str) -> None:
    for incident in INCIDENTS:
        start = clock(incident.start_s)
        (met,) = _number(rf"{re.escape(incident.title)}, met by (\d+) call", out)
        assert met > 0
        effect = out.split(f"{incident.title}, met by", 1)[1].splitlines()[1]
        if incident.expect == "breaker":
            assert f"breaker opened at {start}," in effect
            lag = re.search(r"closed at \+\d\d:\d\d: (\d+) s after the provider recovered", effect)
            assert lag is not None, effect
        else:
            assert "the key cooled down" in effect and "never" not in effect
    # Retry-After honoured at once; the second 429 escalates (1 min x 5); billing: 5 h.
    assert "90 s (rate_limit) at +01:00, then 5 min (rate_limit) at +02:30" in out
    assert "5 h (billing) at +03:00; still cooling at the end" in out


def _check(out: str) -> None:
    _check_totals(out)
    _check_breakers(out)
    _check_refreshes(out)
    _check_incidents(out)
    assert "time to recover" in out
    assert "sk-demo" not in out and "xai-demo" not in out  # keys never reach the output


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_demo_log_agrees_with_the_script(backend: str, redis_server: RedisServer) -> None:
    out = _run_demo(None if backend == "memory" else redis_server.url)
    assert out.startswith("coordinator demo: 4 app replicas and 2 refresh workers share")
    _check(out)
    # Transitions are printed as they happen, each once however many replicas reported it.
    assert out.count("openai           breaker OPEN for 60 s") == 1
    assert out.count("openai-team-a    key back in rotation") == 2
    if backend == "redis":  # a fresh namespace, deleted at the end
        assert re.search(r"deleted the run's \d+ keys from Redis", out)
        keys = subprocess.run(
            ["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", "demo-*"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert keys.stdout.strip() == ""


def test_demo_on_a_terminal_shows_the_live_view() -> None:
    leader, follower = pty.openpty()
    env = {**_env(None), "COLUMNS": "150", "LINES": "50", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, *DEMO], cwd=ROOT, env=env, stdout=follower, stderr=subprocess.PIPE
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 110
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the demo has ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(leader)
    _, errors = proc.communicate(timeout=10)
    assert proc.returncode == 0, errors.decode()[-3000:]
    assert errors == b""
    screen = b"".join(chunks).decode("utf-8", "replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    for title in ("requests per replica", "pool keys", "model profiles and their breakers",
                  "OAuth credentials", "transitions, as replica 0 receives them"):  # fmt: skip
        assert title in plain
    assert "+09:50 of 10:00 virtual" in plain  # the last step was drawn
    _check(plain)
