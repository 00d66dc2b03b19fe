"""Logging: the JSON and text formatters with the records' structured context, the redaction
filter, ``configure``, the worker's ``--log-format json``, and a full scripted run (pools that
fail and cool down, model profiles that fail over, OAuth refreshes through the worker against a
local token endpoint) logged at DEBUG in both formats without a single secret in the output."""

from __future__ import annotations

import base64
import io
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from coordinator import ConfigError, Store
from coordinator.events import Event
from coordinator.logs import (
    JsonFormatter,
    RedactFilter,
    TextFormatter,
    configure,
    event_context,
    log_format,
)

from .test_metrics_flow import (  # noqa: F401  (fixtures)
    CLIENT_ID,
    CLIENT_SECRET,
    SECRETS,
    TokenEndpoint,
    _counted,
    access,
    endpoint,
    flow_env,
    redis_store,
    refresh,
    run_flow,
    scrape_until,
)

ROOT = Path(__file__).resolve().parent.parent


def record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("coordinator.test")
    info = None
    if exc:
        try:
            raise RuntimeError("it broke")
        except RuntimeError:
            info = sys.exc_info()
    return logger.makeRecord(logger.name, logging.WARNING, "f.py", 1, msg, args, info, extra=extra)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


# -- formatters and filter ----------------------------------------------------------------------


def test_the_json_formatter_writes_one_object_with_the_context_fields() -> None:
    line = JsonFormatter().format(
        record("profile %s cooled down", "k1", pool="openai", profile="k1", event="x", n=3)
    )
    assert "\n" not in line
    out = orjson.loads(line)
    assert out["level"] == "WARNING" and out["logger"] == "coordinator.test"
    assert out["message"] == "profile k1 cooled down"
    assert (out["pool"], out["profile"], out["event"], out["n"]) == ("openai", "k1", "x", 3)
    assert out["ts"].endswith("+00:00") and "T" in out["ts"]
    failed = orjson.loads(JsonFormatter().format(record("boom", exc=True, thing=object())))
    assert "RuntimeError: it broke" in failed["exc"]
    assert failed["thing"].startswith("<object")  # what JSON cannot hold is its str()


def test_the_text_formatter_appends_the_context() -> None:
    line = TextFormatter().format(record("failover", profile="m1", kind="server"))
    assert line.endswith("WARNING coordinator.test: failover [profile=m1 kind=server]")
    assert TextFormatter().format(record("plain")).endswith("coordinator.test: plain")


def test_the_filter_masks_token_shaped_text_in_message_context_and_traceback() -> None:
    bearer = "Bearer abcdefghijklmnopqrstuvwxyz012345"
    rec = record("sent %s with sk-live-0123456789abcdef", bearer, header=bearer, n=1)
    try:
        raise ValueError("api_key=hunter2-hunter2 refused")
    except ValueError:
        rec.exc_info = sys.exc_info()
    assert RedactFilter().filter(rec)
    text = TextFormatter().format(rec)
    for secret in ("abcdefghijklmnopqrstuvwxyz012345", "sk-live-0123456789abcdef", "hunter2"):
        assert secret not in text
    assert "Bearer ****" in text and "api_key=****" in text
    assert "\n  File " in text  # the traceback keeps its shape


def test_configure_replaces_its_own_handler_and_names_a_bad_level(
    restore_logging: None,
) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure(json=True, level="debug", stream=first)
    configure(json=False, level=logging.INFO, stream=second)
    root = logging.getLogger()
    assert sum(1 for h in root.handlers if getattr(h, "_coordinator_handler", False)) == 1
    logging.getLogger("coordinator.x").info("hello", extra={"pool": "p"})
    assert first.getvalue() == "" and second.getvalue().endswith("hello [pool=p]\n")
    with pytest.raises(ConfigError) as caught:
        configure(level="LOUD")
    assert caught.value.field == "level"
    with pytest.raises(ConfigError) as caught:
        log_format("yaml")
    assert caught.value.field == "log_format"


