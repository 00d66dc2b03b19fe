"""The declarative configuration file (``coordinator apply -f coordinator.toml``).

One TOML file describes the whole fleet::

    [pools]                                   # AuthConfig: strategy, session_ttl_s, ...
    [pools.cooldown]                          # CooldownPolicy (and [pools.billing_cooldown])
    [providers.openai]                        # one credential pool per provider
    strategy = "priority"                     # this pool's rotation (AuthConfig.strategies)
    [providers.openai.profiles.openai-main]   # a pool profile (AuthProfile fields)
    api_key_env = "OPENAI_KEY_MAIN"
    [models]                                  # ModelConfig
    [models.breaker]                          # BreakerConfig
    [models.profiles.gpt-4o]                  # a model profile (ModelProfile fields)
    auth = { pool = "openai" }
    [oauth]                                   # OAuthConfig
    [oauth.providers.google]                  # an OAuth provider (as workers/providers.py)

Secrets are never written in the file: a key is named by its environment variable
(``api_key_env``, ``auth = { env = "..." }``, ``client_secret_env``). Profiles live in Redis:
:func:`plan` compares the file with the store and :func:`apply` makes the changes (idempotent;
with ``prune``, profiles the file no longer names are removed). Policies and OAuth providers
are per-process configuration: every replica and worker reads them from the same file with
:func:`load` (``ConfigFile.auth_config`` ...). A bad value raises :class:`ConfigFileError`
naming the file, the line and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .models.config import ModelConfig
from .models.manager import ModelProfileManager
from .models.types import ModelProfile
from .oauth.providers import OAuthProvider
from .oauth.types import OAuthConfig
from .pools.config import AuthConfig
from .pools.manager import AuthProfileManager
from .pools.types import AuthProfile

__all__ = ["Change", "ConfigFile", "ConfigFileError", "Plan", "apply", "load", "parse", "plan"]

_TOP_LEVEL = ("pools", "providers", "models", "oauth")
Kind = Literal["pool", "model"]


class ConfigFileError(ConfigError):
    """A configuration file is wrong: ``path``, ``line`` (1-based, 0 if unknown) and ``field``
    (the dotted TOML path) say where."""

    def __init__(self, path: str, line: int, field: str, message: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line else path
        ConfigError.__init__(self, f"{where}: {field}", message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A parsed, validated configuration file."""

    path: str
    auth_config: AuthConfig
    model_config: ModelConfig
    oauth_config: OAuthConfig
    pool_profiles: list[AuthProfile]
    model_profiles: list[ModelProfile]
    oauth_providers: list[OAuthProvider]


