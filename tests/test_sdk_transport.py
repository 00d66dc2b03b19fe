"""The SDK transport's rules: what is retried, what is returned, what is sent, what it costs on
the wire, and that no key ever shows in a log, an error or a repr."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    ConfigError,
    ModelAuth,
    ModelProfile,
    ModelProfileManager,
    Store,
    connect,
)
from coordinator.sdk import (
    CoordinatorTransport,
    PoolCredentials,
    openai_http_client,
)
from coordinator.testing import RedisServer
from tests.conftest import unique_namespace
from tests.sdk_fakes import (
    KEY_A,
    KEY_B,
    KEY_C,
    PLACEHOLDER,
    Answer,
    FakeApi,
    no_secret_in,
    openai_rate_limit,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi("one").start()
    yield fake
    fake.stop()


async def keys(store: Store, *secrets: str) -> AuthProfileManager:
    pool = AuthProfileManager(store)
    for n, secret in enumerate(secrets):
        await pool.add_profile(AuthProfile(id=f"key-{n}", provider="openai", api_key=secret))
    return pool


def sdk(manager: Any, base_url: str | None, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=PLACEHOLDER, base_url=base_url, max_retries=0,
                              http_client=openai_http_client(manager, **options))  # fmt: skip


async def ask(client: openai.AsyncOpenAI, **extra: Any) -> str:
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **extra)
    return str(reply.choices[0].message.content)


def free_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_caller_error_is_returned_at_once(store: Store, api: FakeApi) -> None:
    pool = await keys(store, KEY_A, KEY_B)
    bad = {"error": {"message": "messages: required", "type": "invalid_request_error"}}
    api.then(Answer(400, body=bad))
    with pytest.raises(openai.BadRequestError):
        await ask(sdk(pool, api.base_url))
    assert api.keys == [KEY_A]  # not the key's fault: no other key tried
    assert all(s.failures == 0 for s in await pool.get_status("openai"))


async def test_a_key_this_replica_lacks_is_skipped_not_blamed(
    store: Store, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SDK_TEST_UNSET_KEY", raising=False)
    pool = AuthProfileManager(store)
    await pool.add_profile(AuthProfile(id="elsewhere", provider="openai",
                                       api_key_env="SDK_TEST_UNSET_KEY"))  # fmt: skip
    await pool.add_profile(AuthProfile(id="here", provider="openai", api_key=KEY_A))
    for _ in range(2):
        assert await ask(sdk(pool, api.base_url)) == "hi from one"
    assert api.keys == [KEY_A, KEY_A]
    assert all(s.failures == 0 and s.healthy for s in await pool.get_status("openai"))


async def test_attempts_are_bounded(store: Store, api: FakeApi) -> None:
    pool = await keys(store, KEY_A, KEY_B, KEY_C)
    for key in (KEY_A, KEY_B, KEY_C):
        api.for_key(key, openai_rate_limit())
    with pytest.raises(openai.RateLimitError):
        await ask(sdk(pool, api.base_url, max_attempts=2))
    assert api.keys == [KEY_A, KEY_B]


async def test_a_connection_error_fails_over(store: Store, api: FakeApi) -> None:
    models = ModelProfileManager(store)
    down = f"http://127.0.0.1:{free_port()}/v1"
    await models.add_profile(
        ModelProfile(id="down", provider="alpha", priority=10, auth=ModelAuth.api_key(KEY_A),
                     base_url=down)
    )  # fmt: skip
    await models.add_profile(
        ModelProfile(id="up", provider="beta", priority=5, auth=ModelAuth.api_key(KEY_B),
                     base_url=api.base_url)
    )  # fmt: skip
    assert await ask(sdk(models, None)) == "hi from one"
    assert api.keys == [KEY_B]
    status = {s.id: s for s in await models.get_status()}
    assert status["down"].last_error_kind == "timeout"  # a connection error, as classify says
    await models.close()


async def test_a_url_outside_the_api_base_is_never_sent_a_profile_key(
    store: Store, api: FakeApi
) -> None:
    models = ModelProfileManager(store)
    await models.add_profile(
        ModelProfile(id="p", provider="alpha", auth=ModelAuth.api_key(KEY_A),
                     base_url=api.base_url)
    )  # fmt: skip
    client = sdk(models, "https://elsewhere.example/v1")  # not the default api_base
    with pytest.raises((ConfigError, openai.APIConnectionError)) as caught:
        await ask(client)
    error = caught.value if isinstance(caught.value, ConfigError) else caught.value.__cause__
    assert isinstance(error, ConfigError) and error.field == "api_base"
    assert api.seen == []
    # with the SDK's base URL given as api_base, the profile's replaces it
    mapped = sdk(models, "https://elsewhere.example/v1", api_base="https://elsewhere.example/v1")
    assert await ask(mapped) == "hi from one"
    await models.close()


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        CoordinatorTransport(PoolCredentials.__new__(PoolCredentials), max_attempts=0)
    with pytest.raises(ConfigError):
        CoordinatorTransport(PoolCredentials.__new__(PoolCredentials), api_base="ftp://x")
    with pytest.raises(ConfigError):
        openai_http_client(object())  # type: ignore[arg-type]


async def test_round_trips_on_the_wire(
    redis_server: RedisServer, secret_key: str, api: FakeApi
) -> None:
    """A request costs the pool's two functions (pick, report); a failover hop two more."""
    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        pool = await keys(store, KEY_A, KEY_B)
        client = sdk(pool, api.base_url)

        async def fcalls() -> int:
            stats = await store.client.info("commandstats")
            return int(stats.get("cmdstat_fcall", {}).get("calls", 0))

        await ask(client)  # warm: caches filled
        before = await fcalls()
        await ask(client)
        assert await fcalls() - before == 2
        api.then(openai_rate_limit())
        before = await fcalls()
        await ask(client)
        assert await fcalls() - before == 4  # pick, mark_failed, pick, mark_success
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        before = await fcalls()
        async for _chunk in stream:
            pass
        assert await fcalls() - before == 1  # the report, when the stream ends
    finally:
        await store.close()


