"""``apply``, ``doctor``, ``export`` / ``import``, ``functions``, ``keygen`` and ``worker``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import IO, Any

import click

from .. import config_file
from .. import doctor as doctor_checks
from ..overview import Managers
from ..store import functions as scripts
from ..store.secrets import generate_key
from . import render
from .context import Settings, json_option, pass_settings, run

__all__ = ["apply", "doctor", "export", "functions", "import_", "keygen", "worker"]


@click.command()
def keygen() -> None:
    """Print a new COORDINATOR_SECRET_KEY."""
    click.echo(generate_key())


@click.command()
@pass_settings
def export(settings: Settings) -> None:
    """Print a JSON snapshot of every pool (keys stay encrypted)."""

    async def call(m: Managers) -> dict[str, Any]:
        return await m.pools.export_state()

    render.print_json(run(settings, call))


@click.command("import")
@click.argument("file", type=click.File("r"))
@pass_settings
def import_(settings: Settings, file: IO[str]) -> None:
    """Replace the pools with an export file's."""
    try:
        snapshot = json.load(file)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from None

    async def call(m: Managers) -> int:
        return await m.pools.import_state(snapshot)

    click.echo(f"imported {run(settings, call)} profiles")


@click.command()
@click.option(
    "--prune",
    is_flag=True,
    help="delete other versions' libraries (once no replica runs those versions)",
)
@pass_settings
def functions(settings: Settings, prune: bool) -> None:
    """List the Redis function libraries of this and other versions."""

    async def call(m: Managers) -> None:
        ours, others = await m.store.function_libraries()
        click.echo(f"this version: {len(ours)} of {len(scripts.script_names())} libraries loaded")
        if prune:
            deleted = await m.store.prune_functions()
            click.echo(f"deleted {len(deleted)} libraries of other versions")
            for name in deleted:
                click.echo(f"  {name}")
            return
        click.echo(
            f"other versions: {len(others)} libraries (coordinator functions --prune deletes them)"
        )
        for name in others:
            click.echo(f"  {name}")

    run(settings, call)


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def worker(settings: Settings, worker_args: Sequence[str]) -> None:
    """Run a refresh worker (same as python -m workers; --help lists its settings)."""
    from workers.cli import main as worker_main

    forwarded = ["--namespace", settings.namespace, *worker_args]  # (later ones win)
    if settings.url:
        forwarded = ["--url", settings.url, *forwarded]
    raise SystemExit(worker_main(forwarded))


@click.command()
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="the configuration file (TOML)",
)
@click.option("--dry-run", is_flag=True, help="print the changes, make none")
@click.option("--prune", is_flag=True, help="remove the profiles the file does not name")
@json_option
@pass_settings
def apply(settings: Settings, path: str, dry_run: bool, prune: bool, as_json: bool) -> None:
    """Make the store's profiles what the file says (idempotent). Policies and OAuth
    providers in the file are checked; processes read them from the same file."""
    config = config_file.load(path)

    async def call(m: Managers) -> config_file.Plan:
        return await config_file.apply(config, m.pools, m.models, prune=prune, dry_run=dry_run)

    done = run(settings, call)
    if as_json:
        render.print_json({"dry_run": dry_run, **done.to_json()})
        return
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"{path}: {verb} {len(done.changes)} profiles" if done.changes else f"{path}: no changes"
    )
    for change in done.changes:
        click.echo(f"  {change}")
    for kind, profile_id in done.unmanaged:
        click.echo(f"  (not in the file, kept: {kind} profile {profile_id}; --prune removes it)")


@click.command()
@json_option
@click.option("--strict", is_flag=True, help="exit with 1 on warnings too")
@pass_settings
def doctor(settings: Settings, as_json: bool, strict: bool) -> None:
    """Check the shared Redis: connectivity, version, mode, functions, persistence, eviction,
    secret key, permissions, clock. Exit 1 when a check fails."""
    findings = asyncio.run(doctor_checks.diagnose(settings.url, namespace=settings.namespace))
    if as_json:
        render.print_json([f.to_json() for f in findings])
    else:
        for f in findings:
            click.echo(f"{f.level.upper():<5}  {f.check}: {f.message}")
            if f.action:
                click.echo(f"       → {f.action}")
    level = doctor_checks.worst(findings)
    if level == "error" or (strict and level == "warn"):
        raise SystemExit(1)
