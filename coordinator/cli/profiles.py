"""``profiles``, ``cooldown``, ``breaker`` and ``sessions``: pool keys and model profiles."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from ..errors import ConfigError, ProfileNotFoundError
from ..models.types import ModelAuth, ModelProfile
from ..overview import Managers, release_session, session_bindings
from ..pools.types import AuthProfile
from . import render
from .context import Settings, json_option, pass_settings, run

__all__ = ["breaker", "cooldown", "profiles", "sessions"]


def _pool_row(p: AuthProfile) -> dict[str, Any]:
    """A pool profile as shown (its credential by reference, never the key)."""
    credential = (
        f"env {p.api_key_env}"
        if p.api_key_env
        else f"oauth {p.oauth_credential_id}"
        if p.oauth_credential_id
        else "stored key (encrypted)"
    )
    return {
        "kind": "pool",
        "id": p.id,
        "pool": p.provider,
        "type": p.type,
        "credential": credential,
        "priority": p.priority,
        "metadata": dict(p.metadata),
    }


def _model_row(m: ModelProfile) -> dict[str, Any]:
    """A model profile as shown (auth by description, never the key)."""
    return {
        "kind": "model",
        "id": m.id,
        "provider": m.provider,
        "auth": m.auth.describe(),
        "base_url": m.base_url,
        "models": list(m.models),
        "priority": m.priority,
        "default_model": m.default_model,
        "enabled": m.enabled,
        "metadata": dict(m.metadata),
    }


@click.group()
def profiles() -> None:
    """Pool profiles (API keys of a provider's pool) and model profiles."""


@profiles.command("list")
@click.option("--pool", help="only this pool's profiles (no model profiles)")
@json_option
@pass_settings
def list_profiles(settings: Settings, pool: str | None, as_json: bool) -> None:
    """Every pool profile and model profile."""

    async def call(m: Managers) -> list[dict[str, Any]]:
        rows = [_pool_row(p) for p in await m.pools.list_profiles(pool)]
        if pool is None:
            rows += [_model_row(p) for p in await m.models.list_profiles()]
        return rows

    rows = run(settings, call)
    if as_json:
        render.print_json(rows)
        return
    columns = ["kind", "id", "pool/provider", "credential/auth", "priority", "enabled"]
    cells = (
        [
            r["kind"],
            r["id"],
            r.get("pool") or r.get("provider"),
            r.get("credential") or r.get("auth"),
            r["priority"],
            r.get("enabled", ""),
        ]
        for r in rows
    )
    render.console().print(render.table("Profiles", columns, cells))


async def _find(m: Managers, profile_id: str) -> dict[str, Any]:
    """A pool profile, else a model profile, with that id; else ProfileNotFoundError."""
    try:
        return _pool_row(await m.pools.get_profile(profile_id))
    except ProfileNotFoundError:
        return _model_row(await m.models.get_profile(profile_id))


@profiles.command("show")
@click.argument("profile_id")
@json_option
@pass_settings
def show(settings: Settings, profile_id: str, as_json: bool) -> None:
    """One profile's definition and health."""

    async def call(m: Managers) -> dict[str, Any]:
        row = await _find(m, profile_id)
        statuses: list[Any] = (
            await m.pools.get_status(row["pool"])
            if row["kind"] == "pool"
            else await m.models.get_status()
        )
        health = [asdict(s) for s in statuses if s.id == profile_id]
        return {**row, "status": health[0] if health else None}

    row = run(settings, call)
    if as_json:
        render.print_json(row)
        return
    status = row.pop("status") or {}
    cells = [*row.items(), *(("status." + k, v) for k, v in status.items())]
    render.console().print(render.table(f"Profile {profile_id}", ["field", "value"], cells))


def _model_auth(text: str) -> ModelAuth:
    """``env:VAR``, ``pool:NAME``, ``oauth:CREDENTIAL`` or ``none`` (never a key itself)."""
    kind, _, value = text.partition(":")
    if kind == "none" and not value:
        return ModelAuth.none()
    if kind == "env" and value:
        return ModelAuth.env(value)
    if kind == "pool" and value:
        return ModelAuth.pool(value)
    if kind == "oauth" and value:
        return ModelAuth.oauth(value)
    raise ConfigError("--auth", f"{text!r} is not env:VAR, pool:NAME, oauth:CREDENTIAL or none")


@profiles.command("add")
@click.argument("profile_id")
@click.option("--pool", help="add a pool profile to this provider's pool")
@click.option("--env", "env_var", help="pool profile: the variable holding the API key")
@click.option("--oauth", "oauth_id", help="pool profile: an OAuth credential id")
@click.option("--base-url", help="add a model profile served at this URL")
@click.option("--provider", help="model profile: its provider")
@click.option("--models", "model_names", default="*", help="model profile: names, comma separated")
@click.option("--auth", default="none", help="model profile: env:VAR, pool:NAME, oauth:ID or none")
@click.option("--priority", type=int, default=0, help="higher first")
@pass_settings
def add(
    settings: Settings,
    profile_id: str,
    pool: str | None,
    env_var: str | None,
    oauth_id: str | None,
    base_url: str | None,
    provider: str | None,
    model_names: str,
    auth: str,
    priority: int,
) -> None:
    """Add (or update) a pool profile (--pool) or a model profile (--base-url). Keys are
    named by their environment variable: no secret on the command line."""
    if (pool is None) == (base_url is None):
        raise click.UsageError("give --pool (a pool profile) or --base-url (a model profile)")

    async def call(m: Managers) -> str:
        if pool is not None:
            profile = AuthProfile(
                id=profile_id,
                provider=pool,
                type="oauth" if oauth_id else "api-key",
                api_key_env=env_var,
                oauth_credential_id=oauth_id,
                priority=priority,
            )
            await m.pools.add_profile(profile)
            return f"pool profile {profile_id} saved in pool {pool}"
        model = ModelProfile(
            id=profile_id,
            provider=provider or "",
            auth=_model_auth(auth),
            base_url=str(base_url),
            models=[n.strip() for n in model_names.split(",")],
            priority=priority,
        )
        await m.models.add_profile(model)
        return f"model profile {profile_id} saved"

    click.echo(run(settings, call))


@profiles.command("remove")
@click.argument("profile_id")
@pass_settings
def remove(settings: Settings, profile_id: str) -> None:
    """Remove a pool profile or a model profile."""

    async def call(m: Managers) -> str:
        row = await _find(m, profile_id)
        if row["kind"] == "pool":
            await m.pools.remove_profile(profile_id)
        else:
            await m.models.remove_profile(profile_id)
        return f"{row['kind']} profile {profile_id} removed"

    click.echo(run(settings, call))


def _set_enabled(settings: Settings, profile_id: str, enabled: bool) -> None:
    async def call(m: Managers) -> bool:
        if enabled:
            return await m.models.enable_profile(profile_id)
        return await m.models.disable_profile(profile_id)

    word = "enabled" if enabled else "disabled"
    changed = run(settings, call)
    click.echo(f"{profile_id}: {word}" if changed else f"{profile_id}: was already {word}")


@profiles.command("enable")
@click.argument("profile_id")
@pass_settings
def enable(settings: Settings, profile_id: str) -> None:
    """Put a model profile back into selection."""
    _set_enabled(settings, profile_id, True)


@profiles.command("disable")
@click.argument("profile_id")
@pass_settings
def disable(settings: Settings, profile_id: str) -> None:
    """Take a model profile out of selection (its breaker is kept)."""
    _set_enabled(settings, profile_id, False)


@click.group()
def cooldown() -> None:
    """Cooldowns of pool profiles."""


def clear_cooldown_now(settings: Settings, profile_id: str) -> None:
    """End a pool profile's cooldowns now and print what happened."""

    async def call(m: Managers) -> bool:
        return await m.pools.clear_cooldown(profile_id)

    was = run(settings, call)
    click.echo(f"{profile_id}: {'cooldown cleared' if was else 'was not cooling down'}")


@cooldown.command("clear")
@click.argument("profile_id")
@pass_settings
def clear(settings: Settings, profile_id: str) -> None:
    """End a pool profile's cooldowns now and reset its failure counters."""
    clear_cooldown_now(settings, profile_id)


@click.group()
def breaker() -> None:
    """Circuit breakers of model profiles."""


@breaker.command("open")
@click.argument("profile_id")
@click.option(
    "--for",
    "for_s",
    type=float,
    metavar="SECONDS",
    help="how long it stays open (default: 60, the default reset timeout)",
)
@pass_settings
def open_breaker(settings: Settings, profile_id: str, for_s: float | None) -> None:
    """Force a model profile's breaker open now, on every replica. When the time is over it
    half-opens and a probe call decides, as after any opening; ``breaker close`` closes it
    before."""

    async def call(m: Managers) -> int:
        return (await m.models.open_breaker(profile_id, for_s=for_s)).open_remaining_ms

    remaining = run(settings, call)
    click.echo(f"{profile_id}: breaker open for {render.duration(remaining)}, then half-open")


def _close(settings: Settings, profile_id: str, *, reset: bool) -> None:
    async def call(m: Managers) -> tuple[str, bool]:
        if reset:
            previous = await m.models.reset_breaker(profile_id)
        else:
            previous = await m.models.close_breaker(profile_id)
        return previous, (await m.models.get_profile(profile_id)).enabled

    previous, enabled = run(settings, call)
    verb = "reset" if reset else "closed"
    note = "" if enabled else "; the profile is disabled (profiles enable puts it back)"
    click.echo(f"{profile_id}: breaker {verb} (was {previous}){note}")


@breaker.command("close")
@click.argument("profile_id")
@pass_settings
def close(settings: Settings, profile_id: str) -> None:
    """Close a model profile's breaker and end its cooldown now (undoes ``open``); its
    failure counts by kind are kept. A disabled profile stays disabled."""
    _close(settings, profile_id, reset=False)


@breaker.command("reset")
@click.argument("profile_id")
@pass_settings
def reset(settings: Settings, profile_id: str) -> None:
    """Close the breaker, end its cooldown and forget its failure window, streak and counts
    by kind (repairs a corrupt record). A disabled profile stays disabled."""
    _close(settings, profile_id, reset=True)


@click.group()
def sessions() -> None:
    """Sticky sessions: which key or model profile a session is pinned to."""


@sessions.command("show")
@click.argument("session_id")
@click.option("--pool", help="only this pool")
@json_option
@pass_settings
def show_session(settings: Settings, session_id: str, pool: str | None, as_json: bool) -> None:
    """Where a session is pinned (pool keys, model profile) and for how long."""

    async def call(m: Managers) -> list[Any]:
        return list(await session_bindings(m, session_id, pool))

    rows = run(settings, call)
    if as_json:
        render.print_json(rows)
        return
    cells = ([b.kind, b.scope, b.profile_id, render.duration(b.ttl_ms)] for b in rows)
    title = f"Session {session_id}" if rows else f"Session {session_id}: not pinned"
    render.console().print(render.table(title, ["kind", "pool", "profile", "expires in"], cells))


@sessions.command("release")
@click.argument("session_id")
@click.option("--pool", help="only this pool (the model session is kept)")
@pass_settings
def release(settings: Settings, session_id: str, pool: str | None) -> None:
    """Unpin a session from its pool keys and its model profile (its next call picks again)."""

    async def call(m: Managers) -> list[str]:
        return await release_session(m, session_id, pool)

    released = run(settings, call)
    if released:
        click.echo(f"{session_id}: released ({', '.join(released)})")
    else:
        click.echo(f"{session_id}: was not pinned")
