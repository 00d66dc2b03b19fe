"""``coordinator``: the operator's command line. It parses, calls the library, prints.

No business logic lives here; every command is one library call. Errors from the library are
printed as one line (no traceback, no secret) with exit status 1; bad usage exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from .. import __version__
from ..errors import CoordinatorError
from ..fleet import read_heartbeats
from ..pools.manager import AuthProfileManager
from ..store import functions as scripts
from ..store.connection import Store, connect
from ..store.secrets import generate_key

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coordinator",
        description="Inspect and operate coordinator's shared credential pools.",
    )
    parser.add_argument("--version", action="version", version=f"coordinator {__version__}")
    parser.add_argument("--url", help="store URL (default: $COORDINATOR_REDIS_URL, else memory://)")
    parser.add_argument("--namespace", default="coord", help="key namespace (default: coord)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("keygen", help="print a new COORDINATOR_SECRET_KEY")
    status = commands.add_parser("status", help="health of every profile")
    status.add_argument("provider", nargs="?", help="only this provider's pool")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    clear = commands.add_parser("clear-cooldown", help="end a profile's cooldowns now")
    clear.add_argument("profile_id")
    commands.add_parser("export", help="print a JSON snapshot of every pool (keys stay encrypted)")
    load = commands.add_parser("import", help="replace pools from an export file")
    load.add_argument("file", type=argparse.FileType("r"))
    functions = commands.add_parser(
        "functions", help="list the Redis function libraries of this and other versions"
    )
    functions.add_argument(
        "--prune",
        action="store_true",
        help="delete other versions' libraries (once no replica runs those versions)",
    )
    workers = commands.add_parser("workers", help="the refresh workers' heartbeats")
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    worker = commands.add_parser(
        "worker",
        help="run a refresh worker (same as python -m workers; --help lists its settings)",
        add_help=False,
    )
    worker.add_argument("worker_args", nargs=argparse.REMAINDER)
    return parser


def _run_worker(args: argparse.Namespace) -> int:
    from workers.cli import main as worker_main

    forwarded = ["--namespace", args.namespace, *args.worker_args]  # (later ones win)
    if args.url:
        forwarded = ["--url", args.url, *forwarded]
    return worker_main(forwarded)


async def _run(args: argparse.Namespace) -> int:
    store = await connect(args.url, namespace=args.namespace)
    manager = AuthProfileManager(store)
    try:
        if args.command == "status":
            rows = await manager.get_status(args.provider)
            if args.json:
                print(json.dumps([asdict(r) for r in rows], indent=2, default=str))
            else:
                _print_status(rows)
                _print_workers(await read_heartbeats(store))
        elif args.command == "workers":
            beats = await read_heartbeats(store)
            if args.json:
                print(json.dumps(beats, indent=2))
            else:
                _print_workers(beats)
        elif args.command == "clear-cooldown":
            was = await manager.clear_cooldown(args.profile_id)
            print(f"{args.profile_id}: {'cooldown cleared' if was else 'was not cooling down'}")
        elif args.command == "export":
            print(json.dumps(await manager.export_state(), indent=2))
        elif args.command == "import":
            count = await manager.import_state(json.load(args.file))
            print(f"imported {count} profiles")
        elif args.command == "functions":
            await _functions(store, prune=args.prune)
    finally:
        await manager.close()
        await store.close()
    return 0


async def _functions(store: Store, *, prune: bool) -> None:
    ours, others = await store.function_libraries()
    print(f"this version: {len(ours)} of {len(scripts.script_names())} libraries loaded")
    if prune:
        deleted = await store.prune_functions()
        print(f"deleted {len(deleted)} libraries of other versions")
        for name in deleted:
            print(f"  {name}")
        return
    print(f"other versions: {len(others)} libraries (coordinator functions --prune deletes them)")
    for name in others:
        print(f"  {name}")


def _print_status(rows: Sequence[object]) -> None:
    print(f"{'provider':<12} {'profile':<24} {'state':<10} {'remaining':>10} {'fail':>4} "
          f"{'bill':>4}  last error")  # fmt: skip
    for row in rows:
        r = asdict(row)  # type: ignore[call-overload]
        state = "broken" if r["broken_field"] else "cooling" if r["in_cooldown"] else "healthy"
        remaining = f"{r['cooldown_remaining_ms'] // 1000} s" if r["in_cooldown"] else "-"
        error = (r["last_error"] or "")[:60]
        if r["broken_field"]:
            error = f"corrupt field {r['broken_field']!r}"
        print(
            f"{r['provider']:<12} {r['id']:<24} {state:<10} {remaining:>10} "
            f"{r['failures']:>4} {r['billing_failures']:>4}  {error}"
        )


def _print_workers(beats: Sequence[dict[str, str]]) -> None:
    if not beats:
        print("workers: none running")
        return
    print(f"workers: {len(beats)}")
    for beat in beats:
        print(
            f"  {beat.get('id', '?'):<40} {beat.get('state', '?'):<9} "
            f"version {beat.get('version', '?')}, refresh runs {beat.get('refresh_runs', '0')}, "
            f"sweep runs {beat.get('sweep_runs', '0')}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coordinator`` command."""
    parser = _parser()
    # The worker's own options go through to it unparsed (``coordinator worker --help`` too).
    args, unknown = parser.parse_known_args(argv)
    if args.command == "worker":
        args.worker_args = [*unknown, *args.worker_args]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "keygen":
        print(generate_key())
        return 0
    if args.command == "worker":
        return _run_worker(args)
    try:
        return asyncio.run(_run(args))
    except CoordinatorError as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr)
        return 1
