"""The official ``openai`` and ``anthropic`` SDKs, unchanged, on the coordinator's credentials.

Both SDKs take an HTTP client (``http_client=``). The clients made here pick a pool key or a
model profile for every request, send it with that credential, classify and report the
answer, and fail over to the next credential within the request::

    client = openai.AsyncOpenAI(
        api_key="unused",  # replaced on every request
        http_client=coordinator.sdk.openai_http_client(pool),
        max_retries=0,  # the transport retries across keys; the SDK's retries would repeat it
    )

This package imports neither SDK (they stay optional): only ``httpx``.
"""

from __future__ import annotations

from .clients import (
    anthropic_http_client,
    anthropic_http_client_sync,
    credentials_of,
    openai_http_client,
    openai_http_client_sync,
)
from .credentials import CredentialSource, Lease, ModelCredentials, PoolCredentials
from .loop import BackgroundLoop
from .transport import (
    ANTHROPIC,
    OPENAI,
    SESSION_HEADER,
    ApiStyle,
    CoordinatorTransport,
    Runner,
    SyncCoordinatorTransport,
)

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "SESSION_HEADER",
    "ApiStyle",
    "BackgroundLoop",
    "CoordinatorTransport",
    "CredentialSource",
    "Lease",
    "ModelCredentials",
    "PoolCredentials",
    "Runner",
    "SyncCoordinatorTransport",
    "anthropic_http_client",
    "anthropic_http_client_sync",
    "credentials_of",
    "openai_http_client",
    "openai_http_client_sync",
]
