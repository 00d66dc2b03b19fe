"""Integration tests against a real OpenID provider (panva/oidc-provider) started by the suite.

The user's browser is an httpx client that follows redirects; the provider signs in its fixed
test account non-interactively. Nothing here is a mock of the provider. Every test runs on the
embedded backend, a real Redis and a real 3-node Redis Cluster (the ``store`` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import orjson
import pytest

from coordinator import Store, connect
from coordinator.errors import (
    CoordinatorError,
    OAuthAuthorizationError,
    OAuthProviderError,
    OAuthStateError,
    ReauthRequiredError,
)
from coordinator.events import Event
from coordinator.oauth import OAuthConfig, OAuthManager, OAuthProvider
from coordinator.oauth.pkce import new_verifier, state_digest
from coordinator.testing import advance_time

from .oauth_fixtures import (  # noqa: F401  (fixtures: manager, oidc_server, provider)
    OidcServer,
    approve_device,
    browse,
    discover,
    manager,
    oidc_server,
    provider,
    redirect_target,
)

WEB_CALLBACK = "http://127.0.0.1:1/app/callback"
WEB_CLIENT_ID = "web-basic"  # the confidential client of tests/oidc_server
WEB_CLIENT_SECRET = "web-basic-secret-0123456789abcdef"
FAST = OAuthConfig(event_poll_interval_s=0.02)


# -- helpers ------------------------------------------------------------------------------


async def web_login(m: OAuthManager, provider: str = "testop", **kw: Any) -> str:
    """Start a login for a web app and play the browser up to the app's callback URL."""
    request = await m.get_authorization_url(provider, redirect_uri=WEB_CALLBACK, **kw)
    response = await browse(request.url, stop_at=WEB_CALLBACK)
    return redirect_target(response)


def with_params(url: str, **changes: str | None) -> str:
    """``url`` with some query parameters replaced (``None`` removes one)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


async def raw_tokens(store: Store, m: OAuthManager, credential_id: str) -> dict[str, str]:
    """The credential's tokens decrypted straight from Redis (what the test may know)."""
    raw = await store.client.hgetall(m.keys.credential(credential_id))
    assert store.box is not None
    return {
        name: store.box.decrypt(raw[name], aad=f"oauth:{credential_id}:{name}")
        for name in ("access_token", "refresh_token", "id_token")
        if raw.get(name)
    }


async def token_post(server: OidcServer, **form: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"{server.issuer}/token", data=form)


async def userinfo_status(server: OidcServer, access_token: str) -> int:
    async with httpx.AsyncClient() as client:
        r = await client.get(
            f"{server.issuer}/me", headers={"Authorization": f"Bearer {access_token}"}
        )
    return r.status_code


async def collect(m: OAuthManager) -> tuple[list[Event], Any]:
    events: list[Event] = []
    unsubscribe = m.on("*", events.append)
    await m.events.wait_started()
    return events, unsubscribe


async def wait_for(events: list[Event], etype: str, timeout: float = 5.0) -> Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events:
            if e.type == etype:
                return e
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {etype} event; saw {[e.type for e in events]}")


@pytest.fixture
async def replica_stores(
    store: Store, backend: str, backend_url: str, secret_key: str
) -> AsyncIterator[list[Store]]:
    """Three stores on the same data: separate connections for Redis and Cluster (other
    replicas); the embedded backend lives in one process, so it is the same store."""
    if backend == "memory":
        yield [store, store, store]
        return
    others = [
        await connect(backend_url, namespace=store.namespace, secret_key=secret_key)
        for _ in range(2)
    ]
    try:
        yield [store, *others]
    finally:
        for s in others:
            await s.close()


# -- login ----------------------------------------------------------------------------------


