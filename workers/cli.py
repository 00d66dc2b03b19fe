"""The worker's command line: parse settings, connect, run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from coordinator.errors import CoordinatorError
from coordinator.store import connect

from .providers import load_providers
from .settings import ENV_PREFIX, WorkerSettings
from .worker import Worker

__all__ = ["main", "parser"]

ENV_CONFIG = "COORDINATOR_CONFIG"


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
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    defaults = WorkerSettings()
    for f in fields(WorkerSettings):
        flag = "--" + f.name.replace("_", "-")
        env = f"{ENV_PREFIX}{f.name.upper()}"
        kind = int if f.type == "int" else float
        p.add_argument(flag, type=kind, help=f"default {getattr(defaults, f.name)} (${env})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; 0 after a clean stop, 1 on a configuration or
    connection error (one line on stderr)."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # APScheduler logs every job run at INFO (the sweep runs every second): its warnings only.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
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