@dataclass(frozen=True, slots=True)
class Change:
    """One change :func:`apply` makes: ``add``, ``update`` (``fields`` that differ) or
    ``remove`` a ``pool`` profile or a ``model`` profile."""

    action: Literal["add", "update", "remove"]
    kind: Kind
    id: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        sign = {"add": "+", "update": "~", "remove": "-"}[self.action]
        what = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{sign} {self.kind} profile {self.id}{what}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What :func:`apply` would do. ``unmanaged``: profiles in the store the file does not
    name, kept unless ``prune`` (then they are ``remove`` changes)."""

    changes: list[Change] = field(default_factory=list)
    unmanaged: list[tuple[Kind, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "changes": [
                {"action": c.action, "kind": c.kind, "id": c.id, "fields": list(c.fields)}
                for c in self.changes
            ],
            "unmanaged": [{"kind": k, "id": i} for k, i in self.unmanaged],
        }


# -- locating lines --------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")


def _split_key(text: str) -> list[str]:
    """A dotted TOML key as parts (bare or quoted parts)."""
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", text)]


def _line_of(text: str, path: str) -> int:
    """The line that defines ``path`` (a dotted key), or its nearest enclosing table; 0 when
    none is found. Good for the plain files this format asks for, not every TOML trick."""
    wanted = path.split(".")
    best, best_len = 0, 0
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            candidate = table
        else:
            assign = _ASSIGN.match(line)
            if not assign:
                continue
            candidate = [*table, *_split_key(assign.group(1))]
        if candidate == wanted[: len(candidate)] and len(candidate) > best_len:
            best, best_len = number, len(candidate)
    return best


# -- parsing ---------------------------------------------------------------------------------


class _Reader:
    """Builds the configuration, turning every ConfigError into one naming file and line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text

    def error(self, field_path: str, message: str) -> ConfigFileError:
        return ConfigFileError(self.path, _line_of(self.text, field_path), field_path, message)

    def build(self, where: str, factory: Any, *args: Any) -> Any:
        """``factory(*args)``, with a ConfigError's field put under ``where``."""
        try:
            return factory(*args)
        except ConfigFileError:
            raise
        except ConfigError as exc:
            inner = exc.field
            full = _join(where, inner)
            message = str(exc)[len(inner) + 2 :] if str(exc).startswith(inner) else str(exc)
            raise self.error(full, message) from None
        except TypeError as exc:
            raise self.error(where, str(exc)) from None

    def table(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(f"{where}{key}", "must be a table")
        return dict(value)


def _join(where: str, inner: str) -> str:
    """``where`` + ``inner``, where both may name the same table (``pools.cooldown`` and
    ``cooldown.base_ms``)."""
    if not where:
        return inner
    outer, parts = where.split("."), inner.split(".")
    if parts[0] == outer[-1]:
        parts = parts[1:]
    return ".".join([*outer, *parts])


def parse(text: str, path: str = "coordinator.toml") -> ConfigFile:
    """Parse and validate a configuration file's text (``path`` names it in errors)."""
    reader = _Reader(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise ConfigFileError(path, int(line.group(1)) if line else 0, "toml", str(exc)) from None
    for key in data:
        if key not in _TOP_LEVEL:
            raise reader.error(key, f"is not a section (sections: {', '.join(_TOP_LEVEL)})")
    providers = reader.table(data, "providers", "")
    auth_config = _auth_config(reader, reader.table(data, "pools", ""), providers)
    pool_profiles = list(_pool_profiles(reader, providers))
    models = reader.table(data, "models", "")
    model_tables = reader.table(models, "profiles", "models.")
    models.pop("profiles", None)
    if isinstance(models.get("breaker"), Mapping):
        reader.build(
            "models.breaker", lambda b: ModelConfig.from_mapping({"breaker": b}), models["breaker"]
        )
    model_config = reader.build("models", ModelConfig.from_mapping, models)
    model_profiles = [
        reader.build(f"models.profiles.{pid}", _model_profile, reader, pid, table)
        for pid, table in model_tables.items()
    ]
    oauth = reader.table(data, "oauth", "")
    oauth_tables = reader.table(oauth, "providers", "oauth.")
    oauth.pop("providers", None)
    oauth_config = reader.build("oauth", lambda d: OAuthConfig(**d), oauth)
    oauth_providers = _oauth_providers(reader, oauth_tables)
    return ConfigFile(
        path,
        auth_config,
        model_config,
        oauth_config,
        pool_profiles,
        model_profiles,
        oauth_providers,
    )


def load(path: str | Path) -> ConfigFile:
    """Read and validate a configuration file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigFileError(str(path), 0, "file", f"cannot read it: {exc.strerror}") from None
    return parse(text, str(path))


def _auth_config(
    reader: _Reader, pools: dict[str, Any], providers: Mapping[str, Any]
) -> AuthConfig:
    if "strategies" in pools:
        raise reader.error("pools.strategies", "set providers.<name>.strategy instead")
    strategies = {
        name: table["strategy"]
        for name, table in providers.items()
        if isinstance(table, Mapping) and "strategy" in table
    }
    for name in ("cooldown", "billing_cooldown"):
        if isinstance(pools.get(name), Mapping):
            where = f"pools.{name}"
            reader.build(where, lambda p, n=name: AuthConfig.from_mapping({n: p}), pools[name])
    reader.build("pools", AuthConfig.from_mapping, pools)  # (the fields named precisely)
    for name, strategy in strategies.items():
        where = f"providers.{name}.strategy"
        reader.build(where, lambda s: AuthConfig.from_mapping({"strategy": s}), strategy)
    config: AuthConfig = AuthConfig.from_mapping({**pools, "strategies": strategies})
    return config


def _pool_profiles(reader: _Reader, providers: Mapping[str, Any]) -> Iterator[AuthProfile]:
    for name, table in providers.items():
        where = f"providers.{name}"
        if not isinstance(table, Mapping):
            raise reader.error(where, "must be a table")
        unknown = sorted(set(table) - {"strategy", "profiles"})
        if unknown:
            raise reader.error(
                f"{where}.{unknown[0]}", "is not a provider field (strategy, profiles)"
            )
        profiles = reader.table(table, "profiles", f"{where}.")
        for pid, fields_ in profiles.items():
            at = f"{where}.profiles.{pid}"
            if not isinstance(fields_, Mapping):
                raise reader.error(at, "must be a table")
            if "api_key" in fields_:
                raise reader.error(
                    f"{at}.api_key", "never write a secret in the file: use api_key_env"
                )
            for fixed in ("id", "provider"):
                if fixed in fields_:
                    raise reader.error(f"{at}.{fixed}", "is given by the table's name")
            values = {**fields_, "id": pid, "provider": name}
            yield reader.build(at, AuthProfile.from_mapping, values)


def _model_profile(reader: _Reader, pid: str, table: Any) -> ModelProfile:
    where = f"models.profiles.{pid}"
    if not isinstance(table, Mapping):
        raise reader.error(where, "must be a table")
    if "id" in table:
        raise reader.error(f"{where}.id", "is given by the table's name")
    auth = table.get("auth")
    if isinstance(auth, Mapping) and "api_key" in auth:
        raise reader.error(
            f"{where}.auth", "never write a secret in the file: use auth = { env = ... }"
        )
    return ModelProfile.from_mapping({**table, "id": pid})


class _AnyVariable(Mapping[str, str]):
    """An environment in which every variable is set: the file is checked without the
    secrets, which only the processes that use them need."""

    def __getitem__(self, key: str) -> str:
        return "(set)"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _oauth_providers(reader: _Reader, tables: Mapping[str, Any]) -> list[OAuthProvider]:
    # The worker reads the same tables (workers/providers.py): one reading of the format.
    from coordinator.oauth.tables import providers_from_mapping

    try:
        return providers_from_mapping(tables, source=reader.path, environ=_AnyVariable())
    except ConfigError as exc:
        dotted = exc.field.removeprefix(f"{reader.path}: ")
        message = str(exc)[len(exc.field) + 2 :]
        raise reader.error(dotted, message) from None


# -- plan and apply --------------------------------------------------------------------------


def _pool_view(profile: AuthProfile) -> dict[str, Any]:
    """A pool profile's comparable fields (an encrypted key compares as 'a stored key')."""
    return {
        "type": profile.type,
        "api_key": "(stored)" if profile.api_key is not None else None,
        "api_key_env": profile.api_key_env,
        "oauth_credential_id": profile.oauth_credential_id,
        "priority": profile.priority,
        "metadata": dict(profile.metadata),
    }


def _model_view(profile: ModelProfile) -> dict[str, Any]:
    """A model profile's comparable fields (its auth by description, never a secret)."""
    return {
        "provider": profile.provider,
        "auth": profile.auth.describe(),
        "base_url": profile.base_url,
        "models": list(profile.models),
        "priority": profile.priority,
        "name": profile.name,
        "default_model": profile.default_model,
        "enabled": profile.enabled,
        "metadata": dict(profile.metadata),
    }


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in new if old.get(k) != new[k])


async def plan(
    config: ConfigFile,
    pools: AuthProfileManager,
    models: ModelProfileManager,
    *,
    prune: bool = False,
) -> Plan:
    """Compare the file's profiles with the store's: what :func:`apply` would change."""
    out = Plan()
    stored_pool = {p.id: p for p in await pools.list_profiles()}
    for profile in config.pool_profiles:
        old = stored_pool.pop(profile.id, None)
        if old is None:
            out.changes.append(Change("add", "pool", profile.id))
        elif old.provider != profile.provider:
            out.changes.append(Change("remove", "pool", old.id))
            out.changes.append(Change("add", "pool", profile.id, ("provider",)))
        elif changed := _diff(_pool_view(old), _pool_view(profile)):
            out.changes.append(Change("update", "pool", profile.id, changed))
    stored_models = {p.id: p for p in await models.list_profiles()}
    for model in config.model_profiles:
        old_model = stored_models.pop(model.id, None)
        if old_model is None:
            out.changes.append(Change("add", "model", model.id))
        elif changed := _diff(_model_view(old_model), _model_view(model)):
            out.changes.append(Change("update", "model", model.id, changed))
    leftover: list[tuple[Kind, str]] = [("pool", i) for i in sorted(stored_pool)]
    leftover += [("model", i) for i in sorted(stored_models)]
    if prune:
        out.changes.extend(Change("remove", kind, i) for kind, i in leftover)
    else:
        out.unmanaged.extend(leftover)
    return out


async def apply(
    config: ConfigFile,
    pools: AuthProfileManager,
    models: ModelProfileManager,
    *,
    prune: bool = False,
    dry_run: bool = False,
) -> Plan:
    """Make the store's profiles what the file says; returns the changes made (or, with
    ``dry_run``, that would be made). An update keeps a profile's counters and cooldowns;
    removals come first, so a profile moved to another pool is re-created there."""
    todo = await plan(config, pools, models, prune=prune)
    if dry_run:
        return todo
    by_id_pool = {p.id: p for p in config.pool_profiles}
    by_id_model = {p.id: p for p in config.model_profiles}
    for change in todo.changes:
        if change.action == "remove":
            remove = pools.remove_profile if change.kind == "pool" else models.remove_profile
            await remove(change.id)
    for change in todo.changes:
        if change.action == "remove":
            continue
        if change.kind == "pool":
            await pools.add_profile(by_id_pool[change.id])
        else:
            await models.add_profile(by_id_model[change.id])
    return todo
