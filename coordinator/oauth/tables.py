"""OAuth providers from the ``[oauth.providers.<name>]`` tables of a TOML file (the worker's
``--config``, and ``coordinator apply``).

```toml
[oauth.providers.google]
preset = "google"                         # start from a preset (optional)
client_id = "123.apps.googleusercontent.com"
client_secret_env = "GOOGLE_CLIENT_SECRET"  # the secret is read from this variable

[oauth.providers.corp]
token_endpoint = "https://login.example.com/token"
client_id = "my-app"                      # a public client: no secret
```

Every other key is an :class:`~coordinator.oauth.OAuthProvider` field. Secrets are never written
in the file: ``client_secret`` itself is refused, ``client_secret_env`` names a variable.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .providers import OAuthProvider, preset

__all__ = ["load_providers", "providers_from_mapping"]

_FIELDS = {f.name for f in fields(OAuthProvider)} - {"name", "client_secret"}


def load_providers(path: str | Path) -> list[OAuthProvider]:
    """The providers named in the file's ``[oauth.providers]`` tables."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("providers", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("providers", f"{path}: {exc}") from None
    return providers_from_mapping(data.get("oauth", {}).get("providers", {}), source=str(path))


def providers_from_mapping(
    tables: Mapping[str, Any],
    *,
    source: str = "providers",
    environ: Mapping[str, str] | None = None,
) -> list[OAuthProvider]:
    """One provider per table (name -> fields), as described in the module docstring."""
    environ = os.environ if environ is None else environ
    out: list[OAuthProvider] = []
    for name, table in tables.items():
        where = f"{source}: oauth.providers.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(where, "must be a table")
        out.append(_provider(name, dict(table), where, environ))
    return out


def _provider(
    name: str, table: dict[str, Any], where: str, environ: Mapping[str, str]
) -> OAuthProvider:
    if "client_secret" in table:
        raise ConfigError(
            f"{where}.client_secret", "never write a secret in the file: use client_secret_env"
        )
    secret_env = table.pop("client_secret_env", None)
    base = table.pop("preset", None)
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "is not a provider field")
    if secret_env is not None:
        if not isinstance(secret_env, str) or secret_env not in environ:
            raise ConfigError(f"{where}.client_secret_env", f"variable {secret_env!r} is not set")
        table["client_secret"] = environ[secret_env]
    try:
        if base is not None:
            return preset(str(base), **table).replace(name=name)
        return OAuthProvider(name=name, **table)
    except TypeError as exc:
        raise ConfigError(where, str(exc)) from None
