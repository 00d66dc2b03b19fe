"""Every ```python sample of README.md and docs/*.md runs, as written, and the pages keep the
promises that can be checked mechanically: links resolve, every error and CLI command is
documented, each domain page has one key section, every key the samples leave in Redis has its
shape in a key table, and the ``redis-cli`` examples name such keys.

The samples of one page run in order in one namespace, each wrapped in an async function so
that top-level ``await`` works, on the embedded backend (``COORDINATOR_REDIS_URL`` unset, so
``connect()`` gives a fresh ``memory://`` store). What a sample leaves to the reader is provided
by the test: environment variables, an ``http`` client that plays the provider, a FastAPI-like
``app``, a browser (``webbrowser.open``) and an OpenID provider (the real one of
``tests/oidc_server``) standing in for Google.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import textwrap
import threading
import webbrowser
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

import coordinator
from coordinator import errors
from coordinator.cli.main import main as cli_main
from coordinator.oauth import OAuthProvider
from coordinator.singletons import (
    reset_auth_profile_manager,
    reset_model_profile_manager,
    reset_oauth_manager,
)

from .oauth_fixtures import (  # noqa: F401  (the fixture oidc_server)
    OidcServer,
    approve_device,
    browse,
    discover,
    oidc_server,
    redirect_target,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)
# The web-app client of the test OpenID provider (tests/oidc_server/server.js).
WEB_CALLBACK = "http://127.0.0.1:1/app/callback"
WEB_CLIENT = ("web-basic", "web-basic-secret-0123456789abcdef")

MANAGERS = (
    coordinator.AuthProfileManager,
    coordinator.ModelProfileManager,
    coordinator.OAuthManager,
)
# Samples that are not run, as (page name, the sample's first line of code) -> why. Keep it empty
# unless a sample truly cannot run here.
NOT_RUN: dict[tuple[str, str], str] = {}


@dataclass
class Sample:
    """One fenced block of a page."""

    page: Path
    line: int  # the line of the opening fence
    language: str
    code: str

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0]


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def fenced(page: Path) -> list[Sample]:
    """Every fenced block of ``page``, in order."""
    text = page.read_text()
    return [
        Sample(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in FENCE.finditer(text)
    ]


def python_samples(page: Path) -> list[Sample]:
    """The ```python blocks of ``page`` that are run (all but the allow-listed ones)."""
    return [
        s
        for s in fenced(page)
        if s.language == "python" and (s.page.name, s.first_line) not in NOT_RUN
    ]


async def run_sample(sample: Sample, namespace: dict[str, Any]) -> None:
    """Run ``sample`` as the body of a coroutine in ``namespace``; its variables stay there.

    The code is compiled under the page's name, padded so that a traceback names the line of
    the page that failed.
    """
    body = textwrap.indent(sample.code + "\nreturn locals()", "    ")
    source = "\n" * (sample.line - 1) + f"async def _sample():\n{body}"
    exec(compile(source, str(sample.page.relative_to(ROOT)), "exec"), namespace)
    found: dict[str, Any] = await namespace.pop("_sample")()
    namespace.update(found)


Hook = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class PageRun:
    """How one page's samples run: what the test provides, and what it does between them."""

    namespace: dict[str, Any] = field(default_factory=dict)
    before: dict[int, Hook] = field(default_factory=dict)  # sample index -> hook
    after: dict[int, Hook] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)  # every key the samples left in their stores

    async def run(self, page: Path) -> dict[str, Any]:
        samples = python_samples(page)
        assert samples, f"{page.name} has no python sample"
        try:
            for index, sample in enumerate(samples):
                if index in self.before:
                    await self.before[index](self.namespace)
                await run_sample(sample, self.namespace)
                if index in self.after:
                    await self.after[index](self.namespace)
            extra = set(self.before) | set(self.after)
            assert extra <= set(range(len(samples))), f"{page.name}: hooks for missing samples"
        finally:
            self.keys = await keys_left(self.namespace)
            await close_everything(self.namespace)
        return self.namespace


def stores_of(namespace: dict[str, Any]) -> list[coordinator.Store]:
    """The stores the samples opened: their own, and their managers'."""
    stores = [v for v in namespace.values() if isinstance(v, coordinator.Store)]
    stores += [v.store for v in namespace.values() if isinstance(v, MANAGERS)]
    return stores


async def keys_left(namespace: dict[str, Any]) -> set[str]:
    """Every key in the samples' (embedded) stores."""
    found: set[str] = set()
    for store in stores_of(namespace):
        found.update(await store.client.keys("*"))
    return found


async def close_everything(namespace: dict[str, Any]) -> None:
    """Close what the samples opened (managers before stores), and the process-wide managers."""
    await reset_model_profile_manager()
    await reset_oauth_manager()
    await reset_auth_profile_manager()
    for manager in [v for v in namespace.values() if isinstance(v, MANAGERS)]:
        await manager.close()
    for store in stores_of(namespace):
        await store.close()  # (closing twice is allowed)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the samples expect: keys in variables, no Redis URL (so memory://)."""
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    monkeypatch.delenv("COORDINATOR_SECRET_KEY", raising=False)
    monkeypatch.delenv("COORDINATOR_MODEL_DEFAULTS", raising=False)
    for name in ("GROK_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "OLLAMA_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_KEY", "sk-docs-example-0001")
    monkeypatch.setenv("OPENAI_KEY_B", "sk-docs-example-0002")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-example-0003")


# -- the pages ---------------------------------------------------------------------------------


async def test_readme() -> None:
    run = PageRun()
    found = await run.run(README)
    assert_documented(run.keys)
    key = found["key"]
    assert key.id == "team-a"
    assert key.secret().reveal() == "sk-docs-example-0001"
    assert "sk-docs" not in repr(key)


async def test_pools_page() -> None:
    run = PageRun()
    found = await run.run(DOCS / "pools.md")
    assert_documented(run.keys)
    assert {found["first"].id, found["second"].id} == {"team-a", "team-b"}
    # The last pick found both keys cooling: team-a recovers first (its first cooldown is one
    # minute; a shorter Retry-After does not shorten it), team-b after hours (billing).
    assert 55_000 <= found["wait_ms"] <= 60_000


async def test_operations_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The configuration-file sample loads coordinator.toml from the working directory: the
    # page's full example, which is examples/coordinator.toml.
    shutil.copy(ROOT / "examples" / "coordinator.toml", tmp_path / "coordinator.toml")
    monkeypatch.chdir(tmp_path)
    run = PageRun()
    found = await run.run(DOCS / "operations.md")
    assert found["config"].model_config.breaker.failure_threshold == 3
    assert_documented(run.keys)
    assert found["refused"] == "url"
    assert "team-a" in json.dumps(found["snapshot"])  # (the sample checks the import itself)


class OpenAIStandIn:
    """Plays api.openai.com's chat completions for the models page's ``http`` client."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "hello"}}]})


async def test_models_page() -> None:
    openai = OpenAIStandIn()
    async with httpx.AsyncClient(transport=httpx.MockTransport(openai)) as http:
        run = PageRun({"http": http, "messages": [{"role": "user", "content": "hi"}]})
        found = await run.run(DOCS / "models.md")
    assert_documented(run.keys)
    assert found["answer"]["choices"][0]["message"]["content"] == "hello"
    [request] = openai.requests[:1]
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-docs-example-0003"


# -- the OAuth page: a web framework, a browser and Google, played by the test -------------------


class Request:
    """The little of a Starlette request the web sample uses."""

    def __init__(self, url: str = "http://app.test/", session: dict[str, Any] | None = None):
        self.url = url
        self.query_params = dict(parse_qsl(urlsplit(url).query))
        self.session: dict[str, Any] = {} if session is None else session


class RedirectResponse:
    """A redirect, as FastAPI's."""

    def __init__(self, url: str) -> None:
        self.url = url


class HTTPException(Exception):
    """An HTTP error response, as FastAPI's."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail)
        self.status_code = status_code
        self.detail = detail


class App:
    """Records the routes that ``@app.get(path)`` declares."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[..., Awaitable[Any]]] = {}

    def get(self, path: str) -> Callable[[Any], Any]:
        def register(handler: Callable[..., Awaitable[Any]]) -> Any:
            self.routes[path] = handler
            return handler

        return register


def play_browser(url: str) -> bool:
    """``webbrowser.open`` for ``login()``: the user signs in at the test provider, whose
    redirects end at the login's loopback callback (called in a worker thread)."""
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = browser.get(url)
    assert "Signed in" in page.text, page.text[:300]
    return True


def approve(verification_uri: str, user_code: str) -> None:
    """The user types the device code at the test provider (on another device)."""
    complete = f"{verification_uri}?user_code={user_code}"
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(asyncio.run(approve_device(complete))))
    worker.start()
    worker.join(30)
    assert outcome and outcome[0].status_code == 200


@pytest.fixture
def oauth_run(oidc_server: OidcServer, monkeypatch: pytest.MonkeyPatch) -> PageRun:  # noqa: F811
    """The OAuth page's stand-ins: "login.example.com" and "google" are the test provider,
    with the client each flow needs (native, device, web)."""
    real_discovery = OAuthProvider.from_discovery.__func__  # type: ignore[attr-defined]

    async def from_discovery(cls: type[OAuthProvider], /, issuer: str, **kw: Any) -> OAuthProvider:
        if issuer == "https://login.example.com":
            issuer, kw["client_id"] = oidc_server.issuer, "cli-app"
        result: OAuthProvider = await real_discovery(cls, issuer, **kw)
        return result

    monkeypatch.setattr(OAuthProvider, "from_discovery", classmethod(from_discovery))
    monkeypatch.setattr(webbrowser, "open", play_browser)

    def google(client_id: str, **kw: Any) -> Hook:
        async def swap(ns: dict[str, Any]) -> None:
            ns["oauth"].add_provider(await discover(oidc_server, client_id, name="google", **kw))

        return swap

    async def web_login(ns: dict[str, Any]) -> None:
        login, callback = ns["app"].routes["/login/{provider}"], ns["app"].routes["/oauth/callback"]
        started = Request()
        redirect = await login("google", started)
        # Another browser (no session) cannot finish this login.
        target = redirect_target(await browse(redirect.url, stop_at=WEB_CALLBACK))
        with pytest.raises(HTTPException):
            await ns["callback"](Request(target))
        redirect = await login("google", started)
        target = redirect_target(await browse(redirect.url, stop_at=WEB_CALLBACK))
        ns["web_answer"] = await callback(Request(target, started.session))
        assert started.session == {}

    client_id, secret = WEB_CLIENT
    return PageRun(
        {
            "app": App(),
            "Request": Request,
            "RedirectResponse": RedirectResponse,
            "HTTPException": HTTPException,
            "show": approve,
        },
        before={
            1: google("cli-app"),
            2: google("device-app"),
            3: google(client_id, client_secret=secret, redirect_uri=WEB_CALLBACK),
        },
        after={3: web_login},
    )


async def test_oauth_page(oauth_run: PageRun) -> None:
    found = await oauth_run.run(DOCS / "oauth.md")
    assert_documented(oauth_run.keys)
    assert found["cred"].id == "google:test-user-1"
    assert found["web_answer"] == {"signed_in": "google:test-user-1"}
    assert found["headers"]["Authorization"].startswith("Bearer ")
    assert set(found["oauth"].providers) == {"google", "github", "corp", "custom"}


# (sdk.md, once published, is run by tests/test_sdk_docs.py with its fake providers; sync.md
# by tests/test_sync_docs.py.)
PAGES_WITH_A_TEST = {
    "README.md",
    "pools.md",
    "models.md",
    "oauth.md",
    "operations.md",
    "sdk.md",
    "sync.md",
}


async def test_other_pages() -> None:
    """A page without a test of its own (e.g. one added later) runs with the plain stand-ins."""
    for page in pages():
        if page.name not in PAGES_WITH_A_TEST and python_samples(page):
            run = PageRun()
            await run.run(page)
            assert_documented(run.keys)


# -- what can be checked without running -------------------------------------------------------


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``."""
    text = FENCE.sub("", page.read_text())
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_links_resolve() -> None:
    for page in pages():
        text = FENCE.sub("", page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: link to missing {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in anchors(linked), f"{page.name}: no heading for {target}"


def test_each_domain_page_has_one_key_section() -> None:
    for name in ("pools.md", "models.md", "oauth.md"):
        text = (DOCS / name).read_text()
        assert text.count("\n## Keys in Redis\n") == 1, name


def test_operations_names_every_error() -> None:
    text = (DOCS / "operations.md").read_text()
    table = text[text.index("\n## Errors\n") :]
    for name in errors.__all__:
        assert f"| `{name}`" in table, f"{name} is missing from the error table"


def test_every_command_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.suppress(SystemExit):  # (argparse exits after --help)
        cli_main(["--help"])
    usage = capsys.readouterr().out
    # argparse lists the commands as {a,b,...}; click under "Commands:", one per line.
    listed = re.search(r"\{([a-z,-]+)\}", usage)
    commands = listed.group(1).split(",") if listed else []
    if "\nCommands:\n" in usage:
        commands += re.findall(r"^  ([a-z][a-z-]*)\b", usage.split("\nCommands:\n", 1)[1], re.M)
    assert commands, usage
    text = "".join(page.read_text() for page in pages())
    for name in commands:
        assert f"coordinator {name}" in text, f"the command {name} is not documented"


def documented_keys() -> list[re.Pattern[str]]:
    """The key shapes the docs name (``coord:{tag}:…`` or ``<ns>:{tag}:…``, placeholders in
    angle brackets), as patterns over the default namespace."""
    shapes: set[str] = set()
    for page in pages():
        shapes.update(re.findall(r"`((?:coord|<ns>):\{[^`]*)`", page.read_text()))
    patterns = []
    for shape in sorted(shapes):
        parts = re.split(r"(<[^>]*>)", shape.replace("<ns>", "coord", 1))
        regex = "".join(".+" if p.startswith("<") else re.escape(p) for p in parts)
        patterns.append(re.compile(regex))
    return patterns


def assert_documented(keys: set[str]) -> None:
    """Every key the samples left in Redis has its shape in the docs' key tables."""
    patterns = documented_keys()
    missing = sorted(k for k in keys if not any(p.fullmatch(k) for p in patterns))
    assert not missing, f"keys no docs page describes: {missing}"


def test_redis_cli_examples_name_documented_keys() -> None:
    patterns = documented_keys()
    named = [
        key
        for page in pages()
        for sample in fenced(page)
        if sample.language == "sh"
        for line in sample.code.splitlines()
        if line.startswith("redis-cli")
        for key in re.findall(r"'((?:coord):\{[^']*)'", line)
        if "*" not in key  # (a SCAN pattern)
    ]
    assert named, "no redis-cli example found"
    for key in named:
        assert any(p.fullmatch(key) for p in patterns), f"redis-cli names an unknown key {key}"


def test_models_page_lists_the_defaults() -> None:
    table = json.loads((ROOT / "coordinator" / "models" / "defaults.json").read_text())
    rows = {
        row.split("|")[1].strip(): row
        for row in (DOCS / "models.md").read_text().splitlines()
        if row.startswith("| ")
    }
    for entry in table["profiles"]:
        row = rows[entry["id"]]
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == str(entry["priority"]), row
        assert cells[2] == (f"`{entry['env']}`" if entry["env"] else "none (local)"), row
        assert cells[3] == entry["base_url"], row
        for name in [*entry["models"], entry["default_model"]]:
            assert f"`{name}`" in cells[4], (name, row)


def test_models_page_gives_the_breaker_defaults() -> None:
    rows = re.findall(r"^\| `(\w+)` \| ([\d. ]+) \|", (DOCS / "models.md").read_text(), re.M)
    documented = {name: float(value.replace(" ", "")) for name, value in rows}
    defaults = coordinator.BreakerConfig()
    for name in (f.name for f in fields(defaults)):
        assert documented.get(name) == getattr(defaults, name), name


def test_oauth_page_gives_the_settings_defaults() -> None:
    text = (DOCS / "oauth.md").read_text()
    table = text[text.index("\n## Settings\n") :]
    rows = re.findall(r"^\| `(\w+)` \| ([\d.]+) \|", table, re.M)
    documented = {name: float(value) for name, value in rows}
    defaults = coordinator.OAuthConfig()
    assert documented == {f.name: getattr(defaults, f.name) for f in fields(defaults)}


def test_operations_page_shows_the_example_configuration() -> None:
    example = (ROOT / "examples" / "coordinator.toml").read_text()
    [block] = [s.code for s in fenced(DOCS / "operations.md") if s.language == "toml"]
    assert example.endswith(block), "the page's full example is not examples/coordinator.toml"
