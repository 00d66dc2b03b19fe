"""What failed: a pure classifier of provider responses and exceptions (no I/O, no clock).

:func:`classify` turns an exception or an ``httpx.Response`` into a :class:`Classification`:
a :class:`~coordinator.failures.FailureKind` (``None`` for a success) and a ``retry_after_s``.
Time-dependent headers (an HTTP-date ``Retry-After``, Anthropic's RFC 3339 reset timestamps)
are read against ``now`` (Unix seconds), a parameter: nothing here reads a clock or sleeps.

Rules, in order:

* A structured error code or type in the body decides when it is a known one (OpenAI
  ``error.code``/``error.type`` such as ``rate_limit_exceeded``, ``insufficient_quota``,
  ``invalid_api_key``; Anthropic ``error.type`` such as ``rate_limit_error``,
  ``overloaded_error``, ``authentication_error``; Google ``error.details[].reason`` and
  ``error.status`` such as ``RESOURCE_EXHAUSTED``): it beats the free text around it, as
  OpenAI's rate-limit message links to its billing page. Otherwise, by status:
* ``429`` → ``rate_limit`` (``billing`` if the body says the quota or credit is gone, as
  OpenAI's ``insufficient_quota``); ``402`` → ``billing``; ``401``/``403`` → ``auth``;
  ``408`` → ``timeout``; ``5xx`` and Anthropic's ``529`` → ``server``; any other ``4xx`` →
  ``billing`` when the body speaks of credit/billing, else ``caller`` (not the profile's fault).
* A success (``2xx``/``3xx``) whose headers say a quota is exhausted (``remaining`` 0) carries
  a ``retry_after_s`` until its reset, so the profile cools down before a 429 arrives.
* ``retry_after_s``: ``retry-after-ms`` (OpenAI; milliseconds, may be fractional), else
  ``Retry-After`` (seconds or HTTP date), else the latest reset of an
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
    "parse_retry_after_ms",
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

# A plain non-negative decimal: no sign, exponent, nan or inf (float() would take those).
_DECIMAL = re.compile(r"\d+(?:\.\d+)?")
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
    if _DECIMAL.fullmatch(text):
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
    if _DECIMAL.fullmatch(text):
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


def parse_retry_after_ms(value: object) -> float | None:
    """Seconds to wait from a ``retry-after-ms`` value (milliseconds, possibly fractional, as
    OpenAI sends it); ``None`` for garbage."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 64 or not _DECIMAL.fullmatch(text):
        return None
    return _clamp(float(text) / 1000.0)


def _provider_retry_after(h: Mapping[str, str], now: float) -> float | None:
    # retry-after-ms is the finer of the two (OpenAI sends both), so it is read first; a
    # garbage value falls back to Retry-After rather than hiding it.
    seconds = parse_retry_after_ms(h.get("retry-after-ms"))
    if seconds is not None:
        return seconds
    return parse_retry_after(h.get("retry-after"), now)


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

# A provider's structured error code or type names the failure; it beats the free text around
# it (OpenAI's real rate-limit message links to its billing page). Keys are lower case.
# Generic families are left out on purpose, so they decide nothing and the status and text
# do: Anthropic's ``invalid_request_error`` (its "credit balance is too low" refusal is one),
# OpenAI's type ``invalid_request_error`` (its ``invalid_api_key`` is one), Google's
# ``INVALID_ARGUMENT`` and ``FAILED_PRECONDITION`` ("please enable billing" is one).
_CODE_KINDS: dict[str, FailureKind] = {
    # OpenAI error.code / error.type
    "rate_limit_exceeded": FailureKind.RATE_LIMIT,
    "insufficient_quota": FailureKind.BILLING,
    "billing_hard_limit_reached": FailureKind.BILLING,
    "billing_not_active": FailureKind.BILLING,
    "invalid_api_key": FailureKind.AUTH,
    "server_error": FailureKind.SERVER,
    "context_length_exceeded": FailureKind.CALLER,
    "model_not_found": FailureKind.CALLER,
    # Anthropic error.type
    "rate_limit_error": FailureKind.RATE_LIMIT,
    "overloaded_error": FailureKind.SERVER,
    "api_error": FailureKind.SERVER,
    "authentication_error": FailureKind.AUTH,
    "permission_error": FailureKind.AUTH,
    "not_found_error": FailureKind.CALLER,
    "request_too_large": FailureKind.CALLER,
    # Google error.details[].reason, then error.status
    "api_key_invalid": FailureKind.AUTH,
    "billing_disabled": FailureKind.BILLING,
    "resource_exhausted": FailureKind.RATE_LIMIT,
    "unauthenticated": FailureKind.AUTH,
    "permission_denied": FailureKind.AUTH,
    "not_found": FailureKind.CALLER,
}


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


