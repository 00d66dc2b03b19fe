"""The operator CLI: thin calls into the library, clear errors, no secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coordinator import AuthProfileManager, connect, scripts
from coordinator.cli.main import main
from coordinator.testing import RedisServer

from .conftest import unique_namespace
from .helpers import add_keys


def test_keygen_prints_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator import SecretBox

    assert main(["keygen"]) == 0
    SecretBox.from_text(capsys.readouterr().out.strip())


async def test_status_clear_and_export_against_redis(
    redis_server: RedisServer, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = unique_namespace()
    store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
    manager = AuthProfileManager(store)
    await add_keys(manager, 2)
    await manager.mark_failed("key-0", "bad sk-test-openai-key-0-0123456789abcdef", kind="auth")
    await store.close()
    monkeypatch.setenv("COORDINATOR_SECRET_KEY", secret_key)
    base = [sys.executable, "-m", "coordinator.cli", "--url", redis_server.url,
            "--namespace", namespace]  # fmt: skip
    status = subprocess.run([*base, "status"], capture_output=True, text=True, check=True)
    assert "key-0" in status.stdout and "cooling" in status.stdout
    assert "sk-test" not in status.stdout
    as_json = json.loads(
        subprocess.run([*base, "status", "--json"], capture_output=True, text=True).stdout
    )
    assert {row["id"]: row["in_cooldown"] for row in as_json} == {"key-0": True, "key-1": False}
    cleared = subprocess.run([*base, "clear-cooldown", "key-0"], capture_output=True, text=True)
    assert cleared.returncode == 0 and "cooldown cleared" in cleared.stdout
    exported = subprocess.run([*base, "export"], capture_output=True, text=True, check=True)
    assert "sk-test" not in exported.stdout and json.loads(exported.stdout)["format"] == 1


def test_errors_are_one_line_and_nonzero() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "--url", "memory://", "clear-cooldown", "nope"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "coordinator: error: unknown profile id 'nope'"
    bad_url = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "--url", "mysql://x", "status"],
        capture_output=True,
        text=True,
    )
    assert bad_url.returncode == 1 and "unsupported scheme" in bad_url.stderr
    usage = subprocess.run([sys.executable, "-m", "coordinator.cli"], capture_output=True)
    assert usage.returncode == 2


async def test_functions_lists_and_prunes_other_versions_libraries(
    redis_server: RedisServer, secret_key: str
) -> None:
    """A rolling deploy leaves the libraries of the older version on the server: the command
    lists them and, with --prune, deletes them and nothing else."""
    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    old = "coordinator_pick_00000000deadbeef"
    other = "someone_elses_library"
    for name in (old, other):
        await store.client.function_load(
            f"#!lua name={name}\nredis.register_function('{name}', function() return 1 end)",
            replace=True,
        )
    await store.close()
    base = [sys.executable, "-m", "coordinator.cli", "--url", redis_server.url]
    listed = subprocess.run([*base, "functions"], capture_output=True, text=True, check=True)
    count = len(scripts.script_names())
    assert f"this version: {count} of {count} libraries loaded" in listed.stdout
    assert "other versions: 1 libraries" in listed.stdout and old in listed.stdout
    pruned = subprocess.run(
        [*base, "functions", "--prune"], capture_output=True, text=True, check=True
    )
    assert "deleted 1 libraries of other versions" in pruned.stdout and old in pruned.stdout
    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        ours, others = await store.function_libraries()
        assert len(ours) == count and others == []
        names = {
            (lib[1].decode() if isinstance(lib[1], bytes) else lib[1])
            for lib in await store.client.function_list()
        }
        assert other in names and old not in names
        await store.client.function_delete(other)
    finally:
        await store.close()
