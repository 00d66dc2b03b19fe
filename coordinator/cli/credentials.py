"""``credentials``: the OAuth credentials the fleet shares (no token is ever printed)."""

from __future__ import annotations

import os
from typing import Any

import click

from ..errors import ConfigError
from ..oauth.types import OAuthCredential
from ..overview import Managers
from . import render
from .context import Settings, json_option, pass_settings, run

__all__ = ["credentials"]

ENV_CONFIG = "COORDINATOR_CONFIG"

config_option = click.option(
    "--config",
    "config_path",
    help=f"TOML file with the [oauth.providers.<name>] tables (default: ${ENV_CONFIG})",
)


def _with_providers(managers: Managers, config_path: str | None) -> None:
    """Configure the OAuth providers of the file (client secrets from this environment)."""
    from coordinator.oauth.tables import load_providers

    path = config_path or os.environ.get(ENV_CONFIG)
    if not path:
        raise ConfigError(
            "--config", f"this command needs the OAuth providers: --config or ${ENV_CONFIG}"
        )
    for provider in load_providers(path):
        managers.oauth.add_provider(provider)


@click.group()
def credentials() -> None:
    """OAuth credentials: list, sign in, refresh, revoke, choose the default."""


@credentials.command("list")
@click.option("--provider", help="only this provider's credentials")
@json_option
@pass_settings
def list_credentials(settings: Settings, provider: str | None, as_json: bool) -> None:
    """Every credential with its status, expiry and last refresh."""

    async def call(m: Managers) -> tuple[list[OAuthCredential], int]:
        return await m.oauth.list_credentials(provider), await m.store.time_ms()

    rows, now = run(settings, call)
    if as_json:
        render.print_json(rows)
    else:
        render.console().print(render.credentials_table(rows, now))


def _summary(credential: OAuthCredential) -> str:
    who = credential.email or credential.subject or "?"
    return f"{credential.id} ({credential.provider}, {who}): {credential.status}"


@credentials.command("login")
@click.argument("provider")
@config_option
@click.option("--device", is_flag=True, help="device code flow (no browser on this host)")
@click.option("--no-browser", is_flag=True, help="print the URL instead of opening a browser")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait")
@pass_settings
def login(
    settings: Settings,
    provider: str,
    config_path: str | None,
    device: bool,
    no_browser: bool,
    timeout: float,
) -> None:
    """Sign in with PROVIDER and store the credential (tokens encrypted in Redis)."""

    async def call(m: Managers) -> OAuthCredential:
        _with_providers(m, config_path)
        if device:
            started = await m.oauth.start_device_login(provider)
            click.echo(f"open {started.verification_uri} and enter {started.user_code}", err=True)
            return await m.oauth.complete_device_login(started)
        return await m.oauth.login(provider, timeout_s=timeout, open_browser=not no_browser)

    click.echo(f"signed in: {_summary(run(settings, call))}")


@credentials.command("refresh")
@click.argument("credential_id")
@config_option
@pass_settings
def refresh(settings: Settings, credential_id: str, config_path: str | None) -> None:
    """Refresh a credential's token now (under the shared refresh lock)."""

    async def call(m: Managers) -> OAuthCredential:
        _with_providers(m, config_path)
        return await m.oauth.refresh_token(credential_id)

    click.echo(f"refreshed: {_summary(run(settings, call))}")


@credentials.command("revoke")
@click.argument("credential_id")
@config_option
@pass_settings
def revoke(settings: Settings, credential_id: str, config_path: str | None) -> None:
    """Revoke the credential's tokens at the provider, then delete it."""

    async def call(m: Managers) -> bool:
        _with_providers(m, config_path)
        return await m.oauth.revoke(credential_id)

    remote = run(settings, call)
    where = "revoked at the provider and removed" if remote else "removed (no revocation endpoint)"
    click.echo(f"{credential_id}: {where}")


@credentials.command("remove")
@click.argument("credential_id")
@pass_settings
def remove(settings: Settings, credential_id: str) -> None:
    """Delete a credential without asking the provider."""

    async def call(m: Managers) -> bool:
        return await m.oauth.remove_credential(credential_id)

    click.echo(f"{credential_id}: {'removed' if run(settings, call) else 'did not exist'}")


@credentials.command("set-default")
@click.argument("credential_id")
@pass_settings
def set_default(settings: Settings, credential_id: str) -> None:
    """Make a credential its provider's default."""

    async def call(m: Managers) -> Any:
        await m.oauth.set_default(credential_id)

    run(settings, call)
    click.echo(f"{credential_id}: now the default of its provider")