def test_dict_config_names_the_formatter_and_the_filter() -> None:
    out = io.StringIO()
    logger = logging.getLogger("coordinator.dictconfig-test")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "coordinator.logs.JsonFormatter"}},
            "filters": {"redact": {"()": "coordinator.logs.RedactFilter"}},
            "handlers": {
                "out": {
                    "class": "logging.StreamHandler",
                    "stream": out,
                    "formatter": "json",
                    "filters": ["redact"],
                }
            },
            "loggers": {logger.name: {"handlers": ["out"], "level": "INFO", "propagate": False}},
        }
    )
    try:
        logger.info("sent Bearer abcdefghijklmnop0123", extra={"pool": "p"})
        line = orjson.loads(out.getvalue())
        assert line["message"] == "sent Bearer ****" and line["pool"] == "p"
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


def test_an_events_log_context_names_whom_it_concerns() -> None:
    assert event_context(Event("profile:cooldown", "k1", "openai", 0)) == {
        "event": "profile:cooldown",
        "pool": "openai",
        "profile": "k1",
    }
    assert event_context(Event("profile:failover", "m1", "models", 0)) == {
        "event": "profile:failover",
        "profile": "m1",
    }
    assert event_context(Event("token:refreshed", "g:a", "oauth", 0)) == {
        "event": "token:refreshed",
        "credential": "g:a",
    }


# -- a full run, logged at DEBUG ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.usefixtures("flow_env", "restore_logging")
async def test_a_full_run_logged_at_debug_shows_no_secret(
    fmt: str,
    redis_store: Store,  # noqa: F811  (the fixture)
    endpoint: TokenEndpoint,  # noqa: F811
    secret_key: str,
) -> None:
    out = io.StringIO()
    # The defensive filter is off: what is checked is that nothing logs a secret at all.
    configure(json=fmt == "json", level=logging.DEBUG, stream=out, redact_secrets=False)
    async with run_flow(redis_store, endpoint) as flow:
        await scrape_until(flow.port, _counted)
    logging.getLogger().handlers[-1].flush()
    text = out.getvalue()

    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    initial = [t for n in (1, 2, 3) for t in (access(n), refresh(n))]
    secrets = [*SECRETS, *endpoint.issued, *initial, basic, secret_key]
    assert len(endpoint.issued) == 4
    leaked = [s for s in secrets if s in text]
    assert not leaked, leaked

    # ... and the run was logged, with its context as fields.
    if fmt == "json":
        records = [orjson.loads(line) for line in text.splitlines()]
        assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)

        def find(**fields: str) -> dict[str, Any]:
            found = [r for r in records if all(r.get(k) == v for k, v in fields.items())]
            assert found, fields
            return found[0]

        find(logger="coordinator.models", event="profile:failover", profile="m1", kind="server")
        find(logger="coordinator.metrics", event="profile:cooldown", pool="p", profile="k1")
        find(logger="coordinator.metrics", event="profile:circuit-opened", profile="m1")
        find(logger="coordinator.oauth", event="token:refreshed", credential=flow.credentials[0])
        find(logger="coordinator.worker", credential=flow.credentials[0], level="INFO")
        find(logger="coordinator.worker", worker=flow.worker.id)
    else:
        assert "failover from m1 (server) to m2 [event=profile:failover profile=m1" in text
        assert "event profile:cooldown [event=profile:cooldown pool=p profile=k1]" in text
        assert "refresh: RefreshOutcome(" in text


def test_the_worker_logs_json_lines_with_log_format_json(tmp_path: Path) -> None:
    env = dict(os.environ, COORDINATOR_WORKER_LOG_FORMAT="json")
    env.pop("COORDINATOR_REDIS_URL", None)
    command = [sys.executable, "-m", "workers", "--url", "memory://", "--log-level", "info"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while "started" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        started = orjson.loads(line)
        assert started["logger"] == "coordinator.worker" and started["level"] == "INFO"
        assert started["message"] == f"worker {started['worker']} started"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
