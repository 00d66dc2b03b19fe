"""execute() end to end against local HTTP servers that play three providers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from coordinator import (
    AllProfilesUnavailableError,
    ConfigError,
    Store,
    StoreUnavailableError,
    connect,
)
from coordinator.failures import FailureKind
from coordinator.models.manager import ModelProfileManager
from coordinator.models.types import ModelAuth, ModelCall, ModelProfile
from coordinator.testing import RedisServer, advance_time

from .conftest import unique_namespace
from .fake_provider import FakeProvider, Reply
from .model_helpers import (
    MINUTE_MS,
    SECOND_MS,
    add_three,
    breaker,
    events,
    model_manager,
    spy_on_scripts,
)
from .wire import Wire, wire_target

MARGIN = 1000
KEYS = {
    "grok": "xai-grok-test-key-0123456789",
    "anthropic": "sk-ant-test-key-0123456789",
    "openai": "sk-openai-test-key-0123456789",
}


@pytest.fixture
async def providers() -> AsyncIterator[dict[str, FakeProvider]]:
    servers = {name: await FakeProvider(name).start() for name in KEYS}
    try:
        yield servers
    finally:
        for server in servers.values():
            await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.8)) as client:
        yield client


async def _setup(store: Store, providers: dict[str, FakeProvider]) -> ModelProfileManager:
    manager = model_manager(store)
    for name, priority in (("grok", 100), ("anthropic", 90), ("openai", 80)):
        await manager.add_profile(
            ModelProfile(
                id=name,
                provider=name,
                auth=ModelAuth.api_key(KEYS[name]),
                base_url=providers[name].base_url,
                models=("*",),
                default_model=f"{name}-default",
                priority=priority,
            )
        )
    return manager


def _caller(http: httpx.AsyncClient, served: list[tuple[str, str]]) -> Any:
    async def call(c: ModelCall) -> dict[str, Any]:
        assert c.secret is not None
        response = await http.post(
            f"{c.base_url}/chat/completions",
            json={"model": c.model, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {c.secret.reveal()}"},
        )
        response.raise_for_status()
        served.append((c.profile.id, c.selection.reason))
        return dict(response.json())

    return call


async def _types(store: Store) -> list[tuple[str, str]]:
    return [(t, p) for t, p, _ in await events(store)]


async def test_failover_breaker_probe_close_and_return_to_primary(
    store: Store, providers: dict[str, FakeProvider], http: httpx.AsyncClient
) -> None:
    grok, anthropic, openai = providers["grok"], providers["anthropic"], providers["openai"]
    manager = await _setup(store, providers)
    served: list[tuple[str, str]] = []
    call = _caller(http, served)

    # 1. Healthy: the primary serves, with its own key and default model.
    await manager.execute(call)
    assert served[-1] == ("grok", "primary")
    assert grok.seen[-1].headers["authorization"] == f"Bearer {KEYS['grok']}"
    assert grok.seen[-1].body["model"] == "grok-default"

    # 2. 429 with Retry-After and rate-limit headers: fail over; the primary cools down.
    grok.then(
        Reply(429, {"retry-after": "20", "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "20s"}, b'{"error":{"type":"rate_limit"}}')
    )  # fmt: skip
    await manager.execute(call, model="m-1")
    assert served[-1] == ("anthropic", "failover")
    assert anthropic.seen[-1].body["model"] == "m-1"
    before = len(grok.seen)
    await manager.execute(call)
    assert served[-1] == ("anthropic", "failover") and len(grok.seen) == before
    failover = next(d for t, p, d in await events(store) if t == "profile:failover")
    assert (failover["from"], failover["to"], failover["kind"]) == ("grok", "anthropic",
                                                                    "rate_limit")  # fmt: skip

    # 3. After the cooldown: a 500 and a timeout make three failures in a row: it opens.
    advance_time(store, 20 * SECOND_MS + MARGIN)
    grok.then(Reply(500, body=b"<html>boom</html>"), Reply(hang_s=10))
    await manager.execute(call)
    assert served[-1] == ("anthropic", "failover")
    assert (await breaker(store, "grok"))["state"] == "closed"
    await manager.execute(call)
    assert served[-1] == ("anthropic", "failover")
    opened = [d for t, p, d in await events(store) if t == "profile:circuit-opened"]
    assert len(opened) == 1 and opened[0]["kind"] == "timeout"
    asked = len(grok.seen)

    # 4. The fallback runs out of credit (402): billing cooldown, fail over to the third.
    anthropic.then(Reply(402, body=b'{"error":{"message":"payment required"}}'))
    await manager.execute(call)
    assert served[-1] == ("openai", "failover")

    # 5. The last one times out too: every attempt is reported with the soonest recovery.
    openai.then(Reply(hang_s=10))
    with pytest.raises(AllProfilesUnavailableError) as info:
        await manager.execute(call)
    err = info.value
    assert [(a.profile_id, a.kind) for a in err.attempts] == [("openai", FailureKind.TIMEOUT)]
    # openai failed once and its breaker is still closed: it is selectable again at once.
    assert err.retry_in_ms == 0
    assert KEYS["openai"] not in str(err)
    assert len(grok.seen) == asked  # the open breaker kept every call away from grok

    # 6. Half-open: the probe fails (500), it re-opens for twice as long; openai serves.
    advance_time(store, MINUTE_MS)
    grok.then(Reply(500))
    await manager.execute(call)
    assert served[-1] == ("openai", "failover")
    assert (await breaker(store, "grok"))["open_ms"] == 2 * MINUTE_MS

    # 7. wait_s: nothing usable now, so execute waits (on the test clock) for the probe,
    #    which succeeds and closes the breaker.
    openai.then(Reply(402, body=b'{"error":{"code":"insufficient_quota"}}'))
    with pytest.raises(AllProfilesUnavailableError) as info:
        await manager.execute(call)
    assert [(a.profile_id, a.kind) for a in info.value.attempts] == [
        ("openai", FailureKind.BILLING)
    ]
    retry_in = info.value.retry_in_ms
    assert retry_in is not None and MINUTE_MS < retry_in <= 2 * MINUTE_MS
    with pytest.raises(AllProfilesUnavailableError):  # not willing to wait that long
        await manager.execute(call, wait_s=MINUTE_MS / 1000)
    await manager.execute(call, wait_s=3 * MINUTE_MS / 1000)
    assert served[-1] == ("grok", "testing")
    assert (await breaker(store, "grok"))["state"] == "closed"

    # 8. Back to the primary.
    await manager.execute(call)
    assert served[-1] == ("grok", "primary")
    grok_events = [t for t, p in await _types(store) if p == "grok"]
    assert grok_events.count("profile:circuit-half-open") == 2
    assert grok_events.count("profile:circuit-opened") == 2
    assert grok_events[-1] == "profile:circuit-closed"
    # No key ever reached an event.
    for _t, _p, data in await events(store):
        for key in KEYS.values():
            assert key not in str(data)


async def test_a_caller_error_is_raised_at_once_without_harming_the_profile(
    store: Store, providers: dict[str, FakeProvider], http: httpx.AsyncClient
) -> None:
    manager = await _setup(store, providers)
    served: list[tuple[str, str]] = []
    providers["grok"].then(Reply(400, body=b'{"error":{"message":"messages: field required"}}'))
    with pytest.raises(httpx.HTTPStatusError):
        await manager.execute(_caller(http, served))
    assert len(providers["anthropic"].seen) == 0
    assert (await breaker(store, "grok")) == {}
    # A returned (not raised) response is classified the same way: a 400 comes back as is,
    # a 429 fails over.
    providers["grok"].then(Reply(400), Reply(429, {"retry-after": "5"}))

    async def raw(c: ModelCall) -> httpx.Response:
        return await http.post(f"{c.base_url}/chat/completions", json={})

    assert (await manager.execute(raw)).status_code == 400
    response = await manager.execute(raw)
    assert response.status_code == 200 and str(response.url).startswith(
        providers["anthropic"].base_url
    )


async def test_a_success_that_says_the_quota_is_spent_cools_the_profile_down(
    store: Store, providers: dict[str, FakeProvider], http: httpx.AsyncClient
) -> None:
    # The answer is good, but its headers say no request is left until the reset: the next
    # calls go elsewhere before the provider answers 429.
    manager = await _setup(store, providers)
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    providers["grok"].then(Reply(200, spent))

    async def raw(c: ModelCall) -> httpx.Response:
        return await http.post(f"{c.base_url}/chat/completions", json={})

    first = await manager.execute(raw)
    assert first.status_code == 200 and str(first.url).startswith(providers["grok"].base_url)
    status = {s.id: s for s in await manager.get_status()}["grok"]
    assert status.state == "closed" and status.failures_total == 0
    assert 6 * MINUTE_MS - 5 * SECOND_MS <= status.cooldown_remaining_ms <= 6 * MINUTE_MS
    second = await manager.execute(raw)
    assert str(second.url).startswith(providers["anthropic"].base_url)
    advance_time(store, 6 * MINUTE_MS + MARGIN)
    third = await manager.execute(raw)
    assert str(third.url).startswith(providers["grok"].base_url)


async def test_max_attempts_and_an_empty_manager(
    store: Store, providers: dict[str, FakeProvider], http: httpx.AsyncClient
) -> None:
    manager = await _setup(store, providers)
    served: list[tuple[str, str]] = []
    for name in ("grok", "anthropic", "openai"):
        providers[name].then(Reply(503))
    with pytest.raises(AllProfilesUnavailableError) as info:
        await manager.execute(_caller(http, served), max_attempts=2)
    assert [a.profile_id for a in info.value.attempts] == ["grok", "anthropic"]
    assert len(providers["openai"].seen) == 0
    # Stopped by the limit, not by a lack of profiles: the error says so.
    assert info.value.limit_reached and "max_attempts (2) reached" in str(info.value)
    with pytest.raises(ConfigError):
        await manager.execute(_caller(http, served), max_attempts=0)
    with pytest.raises(ConfigError):
        await manager.execute(_caller(http, served), wait_s=-1)
    other_ns = Store(
        store.client, backend=store.backend, url="x", namespace=store.namespace + "e", box=None
    )
    empty = model_manager(other_ns)  # a namespace without profiles
    with pytest.raises(AllProfilesUnavailableError) as info:
        await empty.execute(_caller(http, served), model="no-such-model-served")
    assert info.value.attempts == [] and info.value.retry_in_ms is None
    assert not info.value.limit_reached


async def test_a_success_costs_two_round_trips_and_a_hop_one_more(
    store: Store, providers: dict[str, FakeProvider], http: httpx.AsyncClient
) -> None:
    manager = await _setup(store, providers)
    calls: list[str] = []
    spy_on_scripts(store, lambda name, _keys, _args: calls.append(name))
    served: list[tuple[str, str]] = []
    await manager.execute(_caller(http, served))
    assert calls == ["model_select", "model_report"]
    calls.clear()
    providers["grok"].then(Reply(500))
    await manager.execute(_caller(http, served))
    assert calls == ["model_select", "model_report", "model_report"]


@pytest.mark.parametrize("wire_backend", ["redis", "cluster"])
async def test_round_trips_counted_on_the_wire(
    wire_backend: str,
    request: pytest.FixtureRequest,
    secret_key: str,
    providers: dict[str, FakeProvider],
    http: httpx.AsyncClient,
) -> None:
    # What the servers received (MONITOR on every node): a success is two FCALLs (select +
    # report), a failover hop one more, and nothing else is sent.
    url, ports = wire_target(wire_backend, request)
    store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        manager = await _setup(store, providers)
        served: list[tuple[str, str]] = []
        await manager.execute(_caller(http, served))  # warm: connections, parsed definitions
        async with Wire(ports) as wire:
            await wire.sent("start")
            await manager.execute(_caller(http, served))
            assert await wire.sent("after-success") == ["FCALL", "FCALL"]
            providers["grok"].then(Reply(500))
            await manager.execute(_caller(http, served))
            assert await wire.sent("after-hop") == ["FCALL", "FCALL", "FCALL"]
        assert [p for p, _ in served][-2:] == ["grok", "anthropic"]
    finally:
        await store.close()


async def test_a_probe_that_ends_in_a_caller_error_gives_its_permit_back(
    store: Store, providers: dict[str, FakeProvider], http: httpx.AsyncClient
) -> None:
    manager = await _setup(store, providers)
    served: list[tuple[str, str]] = []
    providers["grok"].then(Reply(500), Reply(500), Reply(500), Reply(422))
    for _ in range(3):
        await manager.execute(_caller(http, served))
    advance_time(store, MINUTE_MS)
    with pytest.raises(httpx.HTTPStatusError):
        await manager.execute(_caller(http, served))
    state = await breaker(store, "grok")
    assert state["state"] == "half_open" and state["permits"] in ({}, [])
    await manager.execute(_caller(http, served))
    assert served[-1] == ("grok", "testing")


async def test_after_every_profile_failed_once_execute_knows_when_to_try_again(
    store: Store,
) -> None:
    # Every profile fails once in one call (breakers still closed), each then cooling down
    # (Retry-After 30 s, 40 s, 50 s): execute(wait_s=...) waits (on the test clock) for the
    # soonest instead of giving up, and without a wait the error says when that is.
    manager = model_manager(store)
    await add_three(manager)
    retry_after = {"primary": "30", "secondary": "40", "tertiary": "50"}
    served: list[tuple[str, int]] = []

    def limited(failing_attempts: int) -> Callable[[ModelCall], Awaitable[Any]]:
        async def call(c: ModelCall) -> Any:
            if c.attempt <= failing_attempts:
                request = httpx.Request("POST", "http://provider.test/v1")
                headers = {"retry-after": retry_after[c.profile.id]}
                return httpx.Response(429, headers=headers, request=request)
            served.append((c.profile.id, c.attempt))
            return "ok"

        return call

    assert await manager.execute(limited(3), wait_s=31) == "ok"
    assert served == [("primary", 4)]
    advance_time(store, MINUTE_MS)  # every cooldown is over
    with pytest.raises(AllProfilesUnavailableError) as info:
        await manager.execute(limited(10))
    assert len(info.value.attempts) == 3
    assert info.value.retry_in_ms is not None
    assert 30 * SECOND_MS - MARGIN < info.value.retry_in_ms <= 30 * SECOND_MS


async def test_an_answer_is_returned_even_when_its_success_report_is_lost(
    secret_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The provider has answered (and billed) when Redis goes away: execute returns the answer
    # and logs that the report was lost, instead of raising StoreUnavailableError.
    server = RedisServer().start()
    store = await connect(server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        manager = ModelProfileManager(store)
        await manager.add_profile(
            ModelProfile(id="p", provider="x", auth=ModelAuth.none(), base_url="http://x")
        )

        async def call(_: ModelCall) -> str:
            server.stop()  # Redis dies while the provider answers
            return "the paid answer"

        caplog.set_level(logging.WARNING, logger="coordinator.models")
        assert await manager.execute(call, model="m") == "the paid answer"
        lost = [r.getMessage() for r in caplog.records]
        assert len(lost) == 1 and "the answer of p is returned" in lost[0], lost
        # Without a store, a new call fails before any provider is called.
        with pytest.raises(StoreUnavailableError):
            await manager.execute(call, model="m")
    finally:
        await store.close()
        server.stop()
