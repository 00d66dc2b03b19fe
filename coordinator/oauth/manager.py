"""OAuthManager: sign users in to AI providers and share the credentials with every replica.

All state lives in Redis under ``<ns>:{oauth}:*`` (one hash tag, so every script runs on
Redis Cluster) and every read-modify-write is one Lua script on Redis time
(``coordinator/oauth/oauth_*.lua``): a login's state is consumed exactly once whichever replica
receives the callback, a refresh runs under a lock with a fencing number (checked again
right before the request is sent, and renewed while it is in flight) and commits by
compare-and-set on the credential's version. Tokens are encrypted with the store's
:class:`~coordinator.secrets.SecretBox` before they reach Redis; this module never logs,
stores in clear, or puts into an error message a token, code, verifier or client secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import orjson

from ..errors import (
    ConfigError,
    CoordinatorError,
    CredentialNotFoundError,
    OAuthAuthorizationError,
    OAuthProviderError,
    OAuthStateError,
    ReauthRequiredError,
    RefreshInProgressError,
)
from ..events import EventHub, EventSource
from ..store.connection import Store
from ..store.keys import OAuthKeys, validate_id, validate_name
from ..store.secrets import Secret, SecretBox, redact
from . import _http, pkce
from .device import poll_for_tokens, request_device_code
from .providers import OAuthProvider
from .types import (
    AccessToken,
    AuthorizationRequest,
    DeviceAuthorization,
    OAuthConfig,
    OAuthCredential,
)

__all__ = ["OAuthManager"]

log = logging.getLogger("coordinator.oauth")

Sleep = Callable[[float], Awaitable[None]]

_STATE_MESSAGES = {
    "unknown": "unknown state: not issued by this deployment, or forged",
    "replayed": "state was already used (a callback is accepted once)",
    "expired": "state expired: the login took too long, start it again",
    "provider": "state was issued for another provider",
}
# A refresh that fails transiently falls back to the current token if it has this much left.
_FALLBACK_MIN_MS = 30_000
_ID_SAFE = re.compile(r"[A-Za-z0-9._:@+-]{1,100}")


def _pairs(flat: Any) -> dict[str, str]:
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    items = list(flat or [])
    return {str(k): str(v) for k, v in zip(items[0::2], items[1::2], strict=True)}


def _callback_params(params_or_url: str | Mapping[str, Any]) -> dict[str, str]:
    """The query parameters of a callback URL (or a mapping of them), each given once."""
    if isinstance(params_or_url, str):
        query = urlsplit(params_or_url).query if "?" in params_or_url else params_or_url
        raw: Mapping[str, Any] = parse_qs(query, keep_blank_values=True)
    else:
        raw = params_or_url
    out: dict[str, str] = {}
    for key, value in raw.items():
        values = list(value) if isinstance(value, list | tuple) else [value]
        if len(values) != 1:
            # RFC 6749 §3.1: a parameter must not be included more than once.
            raise OAuthStateError(f"callback repeats the parameter {str(key)[:40]!r}")
        out[str(key)] = str(values[0])
    return out


# The reply of oauth_acquire.lua, in order.
_ACQUIRE_REPLY = (
    "code",
    "fence",
    "version",
    "access",
    "refresh",
    "expires_at_ms",
    "remaining_ms",
    "wait_ms",
    "token_type",
    "status",
    "provider",
)


def _raise_unless_refreshed(cid: str, provider: str, reply: Any, exc: OAuthProviderError) -> None:
    """Read the reply of ``oauth_reauth``: raise when the credential was marked (or is gone);
    return when another replica refreshed it meanwhile (the caller reads that token)."""
    if int(reply[0]) == 1:
        raise ReauthRequiredError(
            f"credential {cid!r} was refused by {provider} (invalid_grant); sign in again"
        ) from exc
    if reply[1] == "missing":
        raise CredentialNotFoundError(cid) from exc


def _check_iss(prov: OAuthProvider, params: Mapping[str, str]) -> None:
    """RFC 9207: ``iss`` must be the provider's issuer when sent, and must be sent when the
    provider says it sends it; error responses included (§2.4), since a forged error from
    another provider is a mix-up too."""
    iss = params.get("iss")
    if iss is None:
        if prov.require_iss:
            raise OAuthStateError(
                f"callback lacks the iss parameter that {prov.name} sends "
                "(RFC 9207 mix-up protection)"
            )
        return
    if prov.issuer is not None and iss != prov.issuer:
        raise OAuthStateError(
            f"callback iss {redact(iss, limit=120)!r} is not {prov.name}'s issuer "
            "(RFC 9207 mix-up protection)"
        )


def _authorization_error(params: Mapping[str, str]) -> OAuthAuthorizationError:
    """The provider's ``error=`` redirect as an exception (its text redacted)."""
    return OAuthAuthorizationError(
        redact(params.get("error", ""), limit=60),
        redact(params.get("error_description", "")) or None,
    )


