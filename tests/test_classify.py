"""The failure classifier: a table of responses and exceptions, and the header parsers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from coordinator.failures import FailureKind
from coordinator.models.classify import (
    Classification,
    classify,
    classify_exception,
    classify_response,
    parse_duration,
    parse_retry_after,
    parse_retry_after_ms,
    parse_timestamp,
    rate_limit_reset,
)

NOW = 1_700_000_000.0
NOW_DT = datetime.fromtimestamp(NOW, UTC)


def iso(seconds_from_now: float) -> str:
    return (NOW_DT + timedelta(seconds=seconds_from_now)).isoformat().replace("+00:00", "Z")


def http_date(seconds_from_now: float) -> str:
    return format_datetime(NOW_DT + timedelta(seconds=seconds_from_now), usegmt=True)


RL = FailureKind.RATE_LIMIT
BILL = FailureKind.BILLING
AUTH = FailureKind.AUTH
SRV = FailureKind.SERVER
TMO = FailureKind.TIMEOUT
CALLER = FailureKind.CALLER
UNK = FailureKind.UNKNOWN

# (case id, status, headers, body, expected kind, expected retry-after seconds)
RESPONSES: list[tuple[str, Any, dict[str, str], Any, FailureKind | None, float | None]] = [
    ("200 plain", 200, {}, b"{}", None, None),
    ("204", 204, {}, None, None, None),
    ("302", 302, {}, None, None, None),
    ("429 bare", 429, {}, b"", RL, None),
    ("429 retry-after seconds", 429, {"Retry-After": "17"}, b"", RL, 17.0),
    ("429 retry-after fractional", 429, {"retry-after": "1.5"}, b"", RL, 1.5),
    ("429 retry-after http date", 429, {"Retry-After": http_date(120)}, b"", RL, 120.0),
    ("429 retry-after date in past", 429, {"Retry-After": http_date(-60)}, b"", RL, 0.0),
    ("429 retry-after garbage", 429, {"Retry-After": "soon-ish"}, b"", RL, None),
    ("429 retry-after negative", 429, {"Retry-After": "-5"}, b"", RL, None),
    (
        "429 openai requests exhausted",
        429,
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-remaining-tokens": "1000",
            "x-ratelimit-reset-tokens": "20ms",
        },
        b'{"error":{"type":"requests","code":"rate_limit_exceeded"}}',
        RL,
        360.0,
    ),
    (
        "429 openai tokens exhausted",
        429,
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1h2m3.5s"},
        b"",
        RL,
        3723.5,
    ),
    (
        "429 openai nothing exhausted: soonest reset",
        429,
        {
            "x-ratelimit-remaining-requests": "3",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "5",
            "x-ratelimit-reset-tokens": "20ms",
        },
        b"",
        RL,
        0.02,
    ),
    (
        "429 retry-after wins over reset headers",
        429,
        {
            "retry-after": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
        },
        b"",
        RL,
        3.0,
    ),
    (
        "429 anthropic tokens exhausted",
        429,
        {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": iso(42)},
        b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
        RL,
        42.0,
    ),
    (
        "429 anthropic reset with offset zone",
        429,
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": (NOW_DT + timedelta(seconds=90))
            .astimezone(__import__("datetime").timezone(timedelta(hours=2)))
            .isoformat(),
        },
        b"",
        RL,
        90.0,
    ),
    (
        "429 openai insufficient_quota is billing",
        429,
        {},
        b'{"error":{"message":"You exceeded your current quota, please check your plan and '
        b'billing details.","type":"insufficient_quota","code":"insufficient_quota"}}',
        BILL,
        None,
    ),
    (
        "429 google quota exceeded is a rate limit",
        429,
        {},
        b'{"error":{"code":429,"message":"Quota exceeded for quota metric","status":'
        b'"RESOURCE_EXHAUSTED"}}',
        RL,
        None,
    ),
    ("402", 402, {}, b"", BILL, None),
    ("402 garbage body", 402, {}, b"\xff\xfe<html>", BILL, None),
    (
        "400 anthropic credit balance",
        400,
        {},
        b'{"type":"error","error":{"type":"invalid_request_error","message":"Your credit '
        b'balance is too low to access the Anthropic API."}}',
        BILL,
        None,
    ),
    ("400 malformed request", 400, {}, b'{"error":{"message":"messages: required"}}', CALLER, None),
    ("404 unknown model", 404, {}, b"not found", CALLER, None),
    ("413", 413, {}, b"", CALLER, None),
    ("422 text mentioning nothing", 422, {}, b"invalid json", CALLER, None),
    ("401", 401, {}, b'{"error":"invalid api key"}', AUTH, None),
    ("403", 403, {}, b"", AUTH, None),
    ("403 billing", 403, {}, b'{"error":{"message":"billing hard limit reached"}}', BILL, None),
    ("408", 408, {}, b"", TMO, None),
    ("500", 500, {}, b"<html>oops</html>", SRV, None),
    ("502", 502, {}, b"", SRV, None),
    ("503 with retry-after", 503, {"Retry-After": "30"}, b"", SRV, 30.0),
    ("504", 504, {}, b"", SRV, None),
    (
        "529 anthropic overloaded",
        529,
        {},
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        SRV,
        None,
    ),
    ("599", 599, {}, b"", SRV, None),
    ("600 unexpected", 600, {}, b"", UNK, None),
    ("status not a number", "abc", {}, b"", UNK, None),
    (
        "200 openai requests remaining 0 cools down",
        200,
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        b"{}",
        None,
        360.0,
    ),
    (
        "200 anthropic input tokens remaining 0",
        200,
        {
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": iso(15),
            "anthropic-ratelimit-requests-remaining": "99",
            "anthropic-ratelimit-requests-reset": iso(1),
        },
        b"{}",
        None,
        15.0,
    ),
    (
        "200 remaining not zero",
        200,
        {"x-ratelimit-remaining-requests": "12", "x-ratelimit-reset-requests": "1s"},
        b"{}",
        None,
        None,
    ),
    (
        "200 garbage rate-limit headers",
        200,
        {
            "x-ratelimit-remaining-requests": "zero",
            "x-ratelimit-reset-requests": "later",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": "??",
        },
        b"{}",
        None,
        None,
    ),
    ("429 body is JSON list", 429, {}, b"[1,2,3]", RL, None),
    ("429 body deeply nested", 429, {}, b'{"error":' * 50 + b"1" + b"}" * 50, RL, None),
]


# OpenAI's real 429 for a rate limit: its message links to the billing page.
OPENAI_RATE_LIMIT = (
    b'{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on requests '
    b"per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
    b"https://platform.openai.com/account/rate-limits to learn more. You can increase your "
    b"rate limit by adding a payment method to your account at "
    b'https://platform.openai.com/account/billing.","type":"requests","param":null,'
    b'"code":"rate_limit_exceeded"}}'
)
# Gemini's free-tier 429: "check your plan and billing details", status RESOURCE_EXHAUSTED.
GEMINI_QUOTA = (
    b'{"error":{"code":429,"message":"You exceeded your current quota, please check your plan '
    b'and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":'
    b'"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":'
    b'"generativelanguage.googleapis.com/generate_content_free_tier_requests"}]},{"@type":'
    b'"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"13s"}]}}'
)

# Issue 15 section 8: a structured code or type names the failure and beats the free text
# around it (every row but the "kept" ones classified otherwise before).
STRUCTURED: list[tuple[str, Any, dict[str, str], Any, FailureKind | None, float | None]] = [
    ("429 openai rate_limit_exceeded, message says billing", 429, {}, OPENAI_RATE_LIMIT, RL, None),
    (
        "429 openai rate_limit_exceeded with reset headers",
        429,
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7s"},
        OPENAI_RATE_LIMIT.replace(b'"requests"', b'"tokens"'),
        RL,
        7.0,
    ),
    ("429 gemini RESOURCE_EXHAUSTED says billing", 429, {}, GEMINI_QUOTA, RL, None),
    (
        "429 anthropic rate_limit_error mentions credit",
        429,
        {"retry-after": "4"},
        b'{"type":"error","error":{"type":"rate_limit_error","message":"Rate limit exceeded; '
        b'purchase credits to raise your tier."}}',
        RL,
        4.0,
    ),
    (
        "429 code without error wrapper",
        429,
        {},
        b'{"code":"rate_limit_exceeded","message":"see billing"}',
        RL,
        None,
    ),
    (
        "429 upper-case code",
        429,
        {},
        b'{"error":{"code":"RATE_LIMIT_EXCEEDED","message":"billing"}}',
        RL,
        None,
    ),
    (
        "429 kept: insufficient_quota code beats rate-limit text",
        429,
        {},
        b'{"error":{"message":"Rate limit reached, try again later.","type":"requests",'
        b'"code":"insufficient_quota"}}',
        BILL,
        None,
    ),
    (
        "429 kept: insufficient_quota type alone",
        429,
        {},
        b'{"error":{"message":"slow down","type":"insufficient_quota","code":null}}',
        BILL,
        None,
    ),
    (
        "401 openai invalid_api_key mentions billing",
        401,
        {},
        b'{"error":{"message":"Incorrect API key provided. See your billing and keys page.",'
        b'"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}',
        AUTH,
        None,
    ),
    (
        "401 anthropic authentication_error mentions billing",
        401,
        {},
        b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key '
        b'(billing account suspended?)"}}',
        AUTH,
        None,
    ),
    (
        "403 anthropic permission_error mentions billing",
        403,
        {},
        b'{"type":"error","error":{"type":"permission_error","message":"Your API key does not '
        b'have permission to use the specified resource. Ask your billing admin."}}',
        AUTH,
        None,
    ),
    (
        "403 google PERMISSION_DENIED mentions billing",
        403,
        {},
        b'{"error":{"code":403,"message":"Requests from this billing project are blocked.",'
        b'"status":"PERMISSION_DENIED","details":[{"reason":"API_KEY_SERVICE_BLOCKED"}]}}',
        AUTH,
        None,
    ),
    (
        "403 google reason BILLING_DISABLED beats PERMISSION_DENIED",
        403,
        {},
        b'{"error":{"code":403,"message":"Enable the API on project 42.","status":'
        b'"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
        b'"reason":"BILLING_DISABLED"}]}}',
        BILL,
        None,
    ),
    (
        "400 gemini API_KEY_INVALID is auth",
        400,
        {},
        b'{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",'
        b'"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.'
        b'ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}',
        AUTH,
        None,
    ),
    (
        "400 kept: gemini FAILED_PRECONDITION asking for billing",
        400,
        {},
        b'{"error":{"code":400,"message":"Gemini API free tier is not available in your '
        b'country. Please enable billing on your project.","status":"FAILED_PRECONDITION"}}',
        BILL,
        None,
    ),
    (
        "404 anthropic not_found_error naming billing",
        404,
        {"retry-after": "30"},
        b'{"type":"error","error":{"type":"not_found_error","message":"model: '
        b'claude-billing-assistant"}}',
        CALLER,
        None,
    ),
    (
        "404 openai model_not_found naming billing",
        404,
        {},
        b'{"error":{"message":"The model `billing-bot` does not exist or you do not have access '
        b'to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}',
        CALLER,
        None,
    ),
    (
        "500 anthropic api_error",
        500,
        {},
        b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}',
        SRV,
        None,
    ),
    (
        "429 codes of the wrong type are ignored",
        429,
        {},
        b'{"error":{"code":["invalid_api_key"],"type":{"a":1},"status":null,"details":42}}',
        RL,
        None,
    ),
    ("429 details not objects", 429, {}, b'{"error":{"details":["x",1,null]}}', RL, None),
    ("429 body is a list of errors", 429, {}, b"[" + GEMINI_QUOTA + b"]", RL, None),
    ("429 body is an empty list", 429, {}, b"[]", RL, None),
    ("200 codes in a success are ignored", 200, {}, GEMINI_QUOTA, None, None),
]

# Issue 15 section 8: retry-after-ms (OpenAI; milliseconds, may be fractional) before Retry-After.
RETRY_AFTER_MS: list[tuple[str, Any, dict[str, str], Any, FailureKind | None, float | None]] = [
    ("429 retry-after-ms", 429, {"retry-after-ms": "1500"}, b"", RL, 1.5),
    ("429 retry-after-ms fractional", 429, {"retry-after-ms": "20.5"}, b"", RL, 0.0205),
    ("429 retry-after-ms mixed case", 429, {"Retry-After-Ms": "250"}, b"", RL, 0.25),
    (
        "429 retry-after-ms before Retry-After",
        429,
        {"retry-after-ms": "250", "retry-after": "1"},
        b"",
        RL,
        0.25,
    ),
    (
        "429 retry-after-ms before reset headers",
        429,
        {
            "retry-after-ms": "800",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
        },
        OPENAI_RATE_LIMIT,
        RL,
        0.8,
    ),
    ("429 retry-after-ms zero", 429, {"retry-after-ms": "0"}, b"", RL, 0.0),
    (
        "429 retry-after-ms garbage falls back to Retry-After",
        429,
        {"retry-after-ms": "soon", "retry-after": "2"},
        b"",
        RL,
        2.0,
    ),
    ("429 retry-after-ms negative", 429, {"retry-after-ms": "-5"}, b"", RL, None),
    ("429 retry-after-ms exponent", 429, {"retry-after-ms": "1e3"}, b"", RL, None),
    ("503 retry-after-ms", 503, {"retry-after-ms": "750"}, b"", SRV, 0.75),
    ("400 caller ignores retry-after-ms", 400, {"retry-after-ms": "750"}, b"", CALLER, None),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry"),
    [pytest.param(*row[1:], id=row[0]) for row in RESPONSES + STRUCTURED + RETRY_AFTER_MS],
)
def test_response_table(
    status: Any, headers: dict[str, str], body: Any, kind: FailureKind | None, retry: float | None
) -> None:
    verdict = classify_response(status, headers, body, now=NOW)
    assert verdict.kind == kind
    if retry is None:
        assert verdict.retry_after_s is None
    else:
        assert verdict.retry_after_s == pytest.approx(retry, abs=1e-3)
    # The same through an httpx.Response (when the status is valid HTTP).
    if isinstance(status, int) and status < 600:
        response = httpx.Response(status, headers=headers, content=body or b"")
        assert classify(response, now=NOW) == verdict


def _status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://api.example.test/v1/chat")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError("boom", request=request, response=response)


class SdkStatusError(Exception):
    """Shaped like the provider SDKs' APIStatusError (status_code, body)."""

    def __init__(self, status_code: int, body: object) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.body = body


