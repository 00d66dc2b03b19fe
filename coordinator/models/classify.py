"""What failed: a pure classifier of provider responses and exceptions (no I/O, no clock).

:func:`classify` turns an exception or an ``httpx.Response`` into a :class:`Classification`:
a :class:`~coordinator.failures.FailureKind` (``None`` for a success) and a ``retry_after_s``.
Time-dependent headers (an HTTP-date ``Retry-After``, Anthropic's RFC 3339 reset timestamps)
are read against ``now`` (Unix seconds), a parameter: nothing here reads a clock or sleeps.

Rules, in order:

* ``429`` → ``rate_limit`` (``billing`` if the body says the quota or credit is gone, as
  OpenAI's ``insufficient_quota``); ``402`` → ``billing``; ``401``/``403`` → ``auth``;
  ``408`` → ``timeout``; ``5xx`` and Anthropic's ``529`` → ``server``; any other ``4xx`` →
  ``billing`` when the body speaks of credit/billing, else ``caller`` (not the profile's fault).
* A success (``2xx``/``3xx``) whose headers say a quota is exhausted (``remaining`` 0) carries
  a ``retry_after_s`` until its reset, so the profile cools down before a 429 arrives.
* ``retry_after_s``: ``Retry-After`` (seconds or HTTP date), else the latest reset of an
  exhausted bucket (OpenAI ``x-ratelimit-reset-*`` durations such as ``1s``, ``6m0s``,
  ``20ms``; Anthropic ``anthropic-ratelimit-*-reset`` timestamps).
* Exceptions: httpx timeouts and transport errors → ``timeout``; ``HTTPStatusError`` (and any
  exception carrying a ``response`` or ``status_code``, as provider SDKs do) by its status;
  programming errors (``TypeError``, ``ValueError``...) → ``caller``; anything else →
  ``unknown``. An exception may state its own kind with a ``failure_kind`` attribute.

Garbage (a non-JSON body, an unknown header format) classifies safely and never raises.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import orjson

from ..failures import FailureKind

__all__ = [
    "Classification",
    "classify",
    "classify_exception",
    "classify_response",
    "parse_duration",
    "parse_retry_after",
    "parse_timestamp",
    "rate_limit_reset",
]

_MAX_SECONDS = 10 * 365 * 86400.0
_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one call: ``kind`` (``None`` for a success), ``retry_after_s`` (how long
    to leave the profile alone, if the provider said so) and a short ``reason``."""

    kind: FailureKind | None
    retry_after_s: float | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.kind is None


# -- header parsing -----------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def _clamp(seconds: float) -> float | None:
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, _MAX_SECONDS)


def parse_duration(value: object) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or a bare
    number of seconds; ``None`` for anything else."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if not text or len(text) > 64:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _clamp(float(text))
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return _clamp(total)


