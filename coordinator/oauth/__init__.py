"""OAuth 2.0 sign-in to AI providers, with credentials shared by every replica through Redis.

* :class:`OAuthManager`: PKCE logins (loopback callback server or a web app's own callback
  route, which may be on any replica), the device grant, encrypted credentials, refresh under
  a Redis lock, revocation, events.
* :class:`OAuthProvider`, :func:`preset`, :data:`PRESETS`: provider configuration, presets and
  OpenID Connect discovery.
* :class:`LoopbackCallbackServer`: the one-shot 127.0.0.1 server behind :meth:`OAuthManager.login`.
"""

from __future__ import annotations

from .callback_server import LoopbackCallbackServer
from .manager import OAuthManager
from .providers import PRESETS, ClientAuthMethod, OAuthProvider, preset
from .types import (
    AccessToken,
    AuthorizationRequest,
    DeviceAuthorization,
    OAuthConfig,
    OAuthCredential,
)

__all__ = [
    "PRESETS",
    "AccessToken",
    "AuthorizationRequest",
    "ClientAuthMethod",
    "DeviceAuthorization",
    "LoopbackCallbackServer",
    "OAuthConfig",
    "OAuthCredential",
    "OAuthManager",
    "OAuthProvider",
    "preset",
]