async def test_pkce_login_through_the_loopback_server(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    events, _ = await collect(manager)
    pages: list[httpx.Response] = []

    async def browser(url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["state"][0]) >= 43  # 256 bits, url-safe base64
        assert urlsplit(query["redirect_uri"][0]).hostname == "127.0.0.1"
        pages.append(await browse(url))

    cred = await manager.login("testop", on_url=browser, timeout_s=30)
    assert cred.provider == "testop"
    assert cred.id == "testop:test-user-1"
    assert cred.email == "ada@example.test"
    assert cred.name == "Ada Lovelace"
    assert cred.userinfo["sub"] == "test-user-1"
    assert set(cred.scopes) == {"openid", "offline_access", "profile", "email"}
    assert cred.has_refresh_token
    assert cred.is_default
    assert cred.expires_at_ms is not None
    assert pages[0].status_code == 200
    assert "Signed in to testop as ada@example.test" in pages[0].text
    token = await manager.get_access_token(cred.id)
    assert await userinfo_status(oidc_server, token.reveal()) == 200
    started_event = await wait_for(events, "auth:started")
    success = await wait_for(events, "auth:success")
    assert started_event.data["provider"] == "testop"
    assert success.profile_id == cred.id


@pytest.mark.parametrize("client_id", ["web-basic", "web-post"])
async def test_web_app_callback_lands_on_another_replica(
    oidc_server: OidcServer, replica_stores: list[Store], client_id: str
) -> None:
    secret = f"{client_id}-secret-0123456789abcdef"
    method = "client_secret_basic" if client_id == "web-basic" else "client_secret_post"
    prov = await discover(
        oidc_server,
        client_id,
        client_secret=secret,
        token_endpoint_auth_method=method,
        redirect_uri=WEB_CALLBACK,
    )
    first = OAuthManager(replica_stores[0], [prov], config=FAST)
    second = OAuthManager(replica_stores[1], [prov], config=FAST)
    try:
        request = await first.get_authorization_url("testop")
        assert request.redirect_uri == WEB_CALLBACK
        callback = redirect_target(await browse(request.url, stop_at=WEB_CALLBACK))
        cred = await second.handle_callback(callback)
        assert cred.id == "testop:test-user-1"
        assert (await first.get_credential(cred.id)).email == "ada@example.test"
        token = await first.get_access_token(provider="testop")
        assert await userinfo_status(oidc_server, token.reveal()) == 200
    finally:
        await first.close()
        await second.close()


async def test_replayed_state_is_refused_and_never_reaches_the_provider(
    manager: OAuthManager, oidc_server: OidcServer
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    await manager.handle_callback(callback)
    oidc_server.reset()
    with pytest.raises(OAuthStateError, match="already used"):
        await manager.handle_callback(callback)
    assert oidc_server.stats()["token_requests"] == 0


async def web_client(server: OidcServer) -> OAuthProvider:
    """``testop`` as the confidential web client (client_secret_basic, redirect to
    WEB_CALLBACK)."""
    return await discover(
        server, WEB_CLIENT_ID, client_secret=WEB_CLIENT_SECRET, redirect_uri=WEB_CALLBACK
    )


async def add_web_client(m: OAuthManager, server: OidcServer) -> None:
    """Configure ``testop`` as the confidential web client (redirect to WEB_CALLBACK)."""
    m.add_provider(await web_client(server))


async def web_login_with_client(m: OAuthManager, server: OidcServer) -> str:
    await add_web_client(m, server)
    return await web_login(m)


async def test_forged_state_is_refused_and_the_real_one_still_works(
    manager: OAuthManager, oidc_server: OidcServer
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    events, _ = await collect(manager)
    forged = with_params(callback, state="x" * 43)
    with pytest.raises(OAuthStateError, match="unknown state"):
        await manager.handle_callback(forged)
    failed = await wait_for(events, "auth:failed")
    assert failed.data["reason"] == "state_unknown"
    cred = await manager.handle_callback(callback)
    assert cred.provider == "testop"


async def test_state_issued_for_another_provider_is_refused(
    manager: OAuthManager, oidc_server: OidcServer
) -> None:
    manager.add_provider(await discover(oidc_server, name="otherop"))
    callback = await web_login_with_client(manager, oidc_server)
    with pytest.raises(OAuthStateError, match="another provider"):
        await manager.handle_callback(callback, provider="otherop")
    # Consumed by the refused attempt: it cannot be used afterwards either.
    with pytest.raises(OAuthStateError, match="already used"):
        await manager.handle_callback(callback, provider="testop")


async def test_expired_state_is_refused(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    advance_time(store, 601_000)
    with pytest.raises(OAuthStateError, match="expired"):
        await manager.handle_callback(callback)


async def test_wrong_verifier_is_refused_by_the_provider(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    await add_web_client(manager, oidc_server)
    request = await manager.get_authorization_url("testop")
    # Swap the stored verifier for another valid one: the provider must refuse the exchange.
    digest = state_digest(request.state)
    key = manager.keys.state(digest)
    record = orjson.loads(await store.client.get(key))
    assert store.box is not None
    record["verifier"] = store.box.encrypt(new_verifier(), aad=f"oauth-state:{digest}")
    await store.client.set(key, orjson.dumps(record).decode(), keepttl=True)
    callback = redirect_target(await browse(request.url, stop_at=WEB_CALLBACK))
    code = parse_qs(urlsplit(callback).query)["code"][0]
    with pytest.raises(OAuthProviderError) as info:
        await manager.handle_callback(callback)
    assert info.value.error == "invalid_grant"
    assert code not in str(info.value)
    assert await manager.list_credentials() == []


async def test_provider_error_is_shown_escaped_and_raised(
    manager: OAuthManager, oidc_server: OidcServer
) -> None:
    pages: list[httpx.Response] = []
    events, _ = await collect(manager)

    async def browser(url: str) -> None:
        pages.append(await browse(url + "&test_deny=1"))

    with pytest.raises(OAuthAuthorizationError) as info:
        await manager.login("testop", on_url=browser, timeout_s=30)
    assert info.value.error == "access_denied"
    page = pages[0]
    assert page.status_code == 400
    assert "<script>" not in page.text and "<b>" not in page.text
    assert "&lt;script&gt;" in page.text
    assert (await wait_for(events, "auth:failed")).data["reason"] == "OAuthAuthorizationError"
    assert await manager.list_credentials() == []


async def test_mismatched_or_missing_iss_is_refused(
    manager: OAuthManager, oidc_server: OidcServer
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    with pytest.raises(OAuthStateError, match="RFC 9207"):
        await manager.handle_callback(with_params(callback, iss="https://evil.example"))
    callback = await web_login(manager)
    with pytest.raises(OAuthStateError, match="lacks the iss"):
        await manager.handle_callback(with_params(callback, iss=None))


async def test_an_error_response_without_iss_is_refused_as_a_mix_up(
    manager: OAuthManager, oidc_server: OidcServer
) -> None:
    # RFC 9207 §2.4: the provider says it sends iss, so an error response without it may come
    # from another provider (mix-up) and must not be taken for this one's answer.
    await add_web_client(manager, oidc_server)
    assert manager.provider("testop").require_iss
    callback = await web_login(manager, extra_params={"test_deny": "1"})
    query = parse_qs(urlsplit(callback).query)
    assert query["error"] == ["access_denied"] and query["iss"] == [oidc_server.issuer]
    with pytest.raises(OAuthStateError, match="lacks the iss"):
        await manager.handle_callback(with_params(callback, iss=None))
    # The same error with its iss is the provider's own answer.
    callback = await web_login(manager, extra_params={"test_deny": "1"})
    with pytest.raises(OAuthAuthorizationError) as info:
        await manager.handle_callback(callback)
    assert info.value.error == "access_denied"
    # Without state the login is unknown, but the provider named by the caller still counts.
    stateless = with_params(callback, state=None, iss=None)
    with pytest.raises(OAuthStateError, match="lacks the iss"):
        await manager.handle_callback(stateless, provider="testop")
    with pytest.raises(OAuthStateError, match="RFC 9207"):
        await manager.handle_callback(
            with_params(stateless, iss="https://evil.example"), provider="testop"
        )
    with pytest.raises(OAuthAuthorizationError):
        await manager.handle_callback(with_params(callback, state=None), provider="testop")


# -- refresh ----------------------------------------------------------------------------------


async def test_short_lived_tokens_are_refreshed_once_per_cycle_across_replicas(
    oidc_server: OidcServer, replica_stores: list[Store]
) -> None:
    # Keycloak's default: access tokens live 300 s, as long as our default refresh lead.
    # Each cycle: every replica asks, one after the other and 30 at once; the provider must
    # see exactly one refresh, and everyone gets the token it issued.
    oidc_server.set_access_token_ttl(300)
    prov = await web_client(oidc_server)
    managers = [OAuthManager(s, [prov], config=FAST) for s in replica_stores]
    stores = list({id(s): s for s in replica_stores}.values())
    try:
        cred = await managers[0].handle_callback(await web_login(managers[0]))
        assert (await managers[0].get_credential(cred.id)).expires_at_ms is not None
        before = oidc_server.refreshes()
        seen: set[str] = set()
        for cycle in range(4):
            if cycle:
                for s in stores:
                    advance_time(s, 160_000)  # past half the lifetime, not yet expired
            sequential = [(await managers[i % 3].get_access_token(cred.id)) for i in range(6)]
            concurrent = await asyncio.gather(
                *(managers[i % 3].get_access_token(cred.id) for i in range(30))
            )
            sequential += [(await managers[i % 3].get_access_token(cred.id)) for i in range(6)]
            tokens = {t.reveal() for t in [*sequential, *concurrent]}
            assert len(tokens) == 1, f"cycle {cycle}: {len(tokens)} different tokens"
            assert oidc_server.refreshes() - before == cycle, f"cycle {cycle}"
            assert not tokens & seen
            seen |= tokens
        assert oidc_server.stats()["refresh_tokens_reused"] == 0
        assert await userinfo_status(oidc_server, tokens.pop()) == 200
    finally:
        oidc_server.reset()
        for m in managers:
            await m.close()


async def test_refresh_rotates_and_the_old_refresh_token_is_dead(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    cred = await manager.handle_callback(callback)
    before = await raw_tokens(store, manager, cred.id)
    events, _ = await collect(manager)
    refreshed = await manager.refresh_token(cred.id)
    after = await raw_tokens(store, manager, cred.id)
    assert refreshed.version == cred.version + 1
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] != before["access_token"]
    token = await manager.get_access_token(cred.id)
    assert token.reveal() == after["access_token"]
    assert await userinfo_status(oidc_server, token.reveal()) == 200
    event = await wait_for(events, "token:refreshed")
    assert event.data["rotated"] is True
    # The provider rejects the rotated-away refresh token.
    old = await token_post(
        oidc_server,
        grant_type="refresh_token",
        refresh_token=before["refresh_token"],
        client_id=WEB_CLIENT_ID,
        client_secret=WEB_CLIENT_SECRET,
    )
    assert old.status_code == 400
    assert old.json()["error"] == "invalid_grant"


async def test_get_access_token_refreshes_only_within_the_lead_time(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    cred = await manager.handle_callback(callback)
    oidc_server.reset()
    first = await manager.get_access_token(cred.id)
    assert oidc_server.stats()["token_requests"] == 0
    advance_time(store, (3600 - 299) * 1000)  # inside the 5-minute lead
    second = await manager.get_access_token(cred.id)
    assert second.reveal() != first.reveal()
    assert oidc_server.stats()["by_grant_type"] == {"refresh_token": 1}
    assert (await manager.get_credential(cred.id)).expires_at_ms is not None


async def test_concurrent_get_access_token_sends_one_refresh(
    oidc_server: OidcServer, replica_stores: list[Store]
) -> None:
    prov = await web_client(oidc_server)
    managers = [OAuthManager(s, [prov], config=FAST) for s in replica_stores]
    try:
        cred = await managers[0].handle_callback(await web_login(managers[0]))
        for s in {id(s): s for s in replica_stores}.values():
            advance_time(s, 3500 * 1000)
        oidc_server.reset()
        oidc_server.set_token_delay(300)  # widen the race window
        tokens = await asyncio.gather(
            *(managers[i % 3].get_access_token(cred.id) for i in range(30))
        )
        stats = oidc_server.stats()
        assert stats["by_grant_type"] == {"refresh_token": 1}
        assert stats["refresh_tokens_reused"] == 0
        assert len({t.reveal() for t in tokens}) == 1
        assert await userinfo_status(oidc_server, tokens[0].reveal()) == 200
    finally:
        oidc_server.reset()
        for m in managers:
            await m.close()


async def test_a_waiter_uses_the_token_another_replica_committed(
    oidc_server: OidcServer, replica_stores: list[Store]
) -> None:
    # Tokens live 100 s (lead: 50 s). The waiter only reads the holder's new token 55 s after
    # it was committed, inside the lead: it is still the refresh it waited for, so no second
    # refresh may reach the provider.
    oidc_server.set_access_token_ttl(100)
    prov = await web_client(oidc_server)
    holder = OAuthManager(replica_stores[0], [prov], config=FAST)
    cred = await holder.handle_callback(await web_login(holder))
    waiter_store = replica_stores[1]
    advanced: list[int] = []

    async def sleep_until_committed_then_jump(seconds: float) -> None:
        await asyncio.sleep(seconds)
        if not advanced and (await holder.get_credential(cred.id)).version > cred.version:
            advance_time(waiter_store, 55_000)
            advanced.append(55_000)

    waiter = OAuthManager(waiter_store, [prov], config=FAST, sleep=sleep_until_committed_then_jump)
    try:
        for s in {id(s): s for s in replica_stores[:2]}.values():
            advance_time(s, 60_000)  # 40 s left: stale
        before = oidc_server.refreshes()
        oidc_server.set_token_delay(300)
        first = asyncio.create_task(holder.get_access_token(cred.id))
        while await holder.store.client.get(holder.keys.lock(cred.id)) is None:
            await asyncio.sleep(0.005)  # the holder has the lock: the waiter will wait
        second = await waiter.get_access_token(cred.id)
        assert advanced, "the waiter never waited"
        assert second.reveal() == (await first).reveal()
        assert oidc_server.refreshes() - before == 1
    finally:
        oidc_server.reset()
        await holder.close()
        await waiter.close()


async def test_invalid_grant_marks_the_credential_needs_reauth(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    cred = await manager.handle_callback(callback)
    tokens = await raw_tokens(store, manager, cred.id)
    # Someone revokes the grant at the provider, behind the manager's back.
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{oidc_server.issuer}/token/revocation",
            data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
            auth=(WEB_CLIENT_ID, WEB_CLIENT_SECRET),
        )
    assert r.status_code == 200
    events, _ = await collect(manager)
    with pytest.raises(ReauthRequiredError):
        await manager.refresh_token(cred.id)
    assert (await manager.get_credential(cred.id)).status == "needs-reauth"
    event = await wait_for(events, "credential:needs-reauth")
    assert "invalid_grant" in event.data["reason"]
    with pytest.raises(ReauthRequiredError):
        await manager.get_access_token(cred.id)
    # A new login makes it usable again.
    again = await manager.handle_callback(await web_login(manager))
    assert again.id == cred.id and again.status == "active"


async def test_refresh_timeout_releases_the_lock(oidc_server: OidcServer, store: Store) -> None:
    prov = await web_client(oidc_server)
    config = OAuthConfig(refresh_timeout_s=0.3, lock_ttl_s=5, event_poll_interval_s=0.02)
    m = OAuthManager(store, [prov], config=config)
    try:
        cred = await m.handle_callback(await web_login(m))
        oidc_server.set_token_delay(1500)
        with pytest.raises(OAuthProviderError, match="no answer within"):
            await m.refresh_token(cred.id)
        assert await store.client.get(m.keys.lock(cred.id)) is None
    finally:
        oidc_server.reset()
        await m.close()


async def test_a_transient_refresh_failure_falls_back_to_the_still_valid_token(
    oidc_server: OidcServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    prov = await web_client(oidc_server)
    config = OAuthConfig(refresh_timeout_s=0.3, lock_ttl_s=5, event_poll_interval_s=0.02)
    m = OAuthManager(store, [prov], config=config)
    try:
        cred = await m.handle_callback(await web_login(m))
        before = (await raw_tokens(store, m, cred.id))["access_token"]
        advance_time(store, (3600 - 200) * 1000)  # stale (inside the lead), not expired
        oidc_server.set_token_delay(1500)
        with caplog.at_level(logging.WARNING, logger="coordinator"):
            token = await m.get_access_token(cred.id)
        assert token.reveal() == before
        assert "stays valid" in caplog.text
        advance_time(store, 200_000)  # now expired: no fallback any more
        with pytest.raises(OAuthProviderError):
            await m.get_access_token(cred.id)
    finally:
        oidc_server.reset()
        await m.close()


# -- revocation, device grant ---------------------------------------------------------------


async def test_revoke_ends_the_tokens_at_the_provider(
    manager: OAuthManager, oidc_server: OidcServer, store: Store
) -> None:
    callback = await web_login_with_client(manager, oidc_server)
    cred = await manager.handle_callback(callback)
    tokens = await raw_tokens(store, manager, cred.id)
    assert await userinfo_status(oidc_server, tokens["access_token"]) == 200
    events, _ = await collect(manager)
    assert await manager.revoke(cred.id) is True
    assert await manager.list_credentials() == []
    assert await manager.get_default("testop") is None
    assert await userinfo_status(oidc_server, tokens["access_token"]) == 401
    r = await token_post(
        oidc_server,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=WEB_CLIENT_ID,
        client_secret=WEB_CLIENT_SECRET,
    )
    assert r.json()["error"] == "invalid_grant"
    assert (await wait_for(events, "token:revoked")).data["remote"] is True


async def test_device_grant(oidc_server: OidcServer, store: Store) -> None:
    prov = await discover(oidc_server, "device-app", name="testdev")
    assert prov.device_authorization_endpoint is not None
    m = OAuthManager(store, [prov], config=FAST)
    try:
        device = await m.start_device_login("testdev")
        assert device.user_code and device.verification_uri.startswith(oidc_server.issuer)
        assert device.device_code.reveal() not in repr(device)
        assert device.verification_uri_complete is not None
        page = await approve_device(device.verification_uri_complete)
        assert page.status_code == 200, page.text[:300]
        cred = await m.complete_device_login(device)
        assert cred.id == "testdev:test-user-1"
        assert cred.has_refresh_token
        token = await m.get_access_token(cred.id)
        assert await userinfo_status(oidc_server, token.reveal()) == 200
    finally:
        await m.close()


async def test_device_grant_pending_then_approved(oidc_server: OidcServer, store: Store) -> None:
    prov = await discover(oidc_server, "device-app", name="testdev")
    polls: list[float] = []
    approved: list[httpx.Response] = []
    device_box: list[Any] = []

    async def fake_sleep(seconds: float) -> None:
        # The user approves while the device waits between polls.
        polls.append(seconds)
        if not approved:
            approved.append(await approve_device(device_box[0].verification_uri_complete))
        await asyncio.sleep(seconds if seconds < 1 else 0)

    m = OAuthManager(store, [prov], config=FAST, sleep=fake_sleep)
    try:
        device = await m.start_device_login("testdev")
        device_box.append(device)
        cred = await m.complete_device_login(device)
        assert polls, "the first poll must have been authorization_pending"
        assert cred.provider == "testdev"
    finally:
        await m.close()


# -- secrets never in clear -------------------------------------------------------------------


async def test_tokens_never_in_clear_in_redis_logs_repr_or_errors(
    oidc_server: OidcServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="coordinator")
    client_secret = WEB_CLIENT_SECRET
    prov = await web_client(oidc_server)
    m = OAuthManager(store, [prov], config=FAST)
    try:
        request = await m.get_authorization_url("testop")
        digest = state_digest(request.state)
        record = orjson.loads(await store.client.get(m.keys.state(digest)))
        assert store.box is not None
        verifier = store.box.decrypt(record["verifier"], aad=f"oauth-state:{digest}")
        callback = redirect_target(await browse(request.url, stop_at=WEB_CALLBACK))
        code = parse_qs(urlsplit(callback).query)["code"][0]
        cred = await m.handle_callback(callback)
        first = await raw_tokens(store, m, cred.id)
        await m.refresh_token(cred.id)
        second = await raw_tokens(store, m, cred.id)
        errors: list[str] = []
        for attempt in (callback, with_params(callback, state="y" * 43)):
            # Both are refused (a replayed callback, an unknown state): the texts checked
            # below must be errors that were raised, not an empty list.
            with pytest.raises(CoordinatorError) as refused:
                await m.handle_callback(attempt)
            errors.append(str(refused.value) + repr(refused.value))
        secrets = {
            verifier,
            code,
            client_secret,
            request.state,
            *first.values(),
            *second.values(),
        }
        # Every key in the namespace, every value, read raw.
        dump: list[str] = []
        async for key in store.client.scan_iter(match=f"{store.namespace}:*", count=1000):
            dump.append(key)
            kind = await store.client.type(key)
            if kind == "string":
                dump.append(str(await store.client.get(key)))
            elif kind == "hash":
                dump.extend(f"{k}={v}" for k, v in (await store.client.hgetall(key)).items())
            elif kind == "zset":
                dump.extend(await store.client.zrange(key, 0, -1))
            elif kind == "stream":
                for _id, fields in await store.client.xrange(key):
                    dump.extend(f"{k}={v}" for k, v in fields.items())
        assert any("cred:" in k for k in dump)
        assert any(r.name.startswith("coordinator") for r in caplog.records)
        blob = "\n".join(dump)
        shown = "\n".join(
            [
                blob,
                # Our own log records (the test's browser legitimately logs the code).
                *(r.getMessage() for r in caplog.records if r.name.startswith("coordinator")),
                repr(m),
                repr(prov),
                repr(request),
                repr(cred),
                repr(await m.get_credential(cred.id)),
                repr(await m.get_access_token(cred.id)),
                *errors,
            ]
        )
        for secret in secrets:
            assert secret not in shown
    finally:
        await m.close()


async def test_storing_tokens_without_an_encryption_key_is_a_config_error(
    oidc_server: OidcServer, redis_server: Any
) -> None:
    from coordinator.errors import ConfigError

    from .conftest import unique_namespace

    bare = await connect(redis_server.url, namespace=unique_namespace(), secret_key="")
    prov = await discover(oidc_server)
    m = OAuthManager(bare, [prov])
    try:
        assert bare.box is None
        with pytest.raises(ConfigError) as info:
            await m.get_authorization_url("testop", redirect_uri="http://127.0.0.1/callback")
        assert info.value.field == "secret_key"
    finally:
        await m.close()
        await bare.close()


async def test_login_opens_the_browser_and_prints_the_url(
    manager: OAuthManager,
    oidc_server: OidcServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import webbrowser

    opened: list[str] = []

    def fake_open(url: str) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", fake_open)
    login = asyncio.create_task(manager.login("testop", timeout_s=30))
    while not opened:
        await asyncio.sleep(0.01)
    page = await browse(opened[0])
    cred = await login
    assert page.status_code == 200 and cred.provider == "testop"
    assert opened[0] in capsys.readouterr().out
