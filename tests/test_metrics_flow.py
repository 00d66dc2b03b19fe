"""The worker's ``/metrics`` after a scripted run, scraped over HTTP: a real Redis (started by
the suite), a worker running in this process with its metrics server on a free port, pool keys
that fail and cool down, model profiles that fail over and trip a breaker, and OAuth tokens
refreshed by the worker against a local token endpoint (a real HTTP server in a thread) that
answers 503 once, refuses one refresh token and rotates the others.

The scripted run (:func:`run_flow`) is also what ``tests/test_logging.py`` runs with its logs
captured: every secret it uses is in :data:`SECRETS` or issued by the endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator import (
    AuthConfig,
    AuthProfile,
    AuthProfileManager,
    BreakerConfig,
    ModelAuth,
    ModelCall,
    ModelConfig,
    ModelProfile,
    ModelProfileManager,
    Store,
    connect,
)
from coordinator.oauth import OAuthManager, OAuthProvider, _http
from coordinator.store.secrets import Secret
from coordinator.testing import RedisServer, advance_time, free_port
from workers import Worker, WorkerSettings

from .conftest import unique_namespace

LIFETIME_S = 100
POOL_KEYS = {"FLOW_POOL_KEY_1": "pool-key-one-7f3a9c", "FLOW_POOL_KEY_2": "pool-key-two-81b2e4"}
MODEL_KEYS = {"FLOW_MODEL_KEY_1": "model-key-one-5d2c1a", "FLOW_MODEL_KEY_2": "model-key-two-0e9f"}
READY_KEY = {"FLOW_POOL_KEY_3": "pool-key-three-c4d5e6"}
CLIENT_ID, CLIENT_SECRET = "flow-client", "client-secret-9q8w7e6r5t"
#: Every secret of the flow known in advance (the endpoint's tokens are added as it issues them).
SECRETS = [*POOL_KEYS.values(), *MODEL_KEYS.values(), *READY_KEY.values(), CLIENT_SECRET]
BREAKER = BreakerConfig(failure_threshold=2, reset_timeout_ms=60_000, max_open_ms=600_000)
SETTINGS = dict(
    refresh_interval_s=0.1, jitter_s=0, sweep_interval_s=0.2, heartbeat_interval_s=0.2,
    heartbeat_ttl_s=5, retry_base_s=0.05, retry_max_s=0.1, metrics_timeout_s=5,
)  # fmt: skip


def access(n: int) -> str:
    return f"acc3ss-value-{n}-zq"


def refresh(n: int) -> str:
    return f"r3fresh-value-{n}-zq"


class TokenEndpoint:
    """A provider's token and userinfo endpoints on 127.0.0.1 (a thread). It checks the client
    (HTTP Basic), serves ``answers[refresh token]`` first (503: no error code, the body echoes
    the token; 400: ``invalid_grant`` whose description echoes it), then rotates: a new access
    and refresh token living ``LIFETIME_S``. ``issued`` lists every token it handed out."""

    def __init__(self) -> None:
        self.answers: dict[str, list[int]] = {}
        self.presented: list[str] = []
        self.issued: list[str] = []
        self._next = 100
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                form = parse_qs(self.rfile.read(length).decode())
                endpoint.token(self, form)

            def do_GET(self) -> None:
                bearer = self.headers.get("authorization", "").removeprefix("Bearer ")
                n = bearer.split("-")[2] if bearer.startswith("acc3ss-") else "x"
                reply(self, 200, {"sub": f"user{n}"})

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def token(self, handler: BaseHTTPRequestHandler, form: dict[str, list[str]]) -> None:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if handler.headers.get("authorization") != f"Basic {expected}":
            reply(handler, 401, {"error": "invalid_client"})
            return
        presented = form["refresh_token"][0]
        with self._lock:
            self.presented.append(presented)
            answers = self.answers.get(presented, [])
            status = answers.pop(0) if answers else 200
            self._next += 1
            n = self._next
        if status == 503:
            reply(handler, 503, f"busy, retry {presented}".encode(), "text/plain")
        elif status == 400:
            body = {"error": "invalid_grant", "error_description": f"{presented} was revoked"}
            reply(handler, 400, body)
        else:
            self.issued += [access(n), refresh(n)]
            body = {"access_token": access(n), "refresh_token": refresh(n)}
            reply(handler, 200, {**body, "expires_in": LIFETIME_S, "token_type": "Bearer"})

    def __enter__(self) -> TokenEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(handler: BaseHTTPRequestHandler, status: int, body: Any, ctype: str = "") -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    handler.send_response(status)
    handler.send_header("content-type", ctype or "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.fixture
def flow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**POOL_KEYS, **MODEL_KEYS, **READY_KEY}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with TokenEndpoint() as e:
        yield e


@pytest.fixture
async def redis_store(redis_server: RedisServer, secret_key: str) -> AsyncIterator[Store]:
    s = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        yield s
    finally:
        await s.close()


@dataclass
class Flow:
    """What :func:`run_flow` did, for the checks."""

    worker: Worker
    port: int
    credentials: list[str] = field(default_factory=list)
    failed_at_ms: int = 0


async def sign_in(oauth: OAuthManager, provider: OAuthProvider, n: int) -> str:
    tokens = _http.TokenSet(
        access_token=Secret(access(n)),
        refresh_token=Secret(refresh(n)),
        expires_in_ms=LIFETIME_S * 1000,
    )
    cred = await oauth._store_login(provider, tokens, (), "code")
    return cred.id


async def model_call(call: ModelCall) -> httpx.Response:
    """m1's provider is overloaded (and its error page echoes the key); m2 answers."""
    assert call.secret is not None
    if call.selection.profile_id == "m1":
        return httpx.Response(503, text=f"overloaded; your key {call.secret.reveal()} waits")
    return httpx.Response(200, json={"ok": True})