async def test_nothing_leaks(store: Store, api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    """A run with rotation, failover, a broken stream, a refused connection, an exhausted pool
    and a caller error: no key in any log record, error text, repr or stored error."""
    caplog.set_level(logging.DEBUG)
    pool = await keys(store, KEY_A, KEY_B)
    client = sdk(pool, api.base_url)
    texts: list[str] = [repr(client._client), repr(client._client._transport)]
    await ask(client)
    api.for_key(KEY_B, openai_rate_limit())
    await ask(client)
    api.then(Answer(break_after=1))
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises((httpx.TransportError, openai.APIError)) as broken:
        async for _chunk in stream:
            pass
    api.then(Answer(401, body={"error": {"message": "bad key", "type": "invalid_api_key"}}))
    errors: list[BaseException] = [broken.value]
    for _ in range(3):
        try:
            await ask(client)
        except Exception as exc:
            errors.append(exc)
    refused = sdk(pool, f"http://127.0.0.1:{free_port()}/v1")
    try:
        await ask(refused)
    except Exception as exc:
        errors.append(exc)
    assert len(errors) >= 3
    for error in errors:
        texts += [str(error), repr(error), repr(error.__cause__), repr(error.__context__)]
        response = getattr(error, "response", None)
        if isinstance(response, httpx.Response):
            texts += [repr(response.request.headers), str(response.request.url)]
    texts += [str(s) for s in await pool.get_status("openai")]
    texts += [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    texts += [caplog.text]
    assert no_secret_in(*texts)
    # the test can fail: the keys did reach the provider, so they were in play
    assert {KEY_A, KEY_B} <= set(api.keys)
    await pool.close()
