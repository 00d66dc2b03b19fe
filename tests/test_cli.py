"""The operator CLI, driven as a user would: commands, ``--json`` parsed, exit codes, errors on
one line, and no secret on any output."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from coordinator import AuthProfileManager, ModelProfileManager, OAuthManager, connect, scripts
from coordinator.cli.main import main
from coordinator.testing import RedisServer

from .cli_fleet import ACCESS_TOKEN, STORED_KEY, Fleet, build_fleet, save_credential
from .conftest import unique_namespace
from .fake_provider import FakeProvider, Reply
from .helpers import add_keys

SECRETS = (STORED_KEY, ACCESS_TOKEN, "SECRET", "sk-test")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@dataclass
class Target:
    url: str
    namespace: str
    fleet: Fleet

    def base(self) -> list[str]:
        return ["--url", self.url, "--namespace", self.namespace]


def no_secret(*texts: str, extra: str = "") -> None:
    for text in texts:
        for secret in (*SECRETS, *([extra] if extra else [])):
            assert secret not in text


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the command line in this process; returns its exit status and outputs."""

    def run(*args: str) -> Result:
        code = main(list(args))
        captured = capsys.readouterr()
        no_secret(captured.out, captured.err)
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def target(redis_server: RedisServer, secret_key: str, monkeypatch: pytest.MonkeyPatch) -> Target:
    """A namespace on the suite's Redis holding the realistic fleet of tests/cli_fleet.py."""
    namespace = unique_namespace()
    monkeypatch.setenv("COORDINATOR_SECRET_KEY", secret_key)

    async def setup() -> Fleet:
        store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
        try:
            return await build_fleet(store)
        finally:
            await store.close()

    return Target(redis_server.url, namespace, asyncio.run(setup()))


def test_keygen_prints_a_usable_key(cli: Any) -> None:
    from coordinator import SecretBox

    result = cli("keygen")
    assert result.code == 0
    SecretBox.from_text(result.out.strip())


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
    base = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "--url",
        redis_server.url,
        "--namespace",
        namespace,
    ]
    status = subprocess.run([*base, "status"], capture_output=True, text=True, check=True)
    assert "key-0" in status.stdout and "cooling" in status.stdout
    assert "sk-test" not in status.stdout
    as_json = json.loads(
        subprocess.run([*base, "status", "--json"], capture_output=True, text=True).stdout
    )
    pools = as_json["pools"]
    assert {row["id"]: row["in_cooldown"] for row in pools} == {"key-0": True, "key-1": False}
    cleared = subprocess.run([*base, "clear-cooldown", "key-0"], capture_output=True, text=True)
    assert cleared.returncode == 0 and "cooldown cleared" in cleared.stdout
    exported = subprocess.run([*base, "export"], capture_output=True, text=True, check=True)
    assert "sk-test" not in exported.stdout and json.loads(exported.stdout)["format"] == 2


def test_errors_are_one_line_and_nonzero(cli: Any) -> None:
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
    # Redis down: StoreUnavailableError, one line, exit 1 (a port nothing listens on).
    down = cli("--url", "redis://127.0.0.1:1/0", "status", "--json")
    assert down.code == 1 and down.out == ""
    assert down.err.startswith("coordinator: error: PING failed") and down.err.count("\n") == 1
    # Bad usage: one line, exit 2.
    for args in (["status", "--bogus"], ["profiles", "show"], ["events", "tail", "-n", "x"]):
        bad = cli("--url", "memory://", *args)
        assert bad.code == 2 and bad.err.count("\n") == 1, bad.err
        assert bad.err.startswith("coordinator: error: ")
    missing = cli("--url", "memory://", "apply", "-f", "/nonexistent/coordinator.toml")
    assert missing.code == 1 and "/nonexistent/coordinator.toml" in missing.err


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


