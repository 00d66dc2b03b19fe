"""The README's five lines and the model-profiles page's first example run as written (on the
embedded backend, providers played by httpx's mock transport), and the README stays short.
tests/test_docs.py runs every other sample of the docs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODELS_PAGE = ROOT / "docs" / "models.md"


def _python_block(heading: str, page: Path = README) -> str:
    """The first ```python block after the line ``heading`` of ``page``."""
    text = page.read_text()
    start = ("\n" + text).index(f"\n{heading}\n")  # (a heading may open the page)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


async def _run(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run top-level-await code as the body of a coroutine; returns its local variables."""
    body = textwrap.indent(code + "\nreturn locals()", "    ")
    exec(f"async def _example():\n{body}", namespace)
    result: dict[str, Any] = await namespace["_example"]()
    return result


async def test_five_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_KEY", "sk-readme-example-0001")
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    found = await _run(_python_block("## Five lines"), {})
    key, pool = found["key"], found["pool"]
    assert key.id == "team-a"
    assert key.secret().reveal() == "sk-readme-example-0001"
    assert "sk-readme" not in repr(key)
    [status] = await pool.get_status("openai")
    assert status.in_cooldown and status.cooldown_remaining_ms >= 30_000
    await pool.close()


async def test_model_profiles_example(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GROK_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-example-0002")
    seen: list[httpx.Request] = []

    def openai(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "hello"}}]})

    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)  # so connect() is memory://
    code = _python_block("# Model profiles, circuit breakers and failover", MODELS_PAGE)
    async with httpx.AsyncClient(transport=httpx.MockTransport(openai)) as http:
        found = await _run(code, {"http": http, "messages": [{"role": "user", "content": "hi"}]})
    assert found["answer"]["choices"][0]["message"]["content"] == "hello"
    [request] = seen
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-readme-example-0002"
    await found["models"].close()
    await found["store"].close()


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move detail to docs/"
