"""The refresh protocol the worker and the apps share, against a scripted token endpoint
(``httpx.MockTransport``): the worker's larger lead, the fence check right before sending, the
lock renewed while a request is in flight, retries with backoff before the expiry, and a
cancelled refresh releasing its lock. Contract tests run on every backend."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from coordinator import Store, connect
from coordinator.oauth import OAuthConfig, OAuthManager, OAuthProvider, _http
from coordinator.store.secrets import Secret
from coordinator.testing import RedisServer, advance_time
from workers import WorkerSettings, refresh_due

from .conftest import unique_namespace

LIFETIME_S = 100
APP = OAuthConfig(event_poll_interval_s=0.02)  # lead: min(300 s, half the lifetime) = 50 s
WORKER = WorkerSettings(jitter_s=0, retry_base_s=1, retry_max_s=30)  # lead: 75 s


class TokenEndpoint:
    """A provider's token endpoint that rotates refresh tokens. ``answers`` are served first,
    one per request: an HTTP status (with an OAuth error code for 4xx) or ``"network"``;
    ``gate``, when set, holds each request until it is set."""

    def __init__(self) -> None:
        self.presented: list[str] = []
        self.answers: list[int | str] = []
        self.issued = 1
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.hold_s = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/userinfo":
            return httpx.Response(200, json={"sub": "u1"})
        self.presented.append(parse_qs(request.content.decode())["refresh_token"][0])
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.hold_s:
            await asyncio.sleep(self.hold_s)
        if self.answers:
            answer = self.answers.pop(0)
            if answer == "network":
                raise httpx.ConnectError("connection refused", request=request)
            error = {400: "invalid_grant", 401: "invalid_client"}.get(int(answer))
            return httpx.Response(int(answer), json={"error": error} if error else {})
        self.issued += 1
        n = self.issued
        body = {"access_token": f"at-{n}", "refresh_token": f"rt-{n}", "expires_in": LIFETIME_S}
        return httpx.Response(200, json={**body, "token_type": "Bearer"})


PROVIDER = OAuthProvider(
    name="mock",
    token_endpoint="https://auth.test/token",
    userinfo_endpoint="https://auth.test/userinfo",
    client_id="c",
)


@pytest.fixture
def endpoint() -> TokenEndpoint:
    return TokenEndpoint()


@pytest.fixture
async def memory_store(secret_key: str) -> AsyncIterator[Store]:
    s = await connect("memory://", namespace="worker-refresh", secret_key=secret_key)
    try:
        yield s
    finally:
        await s.close()


def manager(
    store: Store, endpoint: TokenEndpoint, config: OAuthConfig = APP, cls: type = OAuthManager
) -> OAuthManager:
    http = httpx.AsyncClient(transport=httpx.MockTransport(endpoint))
    m: OAuthManager = cls(store, [PROVIDER], config=config, http=http)
    return m


def worker_manager(store: Store, endpoint: TokenEndpoint, **kw: Any) -> OAuthManager:
    """The OAuth manager a worker with ``WORKER`` settings makes (see ``Worker.__init__``)."""
    config = OAuthConfig(
        refresh_lead_s=WORKER.refresh_lead_s,
        refresh_lead_fraction=WORKER.refresh_lead_fraction,
        **kw,
    )
    return manager(store, endpoint, config)


async def signed_in(m: OAuthManager) -> str:
    """A stored credential (``mock:u1``) with access token at-1 / refresh token rt-1, living
    100 s; a new login when it exists already."""
    tokens = _http.TokenSet(
        access_token=Secret("at-1"),
        refresh_token=Secret("rt-1"),
        expires_in_ms=LIFETIME_S * 1000,
    )
    cred = await m._store_login(PROVIDER, tokens, (), "code")
    return cred.id


async def lock_left_ms(store: Store, m: OAuthManager, cid: str) -> int:
    held = await store.command("GET", m.keys.lock(cid))
    return int(str(held).rsplit("\t", 1)[1]) - await store.time_ms()


# -- the worker's lead --------------------------------------------------------------------


async def test_the_worker_refreshes_before_an_app_would_need_to(
    store: Store, endpoint: TokenEndpoint
) -> None:
    app, worker = manager(store, endpoint), worker_manager(store, endpoint)
    try:
        cid = await signed_in(app)
        advance_time(store, 30_000)  # 70 s left: due for the worker (75 s), not for apps (50 s)
        got = await app.get_token(cid)
        assert (got.version, got.waited, endpoint.presented) == (1, False, [])
        outcome = await refresh_due(worker, WORKER)
        assert (outcome.due, outcome.refreshed, endpoint.presented) == (1, 1, ["rt-1"])
        got = await app.get_token(cid)
        assert (got.token.reveal(), got.version, got.waited) == ("at-2", 2, False)
        # Just refreshed: not due again, for anyone.
        outcome = await refresh_due(worker, WORKER)
        assert (outcome.refreshed, outcome.fresh, len(endpoint.presented)) == (0, 1, 1)
    finally:
        await app.close()
        await worker.close()


# -- the fence check right before sending -------------------------------------------------


class Stalling(OAuthManager):
    """Stalls after taking the lock, right before its fence check, until ``resume`` is set."""

    stalled: asyncio.Event
    resume: asyncio.Event

    async def _before_send(self, cid: str) -> None:
        self.stalled.set()
        await self.resume.wait()


async def test_a_holder_that_stalled_before_sending_abandons_without_sending(
    store: Store, endpoint: TokenEndpoint
) -> None:
    config = OAuthConfig(
        refresh_lead_s=600, refresh_lead_fraction=0.75, lock_ttl_s=5, refresh_timeout_s=4
    )
    slow = manager(store, endpoint, config, cls=Stalling)
    assert isinstance(slow, Stalling)
    slow.stalled, slow.resume = asyncio.Event(), asyncio.Event()
    other = worker_manager(store, endpoint)
    try:
        cid = await signed_in(other)
        advance_time(store, 30_000)
        stalled = asyncio.create_task(slow.refresh_if_due(cid))
        await slow.stalled.wait()
        advance_time(store, 5_001)  # its lock lapses: another worker takes over
        assert await other.refresh_if_due(cid) == "refreshed"
        slow.resume.set()
        assert await stalled == "abandoned"
        assert endpoint.presented == ["rt-1"]  # rt-1 went out once, from the other worker
        assert await store.command("EXISTS", other.keys.lock(cid)) == 0
        assert (await other.get_token(cid)).token.reveal() == "at-2"
    finally:
        await slow.close()
        await other.close()


async def test_a_holder_whose_credential_changed_abandons_and_releases_its_lock(
    store: Store, endpoint: TokenEndpoint
) -> None:
    config = OAuthConfig(refresh_lead_s=600, refresh_lead_fraction=0.75)
    slow = manager(store, endpoint, config, cls=Stalling)
    assert isinstance(slow, Stalling)
    slow.stalled, slow.resume = asyncio.Event(), asyncio.Event()
    try:
        cid = await signed_in(slow)
        advance_time(store, 30_000)
        stalled = asyncio.create_task(slow.refresh_if_due(cid))
        await slow.stalled.wait()
        await signed_in(slow)  # the user signed in again meanwhile: a new refresh token
        slow.resume.set()
        assert await stalled == "abandoned"
        assert endpoint.presented == []
        assert await store.command("EXISTS", slow.keys.lock(cid)) == 0
    finally:
        await slow.close()


async def test_the_lock_is_renewed_while_the_request_is_in_flight(
    store: Store, endpoint: TokenEndpoint
) -> None:
    # The request takes 1.2 s; the lock lives 1.5 s from the check right before sending, and
    # is renewed every 0.5 s: near the end of the request it still has over 0.8 s left
    # (without renewal: 0.3 s).
    m = worker_manager(store, endpoint, lock_ttl_s=1.5, refresh_timeout_s=1.4)
    endpoint.gate = asyncio.Event()
    try:
        cid = await signed_in(m)
        advance_time(store, 30_000)
        task = asyncio.create_task(m.refresh_if_due(cid))
        await endpoint.arrived.wait()
        await asyncio.sleep(1.1)
        left = await lock_left_ms(store, m, cid)
        endpoint.gate.set()
        assert await task == "refreshed"
        assert left > 800, left
    finally:
        await m.close()


async def test_a_cancelled_refresh_releases_its_lock(store: Store, endpoint: TokenEndpoint) -> None:
    # What a worker's shutdown does to a refresh still in flight after the grace period.
    m = worker_manager(store, endpoint)
    endpoint.gate = asyncio.Event()  # never set: the provider does not answer
    try:
        cid = await signed_in(m)
        advance_time(store, 30_000)
        task = asyncio.create_task(refresh_due(m, WORKER))
        await endpoint.arrived.wait()
        assert await store.command("EXISTS", m.keys.lock(cid)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.command("EXISTS", m.keys.lock(cid)) == 0
    finally:
        await m.close()


# -- retries ------------------------------------------------------------------------------


class Sleeps:
    """A fake ``sleep`` that records its pauses (jitter pauses of 0 left out)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        if seconds:
            self.pauses.append(seconds)