def test_status_shows_the_whole_fleet_without_secrets(cli: Any, target: Target) -> None:
    fleet = target.fleet
    data = cli(*target.base(), "status", "--json").json()
    pools = {row["id"]: row for row in data["pools"]}
    assert pools[fleet.cooling_key]["in_cooldown"] and pools[fleet.cooling_key]["failures"] == 1
    assert "****" in pools[fleet.cooling_key]["last_error"]  # the key in the error is masked
    models = {row["id"]: row for row in data["models"]}
    assert models[fleet.open_breaker]["state"] == "open"
    assert models[fleet.open_breaker]["open_remaining_ms"] > 0
    assert not models[fleet.open_breaker]["available"] and models["claude"]["available"]
    assert models[fleet.open_breaker]["failures_by_kind"] == {"server": 3}
    assert models["claude"]["failures_by_kind"] == {}
    assert [c["id"] for c in data["credentials"]] == [fleet.credential]
    assert data["credentials"][0]["expires_at_ms"] > data["now_ms"]
    assert [w["id"] for w in data["workers"]] == [fleet.worker]
    only_openai = cli(*target.base(), "status", "openai", "--json").json()
    assert {r["provider"] for r in only_openai["pools"]} == {"openai"}
    table = cli(*target.base(), "status")
    assert table.code == 0
    for word in (
        fleet.cooling_key,
        "cooling",
        fleet.open_breaker,
        "open",
        "by kind",
        "server 3",
        fleet.credential,
        fleet.worker,
    ):
        assert word in table.out
    assert [w["id"] for w in cli(*target.base(), "workers", "--json").json()] == [fleet.worker]


def test_profiles_add_list_show_enable_disable_remove(cli: Any, target: Target) -> None:
    base = target.base()
    listed = cli(*base, "profiles", "list", "--json").json()
    kinds = {(r["kind"], r["id"]) for r in listed}
    assert ("pool", "openai-stored") in kinds and ("model", "gpt-4o") in kinds
    stored = next(r for r in listed if r["id"] == "openai-stored")
    assert stored["credential"] == "stored key (encrypted)"
    added = cli(*base, "profiles", "add", "mistral-1", "--pool", "mistral", "--env", "MISTRAL_KEY")
    assert added.code == 0, added.err
    added_model = cli(
        *base,
        "profiles",
        "add",
        "mistral-large",
        "--base-url",
        "https://api.mistral.ai/v1",
        "--provider",
        "mistral",
        "--models",
        "mistral-large,mistral-small",
        "--auth",
        "pool:mistral",
        "--priority",
        "5",
    )
    assert added_model.code == 0, added_model.err
    shown = cli(*base, "profiles", "show", "mistral-large", "--json").json()
    assert shown["auth"] == "pool(mistral)" and shown["models"] == [
        "mistral-large",
        "mistral-small",
    ]
    assert shown["status"]["state"] == "closed"
    pool_shown = cli(*base, "profiles", "show", "mistral-1", "--json").json()
    assert pool_shown["credential"] == "env MISTRAL_KEY" and pool_shown["status"]["healthy"]
    assert cli(*base, "profiles", "list", "--pool", "mistral", "--json").json()[0]["id"] == (
        "mistral-1"
    )
    assert "mistral-large: disabled" in cli(*base, "profiles", "disable", "mistral-large").out
    assert cli(*base, "profiles", "show", "mistral-large", "--json").json()["enabled"] is False
    assert "already disabled" in cli(*base, "profiles", "disable", "mistral-large").out
    assert "mistral-large: enabled" in cli(*base, "profiles", "enable", "mistral-large").out
    for pid in ("mistral-1", "mistral-large"):
        assert cli(*base, "profiles", "remove", pid).code == 0
        missing = cli(*base, "profiles", "show", pid)
        assert (
            missing.code == 1 and missing.err == f"coordinator: error: unknown profile id {pid!r}\n"
        )
    # A pool profile has no enabled flag; an auth that is not a reference is refused.
    assert cli(*base, "profiles", "disable", "openai-main").code == 1
    bad = cli(*base, "profiles", "add", "x", "--base-url", "https://x", "--auth", "sk-live-1")
    assert bad.code == 1 and "--auth" in bad.err
    neither = cli(*base, "profiles", "add", "x")
    assert neither.code == 2


