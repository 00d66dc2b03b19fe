"""The one boundary between coordinator and the providers' HTTP endpoints.

Every request to an authorization server goes through here: httpx errors become
:class:`~coordinator.errors.OAuthProviderError` (cause kept, ``raise ... from exc``), bodies
are validated, and no message ever carries a token, code, verifier or client secret: provider
text is passed through :func:`~coordinator.secrets.redact` with the values we sent as known
secrets, and bodies that are not what we expect are described, never quoted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson

from ..errors import OAuthProviderError
from ..store.secrets import Secret, redact

if TYPE_CHECKING:
    from .providers import OAuthProvider

__all__ = ["TokenSet", "get_json", "post_form", "revoke_token", "token_request", "userinfo"]

_USER_AGENT = "coordinator-oauth/0.1"
_MAX_BODY = 1_000_000


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A validated token response. Tokens are :class:`Secret` (masked in ``repr``)."""

    access_token: Secret
    token_type: str = "Bearer"
    expires_in_ms: int = -1
    refresh_token: Secret | None = None
    id_token: Secret | None = None
    scope: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _describe(response: httpx.Response) -> str:
    ctype = response.headers.get("content-type", "no content type").split(";")[0]
    return f"HTTP {response.status_code} ({ctype}, {len(response.content)} bytes)"


def _client(http: httpx.AsyncClient | None) -> httpx.AsyncClient:
    return http if http is not None else httpx.AsyncClient()