class SdkResponseError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__("sdk")
        self.response = response


class Declared(Exception):
    failure_kind = "rate_limit"
    retry_after_s = 12


class HostileStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no attributes either")


EXCEPTIONS: list[tuple[str, BaseException, FailureKind, float | None]] = [
    ("httpx read timeout", httpx.ReadTimeout("slow"), TMO, None),
    ("httpx connect timeout", httpx.ConnectTimeout("slow"), TMO, None),
    ("httpx pool timeout", httpx.PoolTimeout("slow"), TMO, None),
    ("httpx connect error", httpx.ConnectError("refused"), TMO, None),
    ("httpx remote protocol", httpx.RemoteProtocolError("eof"), TMO, None),
    ("httpx 429 status error", _status_error(429, {"retry-after": "9"}), RL, 9.0),
    ("httpx 402 status error", _status_error(402), BILL, None),
    ("httpx 500 status error", _status_error(500), SRV, None),
    ("httpx 400 status error", _status_error(400), CALLER, None),
    ("builtin timeout", TimeoutError("t"), TMO, None),
    ("connection reset", ConnectionResetError("reset"), TMO, None),
    ("os error", OSError("network down"), TMO, None),
    ("sdk 529", SdkStatusError(529, {"error": {"type": "overloaded_error"}}), SRV, None),
    (
        "sdk 429 insufficient quota",
        SdkStatusError(429, {"error": {"code": "insufficient_quota"}}),
        BILL,
        None,
    ),
    ("sdk 401", SdkStatusError(401, None), AUTH, None),
    (
        "sdk body is the inner error object",
        SdkStatusError(
            429, {"message": "see billing", "type": "tokens", "code": "rate_limit_exceeded"}
        ),
        RL,
        None,
    ),
    (
        "sdk 403 anthropic permission_error mentioning billing",
        SdkStatusError(
            403,
            {
                "type": "error",
                "error": {"type": "permission_error", "message": "billing admin only"},
            },
        ),
        AUTH,
        None,
    ),
    (
        "httpx 429 retry-after-ms before retry-after",
        _status_error(429, {"retry-after-ms": "900", "retry-after": "1"}),
        RL,
        0.9,
    ),
    ("sdk with httpx response", SdkResponseError(httpx.Response(503)), SRV, None),
    ("declared kind", Declared(), RL, 12.0),
    ("type error is the caller's", TypeError("bad arg"), CALLER, None),
    ("value error is the caller's", ValueError("bad"), CALLER, None),
    ("key error is the caller's", KeyError("k"), CALLER, None),
    ("runtime error unknown", RuntimeError("?"), UNK, None),
    ("hostile exception", HostileStr(), UNK, None),
]


