"""The worker's command line: parse settings, connect, run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from coordinator import logs
from coordinator.errors import CoordinatorError
from coordinator.store import connect

from .providers import load_providers
from .settings import ENV_PREFIX, WorkerSettings
from .worker import Worker

__all__ = ["main", "parser"]

ENV_CONFIG = "COORDINATOR_CONFIG"
ENV_LOG_LEVEL = f"{ENV_PREFIX}LOG_LEVEL"
ENV_LOG_FORMAT = f"{ENV_PREFIX}LOG_FORMAT"


def parser() -> argparse.ArgumentParser:
    """The worker's arguments; each setting also reads ``COORDINATOR_WORKER_<NAME>``."""
    p = argparse.ArgumentParser(
        prog="coordinator worker",
        description="Refresh OAuth tokens before they expire and apply due cooldown ends and "
        "breaker half-opens, shared by any number of workers and app replicas.",
    )
    p.add_argument("--url", help="store URL (default: $COORDINATOR_REDIS_URL, else memory://)")
    p.add_argument("--namespace", default="coord", help="key namespace (default: coord)")
    p.add_argument(
        "--config",
        help=f"TOML file with [oauth.providers.<name>] tables (default: ${ENV_CONFIG})",
    )
    p.add_argument(
        "--log-level",
        default=os.environ.get(ENV_LOG_LEVEL, "INFO"),
        help=f"logging level (default: ${ENV_LOG_LEVEL}, else INFO)",
    )
    p.add_argument(
        "--log-format",
        default=os.environ.get(ENV_LOG_FORMAT, "text"),
        help=f"text, or json: one JSON object per line (default: ${ENV_LOG_FORMAT}, else text)",
    )
    defaults = WorkerSettings()
    kinds = {"int": int, "float": float, "str": str}
    for f in fields(WorkerSettings):
        flag = "--" + f.name.replace("_", "-")
        env = f"{ENV_PREFIX}{f.name.upper()}"
        kind = kinds[str(f.type)]
        p.add_argument(flag, type=kind, help=f"default {getattr(defaults, f.name)} (${env})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; 0 after a clean stop, 1 on a configuration or
    connection error (one line on stderr)."""
    args = parser().parse_args(argv)
    try:
        logs.configure(json=logs.log_format(args.log_format), level=args.log_level)
        # APScheduler logs every job run at INFO (the sweep runs every second): its warnings
        # only, unless at DEBUG.
        if logging.getLogger().level > logging.DEBUG:
            logging.getLogger("apscheduler").setLevel(logging.WARNING)
        return asyncio.run(_run(args))
    except CoordinatorError as exc:
        print(f"coordinator worker: error: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(WorkerSettings)}
    settings = WorkerSettings.from_sources(given)
    config = args.config or os.environ.get(ENV_CONFIG)
    providers = load_providers(config) if config else []
    store = await connect(args.url, namespace=args.namespace)
    try:
        await Worker(store, providers, settings).run(handle_signals=True)
    finally:
        await store.close()
    return 0
