"""The official SDKs' synchronous clients (``openai.OpenAI``, ``anthropic.Anthropic``), unchanged.

Synchronous code keeps its store and managers on a :class:`coordinator.sdk.BackgroundLoop`;
the sync transport sends HTTP in the caller's thread and runs the managers' calls there. Each
test runs on memory, Redis and Cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
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
    connect,
)
from coordinator.sdk import (
    BackgroundLoop,
    anthropic_http_client_sync,
    openai_http_client_sync,
)
from tests.conftest import unique_namespace
from tests.sdk_fakes import (
    KEY_A,
    KEY_B,
    PLACEHOLDER,
    Answer,
    FakeApi,
    anthropic_rate_limit,
    openai_rate_limit,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
def loop() -> Iterator[BackgroundLoop]:
    with BackgroundLoop() as background:
        yield background


@pytest.fixture
def pools(loop: BackgroundLoop, backend_url: str, secret_key: str) -> Iterator[AuthProfileManager]:
    """Two keys in an ``openai`` pool and two in an ``anthropic`` one, on the loop."""

    async def build() -> AuthProfileManager:
        store = await connect(backend_url, namespace=unique_namespace(), secret_key=secret_key)
        manager = AuthProfileManager(store)
        for provider in ("openai", "anthropic"):
            await manager.add_profile(AuthProfile(id=f"{provider}-a", provider=provider,
                                                  api_key=KEY_A))  # fmt: skip
            await manager.add_profile(AuthProfile(id=f"{provider}-b", provider=provider,
                                                  api_key=KEY_B))  # fmt: skip
        return manager

    manager = loop.run(build())
    yield manager
    loop.run(manager.close())
    loop.run(manager.store.close())


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi("sync").start()
    yield fake
    fake.stop()


@pytest.fixture
def claude() -> Iterator[FakeApi]:
    fake = FakeApi("claude", "anthropic").start()
    yield fake
    fake.stop()


def openai_sdk(manager: Any, loop: BackgroundLoop, base_url: str | None) -> openai.OpenAI:
    return openai.OpenAI(api_key=PLACEHOLDER, base_url=base_url, max_retries=0,
                         http_client=openai_http_client_sync(manager, run=loop.run))  # fmt: skip


def anthropic_sdk(manager: Any, loop: BackgroundLoop, api: FakeApi) -> anthropic.Anthropic:
    client = anthropic_http_client_sync(manager, run=loop.run, http=httpx2)
    return anthropic.Anthropic(api_key=PLACEHOLDER, base_url=f"http://127.0.0.1:{api.port}",
                               max_retries=0, http_client=client)  # fmt: skip


def test_openai_rotates_and_fails_over(
    pools: AuthProfileManager, loop: BackgroundLoop, api: FakeApi
) -> None:
    client = openai_sdk(pools, loop, api.base_url)
    for _ in range(2):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content == "hi from sync"
    assert api.keys == [KEY_A, KEY_B]
    api.for_key(KEY_A, openai_rate_limit())
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "hi from sync"
    assert api.keys == [KEY_A, KEY_B, KEY_A, KEY_B]
    status = {s.id: s for s in loop.run(pools.get_status("openai"))}
    assert status["openai-a"].last_error_kind == "rate_limit"


def test_openai_stream_is_reported_when_it_ends(
    pools: AuthProfileManager, loop: BackgroundLoop, api: FakeApi
) -> None:
    api.then(Answer(), Answer(break_after=2))
    client = openai_sdk(pools, loop, api.base_url)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "hi from sync"
    broken = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises((httpx.TransportError, openai.APIError)):
        for _chunk in broken:
            pass
    status = {s.id: s for s in loop.run(pools.get_status("openai"))}
    assert status["openai-a"].failures == 0
    assert status["openai-b"].failures == 1  # the broken stream was key b's


def test_anthropic_rotates_fails_over_and_streams(
    pools: AuthProfileManager, loop: BackgroundLoop, claude: FakeApi
) -> None:
    claude.for_key(KEY_A, anthropic_rate_limit())
    client = anthropic_sdk(pools, loop, claude)
    reply = client.messages.create(model="claude-test", max_tokens=16, messages=MESSAGES)
    assert reply.content[0].type == "text" and reply.content[0].text == "hi from claude"
    assert claude.keys == [KEY_A, KEY_B]
    with client.messages.stream(model="claude-test", max_tokens=16, messages=MESSAGES) as s:
        assert "".join(s.text_stream) == "hi from claude"
    assert claude.keys[-1] == KEY_B  # key a cools down for this model
    status = {s.id: s for s in loop.run(pools.get_status("anthropic"))}
    assert status["anthropic-a"].last_error_kind == "rate_limit"
    assert status["anthropic-b"].failures == 0


def test_model_profiles_fail_over_sync(
    loop: BackgroundLoop, backend_url: str, secret_key: str
) -> None:
    alpha, beta = FakeApi("alpha").start(), FakeApi("beta").start()

    async def build() -> ModelProfileManager:
        store = await connect(backend_url, namespace=unique_namespace(), secret_key=secret_key)
        models = ModelProfileManager(store)
        for name, key, fake, priority in (("alpha", KEY_A, alpha, 10), ("beta", KEY_B, beta, 5)):
            await models.add_profile(ModelProfile(id=name, provider=name, priority=priority,
                                                  auth=ModelAuth.api_key(key),
                                                  base_url=fake.base_url))  # fmt: skip
        return models

    try:
        models = loop.run(build())
        alpha.then(Answer(500, body={"error": {"message": "boom", "type": "server_error"}}))
        client = openai_sdk(models, loop, None)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content == "hi from beta"
        assert (alpha.keys, beta.keys) == ([KEY_A], [KEY_B])
        loop.run(models.close())
        loop.run(models.store.close())
    finally:
        alpha.stop()
        beta.stop()