@contextlib.asynccontextmanager
async def run_flow(store: Store, endpoint: TokenEndpoint) -> AsyncIterator[Flow]:
    """The scripted run, with a worker serving metrics; yields once everything happened and
    the worker counted it, then stops the worker."""
    provider = OAuthProvider(
        name="fake", token_endpoint=f"{endpoint.url}/token",
        userinfo_endpoint=f"{endpoint.url}/userinfo", client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )  # fmt: skip
    settings = WorkerSettings(**SETTINGS, metrics_port=free_port())
    worker = Worker(store, [provider], settings)
    oauth = OAuthManager(store, [provider])
    pools = AuthProfileManager(store, AuthConfig())
    models = ModelProfileManager(store, ModelConfig(breaker=BREAKER))
    running = asyncio.create_task(worker.run())
    try:
        assert worker.metrics is not None
        await worker.metrics.wait_started()
        flow = Flow(worker, settings.metrics_port)
        # OAuth: three credentials due for the worker's refresh: one answered 503 once, one
        # refused (invalid_grant), one plain.
        endpoint.answers = {refresh(1): [503], refresh(3): [400]}
        flow.credentials = [await sign_in(oauth, provider, n) for n in (1, 2, 3)]
        advance_time(store, 30_000)  # 70 s left: due for the worker (lead 75 s)
        await until(lambda: len(endpoint.presented) >= 4 and len(endpoint.issued) == 4)
        # Pools: one key rate-limited, one out of credit; a third pool stays ready.
        await pools.add_profile(AuthProfile(id="k1", provider="p", api_key_env="FLOW_POOL_KEY_1"))
        await pools.add_profile(AuthProfile(id="k2", provider="p", api_key_env="FLOW_POOL_KEY_2"))
        await pools.add_profile(AuthProfile(id="r1", provider="q", api_key_env="FLOW_POOL_KEY_3"))
        first = await pools.acquire("p")
        await pools.mark_failed(
            first.id, f"HTTP 429: key {first.secret().reveal()} is over its quota", "rate_limit"
        )
        second = await pools.acquire("p")
        error = RuntimeError(f"HTTP 402: {second.secret().reveal()} has no credit")
        await pools.mark_failed(second.id, error, "billing")
        flow.failed_at_ms = await store.time_ms()
        # Models: m1 fails twice (failing over to m2 each time) and its breaker opens.
        for pid, env, priority in (("m1", "FLOW_MODEL_KEY_1", 10), ("m2", "FLOW_MODEL_KEY_2", 5)):
            await models.add_profile(
                ModelProfile(
                    id=pid, provider=f"prov-{pid}", auth=ModelAuth.env(env),
                    base_url="https://models.test/v1", models=["*"], priority=priority,
                )
            )  # fmt: skip
        for _ in range(3):
            answer = await models.execute(model_call, model="some-model")
            assert answer.status_code == 200
        yield flow
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await oauth.close()
        await pools.close()
        await models.close()


async def until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for something another task or thread does (never for time to pass)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