def parse_timestamp(value: object) -> float | None:
    """Unix seconds of an RFC 3339 / ISO 8601 timestamp with a zone (``2024-05-01T12:00:30Z``);
    ``None`` for anything else."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def parse_retry_after(value: object, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta seconds or an HTTP date (read
    against ``now``, Unix seconds). A date in the past gives 0; garbage gives ``None``."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return _clamp(float(text))
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    try:
        return _clamp(max(0.0, parsed.timestamp() - now))
    except (OverflowError, OSError, ValueError):
        return None


def _lower_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if headers is None:
        return out
    try:
        items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
        if isinstance(headers, httpx.Headers):
            items = headers.multi_items()
        for key, value in items:
            if isinstance(key, bytes):
                key = key.decode("latin-1")
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(key, str) and isinstance(value, str):
                out.setdefault(key.strip().lower(), value)
    except (TypeError, ValueError, AttributeError):
        return out
    return out


def _reset_seconds(name: str, value: str, now: float) -> float | None:
    if name.startswith("anthropic-"):
        stamp = parse_timestamp(value)
        if stamp is not None:
            return _clamp(max(0.0, stamp - now))
        return parse_duration(value)
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    stamp = parse_timestamp(value)
    return _clamp(max(0.0, stamp - now)) if stamp is not None else None


def _remaining_is_zero(value: str | None) -> bool:
    if value is None:
        return False
    try:
        return float(value.strip()) <= 0
    except ValueError:
        return False


def _buckets(h: Mapping[str, str]) -> list[tuple[str, str, str | None]]:
    """(reset header, reset value, remaining value) for every rate-limit bucket named."""
    out: list[tuple[str, str, str | None]] = []
    for name, value in h.items():
        if name.startswith("x-ratelimit-reset-"):
            bucket = name[len("x-ratelimit-reset-") :]
            out.append((name, value, h.get(f"x-ratelimit-remaining-{bucket}")))
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            bucket = name[len("anthropic-ratelimit-") : -len("-reset")]
            out.append((name, value, h.get(f"anthropic-ratelimit-{bucket}-remaining")))
    return out


def rate_limit_reset(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    now: float,
    *,
    exhausted_only: bool = True,
) -> float | None:
    """Seconds until the latest reset of an exhausted rate-limit bucket (``remaining`` 0), from
    OpenAI ``x-ratelimit-*`` or Anthropic ``anthropic-ratelimit-*`` headers. With
    ``exhausted_only=False``, the soonest reset of any bucket. ``None`` if none applies."""
    h = _lower_headers(headers)
    latest: float | None = None
    soonest: float | None = None
    for name, value, remaining in _buckets(h):
        seconds = _reset_seconds(name, value, now)
        if seconds is None:
            continue
        if _remaining_is_zero(remaining):
            latest = seconds if latest is None else max(latest, seconds)
        soonest = seconds if soonest is None else min(soonest, seconds)
    if exhausted_only:
        return latest
    return latest if latest is not None else soonest


# -- bodies ---------------------------------------------------------------------------------

_BILLING_TEXT = re.compile(
    r"insufficient[_ ]quota|credit balance|out of credits?|insufficient (?:credits?|funds|balance)"
    r"|billing|payment required|exceeded your current quota|purchase credits",
    re.IGNORECASE,
)


def _body_text(body: object) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body[:_BODY_LIMIT]).decode("utf-8", "replace")
    if isinstance(body, str):
        return body[:_BODY_LIMIT]
    try:
        return orjson.dumps(body).decode()[:_BODY_LIMIT]
    except TypeError:
        return str(body)[:_BODY_LIMIT]


def _error_fields(text: str) -> list[str]:
    """Type, code and message strings of a provider error body (empty if not JSON)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    found: list[str] = []

    def walk(node: object, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(node, dict):
            for key in ("type", "code", "message", "status", "reason"):
                value = node.get(key)
                if isinstance(value, str):
                    found.append(value)
            for key in ("error", "errors", "details"):
                if key in node:
                    walk(node[key], depth + 1)
        elif isinstance(node, list):
            for item in node[:5]:
                walk(item, depth + 1)

    walk(data, 0)
    return found


def _is_billing(text: str) -> bool:
    if not text:
        return False
    fields = _error_fields(text)
    haystack = " ".join(fields) if fields else text
    return bool(_BILLING_TEXT.search(haystack))


# -- responses ------------------------------------------------------------------------------


def classify_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: object = None,
    *,
    now: float,
) -> Classification:
    """Classify an HTTP answer from its status, headers and body (bytes, text or JSON data).

    ``now`` is the current Unix time in seconds (for HTTP dates and reset timestamps).
    """
    try:
        code = int(status)
    except (TypeError, ValueError):
        return Classification(FailureKind.UNKNOWN, None, f"status {status!r}")
    h = _lower_headers(headers)
    retry_after = parse_retry_after(h.get("retry-after"), now)
    exhausted = rate_limit_reset(h, now)
    if 200 <= code < 400:
        if exhausted is not None:
            return Classification(None, exhausted, "quota exhausted until reset")
        return Classification(None, None, f"status {code}")
    text = _body_text(body)
    hint = retry_after if retry_after is not None else exhausted
    if code == 429:
        if _is_billing(text):
            return Classification(FailureKind.BILLING, hint, "quota or credit exhausted (429)")
        if hint is None:
            hint = rate_limit_reset(h, now, exhausted_only=False)
        return Classification(FailureKind.RATE_LIMIT, hint, "rate limited (429)")
    if code == 402:
        return Classification(FailureKind.BILLING, hint, "payment required (402)")
    if code in (401, 403):
        if _is_billing(text):
            return Classification(FailureKind.BILLING, hint, f"billing ({code})")
        return Classification(FailureKind.AUTH, hint, f"credential refused ({code})")
    if code == 408:
        return Classification(FailureKind.TIMEOUT, hint, "request timeout (408)")
    if code == 529:
        return Classification(FailureKind.SERVER, hint, "overloaded (529)")
    if 500 <= code < 600:
        return Classification(FailureKind.SERVER, hint, f"server error ({code})")
    if 400 <= code < 500:
        if _is_billing(text):
            return Classification(FailureKind.BILLING, hint, f"billing ({code})")
        return Classification(FailureKind.CALLER, None, f"request rejected ({code})")
    return Classification(FailureKind.UNKNOWN, hint, f"unexpected status {code}")