@pytest.mark.parametrize(
    ("exc", "kind", "retry"), [pytest.param(*row[1:], id=row[0]) for row in EXCEPTIONS]
)
def test_exception_table(exc: BaseException, kind: FailureKind, retry: float | None) -> None:
    verdict = classify_exception(exc, now=NOW)
    assert verdict.kind == kind
    assert verdict.retry_after_s == retry
    assert classify(exc, now=NOW) == verdict


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2.5", 2.5),
        ("150us", 0.00015),
        ("150µs", 0.00015),
        ("1d", 86400.0),
        (" 7s ", 7.0),
        ("", None),
        ("s", None),
        ("1x", None),
        ("m5", None),
        ("1s2", None),
        ("-3s", None),
        ("nan", None),
        ("inf", None),
        ("1e3", None),
        ("9" * 100, None),
        (None, None),
        (12, None),
    ],
)
def test_parse_duration(text: Any, seconds: float | None) -> None:
    result = parse_duration(text)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (http_date(5), 5.0),
        (http_date(-5), 0.0),
        ("Wed, 99 Foo 2024 99:99:99 GMT", None),
        ("tomorrow", None),
        ("", None),
        ("1e3", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: Any, expected: float | None) -> None:
    result = parse_retry_after(value, NOW)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1500", 1.5),
        ("0", 0.0),
        ("20.5", 0.0205),
        ("0.25", 0.00025),
        (" 100 ", 0.1),
        ("9" * 64, 10 * 365 * 86400.0),  # cut at ten years, like every other hint
        ("9" * 65, None),
        ("", None),
        ("-1", None),
        ("+1", None),
        ("1e3", None),
        ("nan", None),
        ("inf", None),
        ("0x10", None),
        ("1,000", None),
        ("1.", None),
        ("100ms", None),
        ("\x00", None),
        (None, None),
        (1500, None),
    ],
)
def test_parse_retry_after_ms(value: Any, expected: float | None) -> None:
    result = parse_retry_after_ms(value)
    assert result == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20.500Z", NOW + 0.5),
        ("2023-11-15T00:13:20+02:00", NOW),
        ("2023-11-14T22:13:20", None),  # no zone: refused
        ("not a date", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_timestamp(value: Any, expected: float | None) -> None:
    result = parse_timestamp(value)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_rate_limit_reset_takes_latest_exhausted_bucket_and_soonest_when_asked() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "5s",
    }
    assert rate_limit_reset(headers, NOW) == 5.0
    headers["x-ratelimit-remaining-tokens"] = "10"
    assert rate_limit_reset(headers, NOW) == 2.0
    headers["x-ratelimit-remaining-requests"] = "1"
    assert rate_limit_reset(headers, NOW) is None
    assert rate_limit_reset(headers, NOW, exhausted_only=False) == 2.0
    assert rate_limit_reset(None, NOW) is None
    assert (
        rate_limit_reset(
            [("X-RateLimit-Remaining-Requests", "0"), ("X-RateLimit-Reset-Requests", "3s")], NOW
        )
        == 3.0
    )


