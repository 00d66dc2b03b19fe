"""Fake OpenAI and Anthropic HTTP servers on 127.0.0.1, for the SDK tests.

Each server runs on a thread of its own (so that the synchronous SDK clients, which block the
test's thread, can talk to it too), records every request it receives and answers with the
next scripted :class:`Answer` for the key the request carries, else the next general one, else
a success. A success is the real wire format of the API: a JSON body, or with
``"stream": true`` a server-sent event stream (chunked), which an answer may cut mid-way.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from coordinator import CoordinatorError


@dataclass
class Answer:
    """A scripted answer: an error (``status`` >= 400, ``body``), or a success whose stream
    breaks after ``break_after`` events."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    break_after: int | None = None


@dataclass
class Seen:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def key(self) -> str:
        """The credential it carried (``Authorization: Bearer`` or ``x-api-key``)."""
        auth = self.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        return self.headers.get("x-api-key", "")


def openai_rate_limit() -> Answer:
    """OpenAI's 429 for a rate limit, with its headers."""
    return Answer(
        429,
        {"retry-after-ms": "30000", "x-ratelimit-remaining-requests": "0"},
        {"error": {"message": "Rate limit reached", "type": "requests",
                   "code": "rate_limit_exceeded"}},
    )  # fmt: skip


def anthropic_rate_limit() -> Answer:
    """Anthropic's 429."""
    return Answer(
        429,
        {"retry-after": "30"},
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
    )


class FakeApi:
    """A fake provider API (``flavour``: ``openai`` or ``anthropic``) named ``name``."""

    def __init__(self, name: str, flavour: str = "openai") -> None:
        self.name = name
        self.flavour = flavour
        self.seen: list[Seen] = []
        self.script: deque[Answer] = deque()
        self.by_key: dict[str, deque[Answer]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The loopback port it listens on."""
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Its base URL as a model profile names it (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def keys(self) -> list[str]:
        """The credential of every request received, in order."""
        return [s.key for s in self.seen]

    def then(self, *answers: Answer) -> FakeApi:
        """Answer the next requests (of any key) with ``answers``."""
        self.script.extend(answers)
        return self

    def for_key(self, key: str, *answers: Answer) -> FakeApi:
        """Answer the next requests carrying ``key`` with ``answers``."""
        self.by_key.setdefault(key, deque()).extend(answers)
        return self

    def start(self) -> FakeApi:
        """Serve on a thread of its own."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def next_answer(self, seen: Seen) -> Answer:
        """The scripted answer to ``seen`` (records it)."""
        with self._lock:
            self.seen.append(seen)
            queue = self.by_key.get(seen.key)
            if queue:
                return queue.popleft()
            return self.script.popleft() if self.script else Answer()

    # -- the wire formats ---------------------------------------------------------------

    def message(self, model: str) -> dict[str, Any]:
        """A complete (non-streamed) answer saying ``hi from <name>``."""
        text = f"hi from {self.name}"
        if self.flavour == "anthropic":
            return {
                "id": "msg_1", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 3},
            }  # fmt: skip
        return {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        }  # fmt: skip

    def events(self, model: str) -> list[bytes]:
        """A streamed answer: ``hi``, ``from``, ``<name>`` as three deltas, as SSE events."""
        words = ["hi", " from", f" {self.name}"]
        if self.flavour == "anthropic":
            start = {"type": "message_start", "message": {**self.message(model), "content": [],
                     "stop_reason": None}}  # fmt: skip
            events: list[tuple[str, dict[str, Any]]] = [
                ("message_start", start),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
            ]  # fmt: skip
            events += [
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": w}})
                for w in words
            ]  # fmt: skip
            events += [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 3},
                                   "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
                ("message_stop", {"type": "message_stop"}),
            ]  # fmt: skip
            return [f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events]
        chunks = [
            {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model,
             "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
            for w in words
        ]  # fmt: skip
        out = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
        return [*out, b"data: [DONE]\n\n"]


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = api.next_answer(Seen(self.path, headers, body))
            model = str(body.get("model", "m"))
            if answer.status >= 400:
                self._send_json(answer.status, answer.headers, answer.body or {})
            elif body.get("stream"):
                self._send_stream(answer, api.events(model))
            else:
                self._send_json(answer.status, answer.headers, api.message(model))

        def _send_json(self, status: int, headers: dict[str, str], data: Any) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.send_header("connection", "close")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _send_stream(self, answer: Answer, events: list[bytes]) -> None:
            self.send_response(answer.status)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("connection", "close")
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for n, event in enumerate(events):
                if answer.break_after is not None and n >= answer.break_after:
                    self.wfile.flush()
                    self.close_connection = True
                    return  # cut: no terminating chunk, the client sees a broken body
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    return Handler


# -- shared set-up of the SDK tests --------------------------------------------------------

KEY_A = "sk-test-AAAAAAAAAAAAAAAAAAAAAAAA"
KEY_B = "sk-test-BBBBBBBBBBBBBBBBBBBBBBBB"
KEY_C = "sk-test-CCCCCCCCCCCCCCCCCCCCCCCC"
SECRETS = (KEY_A, KEY_B, KEY_C)
"""Every key the SDK tests use: none may appear in a log, an error or a repr."""

PLACEHOLDER = "placeholder-key"
"""What the SDKs are built with; the transport replaces it on every request."""


def no_secret_in(*texts: str) -> bool:
    """Whether none of ``texts`` contains a test key."""
    return not any(secret in text for text in texts for secret in SECRETS)


def coordinator_error(error: BaseException) -> BaseException | None:
    """The coordinator's error behind an SDK's: some SDKs let it through as it is (openai 3),
    others wrap it in their ``APIConnectionError`` (anthropic, openai 2)."""
    if isinstance(error, CoordinatorError):
        return error
    return error.__cause__
