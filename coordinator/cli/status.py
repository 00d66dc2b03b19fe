"""``status`` (the whole fleet, ``--watch`` redraws it from the event stream) and ``workers``."""

from __future__ import annotations

import asyncio
import contextlib
import json

import click
from rich.live import Live

from ..fleet import read_heartbeats
from ..overview import Managers, fleet_status
from . import render
from .context import Settings, json_option, pass_settings, run

__all__ = ["status", "workers"]

#: While watching, the table is redrawn at least this often (cooldowns count down).
_REDRAW_S = 1.0


@click.command()
@click.argument("provider", required=False)
@json_option
@click.option("--watch", is_flag=True, help="redraw on every event (Ctrl-C stops)")
@pass_settings
def status(settings: Settings, provider: str | None, as_json: bool, watch: bool) -> None:
    """Pools, model profiles and breakers, OAuth credentials and workers (PROVIDER: only
    that pool). With --watch --json, one JSON document per line, one per change."""

    async def once(managers: Managers) -> None:
        fleet = await fleet_status(managers)
        if as_json:
            render.print_json(_filtered(fleet.to_json(), provider))
        else:
            render.console().print(render.fleet_tables(fleet, provider))

    run(settings, (lambda m: _watch(m, provider, as_json)) if watch else once)


def _filtered(data: dict[str, object], provider: str | None) -> dict[str, object]:
    if provider is not None:
        rows = data["pools"]
        assert isinstance(rows, list)
        data["pools"] = [r for r in rows if r["provider"] == provider]
    return data


async def _watch(managers: Managers, provider: str | None, as_json: bool) -> None:
    """Redraw after each event of any manager (and every second, for the countdowns)."""
    changed = asyncio.Event()
    sources = (managers.pools, managers.models, managers.oauth)
    stops = [source.on("*", lambda _event: changed.set()) for source in sources]
    for source in sources:
        await source.events.wait_started()  # events from now on are seen
    try:
        if as_json:
            await _watch_json(managers, provider, changed)
        else:
            await _watch_table(managers, provider, changed)
    finally:
        for stop in stops:
            stop()


async def _watch_json(managers: Managers, provider: str | None, changed: asyncio.Event) -> None:
    while True:
        changed.clear()
        fleet = await fleet_status(managers)
        click.echo(json.dumps(_filtered(fleet.to_json(), provider), default=str), nl=True)
        await changed.wait()


async def _watch_table(managers: Managers, provider: str | None, changed: asyncio.Event) -> None:
    out = render.console()
    if not out.is_terminal:  # piped: one frame per change, as the JSON mode
        while True:
            changed.clear()
            out.print(render.fleet_tables(await fleet_status(managers), provider))
            await changed.wait()
    fleet = await fleet_status(managers)
    with Live(render.fleet_tables(fleet, provider), console=out) as live:
        while True:
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), _REDRAW_S)
            live.update(render.fleet_tables(await fleet_status(managers), provider))


@click.command()
@json_option
@pass_settings
def workers(settings: Settings, as_json: bool) -> None:
    """The refresh workers' heartbeats."""

    async def call(managers: Managers) -> None:
        beats = await read_heartbeats(managers.store)
        if as_json:
            render.print_json(beats)
        else:
            now = await managers.store.time_ms()
            render.console().print(render.workers_table(beats, now))

    run(settings, call)
