"""Fixtures of the OAuth tests: the real OpenID provider (panva/oidc-provider on Node.js) and a
"browser" (an httpx client that follows redirects and keeps cookies).

The provider lives in ``tests/oidc_server`` (``make oidc-server`` runs ``npm ci`` there). A
missing ``node`` or ``node_modules`` is an error, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html import unescape
from typing import Any

import httpx
import pytest

from coordinator import Store
from coordinator.oauth import OAuthConfig, OAuthManager, OAuthProvider

SERVER_DIR = os.path.join(os.path.dirname(__file__), "oidc_server")
SCOPES = ("openid", "offline_access", "profile", "email")


@dataclass
class OidcServer:
    """A running oidc-provider: its issuer and the test-only counters it keeps."""

    issuer: str
    proc: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        """Counts of token requests by grant type and of refresh tokens presented twice."""
        return dict(httpx.get(f"{self.issuer}/test/stats").json())

    def reset(self) -> None:
        """Zero the counters and the token endpoint delay; access tokens live 3600 s again."""
        httpx.post(f"{self.issuer}/test/reset").raise_for_status()

    def set_token_delay(self, ms: int) -> None:
        """Delay every token endpoint response by ``ms``."""
        httpx.post(f"{self.issuer}/test/config", params={"token_delay_ms": ms}).raise_for_status()

    def set_access_token_ttl(self, seconds: int) -> None:
        """Issue access tokens that live ``seconds`` from now on (until :meth:`reset`)."""
        params = {"access_token_ttl_s": seconds}
        httpx.post(f"{self.issuer}/test/config", params=params).raise_for_status()

    def refreshes(self) -> int:
        """How many refresh_token grants the server has answered since the last reset."""
        return int(self.stats()["by_grant_type"].get("refresh_token", 0))


@pytest.fixture(scope="session")
def oidc_server() -> Iterator[OidcServer]:
    """The real OpenID provider on a free loopback port, for the whole run."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; the OAuth integration tests need Node.js >= 18")
    if not os.path.isdir(os.path.join(SERVER_DIR, "node_modules", "oidc-provider")):
        raise RuntimeError("tests/oidc_server/node_modules is missing: run `make oidc-server`")
    proc = subprocess.Popen(
        [node, "server.js"],
        cwd=SERVER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(20)
    if not line or not line[0].strip():
        proc.kill()
        raise RuntimeError("the oidc-provider test server did not start within 20 s")
    server = OidcServer(issuer=json.loads(line[0])["issuer"], proc=proc)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


async def discover(
    server: OidcServer, client_id: str = "cli-app", *, name: str = "testop", **overrides: Any
) -> OAuthProvider:
    """The test provider from its discovery document (named ``testop``)."""
    fields: dict[str, Any] = {
        "scopes": SCOPES,
        # oidc-provider issues refresh tokens (offline_access) only with prompt=consent.
        "extra_authorization_params": {"prompt": "consent"},
    }
    fields.update(overrides)
    return await OAuthProvider.from_discovery(
        server.issuer, name=name, client_id=client_id, **fields
    )


@pytest.fixture
async def provider(oidc_server: OidcServer) -> OAuthProvider:
    """The public command-line client of the test provider."""
    return await discover(oidc_server)


@pytest.fixture
async def manager(store: Store, provider: OAuthProvider) -> AsyncIterator[OAuthManager]:
    """An OAuthManager on the test's backend with the test provider configured."""
    m = OAuthManager(store, [provider], config=OAuthConfig(event_poll_interval_s=0.02))
    try:
        yield m
    finally:
        await m.close()


async def browse(url: str, *, stop_at: str | None = None) -> httpx.Response:
    """Play the user's browser: follow redirects (keeping cookies) from ``url``.

    With ``stop_at``, stop at the redirect whose Location starts with it (a web app's callback
    route that does not exist in the test) and return that redirect response.
    """
    async with httpx.AsyncClient(timeout=20) as browser:
        response = await browser.get(url)
        for _ in range(20):
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            location = str(response.next_request.url) if response.next_request else ""
            if stop_at is not None and location.startswith(stop_at):
                return response
            assert response.next_request is not None
            response = await browser.send(response.next_request)
        raise AssertionError("too many redirects")


def redirect_target(response: httpx.Response) -> str:
    """The absolute Location of a redirect response."""
    assert response.next_request is not None, response.status_code
    return str(response.next_request.url)


async def approve_device(verification_uri_complete: str) -> httpx.Response:
    """Play the user approving a device code in a browser: submit each page's form (the
    auto-submitting one, then the confirmation) until a page without a form (the result)."""
    async with httpx.AsyncClient(timeout=20, follow_redirects=True) as browser:
        page = await browser.get(verification_uri_complete)
        for _ in range(6):
            form = re.search(r"<form([^>]*)>(.*?)</form>", page.text, re.S)
            if form is None:
                return page
            action = re.search(r"action=\"([^\"]+)\"", form.group(1))
            assert action, form.group(0)
            fields = {
                unescape(m.group(1)): unescape(m.group(2))
                for m in re.finditer(
                    r"<input[^>]*name=\"([^\"]+)\"[^>]*value=\"([^\"]*)\"", form.group(2)
                )
            }
            if "deviceConfirmForm" in form.group(1):
                fields["confirm"] = "yes"
            target = httpx.URL(str(page.url)).join(unescape(action.group(1)))
            page = await browser.post(target, data=fields)
        raise AssertionError("the device approval did not finish")