def test_cooldown_and_breaker_commands(cli: Any, target: Target) -> None:
    base, fleet = target.base(), target.fleet
    assert "cooldown cleared" in cli(*base, "cooldown", "clear", fleet.cooling_key).out
    assert "was not cooling down" in cli(*base, "cooldown", "clear", fleet.cooling_key).out

    def breaker(profile_id: str) -> dict[str, Any]:
        rows = cli(*base, "status", "--json").json()["models"]
        return dict(next(r for r in rows if r["id"] == profile_id))

    closed = cli(*base, "breaker", "close", fleet.open_breaker)
    assert closed.code == 0 and "was open" in closed.out
    closed_row = breaker(fleet.open_breaker)
    assert closed_row["state"] == "closed" and closed_row["available"]
    assert closed_row["failures_by_kind"] == {"server": 3}  # close keeps the counts
    # A forced open: the profile stays enabled, its breaker is open for the time given.
    opened = cli(*base, "breaker", "open", "claude", "--for", "120")
    assert opened.code == 0 and opened.out == "claude: breaker open for 2m00s, then half-open\n"
    row = breaker("claude")
    assert (row["state"], row["enabled"], row["available"]) == ("open", True, False)
    assert 110_000 < row["open_remaining_ms"] <= 120_000
    assert cli(*base, "breaker", "close", "claude").out == "claude: breaker closed (was open)\n"
    assert breaker("claude")["available"]
    assert cli(*base, "breaker", "open", "claude").code == 0  # default: the reset timeout
    assert 50_000 < breaker("claude")["open_remaining_ms"] <= 60_000
    assert "--for SECONDS" in cli(*base, "breaker", "open", "--help").out
    # reset also forgets the counts by kind; neither enables a disabled profile.
    assert cli(*base, "profiles", "disable", "claude").code == 0
    reset = cli(*base, "breaker", "reset", fleet.open_breaker)
    assert reset.code == 0 and breaker(fleet.open_breaker)["failures_by_kind"] == {}
    noted = cli(*base, "breaker", "close", "claude")
    assert "was open" in noted.out and "the profile is disabled" in noted.out
    assert not breaker("claude")["available"]
    for args in (["close", "nope"], ["open", "nope"], ["reset", "nope"]):
        missing = cli(*base, "breaker", *args)
        assert (
            missing.code == 1 and missing.err == "coordinator: error: unknown profile id 'nope'\n"
        )
    negative = cli(*base, "breaker", "open", fleet.open_breaker, "--for", "-5")
    assert negative.code == 1 and negative.err.count("\n") == 1 and "for_s" in negative.err
    assert cli(*base, "breaker", "open", fleet.open_breaker, "--for", "soon").code == 2


def test_sessions_show_and_release(cli: Any, target: Target) -> None:
    base, fleet = target.base(), target.fleet
    pinned = cli(*base, "sessions", "show", fleet.pinned_session, "--json").json()
    assert [(b["kind"], b["scope"]) for b in pinned] == [("pool", "openai")]
    assert pinned[0]["profile_id"].startswith("openai-") and pinned[0]["ttl_ms"] > 0
    model = cli(*base, "sessions", "show", fleet.model_session, "--json").json()
    assert [(b["kind"], b["profile_id"]) for b in model] == [("model", "claude")]
    # Pin the pool session to a model profile too: a release unpins both and says so.
    asyncio.run(_pin_model_session(target, fleet.pinned_session))
    both = cli(*base, "sessions", "show", fleet.pinned_session, "--json").json()
    assert [b["kind"] for b in both] == ["pool", "model"]
    released = cli(*base, "sessions", "release", fleet.pinned_session)
    assert released.out == f"{fleet.pinned_session}: released (pool openai, model profiles)\n"
    assert cli(*base, "sessions", "show", fleet.pinned_session, "--json").json() == []
    assert "not pinned" in cli(*base, "sessions", "show", fleet.pinned_session).out
    assert "was not pinned" in cli(*base, "sessions", "release", fleet.pinned_session).out
    # --pool keeps the model session; without it, the model session goes too.
    kept = cli(*base, "sessions", "release", fleet.model_session, "--pool", "openai")
    assert kept.out == f"{fleet.model_session}: was not pinned\n"
    assert cli(*base, "sessions", "show", fleet.model_session, "--json").json() != []
    only_model = cli(*base, "sessions", "release", fleet.model_session).out
    assert only_model == f"{fleet.model_session}: released (model profiles)\n"
    assert cli(*base, "sessions", "show", fleet.model_session, "--json").json() == []