async def test_network_errors_and_5xx_are_retried_with_growing_jittered_pauses(
    memory_store: Store, endpoint: TokenEndpoint
) -> None:
    m = worker_manager(memory_store, endpoint)
    endpoint.answers = [503, "network", 502]
    sleeps = Sleeps()
    try:
        cid = await signed_in(m)
        advance_time(memory_store, 30_000)
        outcome = await refresh_due(m, WORKER, sleep=sleeps, rng=random.Random(7))
        assert (outcome.refreshed, outcome.retries, outcome.failed) == (1, 3, 0)
        assert endpoint.presented == ["rt-1"] * 4  # nobody else used rt-1 meanwhile
        first, second, third = sleeps.pauses
        assert 0.5 <= first <= 1 and 1 <= second <= 2 and 2 <= third <= 4
        assert len(set(sleeps.pauses)) == 3
        assert (await m.get_token(cid)).token.reveal() == "at-2"
    finally:
        await m.close()


async def test_no_retry_once_the_token_would_have_expired(
    memory_store: Store, endpoint: TokenEndpoint
) -> None:
    m = worker_manager(memory_store, endpoint)
    endpoint.answers = [503]
    sleeps = Sleeps()
    try:
        await signed_in(m)
        advance_time(memory_store, 99_500)  # 0.5 s left; the first pause is 0.5-1 s
        outcome = await refresh_due(m, WORKER, sleep=sleeps)
        assert (outcome.failed, outcome.retries, sleeps.pauses) == (1, 0, [])
        assert len(endpoint.presented) == 1
    finally:
        await m.close()