def test_time_dependent_parsing_uses_the_given_now() -> None:
    headers = {"retry-after": http_date(60)}
    assert classify_response(429, headers, None, now=NOW).retry_after_s == pytest.approx(60)
    assert classify_response(429, headers, None, now=NOW + 30).retry_after_s == pytest.approx(30)
    assert classify_response(429, headers, None, now=NOW + 90).retry_after_s == 0.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "\x00\x01"},
        {"retry-after": "9" * 400},
        {"retry-after-ms": "\x00\x01", "retry-after": "\x00"},
        {"retry-after-ms": "9" * 400},
        {"retry-after-ms": "9" * 64},
        {"retry-after-ms": "1" + "0" * 30 + ".5"},
        {"x-ratelimit-reset-requests": "1" * 80, "x-ratelimit-remaining-requests": "0"},
        {
            "anthropic-ratelimit-tokens-reset": "9999-99-99T99:99:99Z",
            "anthropic-ratelimit-tokens-remaining": "0",
        },
        {
            "anthropic-ratelimit-tokens-reset": "0001-01-01T00:00:00Z",
            "anthropic-ratelimit-tokens-remaining": "0",
        },
    ],
)
@pytest.mark.parametrize("status", [200, 429, 500])
def test_garbage_headers_never_raise(headers: dict[str, str], status: int) -> None:
    verdict = classify_response(status, headers, b"\x00garbage", now=NOW)
    assert isinstance(verdict, Classification)
    assert verdict.retry_after_s is None or verdict.retry_after_s >= 0


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"\xff" * 10,
        "text",
        {"error": {"type": "insufficient_quota"}},
        [1, 2],
        42,
        object(),
    ],
)
def test_any_body_type_is_accepted(body: Any) -> None:
    verdict = classify_response(429, {}, body, now=NOW)
    expected = BILL if isinstance(body, dict) else RL
    assert verdict.kind == expected


def test_headers_given_as_garbage_objects_do_not_raise() -> None:
    assert classify_response(500, 42, None, now=NOW).kind == SRV  # type: ignore[arg-type]
    assert classify_response(500, [("a",)], None, now=NOW).kind == SRV  # type: ignore[list-item]


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": None, "type": 5, "status": [], "details": {"reason": "x"}}},
        {"error": {"details": [{"reason": {"nested": "BILLING_DISABLED"}}]}},
        {"error": []},
        {"error": "rate_limit_exceeded"},
        [[{"error": {"code": "insufficient_quota"}}]],
        {"code": " Insufficient_Quota "},
        b'{"error":{"code":"\xff\xfe"}}',
        '{"error":{"code":"\ud800"}}',
    ],
)
@pytest.mark.parametrize("status", [400, 401, 429, 500, 600])
def test_garbage_structured_codes_never_raise(body: Any, status: int) -> None:
    verdict = classify_response(status, {}, body, now=NOW)
    assert isinstance(verdict.kind, FailureKind)
