"""The device authorization grant (RFC 8628): sign a headless server in from another device.

:func:`request_device_code` asks the provider for a device code and a user code;
:func:`poll_for_tokens` polls the token endpoint until the user approves, refuses or the code
expires (``authorization_pending`` waits ``interval``, ``slow_down`` adds 5 s, §3.5; the last
wait ends at the code's deadline, so the user can approve until the very end). The manager
stores the resulting tokens like those of any other login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import httpx

from ..errors import (
    ConfigError,
    LoginTimeoutError,
    OAuthAuthorizationError,
    OAuthProviderError,
)
from ..store.secrets import Secret
from . import _http
from .providers import OAuthProvider
from .types import DeviceAuthorization

__all__ = ["DEVICE_GRANT", "poll_for_tokens", "request_device_code"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_SLOW_DOWN_S = 5.0


async def request_device_code(
    http: httpx.AsyncClient,
    prov: OAuthProvider,
    scopes: Iterable[str] | None,
    *,
    timeout_s: float,
) -> DeviceAuthorization:
    """POST the device authorization request; validate and return its answer."""
    if prov.device_authorization_endpoint is None:
        raise ConfigError(
            "device_authorization_endpoint", f"provider {prov.name!r} has no device flow"
        )
    chosen = tuple(scopes) if scopes is not None else prov.scopes
    what = f"device authorization at {prov.name}"
    body = await _http.post_form(
        http,
        prov,
        prov.device_authorization_endpoint,
        {"scope": " ".join(chosen)} if chosen else {},
        what=what,
        timeout_s=timeout_s,
    )
    device_code, user_code = body.get("device_code"), body.get("user_code")
    uri = body.get("verification_uri") or body.get("verification_url")  # Google's spelling
    if not all(isinstance(v, str) and v for v in (device_code, user_code, uri)):
        raise OAuthProviderError(
            f"{what}: the response lacks device_code, user_code or verification_uri"
        )
    complete = body.get("verification_uri_complete")
    expires_in = body.get("expires_in", 600)
    interval = body.get("interval", 5)
    numbers = (expires_in, interval)
    if any(isinstance(n, bool) or not isinstance(n, int | float) or n <= 0 for n in numbers):
        raise OAuthProviderError(f"{what}: invalid expires_in or interval")
    return DeviceAuthorization(
        provider=prov.name,
        user_code=str(user_code),
        verification_uri=str(uri),
        verification_uri_complete=complete if isinstance(complete, str) else None,
        expires_in_s=float(expires_in),
        interval_s=max(1.0, float(interval)),
        scopes=chosen,
        device_code=Secret(str(device_code)),
    )


async def poll_for_tokens(
    http: httpx.AsyncClient,
    prov: OAuthProvider,
    device: DeviceAuthorization,
    *,
    timeout_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] | None = None,
) -> _http.TokenSet:
    """Poll until the user approves; :class:`OAuthAuthorizationError` if refused or expired.

    Polls every ``interval`` (5 s more after each ``slow_down``) until the code's deadline; the
    last wait is cut short at the deadline, so a ``slow_down`` near the end never makes us give
    up while the user can still approve. ``clock`` (seconds; default the event loop's) and
    ``sleep`` are injectable for tests.
    """
    now = clock or asyncio.get_running_loop().time
    deadline = now() + device.expires_in_s
    interval = device.interval_s
    code = device.device_code.reveal()
    form = {"grant_type": DEVICE_GRANT, "device_code": code}
    while True:
        try:
            return await _http.token_request(
                http,
                prov,
                form,
                what=f"device token poll at {prov.name}",
                timeout_s=timeout_s,
                secrets=[code],
            )
        except OAuthProviderError as exc:
            interval = _next_interval(exc, interval)
        left = deadline - now()
        if left <= 0:
            raise LoginTimeoutError(f"the device code for {prov.name} expired unapproved")
        await sleep(min(interval, left))


def _next_interval(exc: OAuthProviderError, interval: float) -> float:
    """The wait before the next poll after the error ``exc`` (RFC 8628 §3.5), or re-raise."""
    if exc.error == "authorization_pending":
        return interval
    if exc.error == "slow_down":
        return interval + _SLOW_DOWN_S
    if exc.error in ("access_denied", "expired_token"):
        raise OAuthAuthorizationError(exc.error, str(exc)) from exc
    raise exc
