"""An app's own metrics (``AppMetrics``): selection latency, round trips by operation and the
outcomes this replica reported, measured in process. Attached, they add no command on the wire
(counted with MONITOR on a real Redis); detached or never attached, nothing observes a call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    make_asgi_app,
    make_wsgi_app,
    start_http_server,
)

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    BreakerConfig,
    ConfigError,
    ModelAuth,
    ModelCall,
    ModelConfig,
    ModelProfile,
    ModelProfileManager,
    Store,
    connect,
)
from coordinator.metrics import AppMetrics
from coordinator.testing import RedisServer

from .conftest import unique_namespace
from .test_metrics_flow import Scrape
from .wire import Wire


@pytest.fixture
async def redis_store(redis_server: RedisServer, secret_key: str) -> AsyncIterator[Store]:
    s = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_KEY_1", "app-key-one-aaaa")
    monkeypatch.setenv("APP_KEY_2", "app-key-two-bbbb")


async def pool_of_two(store: Store) -> AuthProfileManager:
    pools = AuthProfileManager(store)
    await pools.add_profile(AuthProfile(id="a1", provider="openai", api_key_env="APP_KEY_1"))
    await pools.add_profile(AuthProfile(id="a2", provider="openai", api_key_env="APP_KEY_2"))
    return pools


def read(registry: CollectorRegistry) -> Scrape:
    return Scrape(generate_latest(registry).decode())


async def picks_and_reports(pools: AuthProfileManager, n: int) -> None:
    for _ in range(n):
        key = await pools.acquire("openai")
        await pools.mark_success(key.id)


async def test_attached_metrics_count_what_the_wire_shows_and_add_nothing_to_it(
    redis_store: Store, redis_server: RedisServer
) -> None:
    pools = await pool_of_two(redis_store)
    try:
        async with Wire([redis_server.port]) as wire:
            await wire.sent("start")
            await picks_and_reports(pools, 5)
            bare = await wire.sent("bare")
            registry = CollectorRegistry()
            metrics = AppMetrics(registry).attach(pools)
            await picks_and_reports(pools, 5)
            measured = await wire.sent("measured")
        assert bare == measured == ["FCALL"] * 10  # one round trip per pick, per report
        s = read(registry)
        assert s.value("coordinator_redis_round_trips_total", operation="pick") == 5
        assert s.value("coordinator_redis_round_trips_total", operation="mark_success") == 5
        assert s.total("coordinator_redis_round_trips_total") == len(measured)
        assert s.value("coordinator_selection_duration_seconds_count", manager="pool") == 5
        assert 0 < s.value("coordinator_selection_duration_seconds_sum", manager="pool") < 5
        assert s.value("coordinator_outcomes_total", manager="pool", kind="success") == 5
        metrics.detach()
    finally:
        await pools.close()


async def test_outcomes_by_kind_and_model_selections_with_failover() -> None:
    store = await connect("memory://", namespace="app-metrics")
    pools = await pool_of_two(store)
    models = ModelProfileManager(store, ModelConfig(breaker=BreakerConfig(failure_threshold=5)))
    registry = CollectorRegistry()
    AppMetrics(registry).attach(pools, models, store)  # one store: measured once
    try:
        key = await pools.acquire("openai")
        await pools.mark_failed(key.id, "HTTP 429", kind="rate_limit")
        key = await pools.acquire("openai")
        await pools.mark_failed(key.id, "no credit", kind="billing")
        for pid, env, priority in (("m1", "APP_KEY_1", 10), ("m2", "APP_KEY_2", 5)):
            await models.add_profile(
                ModelProfile(
                    id=pid, provider="openai", auth=ModelAuth.env(env),
                    base_url="https://api.test/v1", priority=priority,
                )
            )  # fmt: skip

        async def call(ctx: ModelCall) -> httpx.Response:
            if ctx.selection.profile_id == "m1":
                return httpx.Response(500)
            return httpx.Response(200)

        assert (await models.execute(call, model="gpt-x")).status_code == 200
        s = read(registry)
        outcomes = "coordinator_outcomes_total"
        assert s.value(outcomes, manager="pool", kind="rate_limit") == 1
        assert s.value(outcomes, manager="pool", kind="billing") == 1
        assert s.value(outcomes, manager="model", kind="server") == 1
        assert s.value(outcomes, manager="model", kind="success") == 1
        assert s.value("coordinator_selection_duration_seconds_count", manager="pool") == 2
        # One selection; the failover's pick travels with m1's report (model_report).
        assert s.value("coordinator_selection_duration_seconds_count", manager="model") == 1
        assert s.value("coordinator_redis_round_trips_total", operation="model_report") == 2
        assert s.value("coordinator_redis_round_trips_total", operation="mark_failed") == 2
        labels = {v for _name, have, _value in s.samples for v in have.values()}
        assert not [v for v in labels if "gpt-x" in v or "429" in v], labels
    finally:
        await pools.close()
        await models.close()
        await store.close()


async def test_nothing_observes_a_store_without_metrics_or_after_detach() -> None:
    store = await connect("memory://", namespace="app-detach")
    pools = await pool_of_two(store)
    try:
        assert store.observers == []
        registry = CollectorRegistry()
        metrics = AppMetrics(registry).attach(pools).attach(pools)
        assert len(store.observers) == 1
        await picks_and_reports(pools, 1)
        metrics.detach()
        assert store.observers == []
        await picks_and_reports(pools, 3)
        assert read(registry).value("coordinator_redis_round_trips_total", operation="pick") == 1
    finally:
        await pools.close()
        await store.close()


async def test_an_app_serves_its_metrics_with_prometheus_clients_http_server() -> None:
    store = await connect("memory://", namespace="app-serve")
    pools = await pool_of_two(store)
    registry = CollectorRegistry()
    AppMetrics(registry).attach(pools)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        await picks_and_reports(pools, 2)
        async with httpx.AsyncClient() as http:
            page = await http.get(f"http://127.0.0.1:{server.server_port}/metrics")
        s = Scrape(page.text)
        assert s.value("coordinator_selection_duration_seconds_count", manager="pool") == 2
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        await pools.close()
        await store.close()


def test_sync_managers_are_measured_too() -> None:
    from coordinator.sync import SyncAuthProfileManager
    from coordinator.sync import connect as sync_connect

    store = sync_connect("memory://", namespace="app-sync")
    try:
        pools = SyncAuthProfileManager(store)
        pools.add_profile(AuthProfile(id="a1", provider="openai", api_key_env="APP_KEY_1"))
        registry = CollectorRegistry()
        AppMetrics(registry).attach(pools)
        key = pools.acquire("openai")
        pools.mark_failed(key.id, "HTTP 503", kind="server")
        s = read(registry)
        assert s.value("coordinator_selection_duration_seconds_count", manager="pool") == 1
        assert s.value("coordinator_outcomes_total", manager="pool", kind="server") == 1
    finally:
        store.close()


def test_something_that_is_no_manager_or_store_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        AppMetrics(CollectorRegistry()).attach(object())  # type: ignore[arg-type]
    assert caught.value.field == "target"


async def test_the_wsgi_and_asgi_apps_of_prometheus_client_serve_the_registry() -> None:
    registry = CollectorRegistry()
    AppMetrics(registry)
    # Flask, Django: a WSGI app (mount it with DispatcherMiddleware or a URL route).
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    body = b"".join(make_wsgi_app(registry)(environ, lambda s, h: statuses.append(s)))
    assert statuses == ["200 OK"] and b"coordinator_outcomes_total" in body
    # FastAPI, Starlette: an ASGI app (app.mount("/metrics", ...)).
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}
    await make_asgi_app(registry)(scope, receive, send)
    assert sent[0]["status"] == 200
    assert b"coordinator_selection_duration_seconds" in sent[1]["body"]