def _json(text: str) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _error_fields(data: object) -> list[str]:
    """Type, code and message strings of a provider error body (empty if not JSON)."""
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


def _error_codes(data: object) -> list[str]:
    """The structured codes of an error body, most specific first: OpenAI ``error.code``,
    Google ``error.details[].reason``, ``error.type`` (Anthropic, OpenAI), Google
    ``error.status``. The error object is ``error`` if it is one, else the body itself (an
    SDK hands over the inner object); a list (Google's streamed answers) gives its first."""
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return []
    inner = data.get("error")
    error = inner if isinstance(inner, dict) else data
    details = error.get("details")
    if not isinstance(details, list):
        details = []
    reasons = [d.get("reason") for d in details[:5] if isinstance(d, dict)]
    candidates = [error.get("code"), *reasons, error.get("type"), error.get("status")]
    return [c for c in candidates if isinstance(c, str)]


def _structured_kind(data: object) -> tuple[FailureKind, str] | None:
    """The kind named by the body's first known structured code, with that code."""
    for code in _error_codes(data):
        kind = _CODE_KINDS.get(code.strip().lower())
        if kind is not None:
            return kind, code.strip().lower()
    return None


def _is_billing(text: str, data: object) -> bool:
    if not text:
        return False
    fields = _error_fields(data)
    haystack = " ".join(fields) if fields else text
    return bool(_BILLING_TEXT.search(haystack))


# -- responses ------------------------------------------------------------------------------


def _kind_from_status(code: int, text: str, data: object) -> tuple[FailureKind, str]:
    """The kind by status, reading the body's text for billing (no structured code decided)."""
    if code == 429:
        if _is_billing(text, data):
            return FailureKind.BILLING, "quota or credit exhausted (429)"
        return FailureKind.RATE_LIMIT, "rate limited (429)"
    if code == 402:
        return FailureKind.BILLING, "payment required (402)"
    if code in (401, 403):
        if _is_billing(text, data):
            return FailureKind.BILLING, f"billing ({code})"
        return FailureKind.AUTH, f"credential refused ({code})"
    if code == 408:
        return FailureKind.TIMEOUT, "request timeout (408)"
    if code == 529:
        return FailureKind.SERVER, "overloaded (529)"
    if 500 <= code < 600:
        return FailureKind.SERVER, f"server error ({code})"
    if 400 <= code < 500:
        if _is_billing(text, data):
            return FailureKind.BILLING, f"billing ({code})"
        return FailureKind.CALLER, f"request rejected ({code})"
    return FailureKind.UNKNOWN, f"unexpected status {code}"


def classify_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: object = None,
    *,
    now: float,
) -> Classification:
    """Classify an HTTP answer from its status, headers and body (bytes, text or JSON data).

    A known structured error code or type in the body (see the module notes) decides the kind;
    without one, the status does, and the body's text is read only to tell billing apart.
    ``now`` is the current Unix time in seconds (for HTTP dates and reset timestamps).
    """
    try:
        code = int(status)
    except (TypeError, ValueError):
        return Classification(FailureKind.UNKNOWN, None, f"status {status!r}")
    h = _lower_headers(headers)
    retry_after = _provider_retry_after(h, now)
    exhausted = rate_limit_reset(h, now)
    if 200 <= code < 400:
        if exhausted is not None:
            return Classification(None, exhausted, "quota exhausted until reset")
        return Classification(None, None, f"status {code}")
    text = _body_text(body)
    data = _json(text) if text else None
    structured = _structured_kind(data)
    if structured is not None:
        kind, reason = structured[0], f"{structured[1]} ({code})"
    else:
        kind, reason = _kind_from_status(code, text, data)
    if kind is FailureKind.CALLER:
        return Classification(kind, None, reason)  # not the profile's fault: nothing to wait for
    hint = retry_after if retry_after is not None else exhausted
    if hint is None and kind is FailureKind.RATE_LIMIT:
        hint = rate_limit_reset(h, now, exhausted_only=False)
    return Classification(kind, hint, reason)


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
