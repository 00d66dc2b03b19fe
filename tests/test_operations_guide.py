"""The `redis-cli` guide of docs/operations.md: every command block is run, as written, against
a real Redis holding a realistic fleet (tests/cli_fleet.py), and each must answer its question.

The guide's commands use the default namespace ``coord`` and a bare ``redis-cli``: the test
gives them a Redis of their own (never the one on 6379) through a ``redis-cli`` on ``PATH``
that adds ``-p <port>``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator import connect, generate_key
from coordinator.testing import RedisServer

from .cli_fleet import ACCESS_TOKEN, LOCK_PREFIX, STORED_KEY, build_fleet

DOC = Path(__file__).parent.parent / "docs" / "operations.md"
HEADING = "## The `redis-cli` guide"

#: What each question's commands must print (the fleet's facts; see tests/cli_fleet.py).
ANSWERS: dict[str, list[str]] = {
    "Which pools and profiles exist?": ["openai", "anthropic", "openai-main", "gpt-4o"],
    "Why is this key not being used?": ["openai", "rate_limit", "401 invalid key ****"],
    "Which sessions are pinned to it?": ["user-42 openai-backup", "chat-7 claude"],
    "When does this breaker close?": ["open", "server", "503 overloaded", "gpt-4o:open_until_ms"],
    "How has this model profile been failing?": [
        "gpt-4o:failures_server\n3",
        "gpt-4o:failures_total",
    ],
    "Which model profile is tried first?": ["gpt-4o\n-100", "gpt-4o:state"],
    "Who holds this refresh lock?": [f"{LOCK_PREFIX}:", f"worker-1 {LOCK_PREFIX}"],
    "When does this token expire, and is it refreshed?": ["google\nactive", "google:ops"],
    "Are the refresh workers alive?": ["worker-1", "running"],
    "What happened recently?": ["profile:failed", "profile:circuit-opened", "auth:success"],
}


def guide_text() -> str:
    """The guide section of docs/operations.md (``COORDINATOR_GUIDE`` may name another file
    holding it, e.g. a draft before it is merged into the docs)."""
    path = Path(os.environ.get("COORDINATOR_GUIDE", DOC))
    text = path.read_text()
    assert HEADING in text, f"{path} has no section {HEADING!r}"
    section = text[text.index(HEADING) + len(HEADING) :]
    following = re.search(r"^## ", section, flags=re.MULTILINE)
    return section[: following.start()] if following else section


def questions() -> dict[str, list[str]]:
    """Question (a ``###`` heading) -> its ``sh`` blocks."""
    out: dict[str, list[str]] = {}
    parts = re.split(r"^### (.+)$", guide_text(), flags=re.MULTILINE)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        out[title.strip()] = re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL)
    return out


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Redis with the fleet in namespace ``coord`` and a PATH whose redis-cli talks to it."""
    real = shutil.which("redis-cli")
    assert real is not None, "redis-cli is not installed"
    with RedisServer() as server:

        async def setup() -> None:
            store = await connect(server.url, namespace="coord", secret_key=generate_key())
            try:
                await build_fleet(store)
            finally:
                await store.close()

        asyncio.run(setup())
        bin_dir = tmp_path_factory.mktemp("bin")
        wrapper = bin_dir / "redis-cli"
        wrapper.write_text(f'#!/bin/sh\nexec {real} -p {server.port} "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        yield {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_every_question_has_commands_and_an_expected_answer() -> None:
    found = questions()
    assert set(found) == set(ANSWERS)
    assert all(found.values()), [q for q, blocks in found.items() if not blocks]


@pytest.mark.parametrize("question", sorted(ANSWERS))
def test_the_commands_answer_the_question(question: str, shell_env: dict[str, str]) -> None:
    output = ""
    for block in questions()[question]:
        run = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", block],
            capture_output=True,
            text=True,
            env=shell_env,
            timeout=60,
        )
        assert run.returncode == 0, f"{block}\n{run.stderr}"
        assert run.stderr == "", run.stderr
        output += run.stdout
    for fact in ANSWERS[question]:
        assert fact in output, f"{question}: {fact!r} not in:\n{output}"
    assert STORED_KEY not in output and ACCESS_TOKEN not in output
