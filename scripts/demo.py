"""`make demo`: the whole product in well under a minute, with no server to install.

Four app replicas share credential pools, model profiles with circuit breakers, and Google
OAuth sign-ins; two refresh workers (the real ``workers.Worker``) keep the tokens fresh. Every
provider is a local fake on 127.0.0.1 (real HTTP), scripted to answer 429 with Retry-After,
402 and 5xx at set moments of virtual time: keys rotate and cool down, requests fail over
across providers inside ``ModelProfileManager.execute()``, breakers open, probe and close,
and each token is refreshed exactly once. Time is virtual (every store's clock is held still
and moved ten seconds per step), so ten minutes pass in seconds.

On a terminal the run is a live view (``--plain`` for the log); otherwise it prints a plain
log. Either way it ends with a summary computed from what happened, and exits with 1 if
anything unexpected happened (a failed request, a warning, a cooling key handed out, a call
a provider refused, an OAuth alarm), else 0. It runs on the embedded
backend (``memory://``) unless ``COORDINATOR_REDIS_URL`` is set: then every replica and
worker opens its own connection to that Redis, in a fresh namespace, deleted at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from coordinator.store.secrets import redact
from scripts.demo_fleet import Fleet
from scripts.demo_journal import Journal, Line
from scripts.demo_scenario import (
    CHAT_PER_TICK,
    DURATION_S,
    GEMINI_PER_TICK,
    INCIDENTS,
    KEYS,
    PROFILES,
    TICK_S,
    TOKEN_LIFETIME_S,
    USERS,
    WORKER_LEAD_S,
    clock,
    duration,
)
from scripts.demo_summary import compute, render
from scripts.demo_view import LiveView, PlainView, Snapshot

DELIVERY_S = 0.05  # real time the event readers get after each step


class Warnings(logging.Handler):
    """Collects every warning any library logs during the run: the summary counts them as
    unexpected, and the journal shows them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[Line] = []
        self.journal: Journal | None = None
        self.now: Callable[[], float] = lambda: 0.0

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record as a journal line."""
        text = redact(f"{record.name}: {record.getMessage()}")
        line = Line(self.now(), "warning", text, "bold red")
        self.lines.append(line)
        if self.journal is not None:
            self.journal.note(line)


def intro(fleet: Fleet) -> list[str]:
    """What is about to happen."""
    chain = " → ".join(f"{p.id} {p.priority}" for p in PROFILES)
    pools = " · ".join(
        f"{provider}: {', '.join(k.id for k in KEYS if k.provider == provider)}"
        for provider in dict.fromkeys(k.provider for k in KEYS)
    )
    lines = [
        f"coordinator demo: {len(fleet.replicas)} app replicas and 2 refresh workers share "
        f"{fleet.shown_url} (namespace {fleet.namespace})",
        f"  model profiles  {chain} (priority order: the failover path); every provider "
        "(openai, anthropic, xai, google) is a fake on 127.0.0.1",
        f"  pools           {pools} · google: the OAuth sign-ins of {' and '.join(USERS)}",
        f"  traffic         every {TICK_S} virtual s, each replica sends {CHAT_PER_TICK} chat "
        f"requests (any model, best profile first) and {GEMINI_PER_TICK} for gemini-1.5-flash",
        f"  OAuth           access tokens live {duration(TOKEN_LIFETIME_S)}; the workers "
        f"refresh each {duration(WORKER_LEAD_S)} before it expires",
        f"  script          {DURATION_S // 60} virtual minutes:",
    ]
    for i in INCIDENTS:
        end = clock(i.end_s) if i.end_s is not None else "the end"
        lines.append(f"    {clock(i.start_s)} to {end}: {i.title}")
    return [*lines, ""]


async def run_steps(fleet: Fleet, journal: Journal, view: LiveView | PlainView) -> None:
    """Every step: move virtual time on, let the workers catch up, send one round of
    requests, then show what happened (the journal one step late, so that each step's
    events have all arrived)."""
    for step in range(DURATION_S // TICK_S):
        t_s = step * TICK_S
        fleet.clock.advance_to(t_s)
        journal.script(t_s)
        await fleet.workers_caught_up()
        await fleet.traffic()
        await asyncio.sleep(DELIVERY_S)
        snap = await Snapshot.read(fleet) if view.wants_snapshot(t_s) else None
        view.show(journal.flush(before_s=t_s + TICK_S - view.lag_s), snap)


async def settle(fleet: Fleet, timeout_s: float = 5.0) -> None:
    """Give every replica's event readers time to receive the last transitions: until every
    replica has received as many as the others, twice in a row."""
    last: set[int] = set()
    for _ in range(int(timeout_s / DELIVERY_S)):
        await asyncio.sleep(DELIVERY_S)
        counts = {len(r.seen) for r in fleet.replicas}
        if len(counts) == 1 and counts == last:
            return
        last = counts


async def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; 0 when nothing unexpected happened, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--plain", action="store_true", help="the plain log, even on a terminal")
    parser.add_argument("--keep", action="store_true", help="keep the run's keys in Redis")
    args = parser.parse_args(argv)
    console = Console()
    live = console.is_terminal and not args.plain
    url = os.environ.get("COORDINATOR_REDIS_URL") or "memory://"
    fleet = Fleet(url, f"demo-{secrets.token_hex(3)}")
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # its "job skipped" chatter
    started = time.monotonic()
    clean = False
    try:
        await fleet.open()
        print("\n".join(intro(fleet)), flush=True)
        clean = await _run(fleet, warnings, live, console, started)
    finally:
        removed = await fleet.close(keep=args.keep)
    if args.keep and not url.startswith("memory://"):
        print(
            f"\nthe run's state stays in Redis, its times ten virtual minutes ahead: "
            f"coordinator --namespace {fleet.namespace} status"
        )
    elif removed:
        print(f"\n(deleted the run's {removed} keys from Redis; --keep keeps them)")
    return 0 if clean else 1


async def _run(
    fleet: Fleet, warnings: Warnings, live: bool, console: Console, started: float
) -> bool:
    """Provision, run every step, print the summary; returns whether all went as expected."""
    journal = Journal(fleet.clock.at, {})
    warnings.journal, warnings.now = journal, fleet.clock.now_s
    picks: list[tuple[str, int, str | None]] = []
    fleet.listen(journal.add, picks)
    await fleet.readers_started()
    for credential_id, start, finish in await fleet.provision():
        journal.logins[credential_id] = (start, finish)
    await fleet.start_workers()
    view: LiveView | PlainView = (
        LiveView(fleet, console, journal.tail, picks) if live else PlainView(fleet)
    )
    with view:
        await run_steps(fleet, journal, view)
        await settle(fleet)
        view.show(journal.flush(), await Snapshot.read(fleet) if live else None)
    results = compute(fleet, journal.events, picks)
    summary = render(fleet, results, time.monotonic() - started, warnings.lines)
    print("\n" + "\n".join(summary), flush=True)
    refused = sum(api.refused for api in fleet.fakes.apis.values())
    return not (
        warnings.lines or refused or results.failed or results.cooling_picks or results.alarms
    )


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except BrokenPipeError:  # e.g. `| head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
