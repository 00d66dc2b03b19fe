"""Local fake providers for the demonstration: real HTTP on 127.0.0.1, scripted by virtual time.

* :class:`FakeAPI` plays an AI provider (OpenAI and xAI chat completions, Anthropic messages,
  Google generateContent). It checks the credential it is called with (an API key it was given,
  or a live Google access token) and answers as :data:`demo_scenario.INCIDENTS` say.
* :class:`FakeAccounts` plays Google's OAuth server: an authorization endpoint that consents at
  once, a token endpoint (authorization code with PKCE, refresh tokens that rotate: a refresh
  token presented twice is refused and counted), and user info.

Neither knows anything about the coordinator: they only see HTTP requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from scripts.demo_scenario import TOKEN_LIFETIME_S, WORKER_LEAD_S, incident_for

Now = Callable[[], float]  # virtual seconds since the start


@dataclass
class Request:
    """One HTTP request, as a handler sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        """The body as an ``application/x-www-form-urlencoded`` form."""
        return {k: v[0] for k, v in parse_qs(self.body.decode("latin-1")).items()}

    def bearer(self) -> str:
        """The ``Authorization: Bearer`` token, or ``""``."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else ""


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Reply]]


class HttpServer:
    """A minimal HTTP/1.1 server (keep-alive, ``content-length`` bodies) on a free loopback
    port, handing each request to ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close the open connections."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while (request := await _read_request(reader)) is not None:
                reply = await self._handler(request)
                writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = (await reader.readline()).decode("latin-1").split()
    if len(line) < 2:
        return None
    headers: dict[str, str] = {}
    while (header := (await reader.readline()).decode("latin-1").strip()) != "":
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    target = urlsplit(line[1])
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    return Request(line[0], target.path, query, headers, body)


def _encode(reply: Reply) -> bytes:
    body = b"" if reply.body is None else orjson.dumps(reply.body)
    head = [f"HTTP/1.1 {reply.status} X", f"content-length: {len(body)}"]
    if reply.body is not None:
        head.append("content-type: application/json")
    head += [f"{name}: {value}" for name, value in reply.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Issued:
    """An access token the accounts server issued (virtual seconds)."""

    user: str
    issued_s: float
    expires_s: float


class FakeAccounts:
    """Google's OAuth server, played locally: consent is given at once (the user is the
    ``login_hint``), codes need their PKCE verifier, refresh tokens rotate."""

    def __init__(self, now: Now) -> None:
        self.now = now
        self.server = HttpServer(self.handle)
        self.access: dict[str, Issued] = {}
        self.refresh: dict[str, str] = {}  # live refresh token -> user
        self.used: set[str] = set()  # refresh tokens already presented
        self.codes: dict[str, tuple[str, str, str]] = {}  # code -> user, challenge, redirect
        self.refresh_requests = 0
        self.reused = 0  # refresh tokens presented a second time (must stay 0)
        self.by_user: Counter[str] = Counter()  # refreshes per user

    async def handle(self, request: Request) -> Reply:
        """Route one request."""
        if request.path == "/authorize":
            return self._authorize(request.query)
        if request.path == "/token":
            return self._token(request.form())
        if request.path == "/userinfo":
            user = self.user_of(request.bearer())
            if user is None:
                return Reply(401, {"error": "invalid_token"})
            return Reply(200, {"sub": user, "email": f"{user}@example.com", "name": user.title()})
        return Reply(404, {"error": "not_found"})

    def _authorize(self, query: dict[str, str]) -> Reply:
        code = secrets.token_urlsafe(16)
        user = query.get("login_hint", "ada").split("@")[0]
        self.codes[code] = (user, query.get("code_challenge", ""), query["redirect_uri"])
        target = urlencode({"code": code, "state": query["state"]})
        return Reply(302, None, {"location": f"{query['redirect_uri']}?{target}"})

    def _token(self, form: dict[str, str]) -> Reply:
        if form.get("grant_type") == "authorization_code":
            return self._exchange(form)
        return self._refresh(form)

    def _exchange(self, form: dict[str, str]) -> Reply:
        """A code for tokens: the code once, with the verifier of its PKCE challenge."""
        user, challenge, redirect = self.codes.pop(form.get("code", ""), ("", "", ""))
        verifier = form.get("code_verifier", "").encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if not user or digest.decode() != challenge or form.get("redirect_uri") != redirect:
            return Reply(400, {"error": "invalid_grant"})
        return Reply(200, self._issue(user))

    def _refresh(self, form: dict[str, str]) -> Reply:
        """A refresh token for new tokens; each refresh token works once (rotation)."""
        presented = form.get("refresh_token", "")
        self.refresh_requests += 1
        if presented in self.used:
            self.reused += 1
        self.used.add(presented)
        if presented not in self.refresh:
            return Reply(400, {"error": "invalid_grant"})
        user = self.refresh.pop(presented)
        self.by_user[user] += 1
        return Reply(200, self._issue(user))

    def _issue(self, user: str) -> dict[str, object]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        now = self.now()
        self.access[access] = Issued(user, now, now + TOKEN_LIFETIME_S)
        self.refresh[refresh] = user
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
        }

    def user_of(self, access_token: str) -> str | None:
        """The user of a live access token (issued here and not expired), else None."""
        issued = self.access.get(access_token)
        if issued is None or issued.expires_s <= self.now():
            return None
        return issued.user

    def came_due(self, until_s: float) -> int:
        """Access tokens that came due for refresh by the worker's lead before ``until_s``."""
        lead = TOKEN_LIFETIME_S - WORKER_LEAD_S
        return sum(1 for t in self.access.values() if t.issued_s + lead <= until_s)


CHAT = {"choices": [{"message": {"role": "assistant", "content": "Hello!"}}]}
ANSWERS: dict[str, object] = {
    "openai": CHAT,
    "xai": CHAT,
    "anthropic": {"type": "message", "content": [{"type": "text", "text": "Hello!"}]},
    "google": {"candidates": [{"content": {"parts": [{"text": "Hello!"}]}}]},
}


class FakeAPI:
    """An AI provider, played locally. ``keys`` maps the API keys it accepts to their names
    (Google takes live access tokens from ``accounts`` instead); every call is answered as the
    scenario's incidents say at that virtual time."""

    def __init__(
        self, provider: str, now: Now, keys: dict[str, str], accounts: FakeAccounts | None = None
    ) -> None:
        self.provider = provider
        self.now = now
        self.keys = keys
        self.accounts = accounts
        self.server = HttpServer(self.handle)
        self.calls: Counter[str] = Counter()  # per key (or user), every call
        self.hits: Counter[str] = Counter()  # per incident title, calls that met it
        self.refused = 0  # calls with an unknown key or a dead token (must stay 0)

    def _caller(self, request: Request) -> str | None:
        if self.accounts is not None:
            return self.accounts.user_of(request.bearer())
        return self.keys.get(request.headers.get("x-api-key") or request.bearer())

    async def handle(self, request: Request) -> Reply:
        """Answer one API call."""
        caller = self._caller(request)
        if caller is None:
            self.refused += 1
            return Reply(
                401, {"error": {"message": "invalid credential", "code": "invalid_api_key"}}
            )
        self.calls[caller] += 1
        incident = incident_for(self.provider, caller, self.now())
        if incident is not None:
            self.hits[incident.title] += 1
            return Reply(incident.status, incident.body, dict(incident.headers))
        return Reply(200, ANSWERS[self.provider])
