"""httpx transports that do the coordinator's work inside each request of an SDK.

Per request, :class:`CoordinatorTransport` (async) and :class:`SyncCoordinatorTransport`
(sync) take a credential from a :class:`~coordinator.sdk.credentials.CredentialSource`, send
the request with it, classify the answer with :func:`coordinator.classify_response` /
:func:`coordinator.classify_exception` and report it. An answer the credential or its
provider is to blame for (429, 402, 401/403, 5xx, a connection error: every kind but
``caller``, the rule of ``ModelProfileManager.execute``) is retried with the next credential,
up to ``max_attempts``; when nothing is left, the last answer is returned (or its error
raised) for the SDK to turn into its usual exception.

A successful answer is returned at once and reported when its body ends (for a streamed
answer, when the stream ends; an error mid-stream is reported as a failure), so the report
of a stream says whether the stream worked.

The rules live once, in :class:`_Attempts`; the two transports only drive it, one with
``await``, the other through a :data:`Runner` (the event loop the managers live on, e.g.
:class:`BackgroundLoop`). The transports work with ``httpx`` and with ``httpx2`` (which newer
SDKs use): they only touch the request and response objects they are given.
"""

from __future__ import annotations

import enum
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx
import orjson

from .. import (
    AllProfilesUnavailableError,
    Classification,
    ConfigError,
    CoordinatorError,
    FailureKind,
    NoProfileAvailableError,
    classify_exception,
    classify_response,
)
from .credentials import CredentialSource, Lease

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "SESSION_HEADER",
    "ApiStyle",
    "CoordinatorTransport",
    "Runner",
    "SyncCoordinatorTransport",
]

log = logging.getLogger("coordinator.sdk")

T = TypeVar("T")

SESSION_HEADER = "x-coordinator-session"
"""A request header naming the session (sticky key or profile); removed before sending."""

# Headers of the SDK's request that are not forwarded: every place a credential may sit (the
# SDK put its placeholder there), the session header, and what httpx recomputes for the
# outbound request (its host may change).
_DROPPED = frozenset(
    {"authorization", "x-api-key", "api-key", SESSION_HEADER, "host", "content-length"}
)


@dataclass(frozen=True, slots=True)
class ApiStyle:
    """How an API takes its key (``header: prefix + key``) and its official base URL, the
    prefix a model profile's ``base_url`` replaces."""

    header: str
    prefix: str
    base_url: str


OPENAI = ApiStyle("authorization", "Bearer ", "https://api.openai.com/v1")
"""OpenAI and OpenAI-compatible APIs: ``Authorization: Bearer <key>``."""

ANTHROPIC = ApiStyle("x-api-key", "", "https://api.anthropic.com/v1")
"""Anthropic's API: ``x-api-key: <key>`` (its SDK requests ``/v1/messages``)."""


class Runner(Protocol):
    """Runs a coroutine to completion on the event loop the managers live on."""

    def __call__(self, coro: Coroutine[Any, Any, T], /) -> T:
        """Run ``coro`` there and return its result (or raise its exception)."""
        ...


# Reports a successful answer once its body has ended (None) or failed (the error).
_Finish = Callable[[BaseException | None], Coroutine[Any, Any, None]]


class _Outcome(enum.Enum):
    SUCCESS = "success"  # return it; report when its body ends
    FINAL = "final"  # return it as it is (a caller error)
    RETRY = "retry"  # reported; try the next credential