async def _pin_model_session(target: Target, session_id: str) -> None:
    store = await connect(target.url, namespace=target.namespace)
    try:
        picked = await ModelProfileManager(store).select_profile(session_id=session_id)
        assert picked is not None
    finally:
        await store.close()


def test_credentials_list_default_remove(cli: Any, target: Target) -> None:
    base, fleet = target.base(), target.fleet
    listed = cli(*base, "credentials", "list", "--json").json()
    assert [(c["id"], c["is_default"], c["has_refresh_token"]) for c in listed] == [
        (fleet.credential, True, True)
    ]
    assert fleet.credential in cli(*base, "credentials", "list").out
    assert cli(*base, "credentials", "set-default", fleet.credential).code == 0
    # Signing in or refreshing needs the provider's configuration: a clear error without it.
    no_config = cli(*base, "credentials", "refresh", fleet.credential)
    assert no_config.code == 1 and "--config" in no_config.err
    assert "removed" in cli(*base, "credentials", "remove", fleet.credential).out
    assert cli(*base, "credentials", "list", "--json").json() == []
    gone = cli(*base, "credentials", "set-default", fleet.credential)
    assert gone.code == 1 and "unknown credential id" in gone.err


def test_events_tail_filters_by_type(cli: Any, target: Target) -> None:
    base = target.base()
    lines = cli(*base, "events", "tail", "-n", "100", "--json").out.splitlines()
    events = [json.loads(line) for line in lines]
    assert {"profile:failed", "profile:circuit-opened", "auth:success"} <= {
        e["type"] for e in events
    }
    assert [e["ts_ms"] for e in events] == sorted(e["ts_ms"] for e in events)
    opened = cli(*base, "events", "tail", "--type", "profile:circuit-opened", "--json")
    rows = [json.loads(line) for line in opened.out.splitlines()]
    assert [(e["type"], e["profile_id"]) for e in rows] == [("profile:circuit-opened", "gpt-4o")]
    assert len(cli(*base, "events", "tail", "-n", "2").out.splitlines()) == 2


