"""The refresh worker: settings, providers file, heartbeat, the sweep, signals, compose.yaml."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    BreakerConfig,
    ConfigError,
    ModelAuth,
    ModelConfig,
    ModelProfile,
    ModelProfileManager,
    Store,
)
from coordinator.fleet import WorkerKeys, read_heartbeats
from coordinator.oauth import OAuthConfig
from coordinator.store.keys import ModelKeys, PoolKeys
from coordinator.testing import RedisServer, advance_time, hold_time
from workers import Worker, WorkerSettings, providers_from_mapping, sweep
from workers.cli import parser

ROOT = Path(__file__).resolve().parent.parent


# -- settings ----------------------------------------------------------------------------


def test_settings_come_from_arguments_then_environment_then_defaults() -> None:
    env = {"COORDINATOR_WORKER_CONCURRENCY": "7", "COORDINATOR_WORKER_JITTER_S": "0.5"}
    s = WorkerSettings.from_sources({"concurrency": 2, "jitter_s": None}, env)
    assert s.concurrency == 2  # the argument wins
    assert s.jitter_s == 0.5  # then the variable
    assert s.refresh_interval_s == WorkerSettings().refresh_interval_s  # then the default


@pytest.mark.parametrize(
    ("given", "env", "field"),
    [
        ({"concurrency": 0}, {}, "concurrency"),
        ({"jitter_s": float("nan")}, {}, "jitter_s"),
        ({"sweep_interval_s": 0}, {}, "sweep_interval_s"),
        ({"refresh_timeout_s": 30, "lock_ttl_s": 30}, {}, "refresh_timeout_s"),
        ({"heartbeat_ttl_s": 5, "heartbeat_interval_s": 10}, {}, "heartbeat_ttl_s"),
        ({"refresh_lead_fraction": 1.0}, {}, "refresh_lead_fraction"),
        ({"refresh_lead_fraction": 0}, {}, "refresh_lead_fraction"),
        ({}, {"COORDINATOR_WORKER_CONCURRENCY": "many"}, "COORDINATOR_WORKER_CONCURRENCY"),
        ({"nope": 1}, {}, "nope"),
    ],
)
def test_bad_settings_name_the_field(
    given: dict[str, Any], env: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.from_sources(given, env)
    assert caught.value.field == field


def test_the_workers_lead_is_ahead_of_the_apps_by_default() -> None:
    apps, worker = OAuthConfig(), WorkerSettings()
    assert worker.refresh_lead_s > apps.refresh_lead_s
    assert worker.refresh_lead_fraction > apps.refresh_lead_fraction == 0.5
    with pytest.raises(ConfigError) as caught:
        OAuthConfig(refresh_lead_fraction=1)
    assert caught.value.field == "refresh_lead_fraction"


async def test_the_worker_refreshes_with_its_own_lead(store: Store) -> None:
    settings = WorkerSettings(refresh_lead_s=900, refresh_lead_fraction=0.8, lock_ttl_s=20)
    worker = Worker(store, settings=settings)
    try:
        config = worker.oauth.config
        assert (config.refresh_lead_s, config.refresh_lead_fraction) == (900, 0.8)
        assert config.lock_ttl_s == 20 and config.refresh_timeout_s == settings.refresh_timeout_s
    finally:
        await worker.close()


def test_every_setting_is_an_argument() -> None:
    args = parser().parse_args(["--concurrency", "3", "--refresh-lead-s", "120"])
    assert args.concurrency == 3 and args.refresh_lead_s == 120.0


# -- providers file ----------------------------------------------------------------------


def test_providers_come_from_tables_with_secrets_from_the_environment() -> None:
    tables = {
        "google": {
            "preset": "google",
            "client_id": "cid",
            "client_secret_env": "G_SECRET",
        },
        "corp": {"token_endpoint": "https://login.example.com/token", "client_id": "app"},
    }
    google, corp = providers_from_mapping(tables, environ={"G_SECRET": "s3cr3t-value"})
    assert google.name == "google" and google.client_secret is not None
    assert google.client_secret.reveal() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(google)
    assert corp.token_endpoint_auth_method == "none"


@pytest.mark.parametrize(
    ("table", "field_end"),
    [
        ({"preset": "google", "client_id": "x", "client_secret": "plain"}, "client_secret"),
        ({"preset": "google", "client_id": "x", "client_secret_env": "UNSET_VAR"}, "_env"),
        ({"token_endpoint": "https://x.example/t", "colour": "red"}, "colour"),
        ({"preset": "nope"}, "provider"),
    ],
)
def test_a_bad_provider_table_is_a_config_error(table: dict[str, Any], field_end: str) -> None:
    with pytest.raises(ConfigError) as caught:
        providers_from_mapping({"p": table}, source="c.toml", environ={})
    assert caught.value.field.endswith(field_end)
    assert "plain" not in str(caught.value)


# -- heartbeat ---------------------------------------------------------------------------


async def test_heartbeat_is_visible_with_a_ttl_and_removed_on_stop(store: Store) -> None:
    settings = WorkerSettings(heartbeat_interval_s=0.05, heartbeat_ttl_s=5, sweep_interval_s=0.05)
    worker = Worker(store, settings=settings)
    task = asyncio.create_task(worker.run())
    try:
        beats = await _until(lambda: read_heartbeats(store), lambda b: len(b) == 1)
        beat = beats[0]
        assert beat["id"] == worker.id and beat["pid"] == str(os.getpid())
        assert beat["state"] == "running" and int(beat["beat_ms"]) > 0
        assert beat["lock_owner"] == worker.oauth.lock_owner_prefix
        assert 0 < int(beat["started_ms"]) <= int(beat["beat_ms"])
        key = WorkerKeys(store.namespace).worker(worker.id)
        ttl = await store.command("PTTL", key)
        assert 0 < int(ttl) <= 5000
        # The job's runs show up in a later beat.
        await _until(lambda: read_heartbeats(store), lambda b: int(b[0]["sweep_runs"]) > 0)
    finally:
        worker.stop()
        await task
    assert await read_heartbeats(store) == []
    assert await store.command("EXISTS", WorkerKeys(store.namespace).worker(worker.id)) == 0


async def test_a_dead_workers_heartbeat_expires_and_leaves_the_index(store: Store) -> None:
    keys = WorkerKeys(store.namespace)
    await store.command("ZADD", keys.index, 1, "ghost")  # its hash already expired
    assert await read_heartbeats(store) == []
    assert await store.command("ZCARD", keys.index) == 0


# -- the sweep ---------------------------------------------------------------------------


async def test_sweep_announces_a_recovery_on_time_once_across_workers(store: Store) -> None:
    app = AuthProfileManager(store)
    await app.add_profile(AuthProfile(id="k1", provider="openai", api_key_env="K1_VAR"))
    await app.mark_failed("k1", "HTTP 429", kind="rate_limit")  # 60 s
    workers = [AuthProfileManager(store) for _ in range(3)]
    models = ModelProfileManager(store)
    events = PoolKeys(store.namespace, "openai").events

    advance_time(store, 58_000)
    await asyncio.gather(*(sweep(w, models) for w in workers))
    assert await _count(store, events, "profile:recovered") == 0
    advance_time(store, 2_000)
    await asyncio.gather(*(sweep(w, models) for w in workers))
    assert await _count(store, events, "profile:recovered") == 1
    await asyncio.gather(*(sweep(w, models) for w in workers))
    assert await _count(store, events, "profile:recovered") == 1


async def test_sweep_half_opens_a_breaker_on_time_once_across_workers(store: Store) -> None:
    config = ModelConfig(breaker=BreakerConfig(failure_threshold=1, reset_timeout_ms=10_000))
    app = ModelProfileManager(store, config)
    await app.add_profile(
        ModelProfile(
            id="p1", provider="x", auth=ModelAuth.none(), base_url="http://x", models=("*",)
        )
    )
    selection = await app.select_profile("m")
    assert selection is not None
    await app.record_failure(selection, "server", error="HTTP 503")
    workers = [ModelProfileManager(store, config) for _ in range(3)]
    pools = AuthProfileManager(store)
    events = ModelKeys(store.namespace).events

    advance_time(store, 9_000)
    await asyncio.gather(*(sweep(pools, w) for w in workers))
    assert await _count(store, events, "profile:circuit-half-open") == 0
    advance_time(store, 1_500)
    await asyncio.gather(*(sweep(pools, w) for w in workers))
    assert await _count(store, events, "profile:circuit-half-open") == 1
    await asyncio.gather(*(sweep(pools, w) for w in workers))
    assert await _count(store, events, "profile:circuit-half-open") == 1


async def test_running_workers_announce_due_transitions_on_time_and_once(store: Store) -> None:
    # Three workers run their sweeps on the store's clock, held still: nothing is announced
    # 1 ms before a deadline, and each transition exactly once, stamped at its deadline.
    pools = AuthProfileManager(store)
    await pools.add_profile(AuthProfile(id="k1", provider="openai", api_key_env="K1_VAR"))
    config = ModelConfig(breaker=BreakerConfig(failure_threshold=1, reset_timeout_ms=60_000))
    models = ModelProfileManager(store, config)
    await models.add_profile(
        ModelProfile(id="p1", provider="x", auth=ModelAuth.none(), base_url="http://x")
    )
    start = await hold_time(store)
    await pools.mark_failed("k1", "HTTP 429", kind="rate_limit")  # cools until start + 60 s
    selection = await models.select_profile("m")
    assert selection is not None
    await models.record_failure(selection, "server", error="HTTP 503")  # open for 60 s
    settings = WorkerSettings(sweep_interval_s=0.02, heartbeat_interval_s=5, heartbeat_ttl_s=10)
    workers = [Worker(store, settings=settings) for _ in range(3)]
    running = [asyncio.create_task(w.run()) for w in workers]
    pool_events = PoolKeys(store.namespace, "openai").events
    model_events = ModelKeys(store.namespace).events
    try:
        advance_time(store, 60_000 - 1)
        await _sweeps_by_all(workers)
        assert await _count(store, pool_events, "profile:recovered") == 0
        assert await _count(store, model_events, "profile:circuit-half-open") == 0
        advance_time(store, 1)
        await _sweeps_by_all(workers)
        recovered = await _stamps(store, pool_events, "profile:recovered")
        half_open = await _stamps(store, model_events, "profile:circuit-half-open")
        assert recovered == [start + 60_000] and half_open == [start + 60_000]
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*running)


async def _sweeps_by_all(workers: list[Worker]) -> None:
    """Wait until every worker has finished two more sweeps than it had."""
    wanted = [w.runs["sweep"] + 2 for w in workers]
    deadline = time.monotonic() + 10
    while any(w.runs["sweep"] < n for w, n in zip(workers, wanted, strict=True)):
        assert time.monotonic() < deadline, [w.runs for w in workers]
        await asyncio.sleep(0.01)


async def _stamps(store: Store, stream: str, event_type: str) -> list[int]:
    entries = await store.client.xrange(stream)
    return [int(fields["ts"]) for _id, fields in entries if fields.get("type") == event_type]


# -- the process ------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_removes_the_heartbeat(redis_server: RedisServer) -> None:
    namespace = f"w{os.getpid()}"
    proc = _start_worker(redis_server, namespace)
    try:
        _wait_for_heartbeat(redis_server, namespace, present=True)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    _wait_for_heartbeat(redis_server, namespace, present=False)


def test_a_bad_setting_exits_1_with_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "workers", "--url", "memory://", "--concurrency", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "coordinator worker: error: concurrency: must be an integer >= 1"
    ]


# -- compose.yaml -----------------------------------------------------------------------


def test_compose_file_parses_and_runs_commands_the_package_has() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "app"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["app"]["deploy"]["replicas"] == 2
    assert "healthcheck" in services["redis"]
    for name in ("worker", "app"):
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["entrypoint"][:2] == ["sh", "-c"]
        assert "pip install -q /tmp/src" in service["entrypoint"][2]
        command = service["command"]
        assert command[0] == "python"
        if command[1] == "-m":
            assert importlib.util.find_spec(command[2]) is not None, command
        else:
            assert (ROOT / command[1].removeprefix("/tmp/src/")).is_file(), command
    # The worker's command line accepts the compose file's arguments, and no others.
    args = parser().parse_args(services["worker"]["command"][3:])
    assert (args.metrics_port, args.metrics_host) == (9464, "0.0.0.0")
    assert parser().parse_args([]).url is None


# -- helpers -----------------------------------------------------------------------------


async def _until(read: Any, done: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if done(value):
            return value
        assert time.monotonic() < deadline, value
        await asyncio.sleep(0.02)


async def _count(store: Store, stream: str, event_type: str) -> int:
    entries = await store.client.xrange(stream)
    return sum(1 for _id, fields in entries if fields.get("type") == event_type)


def _start_worker(server: RedisServer, namespace: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "workers", "--url", server.url, "--namespace", namespace,
            "--heartbeat-interval-s", "0.2", "--sweep-interval-s", "0.2", *extra,
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_heartbeat(server: RedisServer, namespace: str, *, present: bool) -> None:
    cli = shutil.which("redis-cli")
    assert cli is not None
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run(
            [cli, "-p", str(server.port), "ZCARD", f"{namespace}:{{workers}}:index"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if (out != "0") == present:
            return
        assert time.monotonic() < deadline, f"heartbeat present={out}"
        time.sleep(0.05)


def test_coordinator_worker_forwards_to_the_worker_and_workers_lists_them() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "coordinator", "worker", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--refresh-lead-s" in help_text and "COORDINATOR_WORKER_REFRESH_LEAD_S" in help_text
    listed = subprocess.run(
        [sys.executable, "-m", "coordinator", "--url", "memory://", "workers", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert listed.strip() == "[]"