def _model_of(body: bytes) -> str | None:
    """The ``model`` of a JSON request body, if it names one."""
    if not body.startswith(b"{"):
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def _describe(error: BaseException) -> str:
    """The reported text of an error (the managers redact token-shaped text before storing)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Attempts:
    """The attempts of one SDK request: which credential, what to send, what to report and
    whether to go on. Every rule of the transports is here; they only move bytes."""

    def __init__(self, settings: _Settings, request: Any) -> None:
        self.settings = settings
        self.request = request
        self.body: bytes = request.content
        self.model = _model_of(self.body)
        self.session_id: str | None = request.headers.get(SESSION_HEADER)
        self.tried: list[str] = []
        self.last: Any = None  # the last failed response, or
        self.error: Exception | None = None  # the last error raised by the inner transport
        self.success = Classification(None)  # the verdict on the successful answer

    async def next(self) -> Lease | None:
        """The credential for the next attempt, or ``None`` when nothing is left to try."""
        if len(self.tried) >= self.settings.max_attempts:
            return None
        try:
            lease = await self.settings.source.lease(self.model, self.session_id, self.tried)
        except (NoProfileAvailableError, AllProfilesUnavailableError):
            if not self.tried:
                raise  # nothing at all: the coordinator's error (an SDK may wrap it)
            return None
        self.tried.append(lease.id)
        return lease

    def outbound(self, lease: Lease) -> Any:
        """The request to send with ``lease``: its credential header, its base URL."""
        style = self.settings.style
        headers = [
            (name, value)
            for name, value in self.request.headers.multi_items()
            if name.lower() not in _DROPPED
        ]
        if lease.secret is not None:
            headers.append((style.header, style.prefix + lease.secret.reveal()))
        return type(self.request)(
            self.request.method,
            self._url(lease.base_url),
            headers=headers,
            content=self.body,
            extensions=self.request.extensions,
        )

    def _url(self, base_url: str | None) -> Any:
        if base_url is None:
            return self.request.url
        url = str(self.request.url)
        api = self.settings.api_base
        if not (url == api or url.startswith((api + "/", api + "?"))):
            # Sending a profile's key to a URL we cannot map would send it somewhere unknown.
            raise ConfigError("api_base", f"the SDK requested {url}, which is not under {api}")
        return base_url.rstrip("/") + url[len(api) :]

    async def settle(self, lease: Lease, response: Any) -> _Outcome:
        """Classify and report an answer (a failed one has been read: its body tells the
        kind); say what to do with it."""
        status = int(response.status_code)
        body = response.content if status >= 400 else None
        verdict = classify_response(status, response.headers.multi_items(), body, now=time.time())
        if verdict.ok:
            self.success = verdict
            return _Outcome.SUCCESS
        if verdict.kind is FailureKind.CALLER:
            await lease.release()
            return _Outcome.FINAL
        await lease.failed(verdict, f"HTTP {status} ({verdict.reason})")
        log.info("%s failed (%s, HTTP %d); trying another", lease.id, verdict.kind, status,
                 extra={"profile": lease.id, "kind": str(verdict.kind)})  # fmt: skip
        self.last, self.error = response, None
        return _Outcome.RETRY

    async def failed_with(self, lease: Lease, error: Exception) -> bool:
        """The inner transport raised: report it; return whether to try another credential
        (``False``: re-raise it, it is the caller's)."""
        verdict = classify_exception(error, now=time.time())
        if verdict.kind is FailureKind.CALLER:
            await lease.release()
            return False
        await lease.failed(verdict, _describe(error))
        log.info("%s failed (%s, %s); trying another", lease.id, verdict.kind,
                 type(error).__name__,
                 extra={"profile": lease.id, "kind": str(verdict.kind)})  # fmt: skip
        self.last, self.error = None, error
        return True

    def give_up(self) -> Any:
        """Nothing is left: the last failed answer, for the SDK to raise its own error."""
        if self.error is not None:
            raise self.error
        return self.last

    def finisher(self, lease: Lease) -> _Finish:
        """What reports the successful answer once its body has ended (``None``) or failed."""
        verdict = self.success

        async def finish(error: BaseException | None) -> None:
            try:
                if error is None:
                    await lease.succeeded(verdict)
                else:
                    failure = classify_exception(error, now=time.time())
                    if failure.ok or failure.kind is FailureKind.CALLER:
                        failure = Classification(FailureKind.UNKNOWN, None, "stream broken")
                    await lease.failed(failure, _describe(error))
            except CoordinatorError as exc:
                # The answer has reached the application already; a report that could not be
                # made (Redis away) must not turn it into an error.
                log.warning("%s: the outcome could not be reported (%s)", lease.id,
                            type(exc).__name__, extra={"profile": lease.id})  # fmt: skip

        return finish


@dataclass(frozen=True, slots=True)
class _Settings:
    source: CredentialSource
    style: ApiStyle
    api_base: str
    max_attempts: int


def _settings(
    source: CredentialSource, api: ApiStyle, api_base: str | None, max_attempts: int
) -> _Settings:
    if not isinstance(api, ApiStyle):
        raise ConfigError("api", "must be coordinator.sdk.OPENAI, ANTHROPIC or an ApiStyle")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError("max_attempts", "must be an integer >= 1")
    base = (api_base or api.base_url).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError("api_base", f"{base!r} is not an http(s) URL")
    return _Settings(source, api, base, max_attempts)


# -- streams that report when they end ----------------------------------------------------


class _AsyncReporting:
    """An async response body that reports once it has ended, failed or been closed."""

    def __init__(self, inner: Any, finish: Callable[[BaseException | None], Awaitable[None]]):
        self._inner = inner
        self._finish: Callable[[BaseException | None], Awaitable[None]] | None = finish

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            await self._report(exc)
            raise
        await self._report(None)

    async def aclose(self) -> None:
        """Close the body; a body closed before its end still worked (the reader stopped)."""
        try:
            await self._inner.aclose()
        finally:
            await self._report(None)

    async def _report(self, error: BaseException | None) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            await finish(error)


class _SyncReporting:
    """A sync response body that reports (through ``finish``) once it has ended or failed."""

    def __init__(self, inner: Any, finish: Callable[[BaseException | None], None]):
        self._inner = inner
        self._finish: Callable[[BaseException | None], None] | None = finish

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except Exception as exc:
            self._report(exc)
            raise
        self._report(None)

    def close(self) -> None:
        """Close the body; a body closed before its end still worked (the reader stopped)."""
        try:
            self._inner.close()
        finally:
            self._report(None)

    def _report(self, error: BaseException | None) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish(error)


@functools.cache
def _stream_class(wrapper: type, package: str, base_name: str) -> type:
    """``wrapper`` made a subclass of ``<package>.<base_name>``: the client (httpx or httpx2)
    checks that a response's stream is one of its own byte streams."""
    base = getattr(sys.modules[package], base_name)
    return type(wrapper.__name__, (wrapper, base), {})


def _package(request: Any) -> str:
    """The package of the client that made ``request`` (``httpx`` or ``httpx2``): the one
    whose byte stream class the response's stream must be."""
    return type(request).__module__.partition(".")[0]


# -- the transports -----------------------------------------------------------------------


class CoordinatorTransport(httpx.AsyncBaseTransport):
    """An async httpx transport that rotates credentials and fails over inside each request.

    ``source``: :class:`~coordinator.sdk.PoolCredentials` or
    :class:`~coordinator.sdk.ModelCredentials`. ``api``: :data:`OPENAI` or :data:`ANTHROPIC`
    (the credential header). ``api_base``: the SDK's base URL a model profile's ``base_url``
    replaces (default: the API's official one). ``inner``: what sends the bytes (default
    ``httpx.AsyncHTTPTransport()``; give an ``httpx2`` one to an ``httpx2`` client).
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        api: ApiStyle = OPENAI,
        api_base: str | None = None,
        max_attempts: int = 3,
        inner: Any = None,
    ) -> None:
        self._settings = _settings(source, api, api_base, max_attempts)
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()

    def __repr__(self) -> str:
        return f"CoordinatorTransport({self._settings.source!r})"

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request`` with one credential after another until one answer is final."""
        await request.aread()
        attempts = _Attempts(self._settings, request)
        while (lease := await attempts.next()) is not None:
            try:
                response = await self._inner.handle_async_request(attempts.outbound(lease))
            except Exception as exc:
                if not await attempts.failed_with(lease, exc):
                    raise
                continue
            if response.status_code >= 400:
                await response.aread()  # an error body: small, and it tells the kind
            outcome = await attempts.settle(lease, response)
            if outcome is _Outcome.SUCCESS:
                cls = _stream_class(_AsyncReporting, _package(request), "AsyncByteStream")
                response.stream = cls(response.stream, attempts.finisher(lease))
            if outcome is not _Outcome.RETRY:
                return response
        return attempts.give_up()

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()


class SyncCoordinatorTransport(httpx.BaseTransport):
    """The sync twin of :class:`CoordinatorTransport`, for ``openai.OpenAI`` and
    ``anthropic.Anthropic``: the HTTP exchange runs in the calling thread, the managers'
    calls through ``run`` on the event loop they live on (see :class:`BackgroundLoop`)."""

    def __init__(
        self,
        source: CredentialSource,
        *,
        run: Runner,
        api: ApiStyle = OPENAI,
        api_base: str | None = None,
        max_attempts: int = 3,
        inner: Any = None,
    ) -> None:
        if not callable(run):
            raise ConfigError("run", "must run a coroutine on the managers' event loop")
        self._settings = _settings(source, api, api_base, max_attempts)
        self._run = run
        self._inner = inner if inner is not None else httpx.HTTPTransport()

    def __repr__(self) -> str:
        return f"SyncCoordinatorTransport({self._settings.source!r})"

    def handle_request(self, request: Any) -> Any:
        """Send ``request`` with one credential after another until one answer is final."""
        request.read()
        attempts = _Attempts(self._settings, request)
        while (lease := self._run(attempts.next())) is not None:
            try:
                response = self._inner.handle_request(attempts.outbound(lease))
            except Exception as exc:
                if not self._run(attempts.failed_with(lease, exc)):
                    raise
                continue
            if response.status_code >= 400:
                response.read()  # an error body: small, and it tells the kind
            outcome = self._run(attempts.settle(lease, response))
            if outcome is _Outcome.SUCCESS:
                cls = _stream_class(_SyncReporting, _package(request), "SyncByteStream")
                finish = self._in_loop(attempts.finisher(lease))
                response.stream = cls(response.stream, finish)
            if outcome is not _Outcome.RETRY:
                return response
        return attempts.give_up()

    def _in_loop(self, finish: _Finish) -> Callable[[BaseException | None], None]:
        """``finish`` run on the managers' loop, from the thread that reads the body."""
        return lambda error: self._run(finish(error))

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()
