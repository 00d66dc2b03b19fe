"""docs/sync.md runs, as written: every ```python sample in order, on the embedded backend.
Its ``http`` (the app's own HTTP client) is played by httpx's mock transport answering as
api.openai.com; the official SDK's requests go to a fake api.openai.com on 127.0.0.1 (the
transports of tests/test_sdk_docs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator import ConfigError
from tests.sdk_fakes import FakeApi
from tests.test_sdk_docs import providers, run_page  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "sync.md"


async def test_sync_page(providers: dict[str, FakeApi]) -> None:  # noqa: F811
    seen: list[httpx.Request] = []

    def openai_stand_in(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "hello"}}]})

    found: dict[str, Any] = {}
    with httpx.Client(transport=httpx.MockTransport(openai_stand_in)) as http:
        found["http"] = http
        await run_page(PAGE, found)
    # execute(): the app's own call, with the profile's key, at its base URL
    assert found["answer"] == "hello"
    [request] = seen
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-docs-example-0003"
    # the SDK client on the sync pool
    assert found["reply"].choices[0].message.content == "hi from openai"
    assert providers["api.openai.com"].keys == ["sk-docs-example-0001"]
    # events: the subscription got the cooldown the sample caused
    event = found["event"]
    assert (event.type, event.profile_id) == ("profile:cooldown", "team-a")
    assert [s.id for s in found["status"]] == ["team-a"] and found["status"][0].in_cooldown
    # the page closed its store
    with pytest.raises(ConfigError):
        found["pool"].acquire("openai")
