"""The SDK usage page runs, as written: every ```python sample in order, on the embedded
backend, with the real SDKs. The providers (api.openai.com, api.anthropic.com and the page's
gateway) are played by fake servers on 127.0.0.1: the HTTP transports the page's clients are
built with send every request to the fake of the request's host."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from tests.sdk_fakes import Answer, FakeApi, openai_rate_limit
from tests.test_docs import assert_documented, close_everything, keys_left, python_samples

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "sdk.md"


@pytest.fixture
def providers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeApi]]:
    """Fake providers by host, and HTTP transports (httpx and httpx2, async and sync) that
    send each request to the fake of its host."""
    fakes = {
        "api.openai.com": FakeApi("openai").start(),
        "gateway.example.com": FakeApi("gateway").start(),
        "api.anthropic.com": FakeApi("claude", "anthropic").start(),
    }

    def local(request: Any) -> None:
        fake = fakes[request.url.host]
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=fake.port)

    for module in (httpx, httpx2):
        real_async, real_sync = module.AsyncHTTPTransport, module.HTTPTransport

        class AsyncLocal(real_async):  # type: ignore[misc, valid-type]
            async def handle_async_request(self, request: Any) -> Any:
                local(request)
                return await super().handle_async_request(request)

        class SyncLocal(real_sync):  # type: ignore[misc, valid-type]
            def handle_request(self, request: Any) -> Any:
                local(request)
                return super().handle_request(request)

        monkeypatch.setattr(module, "AsyncHTTPTransport", AsyncLocal)
        monkeypatch.setattr(module, "HTTPTransport", SyncLocal)
    for name in ("COORDINATOR_REDIS_URL", "COORDINATOR_SECRET_KEY", "OPENAI_BASE_URL",
                 "ANTHROPIC_BASE_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_KEY", "sk-docs-example-0001")
    monkeypatch.setenv("OPENAI_KEY_B", "sk-docs-example-0002")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-example-0003")
    monkeypatch.setenv("ANTHROPIC_KEY", "sk-docs-example-0004")
    monkeypatch.setenv("GATEWAY_KEY", "sk-docs-example-0005")
    yield fakes
    for fake in fakes.values():
        fake.stop()


async def run_page(page: Path, namespace: dict[str, Any]) -> set[str]:
    """Run the page's samples in order in ``namespace``; return the keys they left."""
    try:
        for sample in python_samples(page):
            body = textwrap.indent(sample.code + "\nreturn locals()", "    ")
            source = "\n" * (sample.line - 1) + f"async def _sample():\n{body}"
            exec(compile(source, page.name, "exec"), namespace)
            namespace.update(await namespace.pop("_sample")())
    finally:
        keys = await keys_left(namespace)
        await close_everything(namespace)
    return keys


async def test_sdk_page(providers: dict[str, FakeApi]) -> None:
    openai_api, gateway = providers["api.openai.com"], providers["gateway.example.com"]
    openai_api.then(Answer(), Answer(), Answer(), openai_rate_limit())  # the failover sample
    found: dict[str, Any] = {}
    assert_documented(await run_page(PAGE, found))
    assert found["reply"].choices[0].message.content == "hi from openai"  # (the sync one)
    # one call, then a session's two calls on one key (the next in the rotation)
    assert openai_api.keys[:3] == ["sk-docs-example-0001", "sk-docs-example-0002",
                                   "sk-docs-example-0002"]  # fmt: skip
    # the model-profile sample: openai answered 429, the gateway served the call
    assert "sk-docs-example-0003" in openai_api.keys
    assert gateway.keys == ["sk-docs-example-0005"]
    assert gateway.seen[0].path == "/v1/chat/completions"
    assert found["text"] == "hi from openai"
    assert found["message"].content[0].text == "hi from claude"
    assert providers["api.anthropic.com"].keys == ["sk-docs-example-0004"]
