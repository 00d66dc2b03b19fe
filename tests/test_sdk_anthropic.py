"""The official ``anthropic`` SDK (async), unchanged, on a coordinator pool.

Real ``anthropic.AsyncAnthropic`` clients (built on ``httpx2``) talk to a fake Anthropic
server on 127.0.0.1 through ``coordinator.sdk.anthropic_http_client(..., http=httpx2)``;
each test runs on memory, Redis and Cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from coordinator import AuthProfile, AuthProfileManager, NoProfileAvailableError, Store
from coordinator.sdk import anthropic_http_client
from tests.sdk_fakes import (
    KEY_A,
    KEY_B,
    PLACEHOLDER,
    Answer,
    FakeApi,
    anthropic_rate_limit,
    coordinator_error,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
MODEL = "claude-test"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi("claude", "anthropic").start()
    yield fake
    fake.stop()


@pytest.fixture
async def pool(store: Store) -> AsyncIterator[AuthProfileManager]:
    manager = AuthProfileManager(store)
    await manager.add_profile(AuthProfile(id="key-a", provider="anthropic", api_key=KEY_A))
    await manager.add_profile(AuthProfile(id="key-b", provider="anthropic", api_key=KEY_B))
    yield manager
    await manager.close()


def sdk(manager: AuthProfileManager, api: FakeApi) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=PLACEHOLDER,
        base_url=f"http://127.0.0.1:{api.port}",
        max_retries=0,
        http_client=anthropic_http_client(manager, http=httpx2),
    )


async def ask(client: anthropic.AsyncAnthropic) -> str:
    reply = await client.messages.create(model=MODEL, max_tokens=16, messages=MESSAGES)
    block = reply.content[0]
    assert block.type == "text"
    return block.text


async def test_the_key_rotates_per_request(pool: AuthProfileManager, api: FakeApi) -> None:
    client = sdk(pool, api)
    for _ in range(4):
        assert await ask(client) == "hi from claude"
    assert api.keys == [KEY_A, KEY_B, KEY_A, KEY_B]
    assert all(seen.path == "/v1/messages" for seen in api.seen)
    assert all("authorization" not in seen.headers for seen in api.seen)  # x-api-key only


async def test_a_429_on_one_key_fails_over_within_the_call(
    pool: AuthProfileManager, api: FakeApi
) -> None:
    api.for_key(KEY_A, anthropic_rate_limit())
    client = sdk(pool, api)
    assert await ask(client) == "hi from claude"
    assert api.keys == [KEY_A, KEY_B]
    status = {s.id: s for s in await pool.get_status("anthropic")}
    assert status["key-a"].last_error_kind == "rate_limit"
    assert status["key-a"].model_cooldowns[MODEL] > 25_000  # retry-after: 30


async def test_overloaded_529_fails_over(pool: AuthProfileManager, api: FakeApi) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    api.for_key(KEY_A, Answer(529, body=overloaded))
    client = sdk(pool, api)
    assert await ask(client) == "hi from claude"
    status = {s.id: s for s in await pool.get_status("anthropic")}
    assert status["key-a"].last_error_kind == "server"


async def test_a_stream_is_reported_when_it_ends(
    pool: AuthProfileManager, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[str] = []
    mark_success = pool.mark_success

    async def spy(profile_id: str, model: str | None = None) -> bool:
        reported.append(profile_id)
        return await mark_success(profile_id, model)

    monkeypatch.setattr(pool, "mark_success", spy)
    api.for_key(KEY_A, anthropic_rate_limit())
    client = sdk(pool, api)
    async with client.messages.stream(model=MODEL, max_tokens=16, messages=MESSAGES) as stream:
        assert reported == []
        text = "".join([t async for t in stream.text_stream])
    assert text == "hi from claude"
    assert api.keys == [KEY_A, KEY_B]  # failed over before the stream started
    assert reported == ["key-b"]


async def test_a_stream_that_breaks_is_a_failure(pool: AuthProfileManager, api: FakeApi) -> None:
    api.then(Answer(break_after=3))
    client = sdk(pool, api)
    async with client.messages.stream(model=MODEL, max_tokens=16, messages=MESSAGES) as s:
        with pytest.raises((httpx2.TransportError, anthropic.APIError)) as caught:
            await s.get_final_text()
    assert "sk-test" not in repr(caught.value)
    status = {s.id: s for s in await pool.get_status("anthropic")}
    assert status["key-a"].failures == 1
    assert status["key-a"].last_error_kind is not None


async def test_nothing_left_is_the_coordinators_error(
    pool: AuthProfileManager, api: FakeApi
) -> None:
    api.for_key(KEY_A, anthropic_rate_limit())
    api.for_key(KEY_B, anthropic_rate_limit())
    client = sdk(pool, api)
    with pytest.raises(anthropic.RateLimitError):
        await ask(client)
    with pytest.raises((NoProfileAvailableError, anthropic.APIConnectionError)) as caught:
        await ask(client)
    assert isinstance(coordinator_error(caught.value), NoProfileAvailableError)
    assert api.keys == [KEY_A, KEY_B]
