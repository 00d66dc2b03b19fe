"""Logging: the ``coordinator.*`` loggers, their structured context, and a JSON formatter.

Every log call of the package passes its context as ``extra=`` fields (``pool``, ``profile``,
``model``, ``event``, ``credential``, ``worker``, ...), so that a formatter can show them as
fields rather than inside the text. :func:`configure` installs one handler that writes either
plain lines or one JSON object per line (:class:`JsonFormatter`)::

    from coordinator.logs import configure
    configure(json=True, level="INFO")

Secrets are masked where they arise (error texts pass through
:func:`~coordinator.store.secrets.redact` before they are stored, emitted or logged);
:class:`RedactFilter`, installed by :func:`configure`, masks anything token-shaped once more.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from .errors import ConfigError
from .events import Event
from .store.secrets import redact

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "RedactFilter",
    "TextFormatter",
    "configure",
    "context_of",
    "event_context",
    "log_format",
]

#: The context fields coordinator's own log calls pass with ``extra=``.
CONTEXT_FIELDS = (
    "pool",
    "profile",
    "model",
    "provider",
    "credential",
    "event",
    "kind",
    "worker",
    "job",
    "operation",
)

# The attributes every LogRecord has: anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# No single line of a log record is cut shorter than this by the redaction filter.
_LINE_LIMIT = 100_000


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (every attribute a plain record does not have)."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def event_context(event: Event) -> dict[str, Any]:
    """The log context of an event: ``event`` (its type) and whom it concerns: ``pool`` and
    ``profile`` (a pool's event), ``profile`` (a model profile's) or ``credential`` (OAuth)."""
    context: dict[str, Any] = {"event": event.type}
    if event.source == "oauth":
        if event.profile_id:
            context["credential"] = event.profile_id
    else:
        if event.source != "models":
            context["pool"] = event.source
        if event.profile_id:
            context["profile"] = event.profile_id
    return context


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``,
    ``message``, then the record's context fields, and ``exc`` (the traceback) when there is
    one. A context value JSON cannot hold is written as its ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in context_of(record).items():
            out.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>`` followed by the context as ``key=value``
    pairs in brackets (``[pool=openai profile=team-a]``), then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without its traceback: the message and the context."""
        line = super().formatMessage(record)
        context = context_of(record)
        if not context:
            return line
        pairs = " ".join(f"{k}={v}" for k, v in context.items())
        return f"{line} [{pairs}]"


class RedactFilter(logging.Filter):
    """Masks what looks like a secret (bearer tokens, ``api_key=...``, ``sk-...`` keys, JWTs,
    long random strings: the patterns of :func:`~coordinator.store.secrets.redact`) in a
    record's message, its string context values and its traceback. A second line of defence:
    coordinator masks secrets where they arise; this also covers other libraries' records."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops one."""
        message = record.getMessage()
        masked = _mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        for name, value in context_of(record).items():
            if isinstance(value, str):
                setattr(record, name, _mask(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _mask(record.exc_text)
        return True


def _mask(text: str) -> str:
    """``redact`` line by line, keeping each line's indentation (tracebacks stay readable)."""
    lines = []
    for line in text.split("\n"):
        body = line.lstrip()
        masked = redact(body, limit=_LINE_LIMIT) if body else body
        lines.append(line[: len(line) - len(body)] + masked)
    return "\n".join(lines)


_HANDLER_FLAG = "_coordinator_handler"


def configure(
    *,
    json: bool = False,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    logger: str | None = None,
    redact_secrets: bool = True,
) -> logging.Handler:
    """Send log records to ``stream`` (default ``sys.stderr``): one JSON object per line
    (``json=True``, :class:`JsonFormatter`) or plain lines (:class:`TextFormatter`), at
    ``level``, with :class:`RedactFilter` unless ``redact_secrets=False``. The handler goes on
    the root logger (or the named ``logger``); a handler an earlier call installed there is
    replaced, so calling it again changes the format. Returns the handler."""
    numeric = _level(level)
    target = logging.getLogger(logger)
    for old in [h for h in target.handlers if getattr(h, _HANDLER_FLAG, False)]:
        target.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    if redact_secrets:
        handler.addFilter(RedactFilter())
    setattr(handler, _HANDLER_FLAG, True)
    target.addHandler(handler)
    target.setLevel(numeric)
    return handler


def _level(level: int | str) -> int:
    """A level number from a number or a name (``"debug"``, ``"INFO"``...), or ConfigError."""
    if isinstance(level, bool):
        raise ConfigError("level", "must be a logging level name or number")
    if isinstance(level, int):
        return level
    numeric = logging.getLevelNamesMapping().get(str(level).upper())
    if numeric is None:
        names = ", ".join(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
        raise ConfigError("level", f"{level!r} is not a logging level ({names})")
    return numeric


def log_format(value: str) -> bool:
    """Whether a ``--log-format`` value asks for JSON: ``json`` or ``text`` (any case)."""
    choice = value.strip().lower()
    if choice not in ("json", "text"):
        raise ConfigError("log_format", f"{value!r} is neither 'text' nor 'json'")
    return choice == "json"
