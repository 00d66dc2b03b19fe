"""OAuth providers: how to reach an authorization server, presets, and OIDC discovery.

An :class:`OAuthProvider` is plain configuration (endpoints, client, scopes, PKCE, extra
authorization parameters). :data:`PRESETS` holds the well-known providers without a client id;
:func:`preset` fills one in (every field can be overridden) and
:meth:`OAuthProvider.from_discovery` builds one from an OpenID Connect discovery document.
Endpoints of presets marked ``documented=False`` are what the providers' own command-line tools
use, not a published API (see the OAuth section of README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ..errors import ConfigError
from ..store.keys import validate_name
from ..store.secrets import Secret
from ._http import get_json

__all__ = ["PRESETS", "ClientAuthMethod", "OAuthProvider", "preset"]

ClientAuthMethod = Literal["none", "client_secret_basic", "client_secret_post"]
_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _check_endpoint(name: str, url: str | None, *, required: bool = False) -> None:
    if url is None:
        if required:
            raise ConfigError(name, "is required")
        return
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return  # a local test or development server
    raise ConfigError(name, f"{url!r} must be an https:// URL (http:// only on loopback)")


@dataclass(frozen=True, slots=True)
class OAuthProvider:
    """One OAuth 2.0 / OpenID Connect provider and this application's client there.

    * ``client_id`` (required before use) and, for a confidential client, ``client_secret``
      sent with ``token_endpoint_auth_method`` (``client_secret_basic`` or
      ``client_secret_post``; ``none`` for a public client).
    * ``scopes``: asked for when a login names none. ``use_pkce``: send an S256 challenge.
    * ``extra_authorization_params``: added to the authorization URL (e.g. Google's
      ``access_type=offline``).
    * ``issuer`` / ``require_iss``: the RFC 9207 ``iss`` parameter of the callback must equal
      ``issuer`` when sent, and must be sent when ``require_iss``.
    * ``subject_claims``: user-info claims tried in order to name the account.
    * ``documented``: whether the endpoints are publicly documented by the provider.
    """

    name: str
    token_endpoint: str
    authorization_endpoint: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = field(default=None, repr=False)
    token_endpoint_auth_method: ClientAuthMethod | None = None
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    scopes: tuple[str, ...] = ()
    use_pkce: bool = True
    extra_authorization_params: Mapping[str, str] = field(default_factory=dict)
    issuer: str | None = None
    require_iss: bool = False
    redirect_uri: str | None = None
    subject_claims: tuple[str, ...] = ("sub", "id", "email")
    documented: bool = True

    def __post_init__(self) -> None:
        validate_name(self.name, "provider")
        if isinstance(self.client_secret, str):
            object.__setattr__(self, "client_secret", Secret(self.client_secret))
        if self.client_secret is not None and not isinstance(self.client_secret, Secret):
            raise ConfigError("client_secret", "must be a string or a Secret")
        method = self.token_endpoint_auth_method
        if method is None:
            method = "client_secret_basic" if self.client_secret is not None else "none"
            object.__setattr__(self, "token_endpoint_auth_method", method)
        if method not in _AUTH_METHODS:
            raise ConfigError("token_endpoint_auth_method", f"must be one of {_AUTH_METHODS}")
        if method != "none" and self.client_secret is None:
            raise ConfigError("client_secret", f"{method} needs a client secret")
        _check_endpoint("token_endpoint", self.token_endpoint, required=True)
        for name in (
            "authorization_endpoint",
            "userinfo_endpoint",
            "revocation_endpoint",
            "device_authorization_endpoint",
        ):
            _check_endpoint(name, getattr(self, name))
        if isinstance(self.scopes, str):
            object.__setattr__(self, "scopes", tuple(self.scopes.split()))
        object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(self, "subject_claims", tuple(self.subject_claims))
        params = dict(self.extra_authorization_params)
        reserved = {"state", "code_challenge", "code_challenge_method", "client_id"} & set(params)
        if reserved:
            raise ConfigError(
                "extra_authorization_params", f"may not set {', '.join(sorted(reserved))}"
            )
        object.__setattr__(self, "extra_authorization_params", MappingProxyType(params))

    def replace(self, **changes: Any) -> OAuthProvider:
        """A copy with some fields changed (e.g. a preset with your client id)."""
        if "client_secret" in changes and "token_endpoint_auth_method" not in changes:
            changes["token_endpoint_auth_method"] = None
        return replace(self, **changes)

    def require_client(self) -> str:
        """The client id; an unconfigured provider is a :class:`ConfigError`."""
        if not self.client_id:
            raise ConfigError(
                "client_id",
                f"provider {self.name!r} has no client id: register your application with the "
                "provider and pass client_id=...",
            )
        return self.client_id

    @classmethod
    async def from_discovery(
        cls,
        issuer: str,
        *,
        name: str,
        client_id: str | None = None,
        client_secret: str | Secret | None = None,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
        **overrides: Any,
    ) -> OAuthProvider:
        """Build a provider from ``<issuer>/.well-known/openid-configuration``.

        The document's ``issuer`` must equal ``issuer`` (OpenID Connect Discovery §4.3), which
        also becomes the value the RFC 9207 ``iss`` callback parameter is checked against.
        ``overrides`` replace any discovered field.
        """
        _check_endpoint("issuer", issuer, required=True)
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await get_json(http, url, timeout_s=timeout_s, what=f"discovery of {issuer}")
        if doc.get("issuer") != issuer:
            raise ConfigError(
                "issuer",
                f"discovery document names issuer {str(doc.get('issuer'))[:200]!r}, not {issuer!r}",
            )
        token_endpoint = doc.get("token_endpoint")
        if not isinstance(token_endpoint, str):
            raise ConfigError("token_endpoint", f"discovery document of {issuer!r} has none")

        def text(key: str) -> str | None:
            value = doc.get(key)
            return value if isinstance(value, str) else None

        methods = doc.get("code_challenge_methods_supported")
        fields: dict[str, Any] = {
            "name": name,
            "issuer": issuer,
            "token_endpoint": token_endpoint,
            "authorization_endpoint": text("authorization_endpoint"),
            "userinfo_endpoint": text("userinfo_endpoint"),
            "revocation_endpoint": text("revocation_endpoint"),
            "device_authorization_endpoint": text("device_authorization_endpoint"),
            "require_iss": doc.get("authorization_response_iss_parameter_supported") is True,
            # PKCE unless the server says it supports challenge methods but not S256.
            "use_pkce": not isinstance(methods, list) or "S256" in methods,
            "scopes": ("openid",),
            "client_id": client_id,
            "client_secret": client_secret,
        }
        fields.update(overrides)
        return cls(**fields)


def _presets() -> dict[str, OAuthProvider]:
    return {
        # Not publicly documented: the endpoints and scopes Claude Code uses for Claude
        # subscriptions. Anthropic publishes no OAuth API for third-party clients.
        "anthropic": OAuthProvider(
            name="anthropic",
            authorization_endpoint="https://claude.ai/oauth/authorize",
            token_endpoint="https://console.anthropic.com/v1/oauth/token",
            scopes=("org:create_api_key", "user:profile", "user:inference"),
            documented=False,
        ),
        # Not publicly documented: the endpoints the Codex CLI uses ("Sign in with ChatGPT").
        "openai": OAuthProvider(
            name="openai",
            issuer="https://auth.openai.com",
            authorization_endpoint="https://auth.openai.com/oauth/authorize",
            token_endpoint="https://auth.openai.com/oauth/token",
            scopes=("openid", "profile", "email", "offline_access"),
            documented=False,
        ),
        # Documented: https://developers.google.com/identity/protocols/oauth2/native-app and
        # https://accounts.google.com/.well-known/openid-configuration. access_type=offline
        # with prompt=consent makes Google issue a refresh token on every login.
        "google": OAuthProvider(
            name="google",
            issuer="https://accounts.google.com",
            authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
            token_endpoint="https://oauth2.googleapis.com/token",
            userinfo_endpoint="https://openidconnect.googleapis.com/v1/userinfo",
            revocation_endpoint="https://oauth2.googleapis.com/revoke",
            device_authorization_endpoint="https://oauth2.googleapis.com/device/code",
            scopes=("openid", "email", "profile"),
            extra_authorization_params={"access_type": "offline", "prompt": "consent"},
        ),
        # Documented: https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/
        # authorizing-oauth-apps. OAuth-app tokens do not expire and come without a refresh
        # token; GitHub has no RFC 7009 revocation endpoint (its REST API deletes grants).
        "github": OAuthProvider(
            name="github",
            authorization_endpoint="https://github.com/login/oauth/authorize",
            token_endpoint="https://github.com/login/oauth/access_token",
            userinfo_endpoint="https://api.github.com/user",
            device_authorization_endpoint="https://github.com/login/device/code",
            scopes=("read:user",),
            use_pkce=False,
            subject_claims=("id", "login"),
        ),
    }


PRESETS: Mapping[str, OAuthProvider] = MappingProxyType(_presets())
"""The built-in providers, without a client id (use :func:`preset` to configure one)."""


def preset(name: str, **overrides: Any) -> OAuthProvider:
    """A built-in provider with ``overrides`` applied (at least ``client_id``).

    An unknown name is a :class:`ConfigError` listing the known ones.
    """
    base = PRESETS.get(name)
    if base is None:
        raise ConfigError(
            "provider", f"unknown provider preset {name!r}; known: {', '.join(sorted(PRESETS))}"
        )
    return base.replace(**overrides) if overrides else base