def _authorization_params(
    prov: OAuthProvider,
    client_id: str,
    redirect: str,
    scopes: tuple[str, ...],
    state: str,
    verifier: str | None,
) -> dict[str, str]:
    """The query of an authorization request (RFC 6749 §4.1.1, PKCE S256 of RFC 7636)."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "state": state,
    }
    if scopes:
        params["scope"] = " ".join(scopes)
    if verifier is not None:
        params["code_challenge"] = pkce.code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    params.update(prov.extra_authorization_params)
    return params


def _add_extra_params(
    params: dict[str, str], prov: OAuthProvider, extra: Mapping[str, str]
) -> None:
    """Add the caller's parameters; they may override the provider's extras, not ours."""
    for key, value in extra.items():
        if key in params and key not in prov.extra_authorization_params:
            raise ConfigError("extra_params", f"may not override {key!r}")
        params[key] = value


def _with_query(endpoint: str, params: Mapping[str, str]) -> str:
    """``endpoint`` with ``params`` appended to whatever query it already has."""
    parts = urlsplit(endpoint)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


class OAuthManager(EventSource):
    """OAuth 2.0 logins (PKCE, loopback or web callback, device grant) and shared credentials.

    ``providers`` are the configured :class:`OAuthProvider` objects (see
    :func:`~coordinator.oauth.preset` and :meth:`OAuthProvider.from_discovery`). ``http`` is
    the httpx client used for every provider request (one is made, and closed by
    :meth:`close`, when not given). ``sleep`` is what waits between polls (tests pass a fake).
    """

    def __init__(
        self,
        store: Store,
        providers: Iterable[OAuthProvider] = (),
        *,
        config: OAuthConfig | None = None,
        http: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self.config = config or OAuthConfig()
        self.keys = OAuthKeys(store.namespace)
        self._providers: dict[str, OAuthProvider] = {}
        for provider in providers:
            self.add_provider(provider)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient()
        self._sleep = sleep
        self._instance = uuid.uuid4().hex[:12]
        self._inflight: dict[str, asyncio.Task[AccessToken]] = {}
        self.events = EventHub(
            store, self._event_streams, poll_interval_s=self.config.event_poll_interval_s
        )

    def __repr__(self) -> str:
        return f"OAuthManager(store={self.store!r}, providers={sorted(self._providers)!r})"

    # -- providers -------------------------------------------------------------------------

    def add_provider(self, provider: OAuthProvider) -> None:
        """Configure (or replace) a provider; its client id is required."""
        if not isinstance(provider, OAuthProvider):
            raise ConfigError("provider", "must be an OAuthProvider")
        provider.require_client()
        self._providers[provider.name] = provider

    def provider(self, name: str) -> OAuthProvider:
        """The configured provider ``name``; an unknown one is a :class:`ConfigError`."""
        found = self._providers.get(name)
        if found is None:
            known = ", ".join(sorted(self._providers)) or "none"
            raise ConfigError(
                "provider", f"provider {name!r} is not configured (configured: {known})"
            )
        return found

    @property
    def providers(self) -> dict[str, OAuthProvider]:
        """The configured providers by name (a copy)."""
        return dict(self._providers)

    # -- plumbing --------------------------------------------------------------------------

    async def _event_streams(self) -> dict[str, str]:
        return {self.keys.events: "oauth"}

    def _box(self) -> SecretBox:
        box = self.store.box
        if box is None:
            raise ConfigError(
                "secret_key",
                "storing OAuth tokens needs an encryption key: set COORDINATOR_SECRET_KEY "
                "(generate one with coordinator.generate_key())",
            )
        return box

    @staticmethod
    def _aad(credential_id: str, name: str) -> str:
        return f"oauth:{credential_id}:{name}"

    def _seal(self, credential_id: str, name: str, value: Secret) -> str:
        return self._box().encrypt(value.reveal(), aad=self._aad(credential_id, name))

    def _open(self, credential_id: str, name: str, ciphertext: str) -> Secret:
        # Decrypted now, not on reveal(): a wrong secret_key fails the call that reads the
        # token (DecryptionError), not some later use of it.
        return Secret(self._box().decrypt(ciphertext, aad=self._aad(credential_id, name)))

    async def _emit(self, etype: str, subject: str, data: Mapping[str, Any]) -> None:
        await self.store.run(
            "oauth_emit", [self.keys.events], [etype, subject, orjson.dumps(dict(data)).decode()]
        )

    async def _hgetall(self, key: str) -> dict[str, str]:
        async with self.store.guard("HGETALL"):
            raw = await self.store.client.hgetall(key)
        return _pairs(raw)

    @property
    def lock_owner_prefix(self) -> str:
        """The start of the owner of every refresh lock this manager takes
        (``<prefix>:<attempt>``): a worker shows it in its heartbeat, so that a lock read with
        ``redis-cli`` names its holder."""
        return self._instance

    def _owner(self) -> str:
        return f"{self._instance}:{uuid.uuid4().hex}"

    # -- login -----------------------------------------------------------------------------

    async def get_authorization_url(
        self,
        provider: str,
        redirect_uri: str | None = None,
        scopes: Iterable[str] | None = None,
        *,
        extra_params: Mapping[str, str] | None = None,
    ) -> AuthorizationRequest:
        """Start a login: store the state and PKCE verifier in Redis, return the URL.

        The callback may then land on any replica. ``redirect_uri`` defaults to the
        provider's; ``scopes`` to the provider's. Emits ``auth:started``.
        """
        prov = self.provider(provider)
        client_id = prov.require_client()
        if prov.authorization_endpoint is None:
            raise ConfigError("authorization_endpoint", f"provider {provider!r} has none")
        redirect = redirect_uri or prov.redirect_uri
        if not redirect:
            raise ConfigError("redirect_uri", f"no redirect URI given for {provider!r}")
        chosen = tuple(scopes) if scopes is not None else prov.scopes
        state = pkce.new_state()
        verifier = pkce.new_verifier() if prov.use_pkce else None
        params = _authorization_params(prov, client_id, redirect, chosen, state, verifier)
        _add_extra_params(params, prov, extra_params or {})
        expires_at_ms = await self._record_state(prov, state, verifier, redirect, chosen)
        return AuthorizationRequest(
            url=_with_query(prov.authorization_endpoint, params),
            state=state,
            expires_at_ms=expires_at_ms,
            provider=prov.name,
            redirect_uri=redirect,
            scopes=chosen,
        )

    async def _record_state(
        self,
        prov: OAuthProvider,
        state: str,
        verifier: str | None,
        redirect: str,
        scopes: tuple[str, ...],
    ) -> int:
        """Store a pending login under its state's digest; returns when it expires (ms)."""
        box = self._box()
        digest = pkce.state_digest(state)
        record: dict[str, Any] = {
            "provider": prov.name,
            "redirect_uri": redirect,
            "scopes": list(scopes),
            "verifier": box.encrypt(verifier, aad=f"oauth-state:{digest}") if verifier else None,
        }
        ttl_ms = int(self.config.state_ttl_s * 1000)
        reply = await self.store.run(
            "oauth_begin",
            [self.keys.state(digest), self.keys.events],
            [orjson.dumps(record).decode(), ttl_ms, prov.name],
        )
        if int(reply[0]) != 1:  # 256 random bits collided: never reuse a state
            raise OAuthStateError("could not record a fresh state; try again")
        return int(reply[1])

    async def handle_callback(
        self, params_or_url: str | Mapping[str, Any], *, provider: str | None = None
    ) -> OAuthCredential:
        """Finish a login from the provider's redirect (a URL or its query parameters).

        Consumes the state exactly once (a replay, an unknown or expired state, or one issued
        for another ``provider`` is an :class:`OAuthStateError`), handles ``error=``
        (:class:`OAuthAuthorizationError`), checks ``iss`` (RFC 9207), exchanges the code,
        fetches user info and stores the credential. Emits ``auth:success`` or ``auth:failed``.
        """
        params = _callback_params(params_or_url)
        if provider is not None:
            self.provider(provider)
        state = params.get("state")
        if not state:
            await self._refuse_stateless(params, provider)
        digest = pkce.state_digest(state)
        reply = await self.store.run(
            "oauth_consume", [self.keys.state(digest), self.keys.events], [provider or ""]
        )
        if int(reply[0]) != 1:
            raise OAuthStateError(_STATE_MESSAGES.get(str(reply[1]), "invalid state"))
        record = orjson.loads(reply[1])
        prov_name = str(record["provider"])
        try:
            prov = self.provider(prov_name)
            return await self._finish_code_login(prov, params, record, digest)
        except CoordinatorError as exc:
            await self._emit(
                "auth:failed",
                "",
                {"provider": prov_name, "reason": type(exc).__name__, "error": str(exc)[:300]},
            )
            raise

    async def _refuse_stateless(self, params: dict[str, str], provider: str | None) -> NoReturn:
        """A callback without ``state``: an error response we cannot tie to a login, or junk."""
        error = params.get("error")
        reason = redact(error, limit=60) if error else "no_state"
        await self._emit("auth:failed", "", {"provider": provider or "", "reason": reason})
        if not error:
            raise OAuthStateError("callback has no state parameter")
        if provider is not None:
            _check_iss(self.provider(provider), params)
        raise _authorization_error(params)

    async def _finish_code_login(
        self, prov: OAuthProvider, params: dict[str, str], record: dict[str, Any], digest: str
    ) -> OAuthCredential:
        _check_iss(prov, params)
        if params.get("error") is not None:
            raise _authorization_error(params)
        code = params.get("code")
        if not code:
            raise OAuthProviderError("callback has neither code nor error")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": str(record["redirect_uri"]),
        }
        known = [code]
        if record.get("verifier"):
            verifier = self._box().decrypt(str(record["verifier"]), aad=f"oauth-state:{digest}")
            form["code_verifier"] = verifier
            known.append(verifier)
        tokens = await _http.token_request(
            self._http,
            prov,
            form,
            what=f"code exchange with {prov.name}",
            timeout_s=self.config.http_timeout_s,
            secrets=known,
        )
        return await self._store_login(prov, tokens, tuple(record.get("scopes") or ()), "code")

    async def _store_login(
        self, prov: OAuthProvider, tokens: _http.TokenSet, requested: tuple[str, ...], flow: str
    ) -> OAuthCredential:
        info: dict[str, Any] = {}
        if prov.userinfo_endpoint:
            info = await _http.userinfo(
                self._http,
                prov.userinfo_endpoint,
                tokens.access_token.reveal(),
                timeout_s=self.config.http_timeout_s,
            )
        subject = next(
            (str(info[c]) for c in prov.subject_claims if info.get(c) not in (None, "")), None
        )
        credential_id = self._credential_id(prov.name, subject)
        fields: dict[str, str] = {
            "access_token": self._seal(credential_id, "access_token", tokens.access_token),
            "token_type": tokens.token_type,
            "scopes": " ".join(tokens.scope if tokens.scope is not None else requested),
            "userinfo": orjson.dumps(info).decode(),
            "subject": subject or "",
            "email": str(info.get("email") or ""),
            "name": str(info.get("name") or info.get("login") or ""),
        }
        if tokens.refresh_token is not None:
            fields["refresh_token"] = self._seal(
                credential_id, "refresh_token", tokens.refresh_token
            )
        if tokens.id_token is not None:
            fields["id_token"] = self._seal(credential_id, "id_token", tokens.id_token)
        k = self.keys
        await self.store.run(
            "oauth_save",
            [
                k.credential(credential_id),
                k.provider_credentials(prov.name),
                k.credentials,
                k.defaults,
                k.expiry,
                k.events,
            ],
            [
                credential_id,
                prov.name,
                orjson.dumps(fields).decode(),
                tokens.expires_in_ms,
                orjson.dumps({"flow": flow, "subject": subject or ""}).decode(),
            ],
        )
        return await self.get_credential(credential_id)

    @staticmethod
    def _credential_id(provider: str, subject: str | None) -> str:
        """``<provider>:<subject>`` (a hash of it when it has other characters), else random."""
        if subject is None:
            return f"{provider}:{uuid.uuid4().hex[:16]}"
        if _ID_SAFE.fullmatch(subject):
            return validate_id(f"{provider}:{subject}")
        return f"{provider}:{hashlib.sha256(subject.encode()).hexdigest()[:24]}"

    async def login(
        self,
        provider: str,
        *,
        scopes: Iterable[str] | None = None,
        port: int = 0,
        timeout_s: float = 300.0,
        open_browser: bool = True,
        on_url: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> OAuthCredential:
        """Command-line login: a loopback callback server, the browser (or a printed URL).

        Binds 127.0.0.1 on ``port`` (0: a free one), sends the user to the provider and waits
        for one callback or ``timeout_s`` (:class:`LoginTimeoutError`). ``on_url`` receives
        the authorization URL instead of the browser (it may be async).
        """
        from .callback_server import LoopbackCallbackServer

        self.provider(provider)
        async with LoopbackCallbackServer(self, provider=provider, port=port) as server:
            request = await self.get_authorization_url(
                provider, redirect_uri=server.redirect_uri, scopes=scopes
            )
            if on_url is not None:
                result = on_url(request.url)
                if result is not None:
                    await result
            else:
                await _show_url(request.url, open_browser=open_browser)
            return await server.wait(timeout_s)

    # -- device authorization grant (RFC 8628) ---------------------------------------------

    async def start_device_login(
        self, provider: str, scopes: Iterable[str] | None = None
    ) -> DeviceAuthorization:
        """Ask for a device code: show ``user_code`` and ``verification_uri`` to the user.

        Emits ``auth:started``. Then call :meth:`complete_device_login`.
        """
        prov = self.provider(provider)
        self._box()  # fail before the user types a code that could not be stored
        device = await request_device_code(
            self._http, prov, scopes, timeout_s=self.config.http_timeout_s
        )
        await self._emit("auth:started", "", {"provider": prov.name, "flow": "device"})
        return device

    async def complete_device_login(self, device: DeviceAuthorization) -> OAuthCredential:
        """Poll until the user approves the device code, then store the credential.

        Refused or expired codes raise :class:`OAuthAuthorizationError`; ``auth:success``
        or ``auth:failed`` is emitted.
        """
        prov = self.provider(device.provider)
        try:
            tokens = await poll_for_tokens(
                self._http, prov, device, timeout_s=self.config.http_timeout_s, sleep=self._sleep
            )
            return await self._store_login(prov, tokens, device.scopes, "device")
        except CoordinatorError as exc:
            await self._emit(
                "auth:failed",
                "",
                {"provider": prov.name, "flow": "device", "reason": type(exc).__name__},
            )
            raise

    async def login_device(
        self,
        provider: str,
        scopes: Iterable[str] | None = None,
        *,
        on_code: Callable[[DeviceAuthorization], Awaitable[None] | None] | None = None,
    ) -> OAuthCredential:
        """Device login in one call: ``on_code`` shows the code (default: print), then poll."""
        device = await self.start_device_login(provider, scopes)
        if on_code is None:
            target = device.verification_uri_complete or device.verification_uri
            print(f"To sign in to {provider}, open {target} and enter the code {device.user_code}")
        else:
            result = on_code(device)
            if result is not None:
                await result
        return await self.complete_device_login(device)

    # -- credentials -----------------------------------------------------------------------

    async def get_credential(self, credential_id: str) -> OAuthCredential:
        """A credential (without secrets); :class:`CredentialNotFoundError` if unknown."""
        validate_id(credential_id, "credential_id")
        raw = await self._hgetall(self.keys.credential(credential_id))
        if not raw:
            raise CredentialNotFoundError(credential_id)
        default = await self.store.command("HGET", self.keys.defaults, raw.get("provider", ""))
        return OAuthCredential.from_hash(credential_id, raw, is_default=default == credential_id)

    async def list_credentials(self, provider: str | None = None) -> list[OAuthCredential]:
        """Every credential (of one provider), oldest first, without secrets."""
        key = (
            self.keys.credentials
            if provider is None
            else self.keys.provider_credentials(validate_name(provider))
        )
        ids = await self.store.command("ZRANGE", key, 0, -1)
        defaults = _pairs(await self.store.command("HGETALL", self.keys.defaults))
        out: list[OAuthCredential] = []
        for credential_id in ids or []:
            raw = await self._hgetall(self.keys.credential(credential_id))
            if raw:
                is_default = defaults.get(raw.get("provider", "")) == credential_id
                out.append(OAuthCredential.from_hash(credential_id, raw, is_default=is_default))
        return out

    async def get_default(self, provider: str) -> OAuthCredential | None:
        """The provider's default credential, or ``None`` when it has none."""
        credential_id = await self.store.command(
            "HGET", self.keys.defaults, validate_name(provider)
        )
        if not credential_id:
            return None
        try:
            return await self.get_credential(str(credential_id))
        except CredentialNotFoundError:
            return None

    async def set_default(self, credential_id: str) -> None:
        """Make a credential its provider's default."""
        cred = await self.get_credential(credential_id)
        ok = await self.store.run(
            "oauth_set_default",
            [self.keys.provider_credentials(cred.provider), self.keys.defaults, self.keys.events],
            [credential_id, cred.provider],
        )
        if int(ok) != 1:
            raise CredentialNotFoundError(credential_id)

    async def remove_credential(self, credential_id: str) -> bool:
        """Delete a credential (no call to the provider; see :meth:`revoke`).

        A new default is chosen when it was the default. Returns whether it existed.
        """
        return await self._remove(credential_id, "credential:removed", {})

    async def _remove(self, credential_id: str, event: str, data: dict[str, Any]) -> bool:
        validate_id(credential_id, "credential_id")
        provider = await self.store.command("HGET", self.keys.credential(credential_id), "provider")
        if not provider:
            return False
        k = self.keys
        reply = await self.store.run(
            "oauth_remove",
            [
                k.credential(credential_id),
                k.provider_credentials(str(provider)),
                k.credentials,
                k.defaults,
                k.expiry,
                k.lock(credential_id),
                k.events,
            ],
            [credential_id, str(provider), event, orjson.dumps(data).decode()],
        )
        return int(reply[0]) == 1

    async def revoke(self, credential_id: str, *, remove: bool = True) -> bool:
        """Revoke the credential's tokens at the provider (RFC 7009), then remove it.

        Returns whether the provider was asked (``False`` when it has no revocation
        endpoint; the credential is removed anyway). Emits ``token:revoked``.
        """
        validate_id(credential_id, "credential_id")
        raw = await self._hgetall(self.keys.credential(credential_id))
        if not raw:
            raise CredentialNotFoundError(credential_id)
        prov = self.provider(raw.get("provider", ""))
        remote = prov.revocation_endpoint is not None
        if remote:
            # Revoking the refresh token ends the grant (and its access tokens) at most
            # providers; the access token is revoked too for those that treat them apart.
            for name, hint in (
                ("refresh_token", "refresh_token"),
                ("access_token", "access_token"),
            ):
                if raw.get(name):
                    token = self._open(credential_id, name, raw[name]).reveal()
                    await _http.revoke_token(
                        self._http, prov, token, hint, timeout_s=self.config.http_timeout_s
                    )
        data = {"provider": prov.name, "remote": remote}
        if remove:
            await self._remove(credential_id, "token:revoked", data)
        else:
            await self._emit("token:revoked", credential_id, data)
        return remote

    # -- tokens and refresh ----------------------------------------------------------------

    async def due_for_refresh(
        self, within_s: float | None = None, *, limit: int = 100
    ) -> list[tuple[str, int]]:
        """Credentials whose token expires within ``within_s`` (default: the refresh lead),
        soonest first, as ``(id, expires_at_ms)`` on Redis time (for a refresh worker)."""
        window = self.config.refresh_lead_ms if within_s is None else int(within_s * 1000)
        reply = await self.store.run("oauth_due", [self.keys.expiry], [window, int(limit)])
        items = list(reply[1:])
        return [(str(i), int(t)) for i, t in zip(items[0::2], items[1::2], strict=True)]

    async def _acquire(
        self, credential_id: str, owner: str, mode: str, seen_version: int | None
    ) -> dict[str, Any]:
        """Read the token or take the refresh lock (``oauth_acquire``), as a dict by name."""
        k = self.keys
        reply = await self.store.run(
            "oauth_acquire",
            [k.credential(credential_id), k.lock(credential_id), k.fences, k.events],
            [
                credential_id,
                owner,
                self.config.refresh_lead_ms,
                int(self.config.lock_ttl_s * 1000),
                mode,
                "" if seen_version is None else seen_version,
                repr(self.config.refresh_lead_fraction),
            ],
        )
        out = dict(zip(_ACQUIRE_REPLY, reply, strict=True))
        for name in ("fence", "version", "expires_at_ms", "remaining_ms", "wait_ms"):
            out[name] = int(out[name])
        return out

    async def _resolve_id(self, credential_id: str | None, provider: str | None) -> str:
        if credential_id is not None:
            return validate_id(credential_id, "credential_id")
        if provider is None:
            raise ConfigError("credential_id", "give a credential id or a provider")
        default = await self.store.command("HGET", self.keys.defaults, validate_name(provider))
        if not default:
            raise CredentialNotFoundError(f"(default of {provider})")
        return str(default)

    async def get_access_token(
        self, credential_id: str | None = None, *, provider: str | None = None
    ) -> Secret:
        """An access token valid for at least the refresh lead time, refreshed first if needed.

        The lead is ``refresh_lead_s``, capped at ``refresh_lead_fraction`` (half) of the
        token's lifetime as issued (so tokens that live 5 minutes are refreshed once every 2.5
        minutes, not on every call). Without ``credential_id``, the provider's default
        credential. Across replicas one caller refreshes (under the Redis lock) and the others
        wait for its result and use it. The token is decrypted here: a wrong ``secret_key``
        raises :class:`~coordinator.errors.DecryptionError` from this call.
        """
        return (await self.get_token(credential_id, provider=provider)).token

    async def get_token(
        self, credential_id: str | None = None, *, provider: str | None = None
    ) -> AccessToken:
        """What :meth:`get_access_token` returns, with the token's expiry (Redis time), the
        credential version it belongs to and whether this call waited for a refresh."""
        cid = await self._resolve_id(credential_id, provider)
        # Callers of this process share one attempt per credential (the Redis lock does the
        # same across processes); the attempt is not cancelled when one caller gives up.
        task = self._inflight.get(cid)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._token(cid, force=False))
            self._inflight[cid] = task
            task.add_done_callback(lambda t: self._attempt_done(cid, t))
        return await asyncio.shield(task)

    def _attempt_done(self, cid: str, task: asyncio.Task[AccessToken]) -> None:
        if self._inflight.get(cid) is task:
            del self._inflight[cid]
        if not task.cancelled():
            task.exception()  # retrieved here too, so an unawaited failure is not reported

    async def refresh_token(self, credential_id: str) -> OAuthCredential:
        """Refresh now (under the lock). Keeps the old refresh token when no new one comes."""
        validate_id(credential_id, "credential_id")
        await self._token(credential_id, force=True)
        return await self.get_credential(credential_id)

    async def refresh_if_due(self, credential_id: str) -> str:
        """For a refresh worker: refresh the credential if its token is within this manager's
        lead, through the same lock, fence check and compare-and-set commit as
        :meth:`get_access_token`; never waits for another holder, never falls back.

        Returns ``"fresh"`` (not due), ``"refreshed"``, ``"busy"`` (another replica holds the
        lock: its refresh counts), ``"abandoned"`` (the lock was lost before sending, or a
        newer token was stored meanwhile) or ``"no-refresh"`` (the provider issued no refresh
        token). Raises :class:`ReauthRequiredError`, :class:`CredentialNotFoundError`, and
        :class:`OAuthProviderError` when the request failed (the caller may retry).
        """
        validate_id(credential_id, "credential_id")
        owner = self._owner()
        got = await self._acquire(credential_id, owner, "get", None)
        code = str(got["code"])
        if code == "locked":
            done = await self._refresh_locked(credential_id, owner, got)
            return "refreshed" if done is not None else "abandoned"
        if code == "missing":
            raise CredentialNotFoundError(credential_id)
        if code == "needs-reauth":
            raise ReauthRequiredError(f"credential {credential_id!r} needs a new login")
        return code

    async def _token(self, cid: str, *, force: bool) -> AccessToken:
        """Return the token, refreshing it under the lock (``force``: always) or waiting for
        the replica that holds the lock. A token someone else committed while we waited is
        used as it is (the script treats it as fresh): refreshing it again would be a storm."""
        deadline = asyncio.get_running_loop().time() + self.config.wait_timeout_s
        backoff = 0.02
        seen_version: int | None = None
        waited = False
        while True:
            owner = self._owner()
            got = await self._acquire(cid, owner, "force" if force else "get", seen_version)
            if seen_version is None:
                seen_version = got["version"]
            elif force and got["version"] > seen_version and got["code"] != "needs-reauth":
                # Someone else refreshed while we waited: that is the refresh we asked for.
                force = False
                continue
            if got["code"] == "locked":
                refreshed = await self._refresh_or_fall_back(cid, owner, got, force=force)
                if refreshed is not None:
                    return refreshed
                force, waited = False, True  # someone else stored a newer token: read it
                continue
            if got["code"] != "busy":
                return self._settle(cid, got, force=force, waited=waited)
            waited = True
            await self._wait_for_holder(cid, got, deadline, backoff)
            backoff = min(backoff * 2, 0.1)

    def _read(self, cid: str, got: dict[str, Any], *, waited: bool) -> AccessToken:
        """The token an acquire reply carries."""
        expires = got["expires_at_ms"]
        return AccessToken(
            token=self._open(cid, "access_token", got["access"]),
            expires_at_ms=expires if expires >= 0 else None,
            version=got["version"],
            waited=waited,
        )

    def _settle(
        self, cid: str, got: dict[str, Any], *, force: bool, waited: bool = False
    ) -> AccessToken:
        """The answer to an acquire that needs no refresh from us, or the error it means."""
        code = got["code"]
        if code == "missing":
            raise CredentialNotFoundError(cid)
        if code == "needs-reauth":
            raise ReauthRequiredError(f"credential {cid!r} needs a new login")
        # no-refresh: the provider issued no refresh token; the token serves until it expires.
        if code == "fresh" or (code == "no-refresh" and got["remaining_ms"] > 0 and not force):
            return self._read(cid, got, waited=waited)
        why = "cannot be refreshed" if force else "expired"
        raise ReauthRequiredError(
            f"credential {cid!r} has no refresh token (the provider issued none) and "
            f"its access token {why}; sign in again"
        )

    async def _wait_for_holder(
        self, cid: str, got: dict[str, Any], deadline: float, backoff: float
    ) -> None:
        """Another replica holds the lock: wait for its commit (or its lock to lapse)."""
        if asyncio.get_running_loop().time() >= deadline:
            raise RefreshInProgressError(
                f"credential {cid!r} is being refreshed elsewhere; gave up after "
                f"{self.config.wait_timeout_s:g} s"
            )
        await self._sleep(min(backoff, max(0.001, got["wait_ms"] / 1000)))

    async def _refresh_or_fall_back(
        self, cid: str, owner: str, got: dict[str, Any], *, force: bool
    ) -> AccessToken | None:
        """Refresh under the lock we hold; after a transient failure (timeout, 5xx) the current
        token serves if it has ``_FALLBACK_MIN_MS`` left. ``None``: a newer token is stored."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self._refresh_locked(cid, owner, got)
        except OAuthProviderError as exc:
            left_ms = got["remaining_ms"] - int((loop.time() - started) * 1000)
            if force or left_ms < _FALLBACK_MIN_MS:
                raise
            log.warning(
                "refresh of %s failed (%s); the current token stays valid %d s more",
                cid,
                exc,
                left_ms // 1000,
                extra={"credential": cid},
            )
            return self._read(cid, got, waited=True)

    async def _refresh_locked(
        self, cid: str, owner: str, got: dict[str, Any]
    ) -> AccessToken | None:
        """Refresh while holding the lock. ``None`` when nothing was sent because the lock was
        lost meanwhile, or a newer token was already stored.

        Right before sending, ``oauth_hold`` checks that the lock is still ours (owner and
        fence) and the credential unchanged: a holder that stalled after taking the lock must
        not present a refresh token that someone else may have used since (the provider would
        revoke the grant). The lock is renewed while the request is in flight. Every way out
        releases the lock: the reauth and commit scripts do it themselves, anything else (an
        error, a cancellation, an abandoned attempt) runs ``oauth_release``."""
        released = False
        try:
            prov = self.provider(str(got["provider"]))
            refresh = self._open(cid, "refresh_token", str(got["refresh"])).reveal()
            await self._before_send(cid)
            if not await self._hold(cid, owner, got):
                log.warning(
                    "refresh of %s abandoned before sending: the lock was lost",
                    cid,
                    extra={"credential": cid},
                )
                return None
            try:
                async with self._renewing(cid, owner, got):
                    tokens = await _http.token_request(
                        self._http,
                        prov,
                        {"grant_type": "refresh_token", "refresh_token": refresh},
                        what=f"token refresh at {prov.name}",
                        timeout_s=self.config.refresh_timeout_s,
                        secrets=[refresh],
                    )
            except OAuthProviderError as exc:
                if exc.error != "invalid_grant":
                    raise
                reply = await self._reauth(cid, owner, got, exc, refresh)
                released = True
                _raise_unless_refreshed(cid, prov.name, reply, exc)
                return None
            reply = await self._commit(cid, owner, got, tokens)
            released = True
            return self._committed(cid, reply, tokens)
        finally:
            if not released:
                release = self.store.run("oauth_release", [self.keys.lock(cid)], [owner])
                await asyncio.shield(release)

    async def _before_send(self, cid: str) -> None:
        """Called while holding the lock, right before the fence check. Does nothing; the test
        support overrides it to stall a holder exactly there."""

    async def _hold(self, cid: str, owner: str, got: dict[str, Any]) -> bool:
        """Whether the lock is still ours (owner, fence, unchanged version); extends it if so."""
        k = self.keys
        reply = await self.store.run(
            "oauth_hold",
            [k.credential(cid), k.lock(cid)],
            [owner, got["fence"], got["version"], int(self.config.lock_ttl_s * 1000)],
        )
        return int(reply[0]) == 1

    @contextlib.asynccontextmanager
    async def _renewing(self, cid: str, owner: str, got: dict[str, Any]) -> AsyncIterator[None]:
        """Renew the lock every ``lock_ttl_s / 3`` while the body (the request) runs. A lost
        lock cannot take back a request already sent: the commit's compare-and-set decides."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.config.lock_ttl_s / 3)
                try:
                    if not await self._hold(cid, owner, got):
                        log.warning(
                            "lost the refresh lock of %s while its request ran",
                            cid,
                            extra={"credential": cid},
                        )
                        return
                except CoordinatorError as exc:
                    log.warning(
                        "could not renew the refresh lock of %s: %s",
                        cid,
                        exc,
                        extra={"credential": cid},
                    )

        task = asyncio.get_running_loop().create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _reauth(
        self, cid: str, owner: str, got: dict[str, Any], exc: OAuthProviderError, refresh: str
    ) -> Any:
        """``invalid_grant``: mark the credential unless another replica refreshed it
        meanwhile (``oauth_reauth``, which releases the lock); its reply."""
        k = self.keys
        return await self.store.run(
            "oauth_reauth",
            [k.credential(cid), k.expiry, k.lock(cid), k.events],
            [cid, owner, got["version"], redact(str(exc), [refresh])],
        )

    @staticmethod
    def _committed(cid: str, reply: Any, tokens: _http.TokenSet) -> AccessToken | None:
        """The token a commit stored, ``None`` when a newer one was stored first."""
        if int(reply[0]) == 1:
            log.info(
                "refreshed credential %s (version %s)",
                cid,
                reply[1],
                extra={"credential": cid, "event": "token:refreshed"},
            )
            expires = int(reply[2])
            return AccessToken(
                token=tokens.access_token,
                expires_at_ms=expires if expires >= 0 else None,
                version=int(reply[1]),
                waited=True,
            )
        if reply[1] == "missing":
            raise CredentialNotFoundError(cid)
        return None

    async def _commit(
        self, cid: str, owner: str, got: dict[str, Any], tokens: _http.TokenSet
    ) -> Any:
        """Store a refresh's tokens (encrypted) by compare-and-set on the version it began from."""
        fields: dict[str, str] = {
            "access_token": self._seal(cid, "access_token", tokens.access_token),
            "token_type": tokens.token_type,
        }
        if tokens.refresh_token is not None:
            fields["refresh_token"] = self._seal(cid, "refresh_token", tokens.refresh_token)
        if tokens.id_token is not None:
            fields["id_token"] = self._seal(cid, "id_token", tokens.id_token)
        if tokens.scope is not None:
            fields["scopes"] = " ".join(tokens.scope)
        k = self.keys
        return await self.store.run(
            "oauth_commit",
            [k.credential(cid), k.expiry, k.lock(cid), k.events],
            [
                cid,
                owner,
                got["fence"],
                got["version"],
                orjson.dumps(fields).decode(),
                tokens.expires_in_ms,
            ],
        )

    async def close(self) -> None:
        """Stop the event reader and close the HTTP client (if this manager made it)."""
        pending = [t for t in self._inflight.values() if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.events.close()
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> OAuthManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _show_url(url: str, *, open_browser: bool) -> None:
    """Open the browser on ``url`` (in a thread: it may block), else print it."""
    opened = False
    if open_browser:
        import webbrowser

        opened = await asyncio.to_thread(webbrowser.open, url)
    # Printed even when a browser opened: it may have opened somewhere the user is not.
    lead = "Opened your browser; if it did not, open" if opened else "Open"
    print(f"{lead} this URL to sign in:")
    print(url)
