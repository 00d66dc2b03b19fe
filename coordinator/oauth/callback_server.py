"""The loopback callback server of command-line logins (RFC 8252 §7.3).

It binds 127.0.0.1 only (a free port unless one is configured), serves ``GET /callback``,
hands the callback to :meth:`OAuthManager.handle_callback` and answers the browser only once
that finished: success after the code exchange succeeded, else the error with every piece of
provider text HTML-escaped. It stops after one callback or when :meth:`wait` times out.
Written on asyncio streams: no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigError, CoordinatorError, LoginTimeoutError
from .types import OAuthCredential

if TYPE_CHECKING:
    from .manager import OAuthManager

__all__ = ["LoopbackCallbackServer", "render_page"]

log = logging.getLogger("coordinator.oauth")

HOST = "127.0.0.1"
PATH = "/callback"
_MAX_HEAD = 16 * 1024
_HEADERS = (
    "Content-Type: text/html; charset=utf-8\r\n"
    "Cache-Control: no-store\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
    "Connection: close\r\n"
)


def render_page(title: str, message: str) -> str:
    """A minimal HTML page; ``title`` and ``message`` are escaped here."""
    t, m = html.escape(title), html.escape(message)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{t}</title></head><body style='font-family:sans-serif;margin:3em'>"
        f"<h1>{t}</h1><p>{m}</p></body></html>"
    )


class LoopbackCallbackServer:
    """One-shot HTTP server on 127.0.0.1 that finishes a login.

    ``provider`` (optional) is passed to :meth:`OAuthManager.handle_callback`, so a callback
    whose state was issued for another provider is refused.
    """

    def __init__(
        self, manager: OAuthManager, *, provider: str | None = None, port: int = 0
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("port", "must be 0 (a free port) or 1-65535")
        self._manager = manager
        self._provider = provider
        self._port = port
        self._server: asyncio.Server | None = None
        self._result: asyncio.Future[OAuthCredential] | None = None
        self._bound: int | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._bound is None:
            raise RuntimeError("the callback server is not started")
        return self._bound

    @property
    def redirect_uri(self) -> str:
        """``http://127.0.0.1:<port>/callback``, to register as (loopback) redirect URI."""
        return f"http://{HOST}:{self.port}{PATH}"

    async def start(self) -> LoopbackCallbackServer:
        """Bind 127.0.0.1 and start serving."""
        self._result = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._serve, HOST, self._port)
        self._bound = int(self._server.sockets[0].getsockname()[1])
        return self

    async def wait(self, timeout_s: float) -> OAuthCredential:
        """The credential of the one login, or its error; :class:`LoginTimeoutError` on timeout."""
        if self._result is None:
            raise RuntimeError("the callback server is not started")
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), timeout_s)
        except TimeoutError:
            raise LoginTimeoutError(f"no login callback within {timeout_s:g} s") from None
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._result is not None and not self._result.done():
            self._result.cancel()

    async def __aenter__(self) -> LoopbackCallbackServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_HEAD:
                await self._respond(writer, 431, "Request too large", "Request too large.")
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3:
                await self._respond(writer, 400, "Bad request", "Malformed request.")
                return
            method, target, _version = parts
            if urlsplit(target).path != PATH:
                await self._respond(writer, 404, "Not found", "Nothing here.")
                return
            if method != "GET":
                await self._respond(writer, 405, "Method not allowed", "Use GET.")
                return
            await self._finish(writer, target)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def _finish(self, writer: asyncio.StreamWriter, target: str) -> None:
        result = self._result
        if result is None or result.done():
            await self._respond(writer, 409, "Already finished", "This login is already over.")
            return
        try:
            credential = await self._manager.handle_callback(target, provider=self._provider)
        except CoordinatorError as exc:
            # Messages of coordinator errors never carry secrets; escaped by render_page.
            await self._respond(writer, 400, "Sign-in failed", str(exc))
            if not result.done():
                result.set_exception(exc)
            return
        except Exception as exc:
            log.exception("login callback failed")
            await self._respond(writer, 500, "Sign-in failed", "Internal error; see the logs.")
            if not result.done():
                result.set_exception(exc)
            return
        who = credential.email or credential.name or credential.subject or credential.id
        await self._respond(
            writer,
            200,
            "Signed in",
            f"Signed in to {credential.provider} as {who}. You can close this window.",
        )
        if not result.done():
            result.set_result(credential)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, title: str, text: str) -> None:
        reasons: dict[int, Any] = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            409: "Conflict",
            431: "Request Header Fields Too Large",
            500: "Internal Server Error",
        }
        body = render_page(title, text).encode()
        head = (
            f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\n{_HEADERS}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
