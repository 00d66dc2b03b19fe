"""The official ``openai`` SDK (async), unchanged, on coordinator pools and model profiles.

Real ``openai.AsyncOpenAI`` clients talk to fake OpenAI servers on 127.0.0.1 through
``coordinator.sdk.openai_http_client``; each test runs on memory, Redis and Cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    ModelAuth,
    ModelProfile,
    ModelProfileManager,
    NoProfileAvailableError,
    Store,
)
from coordinator.sdk import SESSION_HEADER, openai_http_client
from tests.sdk_fakes import (
    KEY_A,
    KEY_B,
    PLACEHOLDER,
    Answer,
    FakeApi,
    coordinator_error,
    openai_rate_limit,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi("one").start()
    yield fake
    fake.stop()


@pytest.fixture
async def pool(store: Store) -> AsyncIterator[AuthProfileManager]:
    manager = AuthProfileManager(store)
    await manager.add_profile(AuthProfile(id="key-a", provider="openai", api_key=KEY_A))
    await manager.add_profile(AuthProfile(id="key-b", provider="openai", api_key=KEY_B))
    yield manager
    await manager.close()


def sdk(manager: Any, base_url: str, **options: Any) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(
        api_key=PLACEHOLDER, base_url=base_url, http_client=openai_http_client(manager), **options
    )


async def ask(client: openai.AsyncOpenAI, **extra: Any) -> str:
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **extra)
    return str(reply.choices[0].message.content)


async def drain(stream: Any) -> None:
    async for _chunk in stream:
        pass


async def test_the_key_rotates_per_request(pool: AuthProfileManager, api: FakeApi) -> None:
    client = sdk(pool, api.base_url)
    for _ in range(4):
        assert await ask(client) == "hi from one"
    assert api.keys == [KEY_A, KEY_B, KEY_A, KEY_B]
    # the placeholder never left the process
    assert all(PLACEHOLDER not in str(seen.headers) for seen in api.seen)


async def test_the_httpx2_flavour_works_too(pool: AuthProfileManager, api: FakeApi) -> None:
    """openai 3 is built on httpx2 and takes an httpx2 client as well as an httpx one."""
    api.for_key(KEY_A, openai_rate_limit())
    client = openai.AsyncOpenAI(api_key=PLACEHOLDER, base_url=api.base_url, max_retries=0,
                                http_client=openai_http_client(pool, http=httpx2))  # fmt: skip
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    words = [chunk.choices[0].delta.content async for chunk in stream]
    assert "".join(w or "" for w in words) == "hi from one"
    assert api.keys == [KEY_A, KEY_B]


async def test_a_429_on_one_key_fails_over_within_the_call(
    pool: AuthProfileManager, api: FakeApi
) -> None:
    api.for_key(KEY_A, openai_rate_limit())
    client = sdk(pool, api.base_url)
    assert await ask(client) == "hi from one"  # one SDK call, no SDK retry (max_retries=0)
    assert api.keys == [KEY_A, KEY_B]
    status = {s.id: s for s in await pool.get_status("openai")}
    assert status["key-a"].last_error_kind == "rate_limit"
    assert status["key-a"].model_cooldowns["gpt-4o-mini"] > 25_000  # retry-after-ms: 30000
    assert status["key-b"].failures == 0
    # the cooling key is skipped by the next request
    assert await ask(client) == "hi from one"
    assert api.keys[-1] == KEY_B


async def test_a_session_keeps_its_key(pool: AuthProfileManager, api: FakeApi) -> None:
    client = sdk(pool, api.base_url)
    for _ in range(3):
        await ask(client, extra_headers={SESSION_HEADER: "chat-42"})
    assert len(set(api.keys)) == 1
    assert all(SESSION_HEADER not in seen.headers for seen in api.seen)  # not forwarded


async def test_a_stream_is_reported_when_it_ends(
    pool: AuthProfileManager, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[str] = []
    mark_success = pool.mark_success

    async def spy(profile_id: str, model: str | None = None) -> bool:
        reported.append(profile_id)
        return await mark_success(profile_id, model)

    monkeypatch.setattr(pool, "mark_success", spy)
    client = sdk(pool, api.base_url)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    assert reported == []  # the answer is handed over at once, not yet reported
    words = [chunk.choices[0].delta.content async for chunk in stream]
    assert "".join(w or "" for w in words) == "hi from one"
    assert reported == ["key-a"]


async def test_a_stream_that_breaks_is_a_failure(pool: AuthProfileManager, api: FakeApi) -> None:
    api.then(Answer(break_after=1))
    client = sdk(pool, api.base_url)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises((httpx.TransportError, openai.APIError)) as caught:
        await drain(stream)
    assert "sk-test" not in repr(caught.value)
    status = {s.id: s for s in await pool.get_status("openai")}
    assert status["key-a"].failures == 1
    assert status["key-a"].last_error_kind == "timeout"  # a transport error, as classify says
    assert status["key-b"].failures == 0


async def test_a_stream_fails_over_before_it_starts(pool: AuthProfileManager, api: FakeApi) -> None:
    api.for_key(KEY_A, Answer(503, body={"error": {"message": "down", "type": "server_error"}}))
    client = sdk(pool, api.base_url)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    words = [chunk.choices[0].delta.content async for chunk in stream]
    assert "".join(w or "" for w in words) == "hi from one"
    assert api.keys == [KEY_A, KEY_B]


async def test_when_every_key_fails_the_sdk_sees_the_last_answer(
    pool: AuthProfileManager, api: FakeApi
) -> None:
    api.for_key(KEY_A, openai_rate_limit())
    api.for_key(KEY_B, openai_rate_limit())
    client = sdk(pool, api.base_url)
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client)
    assert api.keys == [KEY_A, KEY_B]
    # both keys cool down now: the next call does not reach the provider at all
    with pytest.raises((NoProfileAvailableError, openai.APIConnectionError)) as nothing:
        await ask(client)
    assert isinstance(coordinator_error(nothing.value), NoProfileAvailableError)
    assert len(api.seen) == 2
    assert PLACEHOLDER in caught.value.response.request.headers["authorization"]


async def test_the_sdk_default_retries_still_work(
    pool: AuthProfileManager, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's own backoff is wall-clock time: made zero here (it is not what is tested).
    monkeypatch.setattr(openai.AsyncOpenAI, "_calculate_retry_timeout", lambda *a, **k: 0.0)
    api.for_key(KEY_A, openai_rate_limit())
    client = sdk(pool, api.base_url, max_retries=2)  # the SDK default
    assert await ask(client) == "hi from one"
    assert api.keys == [KEY_A, KEY_B]  # our failover answered: the SDK did not retry
    # Every key failing: the SDK may retry, but each retry finds every key cooling and makes
    # no request to the provider; the error is the coordinator's.
    api.for_key(KEY_B, openai_rate_limit())
    with pytest.raises((NoProfileAvailableError, openai.APIConnectionError)) as caught:
        await ask(client)
    assert isinstance(coordinator_error(caught.value), NoProfileAvailableError)
    assert api.keys == [KEY_A, KEY_B, KEY_B]


async def test_model_profiles_fail_over_across_providers(store: Store) -> None:
    alpha, beta = FakeApi("alpha").start(), FakeApi("beta").start()
    try:
        models = ModelProfileManager(store)
        await models.add_profile(ModelProfile(id="alpha", provider="alpha",
                                              auth=ModelAuth.api_key(KEY_A),
                                              base_url=alpha.base_url, priority=10))  # fmt: skip
        await models.add_profile(ModelProfile(id="beta", provider="beta",
                                              auth=ModelAuth.api_key(KEY_B),
                                              base_url=beta.base_url, priority=5))  # fmt: skip
        alpha.then(Answer(503, body={"error": {"message": "overloaded", "type": "server_error"}}))
        # The SDK keeps its official base URL: each profile's base_url replaces it.
        client = openai.AsyncOpenAI(
            api_key=PLACEHOLDER, max_retries=0, http_client=openai_http_client(models)
        )
        assert await ask(client) == "hi from beta"
        assert alpha.keys == [KEY_A] and beta.keys == [KEY_B]
        assert alpha.seen[0].path == beta.seen[0].path == "/v1/chat/completions"
        status = {s.id: s for s in await models.get_status()}
        assert status["alpha"].consecutive_failures == 1
        assert status["alpha"].last_error_kind == "server"
        assert await ask(client) == "hi from alpha"  # one failure does not open its breaker
        await models.close()
    finally:
        alpha.stop()
        beta.stop()