def _response_body(response: httpx.Response) -> object:
    try:
        return response.content
    except (httpx.ResponseNotRead, httpx.StreamError, RuntimeError):
        return None


def _classify_httpx_response(response: httpx.Response, now: float) -> Classification:
    return classify_response(
        response.status_code, response.headers, _response_body(response), now=now
    )


# -- exceptions ----------------------------------------------------------------------------

_CALLER_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    AttributeError,
    KeyError,
    IndexError,
    NameError,
    AssertionError,
    NotImplementedError,
)


def classify_exception(exc: BaseException, *, now: float) -> Classification:
    """Classify an exception raised by a provider call (``now``: Unix seconds)."""
    try:
        return _classify_exception(exc, now)
    except Exception:  # a hostile exception object must not break classification
        return Classification(FailureKind.UNKNOWN, None, type(exc).__name__)


def _classify_exception(exc: BaseException, now: float) -> Classification:
    declared = getattr(exc, "failure_kind", None)
    if declared is not None:
        try:
            kind = FailureKind.parse(declared)
        except ValueError:
            kind = FailureKind.UNKNOWN
        retry = getattr(exc, "retry_after_s", None)
        retry_s = (
            float(retry) if isinstance(retry, int | float) and not isinstance(retry, bool) else None
        )
        return Classification(kind, _clamp(retry_s) if retry_s is not None else None, "declared")
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return Classification(FailureKind.TIMEOUT, None, f"timeout ({name})")
    if isinstance(exc, httpx.HTTPStatusError):
        return _classify_httpx_response(exc.response, now)
    if isinstance(exc, httpx.TransportError):
        return Classification(FailureKind.TIMEOUT, None, f"connection failed ({name})")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Classification(FailureKind.TIMEOUT, None, f"timeout ({name})")
    response = getattr(exc, "response", None)
    if isinstance(response, httpx.Response):
        return _classify_httpx_response(response, now)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return classify_response(status, None, getattr(exc, "body", None) or str(exc), now=now)
    if isinstance(exc, ConnectionError | OSError):
        return Classification(FailureKind.TIMEOUT, None, f"connection failed ({name})")
    if isinstance(exc, _CALLER_ERRORS):
        return Classification(FailureKind.CALLER, None, f"caller error ({name})")
    return Classification(FailureKind.UNKNOWN, None, name)


def classify(outcome: BaseException | httpx.Response, *, now: float) -> Classification:
    """Classify an exception or an ``httpx.Response`` (``now``: Unix seconds)."""
    if isinstance(outcome, httpx.Response):
        try:
            return _classify_httpx_response(outcome, now)
        except Exception:
            return Classification(FailureKind.UNKNOWN, None, "unreadable response")
    return classify_exception(outcome, now=now)
