"""The worker's metrics, piece by piece: the gauges one fleet read gives (no I/O), the counters
each event moves, the scrape bounded on a Redis that stopped answering, and the settings that
turn the metrics server on. The whole run scraped over HTTP is ``tests/test_metrics_flow.py``."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from coordinator import ConfigError, ModelProfileStatus, OAuthCredential, ProfileStatus, connect
from coordinator.events import Event
from coordinator.metrics import EventCounters, fleet_families
from coordinator.overview import FleetStatus
from coordinator.testing import RedisServer, free_port
from workers import Worker, WorkerSettings
from workers.cli import main, parser

from .test_metrics_flow import Scrape, scrape

NOW = 1_000_000


def pool_row(pid: str, **kw: Any) -> ProfileStatus:
    values: dict[str, Any] = dict(
        id=pid, provider="openai", type="api_key", priority=0, healthy=True, in_cooldown=False,
        cooldown_remaining_ms=0, cooldown_until_ms=None, cooldown_kind=None, failures=0,
        billing_failures=0, last_error=None, last_error_kind=None, last_used_ms=None,
        model_cooldowns={},
    )  # fmt: skip
    values.update(kw)
    return ProfileStatus(**values)


def model_row(pid: str, **kw: Any) -> ModelProfileStatus:
    values: dict[str, Any] = dict(
        id=pid, provider="anthropic", priority=0, enabled=True, state="closed", epoch=1,
        open_remaining_ms=0, cooldown_remaining_ms=0, consecutive_failures=0, window_calls=0,
        window_failures=0, probes_in_flight=0, reopens=0, failures_total=0,
        last_error="HTTP 529: overloaded", last_error_kind="server",
    )  # fmt: skip
    values.update(kw)
    return ModelProfileStatus(**values)


def credential(cid: str, status: str, expires_at_ms: int | None) -> OAuthCredential:
    return OAuthCredential(
        id=cid, provider="google", status=status, version=3, subject="u", email=None, name=None,
        scopes=(), token_type="Bearer", expires_at_ms=expires_at_ms, created_ms=0, updated_ms=0,
        refreshed_ms=None, has_refresh_token=True, is_default=True, last_error=None,
    )  # fmt: skip


def samples(families: list[Metric]) -> Scrape:
    registry = CollectorRegistry()

    class Static:
        def collect(self) -> list[Metric]:
            return families

    registry.register(Static())  # type: ignore[arg-type]
    return Scrape(generate_latest(registry).decode())


# -- the gauges of one fleet read ---------------------------------------------------------


def test_each_pool_profile_is_in_exactly_one_state_with_its_cooldown_left() -> None:
    status = FleetStatus(
        NOW,
        pools=[
            pool_row("ready"),
            pool_row(
                "cooling",
                healthy=False,
                in_cooldown=True,
                cooldown_remaining_ms=42_500,
                model_cooldowns={"gpt-4o": 1000, "gpt-4o-mini": 0},
            ),
            pool_row("benched", healthy=False, in_cooldown=True, until_cleared=True),
            pool_row("broken", healthy=False, broken_field="failures"),
        ],
        models=[],
        credentials=[],
        workers=[],
    )
    s = samples(fleet_families(status))
    for pid in ("ready", "cooling", "benched", "broken"):
        states = {
            state: s.value("coordinator_pool_profile_state", profile=pid, state=state)
            for state in ("ready", "cooling", "benched", "broken")
        }
        assert states == {state: float(state == pid) for state in states}, pid
    cooldown = "coordinator_pool_profile_cooldown_seconds"
    assert s.value(cooldown, pool="openai", profile="cooling") == 42.5
    assert s.value(cooldown, profile="benched") == math.inf
    assert s.value(cooldown, profile="ready") == 0
    assert s.value("coordinator_pool_profile_model_cooldowns", profile="cooling") == 1


def test_breakers_credentials_and_workers_read_as_gauges() -> None:
    status = FleetStatus(
        NOW,
        pools=[],
        models=[
            model_row("m-open", state="open", open_remaining_ms=30_000),
            model_row("m-probing", state="half_open"),
            model_row("m-cooling", cooldown_remaining_ms=5_000, enabled=False),
            model_row("m-broken", state=None, broken_field="breaker.epoch"),
        ],
        credentials=[
            credential("google:a", "active", NOW + 90_000),
            credential("google:b", "needs-reauth", NOW - 10_000),
            credential("google:c", "active", None),
        ],
        workers=[
            {"id": "w1", "state": "running", "refresh_last_ms": str(NOW - 2_000)},
            {"id": "w2", "state": "running", "refresh_last_ms": str(NOW - 500)},
            {"id": "w3", "state": "stopping", "refresh_last_ms": "garbage"},
        ],
    )
    s = samples(fleet_families(status))
    breaker = "coordinator_model_profile_breaker_state"
    assert s.value(breaker, profile="m-open", provider="anthropic", state="open") == 1
    assert s.value(breaker, profile="m-probing", state="half_open") == 1
    assert s.value(breaker, profile="m-broken", state="broken") == 1
    assert s.total(breaker, profile="m-broken") == 1
    assert s.value("coordinator_model_profile_open_remaining_seconds", profile="m-open") == 30
    assert s.value("coordinator_model_profile_cooldown_seconds", profile="m-cooling") == 5
    assert s.value("coordinator_model_profile_enabled", profile="m-cooling") == 0
    assert s.value("coordinator_model_profile_available", profile="m-probing") == 1
    assert s.value("coordinator_model_profile_available", profile="m-open") == 0
    status_gauge = "coordinator_oauth_credential_status"
    assert s.value(status_gauge, credential="google:b", status="needs-reauth") == 1
    assert s.value(status_gauge, credential="google:b", status="active") == 0
    expiry = "coordinator_oauth_credential_expiry_seconds"
    assert s.value(expiry, credential="google:a", provider="google") == 90
    assert s.value(expiry, credential="google:b") == -10
    assert s.matching(expiry, {"credential": "google:c"}) == []  # no expiry known: no sample
    assert s.value("coordinator_workers", state="running") == 2
    assert s.value("coordinator_workers", state="stopping") == 1
    assert s.value("coordinator_worker_job_last_run_age_seconds", job="refresh") == 0.5
    assert s.matching("coordinator_worker_job_last_run_age_seconds", {"job": "sweep"}) == []
    assert "overloaded" not in s.text  # an error text is never a label


# -- the counters each event moves ----------------------------------------------------------


def event(etype: str, profile: str, source: str, **data: Any) -> Event:
    return Event(etype, profile, source, NOW, data)


def test_each_event_moves_its_counter_with_bounded_labels() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    for e in [
        event("profile:failed", "k1", "openai", kind="rate_limit", error="429 for sk-abc"),
        event("profile:cooldown", "k1", "openai", kind="rate_limit", scope="model"),
        event("profile:failed", "k1", "openai", kind="made-up kind"),
        event("profile:recovered", "k1", "openai"),
        event("profile:failure", "m1", "models", kind="server", error="boom"),
        event("profile:cooldown", "m1", "models", kind="billing"),
        event("profile:failover", "m1", "models", to="m2", model="typed-by-a-user"),
        event("profile:circuit-opened", "m1", "models", reason="consecutive-failures"),
        event("profile:circuit-half-open", "m1", "models"),
        event("profile:circuit-opened", "m1", "models", reason="probe-failed"),
        event("profile:circuit-half-open", "m1", "models"),
        event("profile:circuit-closed", "m1", "models"),
        event("profile:circuit-opened", "m1", "models", reason="forced", **{"from": "closed"}),
        event("profile:circuit-closed", "m1", "models", reason="reset", **{"from": "open"}),
        # (events of an earlier version carry no "from")
        event("profile:circuit-opened", "m2", "models", reason="forced"),
        event("profile:circuit-closed", "m2", "models", reason="reset"),
        event("token:refreshed", "google:a", "oauth", provider="google"),
        event("credential:needs-reauth", "google:b", "oauth", provider="google", reason="x"),
        event("token:expired", "google:b", "oauth", provider="google"),
        event("something:new", "x", "openai"),
    ]:
        counters.count(e)
    s = Scrape(generate_latest(registry).decode())
    failures = "coordinator_pool_failures_total"
    assert s.value(failures, pool="openai", profile="k1", kind="rate_limit") == 1
    assert s.value(failures, pool="openai", profile="k1", kind="other") == 1
    cooldowns = "coordinator_pool_cooldowns_total"
    assert s.value(cooldowns, profile="k1", kind="rate_limit", scope="model") == 1
    assert s.value("coordinator_pool_recoveries_total", pool="openai", profile="k1") == 1
    assert s.value("coordinator_model_failures_total", profile="m1", kind="server") == 1
    assert s.value("coordinator_model_cooldowns_total", profile="m1", kind="billing") == 1
    failovers = "coordinator_model_failovers_total"
    assert s.value(failovers, from_profile="m1", to_profile="m2") == 1
    t = "coordinator_model_breaker_transitions_total"
    assert s.value(t, profile="m1", from_state="closed", to_state="open") == 2
    assert s.value(t, profile="m1", from_state="open", to_state="half_open") == 2
    assert s.value(t, profile="m1", from_state="half_open", to_state="open") == 1
    assert s.value(t, profile="m1", from_state="half_open", to_state="closed") == 1
    assert s.value(t, profile="m1", from_state="open", to_state="closed") == 1
    assert s.value(t, profile="m2", from_state="unknown", to_state="open") == 1
    assert s.value(t, profile="m2", from_state="unknown", to_state="closed") == 1
    refreshes = "coordinator_oauth_refreshes_total"
    assert s.value(refreshes, provider="google", credential="google:a", outcome="refreshed") == 1
    assert s.value(refreshes, credential="google:b", outcome="needs_reauth") == 1
    assert s.value("coordinator_oauth_token_expirations_total", credential="google:b") == 1
    assert s.value("coordinator_events_total", type="other") == 1
    assert s.value("coordinator_events_total", type="profile:circuit-opened") == 4
    for text in ("sk-abc", "boom", "typed-by-a-user", "made-up kind", "something:new"):
        assert text not in s.text


# -- a scrape on a Redis that stopped answering ----------------------------------------------


async def test_a_scrape_on_a_stalled_redis_reports_down_within_its_timeout() -> None:
    with RedisServer() as server:
        store = await connect(server.url, namespace="stalled")
        settings = WorkerSettings(metrics_port=free_port(), metrics_timeout_s=0.5)
        worker = Worker(store, settings=settings)
        running = asyncio.create_task(worker.run())
        try:
            assert worker.metrics is not None
            await worker.metrics.wait_started()
            healthy = await scrape(settings.metrics_port)
            assert healthy.value("coordinator_up") == 1
            assert healthy.value("coordinator_workers", state="running") == 1
            server.pause()  # SIGSTOP: connections stay open, nothing answers
            try:
                started = time.monotonic()
                stalled = await scrape(settings.metrics_port)
                took = time.monotonic() - started
            finally:
                server.resume()
            assert took < 2.0, took  # the 0.5 s bound, not the store's 2 s socket timeout
            assert stalled.value("coordinator_up") == 0
            assert stalled.value("coordinator_scrape_errors_total") == 1
            assert stalled.matching("coordinator_workers", {}) == []  # no fleet gauge at all
            again = await scrape(settings.metrics_port)
            assert again.value("coordinator_up") == 1
            assert again.value("coordinator_scrape_errors_total") == 1  # counted, kept
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
            await store.close()


async def test_collected_on_the_stores_own_loop_it_reports_down_instead_of_hanging() -> None:
    store = await connect("memory://", namespace="same-loop")
    worker = Worker(store, settings=WorkerSettings(metrics_port=free_port()))
    running = asyncio.create_task(worker.run())
    try:
        assert worker.metrics is not None
        await worker.metrics.wait_started()
        started = time.monotonic()
        text = generate_latest(worker.metrics.registry).decode()
        assert time.monotonic() - started < 1
        assert Scrape(text).value("coordinator_up") == 0
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await store.close()


# -- settings -----------------------------------------------------------------------------------


def test_the_metrics_server_is_off_by_default_and_set_by_argument_or_environment() -> None:
    assert WorkerSettings().metrics_port == 0
    env = {"COORDINATOR_WORKER_METRICS_PORT": "9464", "COORDINATOR_WORKER_METRICS_HOST": "::"}
    s = WorkerSettings.from_sources({}, env)
    assert (s.metrics_port, s.metrics_host) == (9464, "::")
    args = parser().parse_args(["--metrics-port", "9100", "--metrics-host", "0.0.0.0"])
    s = WorkerSettings.from_sources(
        {"metrics_port": args.metrics_port, "metrics_host": args.metrics_host}, {}
    )
    assert (s.metrics_port, s.metrics_host) == (9100, "0.0.0.0")


@pytest.mark.parametrize(
    ("given", "env", "field"),
    [
        ({"metrics_port": -1}, {}, "metrics_port"),
        ({"metrics_port": 65_536}, {}, "metrics_port"),
        ({"metrics_port": True}, {}, "metrics_port"),
        ({"metrics_host": "two words"}, {}, "metrics_host"),
        ({"metrics_host": ""}, {}, "metrics_host"),
        ({"metrics_timeout_s": 0}, {}, "metrics_timeout_s"),
        ({}, {"COORDINATOR_WORKER_METRICS_PORT": "x"}, "COORDINATOR_WORKER_METRICS_PORT"),
    ],
)
def test_bad_metrics_settings_name_the_field(
    given: dict[str, Any], env: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.from_sources(given, env)
    assert caught.value.field == field


async def test_a_metrics_port_in_use_stops_the_worker_with_a_config_error() -> None:
    store = await connect("memory://", namespace="busy-port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(store, settings=WorkerSettings(metrics_port=port))
        try:
            with pytest.raises(ConfigError) as caught:
                await asyncio.wait_for(worker.run(), 30)
            assert caught.value.field == "metrics_port"
        finally:
            await worker.close()
            await store.close()


def test_the_command_line_exits_1_with_one_line_when_the_port_is_taken(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["--url", "memory://", "--metrics-port", str(port)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("coordinator worker: error: metrics_port"), err


@pytest.fixture
def restore_logging() -> Any:
    """The worker's command line configures the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
