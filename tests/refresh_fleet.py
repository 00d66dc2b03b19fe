"""The processes of the refresh fleet tests, each in its own OS process.

``python -m tests.refresh_fleet worker ARGS...``
    The real worker (``workers.cli.main`` with ``ARGS``) plus one test hook: when
    ``$REFRESH_FLEET_STALL_FILE`` names a file that exists at the moment this worker holds a
    refresh lock and is about to check its fence (right before sending), the worker writes
    ``<file>.stalled`` (its pid) and stops itself with SIGSTOP right there, once. A SIGCONT
    resumes it exactly at that point.

``python -m tests.refresh_fleet app --url U --namespace N --config C --credential ID --out F``
    An app replica: ``get_token`` in a loop until SIGTERM (or ``--seconds``), then one JSON
    object in ``F``: calls, calls that waited for a refresh, tokens handed out already expired
    (their ``expires_at_ms`` against the clock Redis uses: same machine), tokens the provider's
    userinfo endpoint refused (every ``--check-every`` calls), errors by type, slowest call.

The managers of both read the providers from the same TOML file (``workers.providers``); the
store's encryption key comes from ``$COORDINATOR_SECRET_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from coordinator import connect
from coordinator.errors import CoordinatorError
from coordinator.oauth import AccessToken, OAuthConfig, OAuthManager
from workers.providers import load_providers

STALL_ENV = "REFRESH_FLEET_STALL_FILE"


def install_stall_hook(path: str) -> None:
    """Make this process stop itself (SIGSTOP) once, holding a refresh lock, right before its
    fence check, when ``path`` exists."""
    original = OAuthManager._before_send
    fired: list[bool] = []

    async def before_send(self: OAuthManager, cid: str) -> None:
        if not fired and os.path.exists(path):
            fired.append(True)
            Path(f"{path}.stalled").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)  # resumes here on SIGCONT
        await original(self, cid)

    setattr(OAuthManager, "_before_send", before_send)  # noqa: B010  (a test hook)


def run_worker(argv: list[str]) -> int:
    """The worker's own command line, with the stall hook when asked for."""
    from workers.cli import main

    stall = os.environ.get(STALL_ENV)
    if stall:
        install_stall_hook(stall)
    return main(argv)


def _app_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refresh_fleet app")
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--credential", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--pause-s", type=float, default=0.02)
    p.add_argument("--check-every", type=int, default=25)
    p.add_argument("--lock-ttl-s", type=float, default=2.0)
    p.add_argument("--refresh-timeout-s", type=float, default=1.5)
    return p


class _Tally:
    """What one app saw."""

    def __init__(self) -> None:
        self.calls = 0
        self.waited = 0
        self.expired = 0
        self.checked = 0
        self.rejected = 0
        self.errors: Counter[str] = Counter()
        self.slowest_ms = 0.0
        self.versions: set[int] = set()

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "calls": self.calls,
                "waited": self.waited,
                "expired": self.expired,
                "checked": self.checked,
                "rejected": self.rejected,
                "errors": dict(self.errors),
                "slowest_ms": round(self.slowest_ms, 1),
                "versions": len(self.versions),
            }
        )


async def _one_call(oauth: OAuthManager, credential: str, tally: _Tally) -> AccessToken | None:
    started = time.perf_counter()
    try:
        got = await oauth.get_token(credential)
    except CoordinatorError as exc:
        tally.errors[type(exc).__name__] += 1
        return None
    tally.slowest_ms = max(tally.slowest_ms, (time.perf_counter() - started) * 1000)
    tally.calls += 1
    tally.waited += got.waited
    tally.versions.add(got.version)
    if got.expires_at_ms is not None and got.expires_at_ms <= time.time() * 1000:
        tally.expired += 1
    return got


async def run_app(args: argparse.Namespace) -> None:
    """Call ``get_token`` in a loop until SIGTERM or ``--seconds``; write the tally."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    store = await connect(args.url, namespace=args.namespace)
    providers = load_providers(args.config)
    config = OAuthConfig(lock_ttl_s=args.lock_ttl_s, refresh_timeout_s=args.refresh_timeout_s)
    oauth = OAuthManager(store, providers, config=config)
    userinfo = providers[0].userinfo_endpoint
    tally = _Tally()
    deadline = loop.time() + args.seconds
    async with httpx.AsyncClient() as http:
        while not stop.is_set() and loop.time() < deadline:
            got = await _one_call(oauth, args.credential, tally)
            if got is not None and userinfo and tally.calls % args.check_every == 0:
                auth = {"Authorization": f"Bearer {got.token.reveal()}"}
                tally.checked += 1
                tally.rejected += (await http.get(userinfo, headers=auth)).status_code != 200
            await asyncio.sleep(args.pause_s)
    await oauth.close()
    await store.close()
    Path(args.out).write_bytes(tally.as_json())


def main(argv: list[str]) -> int:
    """``worker ARGS...`` or ``app ARGS...``."""
    if argv[:1] == ["worker"]:
        return run_worker(argv[1:])
    if argv[:1] == ["app"]:
        asyncio.run(run_app(_app_parser().parse_args(argv[1:])))
        return 0
    print("usage: python -m tests.refresh_fleet worker|app ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