def _spawn(target: Target, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", *target.base(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline()


def _report_failure(target: Target, profile_id: str) -> None:
    async def report() -> None:
        store = await connect(target.url, namespace=target.namespace)
        try:
            await AuthProfileManager(store).mark_failed(profile_id, "429", kind="rate_limit")
        finally:
            await store.close()

    asyncio.run(report())


def test_status_watch_redraws_on_an_event(target: Target) -> None:
    proc = _spawn(target, "status", "--watch", "--json")
    try:
        first = json.loads(_read_line(proc))
        assert not {r["id"]: r for r in first["pools"]}["anthropic-1"]["in_cooldown"]
        _report_failure(target, "anthropic-1")
        second = json.loads(_read_line(proc))
        assert {r["id"]: r for r in second["pools"]}["anthropic-1"]["in_cooldown"]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_events_tail_follow_prints_new_events(target: Target) -> None:
    proc = _spawn(
        target, "events", "tail", "-n", "0", "--follow", "--type", "profile:failed", "--json"
    )
    try:
        # The history is empty (-n 0). The command subscribes before it reads the history, but
        # its start is not announced: report until the first report after it shows up.
        assert proc.stdout is not None
        for _ in range(40):
            _report_failure(target, "anthropic-1")
            if select.select([proc.stdout], [], [], 0.5)[0]:
                break
        event = json.loads(_read_line(proc))
        assert (event["type"], event["profile_id"]) == ("profile:failed", "anthropic-1")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


async def test_model_manager_sees_what_the_cli_added(
    redis_server: RedisServer, secret_key: str
) -> None:
    """A profile added on the command line is the library's profile (no CLI-only format)."""
    namespace = unique_namespace()
    code = await asyncio.to_thread(
        main,
        [
            "--url",
            redis_server.url,
            "--namespace",
            namespace,
            "profiles",
            "add",
            "m1",
            "--base-url",
            "http://127.0.0.1:1/v1",
            "--provider",
            "local",
            "--auth",
            "env:K",
        ],
    )
    assert code == 0
    store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
    try:
        profile = await ModelProfileManager(store).get_profile("m1")
        assert profile.auth.kind == "env" and profile.auth.value == "K"
    finally:
        await store.close()


async def test_credentials_refresh_and_revoke_with_the_providers_file(
    redis_server: RedisServer, secret_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``refresh`` and ``revoke`` call the provider named in the file (a fake token endpoint
    here); what they print names the credential, never a token."""
    fake = await FakeProvider("corp").start()
    new_token = "ya29.refreshed-SECRET"
    fake.default = Reply(
        body=orjson.dumps({"access_token": new_token, "token_type": "Bearer", "expires_in": 7200})
    )
    namespace = unique_namespace()
    store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
    config = tmp_path / "coordinator.toml"
    config.write_text(
        f'[oauth.providers.corp]\ntoken_endpoint = "{fake.base_url}/token"\n'
        f'revocation_endpoint = "{fake.base_url}/revoke"\nclient_id = "ops-cli"\n'
    )
    monkeypatch.setenv("COORDINATOR_SECRET_KEY", secret_key)
    base = [
        sys.executable,
        "-m",
        "coordinator",
        "--url",
        redis_server.url,
        "--namespace",
        namespace,
        "credentials",
    ]

    async def cli_run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *base, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        no_secret(out.decode(), err.decode(), extra=new_token)
        return int(proc.returncode or 0), out.decode(), err.decode()

    try:
        await save_credential(store, "corp:ops", "corp")
        code, out, err = await cli_run("refresh", "corp:ops", "--config", str(config))
        assert code == 0, err
        assert out.strip() == "refreshed: corp:ops (corp, ops@example.com): active"
        assert [s.path for s in fake.seen] == ["/v1/token"]
        refreshed = await OAuthManager(store).get_credential("corp:ops")
        assert refreshed.version == 2 and refreshed.refreshed_ms is not None
        code, out, err = await cli_run("revoke", "corp:ops", "--config", str(config))
        assert code == 0, err
        assert out.strip() == "corp:ops: revoked at the provider and removed"
        assert "/v1/revoke" in [s.path for s in fake.seen]
        assert await OAuthManager(store).list_credentials() == []
        code, _, err = await cli_run("refresh", "corp:ops", "--config", str(config))
        assert code == 1 and "unknown credential id 'corp:ops'" in err
    finally:
        await store.close()
        await fake.stop()


def test_times_render_past_future_and_expired() -> None:
    """Times in tables: a past moment reads "… ago", one ahead of Redis's clock (written under a
    held test clock) "just now", a passed expiry "expired", never a negative duration."""
    from coordinator.cli import render

    assert render.ago(65_000) == "1m05s ago"
    assert render.ago(-600_000) == "just now"
    assert render.expires_in(3_600_000) == "1h00m"
    assert render.expires_in(-5) == "expired"
    assert render.duration(-1) == "0.0s"
    assert render.duration(None) == "-"