@pytest.mark.parametrize(("status", "counted"), [(400, "needs_reauth"), (401, "failed")])
async def test_an_oauth_error_is_not_retried(
    memory_store: Store, endpoint: TokenEndpoint, status: int, counted: str
) -> None:
    m = worker_manager(memory_store, endpoint)
    endpoint.answers = [status]  # invalid_grant / invalid_client
    try:
        cid = await signed_in(m)
        advance_time(memory_store, 30_000)
        outcome = await refresh_due(m, WORKER, sleep=Sleeps())
        assert getattr(outcome, counted) == 1 and outcome.retries == 0
        assert len(endpoint.presented) == 1
        expected = "needs-reauth" if status == 400 else "active"
        assert (await m.get_credential(cid)).status == expected
    finally:
        await m.close()


async def test_a_stopping_worker_takes_no_new_refresh(
    memory_store: Store, endpoint: TokenEndpoint
) -> None:
    m = worker_manager(memory_store, endpoint)
    stopping = asyncio.Event()
    stopping.set()
    try:
        await signed_in(m)
        advance_time(memory_store, 30_000)
        outcome = await refresh_due(m, WORKER, stopping=stopping)
        assert (outcome.due, outcome.refreshed, endpoint.presented) == (1, 0, [])
    finally:
        await m.close()


# -- round trips on the wire --------------------------------------------------------------


async def fcalls(store: Store) -> int:
    stats = await store.client.info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


async def test_a_fresh_read_is_one_script_call_and_a_refresh_three(
    redis_server: RedisServer, secret_key: str, endpoint: TokenEndpoint
) -> None:
    # Counted by the server: acquire + fence check + commit per refresh (no renewal for a
    # request shorter than lock_ttl_s / 3), and one acquire per read of a fresh token.
    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    m = worker_manager(store, endpoint)
    try:
        cid = await signed_in(m)
        advance_time(store, 30_000)
        assert await m.refresh_if_due(cid) == "refreshed"  # loads the functions
        advance_time(store, 30_000)
        await store.client.execute_command("CONFIG", "RESETSTAT")
        assert await m.refresh_if_due(cid) == "refreshed"
        assert await fcalls(store) == 3
        await store.client.execute_command("CONFIG", "RESETSTAT")
        assert (await m.get_token(cid)).waited is False
        assert await fcalls(store) == 1
    finally:
        await m.close()
        await store.close()


async def test_a_worker_that_stops_during_a_backoff_does_not_try_again(
    memory_store: Store, endpoint: TokenEndpoint
) -> None:
    m = worker_manager(memory_store, endpoint)
    endpoint.answers = [503, 503]
    stopping = asyncio.Event()

    async def signal_arrives_during_the_pause(seconds: float) -> None:
        if seconds:
            stopping.set()

    try:
        await signed_in(m)
        advance_time(memory_store, 30_000)
        outcome = await refresh_due(
            m, WORKER, sleep=signal_arrives_during_the_pause, stopping=stopping
        )
        assert (outcome.failed, outcome.retries, len(endpoint.presented)) == (1, 0, 1)
    finally:
        await m.close()