async def _send(
    http: httpx.AsyncClient | None,
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    client = _client(http)
    all_headers = {"Accept": "application/json", "User-Agent": _USER_AGENT, **(headers or {})}
    try:
        return await client.request(
            method,
            url,
            data=dict(data) if data is not None else None,
            headers=all_headers,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
        )
    except httpx.TimeoutException as exc:
        raise OAuthProviderError(f"{what}: no answer within {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise OAuthProviderError(f"{what}: request failed ({type(exc).__name__})") from exc
    finally:
        if http is None:
            await client.aclose()


def _json_object(response: httpx.Response, what: str) -> dict[str, Any] | None:
    if len(response.content) > _MAX_BODY:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _raise_error_response(
    response: httpx.Response, what: str, known: Iterable[str]
) -> OAuthProviderError:
    body = _json_object(response, what)
    error = body.get("error") if body else None
    if isinstance(error, str) and error:
        code = redact(error, known, limit=60)
        description = body.get("error_description") if body else None
        text = f": {redact(description, known)}" if isinstance(description, str) else ""
        return OAuthProviderError(
            f"{what}: provider answered {code!r} (HTTP {response.status_code}){text}",
            error=code,
            status=response.status_code,
        )
    return OAuthProviderError(
        f"{what}: provider answered {_describe(response)}", status=response.status_code
    )


def _client_auth(
    provider: OAuthProvider, form: dict[str, str]
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Add client authentication to a token-endpoint form. Returns form, headers, secrets."""
    client_id = provider.require_client()
    headers: dict[str, str] = {}
    known: list[str] = []
    method = provider.token_endpoint_auth_method
    secret = provider.client_secret.reveal() if provider.client_secret is not None else ""
    if secret:
        known.append(secret)
    if method == "client_secret_basic":
        # RFC 6749 §2.3.1: both parts form-urlencoded before Base64.
        pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif method == "client_secret_post":
        form["client_id"] = client_id
        form["client_secret"] = secret
    else:
        form["client_id"] = client_id
    return form, headers, known


async def post_form(
    http: httpx.AsyncClient | None,
    provider: OAuthProvider,
    url: str,
    form: Mapping[str, str],
    *,
    what: str,
    timeout_s: float,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """POST an authenticated form to one of the provider's endpoints; return its JSON object."""
    body, headers, known = _client_auth(provider, dict(form))
    known.extend(s for s in secrets if s)
    response = await _send(
        http, "POST", url, what=what, timeout_s=timeout_s, data=body, headers=headers
    )
    if response.status_code != 200:
        raise _raise_error_response(response, what, known)
    parsed = _json_object(response, what)
    if parsed is None:
        raise OAuthProviderError(
            f"{what}: expected a JSON object, got {_describe(response)}",
            status=response.status_code,
        )
    if isinstance(parsed.get("error"), str):
        # GitHub answers errors with HTTP 200.
        raise _raise_error_response(response, what, known)
    return parsed


def _parse_tokens(body: dict[str, Any], what: str) -> TokenSet:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthProviderError(f"{what}: the token response has no access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not token_type:
        raise OAuthProviderError(f"{what}: the token response has an invalid token_type")
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if expires_in is None:
        expires_ms = -1
    elif isinstance(expires_in, int) and not isinstance(expires_in, bool) and expires_in >= 0:
        expires_ms = expires_in * 1000
    elif isinstance(expires_in, float) and expires_in >= 0:
        expires_ms = int(expires_in * 1000)
    else:
        raise OAuthProviderError(f"{what}: the token response has an invalid expires_in")
    refresh = body.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh):
        raise OAuthProviderError(f"{what}: the token response has an invalid refresh_token")
    id_token = body.get("id_token")
    scope = body.get("scope")
    scopes: tuple[str, ...] | None = None
    if isinstance(scope, str):
        scopes = tuple(scope.replace(",", " ").split())
    secret_names = {"access_token", "refresh_token", "id_token", "token_type", "expires_in"}
    extra = {
        k: v
        for k, v in body.items()
        if k not in secret_names
        and k != "scope"
        and isinstance(v, str | int | float | bool)
        and "token" not in k
    }
    return TokenSet(
        access_token=Secret(access),
        token_type=token_type,
        expires_in_ms=expires_ms,
        refresh_token=Secret(refresh) if isinstance(refresh, str) else None,
        id_token=Secret(id_token) if isinstance(id_token, str) and id_token else None,
        scope=scopes,
        extra=extra,
    )


async def token_request(
    http: httpx.AsyncClient | None,
    provider: OAuthProvider,
    form: Mapping[str, str],
    *,
    what: str,
    timeout_s: float,
    secrets: Iterable[str] = (),
) -> TokenSet:
    """Call the token endpoint (with client authentication) and validate the token response."""
    body = await post_form(
        http,
        provider,
        provider.token_endpoint,
        form,
        what=what,
        timeout_s=timeout_s,
        secrets=secrets,
    )
    return _parse_tokens(body, what)


async def userinfo(
    http: httpx.AsyncClient | None, url: str, access_token: str, *, timeout_s: float
) -> dict[str, Any]:
    """GET the user-info endpoint with the access token; return its JSON object."""
    what = "user info"
    response = await _send(
        http,
        "GET",
        url,
        what=what,
        timeout_s=timeout_s,
        headers={"Authorization": f"Bearer {access_token}"},
    )
    if response.status_code != 200:
        raise _raise_error_response(response, what, [access_token])
    parsed = _json_object(response, what)
    if parsed is None:
        raise OAuthProviderError(
            f"{what}: expected a JSON object, got {_describe(response)}",
            status=response.status_code,
        )
    return parsed


async def revoke_token(
    http: httpx.AsyncClient | None,
    provider: OAuthProvider,
    token: str,
    hint: str,
    *,
    timeout_s: float,
) -> None:
    """Revoke one token at the provider's RFC 7009 endpoint (HTTP 200 means revoked)."""
    url = provider.revocation_endpoint
    if url is None:
        raise OAuthProviderError(f"provider {provider.name!r} has no revocation endpoint")
    what = f"revocation at {provider.name}"
    form, headers, known = _client_auth(provider, {"token": token, "token_type_hint": hint})
    known.append(token)
    response = await _send(
        http, "POST", url, what=what, timeout_s=timeout_s, data=form, headers=headers
    )
    if response.status_code != 200:
        raise _raise_error_response(response, what, known)


async def get_json(
    http: httpx.AsyncClient | None, url: str, *, timeout_s: float, what: str
) -> dict[str, Any]:
    """GET a public JSON document (discovery)."""
    response = await _send(http, "GET", url, what=what, timeout_s=timeout_s)
    parsed = _json_object(response, what) if response.status_code == 200 else None
    if parsed is None:
        raise OAuthProviderError(f"{what}: expected a JSON object, got {_describe(response)}")
    return parsed