class Scrape:
    """One scrape of ``/metrics``: ``value(name, **labels)`` of the one sample that has those
    labels (among others), ``total(name, **labels)`` summed over the matching samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def matching(self, name: str, labels: dict[str, str]) -> list[float]:
        return [
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.matching(name, labels)
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def total(self, name: str, **labels: str) -> float:
        return sum(self.matching(name, labels))


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def scrape_until(port: int, done: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until the worker has counted what the flow did (events arrive asynchronously)."""
    deadline = time.monotonic() + 15
    while True:
        got = await scrape(port)
        if done(got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def _counted(s: Scrape) -> bool:
    return (
        s.total("coordinator_oauth_refreshes_total") == 3
        and s.total("coordinator_model_breaker_transitions_total") == 1
        and s.total("coordinator_model_failovers_total") == 2
        and s.total("coordinator_pool_failures_total") == 2
    )


@pytest.mark.usefixtures("flow_env")
async def test_metrics_after_a_scripted_run_have_the_values_it_made(
    redis_store: Store, endpoint: TokenEndpoint
) -> None:
    async with run_flow(redis_store, endpoint) as flow:
        s = await scrape_until(flow.port, _counted)
        elapsed_s = (await redis_store.time_ms() - flow.failed_at_ms) / 1000
        assert s.value("coordinator_up") == 1
        assert s.total("coordinator_scrape_errors_total") == 0

        # Pools: states, cooldowns left (60 s for the rate limit, 5 h for billing), failures.
        state = "coordinator_pool_profile_state"
        assert s.value(state, pool="p", profile="k1", state="cooling") == 1
        assert s.value(state, pool="p", profile="k1", state="ready") == 0
        assert s.value(state, pool="p", profile="k2", state="cooling") == 1
        assert s.value(state, pool="q", profile="r1", state="ready") == 1
        cooldown = "coordinator_pool_profile_cooldown_seconds"
        assert 60 - elapsed_s - 1 <= s.value(cooldown, pool="p", profile="k1") <= 60
        assert 18_000 - elapsed_s - 1 <= s.value(cooldown, pool="p", profile="k2") <= 18_000
        assert s.value(cooldown, pool="q", profile="r1") == 0
        failures = "coordinator_pool_failures_total"
        assert s.value(failures, pool="p", profile="k1", kind="rate_limit") == 1
        assert s.value(failures, pool="p", profile="k2", kind="billing") == 1
        assert s.total(failures) == 2
        cooldowns = "coordinator_pool_cooldowns_total"
        assert s.value(cooldowns, pool="p", profile="k1", kind="rate_limit", scope="profile") == 1

        # Models: m1 failed twice (server), failed over to m2 twice, its breaker opened once.
        assert s.value("coordinator_model_failures_total", profile="m1", kind="server") == 2
        assert s.total("coordinator_model_failures_total") == 2
        failovers = "coordinator_model_failovers_total"
        assert s.value(failovers, from_profile="m1", to_profile="m2") == 2
        transitions = "coordinator_model_breaker_transitions_total"
        assert s.value(transitions, profile="m1", from_state="closed", to_state="open") == 1
        breaker = "coordinator_model_profile_breaker_state"
        assert s.value(breaker, profile="m1", provider="prov-m1", state="open") == 1
        assert s.value(breaker, profile="m1", state="closed") == 0
        assert s.value(breaker, profile="m2", state="closed") == 1
        open_left = s.value("coordinator_model_profile_open_remaining_seconds", profile="m1")
        assert 60 - elapsed_s - 1 <= open_left <= 60
        assert s.value("coordinator_model_profile_available", profile="m1") == 0
        assert s.value("coordinator_model_profile_available", profile="m2") == 1

        # OAuth: two refreshed (one after a 503 and a retry), one needs a new sign-in.
        refreshes = "coordinator_oauth_refreshes_total"
        assert s.total(refreshes, outcome="refreshed") == 2
        needs, fine1, fine2 = flow.credentials[2], flow.credentials[0], flow.credentials[1]
        assert s.value(refreshes, credential=needs, outcome="needs_reauth") == 1
        assert s.value(refreshes, credential=fine1, provider="fake", outcome="refreshed") == 1
        status = "coordinator_oauth_credential_status"
        assert s.value(status, credential=needs, status="needs-reauth") == 1
        assert s.value(status, credential=fine2, status="active") == 1
        expiry = "coordinator_oauth_credential_expiry_seconds"
        for cid in (fine1, fine2):  # new tokens, living 100 s from their refresh
            assert LIFETIME_S - elapsed_s - 5 <= s.value(expiry, credential=cid) <= LIFETIME_S
        attempts = "coordinator_worker_refresh_attempts_total"
        assert s.value(attempts, outcome="refreshed") == 2
        assert s.value(attempts, outcome="needs_reauth") == 1
        assert s.value(attempts, outcome="retries") == 1
        assert s.value(attempts, outcome="failed") == 0

        # Workers: this one, running, and its jobs ran recently.
        assert s.value("coordinator_workers", state="running") == 1
        assert s.value("coordinator_worker_job_last_run_age_seconds", job="sweep") < 5
        assert s.value("coordinator_events_total", type="profile:circuit-opened") == 1

        # Labels are ids, states and kinds: never an error text, a model name or a secret.
        assert "some-model" not in s.text and "overloaded" not in s.text
        for secret in [*SECRETS, *endpoint.issued, access(1), refresh(1)]:
            assert secret not in s.text
