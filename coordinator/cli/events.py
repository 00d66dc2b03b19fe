"""``events tail``: the recent transitions of every pool, the model profiles and OAuth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict

import click

from ..events import Event
from ..overview import Managers, recent_events
from .context import Settings, json_option, pass_settings, run

__all__ = ["events"]


@click.group()
def events() -> None:
    """The event streams (each transition once, from whichever replica made it)."""


def _line(event: Event) -> str:
    data = " ".join(f"{k}={v}" for k, v in sorted(event.data.items()))
    return f"{event.ts_ms} {event.source:<10} {event.type:<24} {event.profile_id} {data}".rstrip()


def _echo(event: Event, as_json: bool) -> None:
    click.echo(json.dumps(asdict(event), default=str) if as_json else _line(event))


@events.command("tail")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(0, 10_000),
    default=20,
    show_default=True,
    help="how many recent events",
)
@click.option("--type", "types", multiple=True, help="only events of this type (repeatable)")
@click.option("--follow", "-f", is_flag=True, help="then print new events as they come")
@json_option
@pass_settings
def tail(settings: Settings, limit: int, types: Sequence[str], follow: bool, as_json: bool) -> None:
    """The newest events, oldest first (with --json, one JSON object per line)."""

    async def call(m: Managers) -> None:
        sources = (m.pools, m.models, m.oauth)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        stops = []
        if follow:
            # Subscribed before the history is read, so nothing falls in between (an event
            # in both is printed once).
            stops = [s.on("*", queue.put_nowait) for s in sources]
            for s in sources:
                await s.events.wait_started()
        seen = set()
        for event in await recent_events(m.store, limit, types):
            seen.add((event.stream_id, event.type))
            _echo(event, as_json)
        if not follow:
            return
        try:
            await _follow(queue, seen, set(types), as_json)
        finally:
            for stop in stops:
                stop()

    run(settings, call)


async def _follow(
    queue: asyncio.Queue[Event], seen: set[tuple[str | None, str]], types: set[str], as_json: bool
) -> None:
    while True:
        event = await queue.get()
        if (event.stream_id, event.type) not in seen and (not types or event.type in types):
            _echo(event, as_json)
