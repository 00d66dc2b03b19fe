"""Integration tests against a real OpenID provider (panva/oidc-provider) started by the suite.

The user's browser is an httpx client that follows redirects; the provider signs in its fixed
test account non-interactively. Nothing here is a mock of the provider.
"""

from __future__ import annotations

import httpx

from coordinator import Store
from coordinator.oauth import OAuthManager

from .oauth_fixtures import (  # noqa: F401  (fixtures)
    OidcServer,
    browse,
    manager,
    oidc_server,
    provider,
    redirect_target,
)


async def test_pkce_login_through_the_loopback_server(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    pages: list[httpx.Response] = []

    async def browser(url: str) -> None:
        pages.append(await browse(url))

    cred = await manager.login("testop", on_url=browser, timeout_s=30)
    assert cred.provider == "testop"
    assert cred.id == "testop:test-user-1"
    assert cred.email == "ada@example.test"
    assert cred.has_refresh_token
    assert cred.is_default
    assert pages[0].status_code == 200
    assert "Signed in" in pages[0].text
    token = await manager.get_access_token(cred.id)
    async with httpx.AsyncClient() as client:
        me = await client.get(
            f"{oidc_server.issuer}/me", headers={"Authorization": f"Bearer {token.reveal()}"}
        )
    assert me.json()["sub"] == "test-user-1"
