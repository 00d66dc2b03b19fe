"""Unit tests of the OAuth pieces that need no provider: PKCE, provider configuration, the HTTP
boundary's validation of token responses, callback parsing and the loopback server's pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from coordinator import connect
from coordinator.errors import (
    ConfigError,
    LoginTimeoutError,
    OAuthAuthorizationError,
    OAuthProviderError,
    OAuthStateError,
)
from coordinator.oauth import (
    PRESETS,
    LoopbackCallbackServer,
    OAuthConfig,
    OAuthManager,
    OAuthProvider,
    _http,
    preset,
)
from coordinator.oauth.pkce import code_challenge, new_state, new_verifier, state_digest
from coordinator.store.connection import Store

TOKEN_URL = "https://auth.example.test/token"


def example(**kw: Any) -> OAuthProvider:
    fields: dict[str, Any] = {
        "name": "example",
        "client_id": "client-1",
        "authorization_endpoint": "https://auth.example.test/authorize",
        "token_endpoint": TOKEN_URL,
        "scopes": ("openid", "offline_access"),
    }
    fields.update(kw)
    return OAuthProvider(**fields)


@pytest.fixture
async def memory_store() -> AsyncIterator[Store]:
    s = await connect("memory://", namespace="units")
    try:
        yield s
    finally:
        await s.close()


def mock_http(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


# -- PKCE and state ---------------------------------------------------------------------------


def test_s256_challenge_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_and_states_are_long_random_and_unreserved() -> None:
    verifiers = {new_verifier() for _ in range(200)}
    states = {new_state() for _ in range(200)}
    assert len(verifiers) == 200 and len(states) == 200
    for v in verifiers:
        assert 43 <= len(v) <= 128
        code_challenge(v)  # valid charset
    assert all(len(s) >= 43 for s in states)  # >= 256 bits in url-safe base64
    assert len(state_digest("x")) == 64


def test_challenge_refuses_a_short_verifier() -> None:
    with pytest.raises(ValueError, match="43-128"):
        code_challenge("short")


# -- providers --------------------------------------------------------------------------------


def test_presets_exist_and_are_overridable() -> None:
    assert set(PRESETS) == {"anthropic", "openai", "google", "github"}
    google = preset("google", client_id="g-1")
    assert google.client_id == "g-1"
    assert google.extra_authorization_params["access_type"] == "offline"
    github = preset("github", client_id="gh-1", scopes=("repo",))
    assert github.use_pkce is False and github.scopes == ("repo",)
    assert PRESETS["anthropic"].documented is False
    assert PRESETS["openai"].documented is False
    assert PRESETS["google"].documented is True


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown provider preset 'nope'; known: anthropic"):
        preset("nope")


async def test_unconfigured_and_unknown_providers_are_config_errors(memory_store: Store) -> None:
    m = OAuthManager(memory_store)
    try:
        with pytest.raises(ConfigError, match="no client id") as info:
            m.add_provider(PRESETS["anthropic"])
        assert info.value.field == "client_id"
        with pytest.raises(ConfigError, match="'google' is not configured"):
            await m.get_authorization_url("google", redirect_uri="http://127.0.0.1/cb")
    finally:
        await m.close()


def test_provider_validation() -> None:
    with pytest.raises(ConfigError, match="https"):
        example(token_endpoint="http://auth.example.test/token")
    assert example(token_endpoint="http://127.0.0.1:9/token").token_endpoint.startswith("http:")
    with pytest.raises(ConfigError, match="needs a client secret"):
        example(token_endpoint_auth_method="client_secret_post")
    with pytest.raises(ConfigError, match="may not set state"):
        example(extra_authorization_params={"state": "x"})
    confidential = example(client_secret="s3cr3t-value-0123456789")
    assert confidential.token_endpoint_auth_method == "client_secret_basic"
    assert "s3cr3t" not in repr(confidential)


def test_config_requires_the_lock_to_outlive_the_refresh_request() -> None:
    with pytest.raises(ConfigError) as info:
        OAuthConfig(lock_ttl_s=10, refresh_timeout_s=10)
    assert info.value.field == "refresh_timeout_s"


async def test_discovery_checks_the_issuer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"issuer": "https://evil.example.test", "token_endpoint": TOKEN_URL}
        )

    async with mock_http(handler) as http:
        with pytest.raises(ConfigError, match="names issuer"):
            await OAuthProvider.from_discovery(
                "https://auth.example.test", name="x", client_id="c", http=http
            )


# -- authorization URL ------------------------------------------------------------------------


async def test_authorization_url_uses_s256_and_stores_only_digest_and_ciphertext(
    memory_store: Store,
) -> None:
    m = OAuthManager(memory_store, [example(extra_authorization_params={"prompt": "consent"})])
    try:
        request = await m.get_authorization_url(
            "example", redirect_uri="http://127.0.0.1:5000/callback"
        )
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
        assert query["code_challenge_method"] == "S256"
        assert query["response_type"] == "code"
        assert query["prompt"] == "consent"
        assert query["scope"] == "openid offline_access"
        assert query["state"] == request.state
        assert "plain" not in request.url
        assert request.state not in repr(request)
        raw = await memory_store.client.get(m.keys.state(state_digest(request.state)))
        record = json.loads(raw)
        assert record["verifier"].startswith("v1.")
        assert request.state not in raw
        now = await memory_store.time_ms()
        assert 590_000 < request.expires_at_ms - now <= 600_000
    finally:
        await m.close()


# -- token responses (the HTTP boundary) ------------------------------------------------------


async def exchange(handler: Callable[[httpx.Request], httpx.Response]) -> _http.TokenSet:
    async with mock_http(handler) as http:
        return await _http.token_request(
            http,
            example(),
            {"grant_type": "authorization_code", "code": "the-code-123456"},
            what="code exchange",
            timeout_s=5,
            secrets=["the-code-123456"],
        )


async def test_a_valid_token_response_is_parsed() -> None:
    tokens = await exchange(
        lambda r: httpx.Response(
            200,
            json={
                "access_token": "at-0123456789abcdef",
                "token_type": "bearer",
                "expires_in": "3600",
                "refresh_token": "rt-0123456789abcdef",
                "scope": "a b",
            },
        )
    )
    assert tokens.access_token.reveal() == "at-0123456789abcdef"
    assert tokens.expires_in_ms == 3_600_000
    assert tokens.scope == ("a", "b")
    assert "at-0123456789abcdef" not in repr(tokens)


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (200, b"<html>access_token=at-leaked-0123456789</html>", "expected a JSON object"),
        (200, b'["at-leaked-0123456789"]', "expected a JSON object"),
        (200, b'{"token_type": "Bearer", "x": "at-leaked-0123456789"}', "no access_token"),
        (200, b'{"access_token": "at-leaked-0123456789", "expires_in": -5}', "expires_in"),
        (502, b"bad gateway at-leaked-0123456789", "HTTP 502"),
    ],
)
async def test_malformed_token_responses_are_provider_errors_without_tokens(
    status: int, body: bytes, match: str
) -> None:
    with pytest.raises(OAuthProviderError, match=match) as info:
        await exchange(lambda r: httpx.Response(status, content=body))
    assert "at-leaked" not in str(info.value)


async def test_error_responses_carry_the_code_and_a_redacted_description() -> None:
    body = {
        "error": "invalid_grant",
        "error_description": "code the-code-123456 is bad, refresh_token=rt-secret-value",
    }
    with pytest.raises(OAuthProviderError) as info:
        await exchange(lambda r: httpx.Response(400, json=body))
    assert info.value.error == "invalid_grant" and info.value.status == 400
    assert "the-code-123456" not in str(info.value)
    assert "rt-secret-value" not in str(info.value)
    # GitHub answers errors with HTTP 200.
    with pytest.raises(OAuthProviderError) as info:
        await exchange(lambda r: httpx.Response(200, json={"error": "bad_verification_code"}))
    assert info.value.error == "bad_verification_code"


async def test_transport_errors_are_translated_with_the_cause_kept() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(OAuthProviderError, match="no answer within 5 s") as info:
        await exchange(handler)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def device_poller(
    answer: Callable[[float], httpx.Response],
) -> tuple[Callable[[], Any], list[float], list[float]]:
    """Poll a fake device token endpoint on a fake clock: ``answer(now)`` is the provider's
    reply to a poll at ``now``. Returns the poll coroutine factory, poll times and waits."""
    from coordinator.oauth.device import poll_for_tokens
    from coordinator.oauth.types import DeviceAuthorization
    from coordinator.store.secrets import Secret

    clock = [0.0]
    polls: list[float] = []
    waits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        polls.append(clock[0])
        return answer(clock[0])

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    device = DeviceAuthorization(
        provider="example",
        user_code="ABCD-EFGH",
        verification_uri="https://auth.example.test/device",
        verification_uri_complete=None,
        expires_in_s=600.0,
        interval_s=5.0,
        scopes=(),
        device_code=Secret("device-code-0123456789"),
    )

    def run() -> Any:
        return poll_for_tokens(
            mock_http(handler),
            example(),
            device,
            timeout_s=5,
            sleep=sleep,
            clock=lambda: clock[0],
        )

    return run, polls, waits


def pending(error: str = "authorization_pending") -> httpx.Response:
    return httpx.Response(400, json={"error": error})


async def test_device_slow_down_near_the_deadline_polls_until_the_code_expires() -> None:
    # The user approves 597 s into a 600 s code; the provider asked us to slow down at 595 s.
    # Waiting the full new interval (10 s) would pass the deadline: we poll at the deadline.
    def answer(now: float) -> httpx.Response:
        if now > 600:
            return pending("expired_token")
        if now >= 597:
            return httpx.Response(200, json={"access_token": "at-0123456789abcdef"})
        return pending("slow_down" if now == 595 else "authorization_pending")

    run, polls, waits = device_poller(answer)
    tokens = await run()
    assert tokens.access_token.reveal() == "at-0123456789abcdef"
    assert polls[-3:] == [590.0, 595.0, 600.0]
    assert waits[-1] == 5.0  # cut short from 10 s at the deadline


async def test_device_polling_gives_up_only_at_the_deadline() -> None:
    run, polls, waits = device_poller(
        lambda now: pending("slow_down" if now in (580, 590) else "authorization_pending")
    )
    with pytest.raises(LoginTimeoutError, match="expired unapproved"):
        await run()
    # 5 s apart, 10 s after the first slow_down; 15 s after the second, cut to the 10 s
    # left; no poll after the deadline.
    assert polls[-4:] == [575.0, 580.0, 590.0, 600.0]
    assert waits[-2:] == [10.0, 10.0]
    assert all(w > 0 for w in waits)


async def test_client_secret_basic_and_post() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "at-0123456789abcdef"})

    async with mock_http(handler) as http:
        for method in ("client_secret_basic", "client_secret_post"):
            prov = example(client_secret="p@ss word", token_endpoint_auth_method=method)
            await _http.token_request(http, prov, {"grant_type": "x"}, what="t", timeout_s=5)
    basic, post = seen
    assert basic.headers["Authorization"] == "Basic Y2xpZW50LTE6cCU0MHNzJTIwd29yZA=="
    assert b"client_secret" not in basic.content
    assert "Authorization" not in post.headers
    assert parse_qs(post.content.decode())["client_secret"] == ["p@ss word"]


# -- callbacks --------------------------------------------------------------------------------


async def test_callback_parameters_are_checked_before_any_lookup(memory_store: Store) -> None:
    m = OAuthManager(memory_store, [example()])
    try:
        with pytest.raises(OAuthStateError, match="repeats the parameter 'state'"):
            await m.handle_callback({"state": ["a", "b"], "code": "c"})
        with pytest.raises(OAuthStateError, match="no state"):
            await m.handle_callback("http://127.0.0.1/callback?code=abc")
        with pytest.raises(OAuthAuthorizationError) as info:
            await m.handle_callback("http://127.0.0.1/callback?error=access_denied")
        assert info.value.error == "access_denied"
    finally:
        await m.close()


class StubManager:
    """Stands in for OAuthManager.handle_callback in the loopback server tests."""

    def __init__(self, outcome: Exception | None, delay: float = 0.0) -> None:
        self.outcome = outcome
        self.delay = delay
        self.calls: list[str] = []

    async def handle_callback(self, target: str, *, provider: str | None = None) -> Any:
        self.calls.append(target)
        await asyncio.sleep(self.delay)
        if self.outcome is not None:
            raise self.outcome
        from coordinator.oauth.types import OAuthCredential

        return OAuthCredential.from_hash(
            "p:u", {"provider": "p", "email": "<i>u</i>@example.test"}, is_default=True
        )


async def test_loopback_server_binds_loopback_and_escapes_provider_text() -> None:
    error = OAuthAuthorizationError("access_denied", "<script>alert(1)</script> & more")
    stub = StubManager(error)
    server = await LoopbackCallbackServer(stub, port=0).start()  # type: ignore[arg-type]
    try:
        sock = server._server.sockets[0].getsockname()  # type: ignore[union-attr]
        assert sock[0] == "127.0.0.1"
        assert server.redirect_uri == f"http://127.0.0.1:{server.port}/callback"
        async with httpx.AsyncClient() as client:
            other = await client.get(f"http://127.0.0.1:{server.port}/favicon.ico")
            assert other.status_code == 404
            page = await client.get(server.redirect_uri + "?state=s&error=access_denied")
        assert page.status_code == 400
        assert "<script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page.text
        assert page.headers["cache-control"] == "no-store"
        with pytest.raises(OAuthAuthorizationError):
            await server.wait(5)
    finally:
        await server.close()


async def test_loopback_server_answers_success_only_after_the_exchange() -> None:
    stub = StubManager(None, delay=0.3)
    server = await LoopbackCallbackServer(stub, port=0).start()  # type: ignore[arg-type]
    async with httpx.AsyncClient() as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        page = await client.get(server.redirect_uri + "?state=s&code=c")
        assert loop.time() - started >= 0.3
    assert page.status_code == 200
    assert "Signed in to p as &lt;i&gt;u&lt;/i&gt;@example.test" in page.text
    cred = await server.wait(5)
    assert cred.id == "p:u"
    # One login only: the server stopped listening.
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(server.redirect_uri)


async def test_loopback_server_times_out() -> None:
    server = await LoopbackCallbackServer(StubManager(None), port=0).start()  # type: ignore[arg-type]
    with pytest.raises(LoginTimeoutError, match=r"no login callback within 0\.2 s"):
        await server.wait(0.2)
