"""Default model profiles, built from the environment and a data file (not code).

The built-in table lives in ``coordinator/models/defaults.json``: grok (priority 100,
``GROK_API_KEY``, https://api.x.ai/v1), anthropic (90, ``ANTHROPIC_API_KEY``), openai (80,
``OPENAI_API_KEY``), google (70, ``GOOGLE_API_KEY``) and ollama (50, local, disabled). Set
``COORDINATOR_MODEL_DEFAULTS`` to the path of a file of the same shape to use another table.

A profile with an ``env`` entry authenticates with that environment variable (read on each
replica, so no secret reaches Redis) and is enabled only when the variable is set. A profile
without one (ollama) needs no credential; it stays disabled unless its entry says
``"enabled": true`` or the variable named by ``enabled_env`` is set to a true value.
``<ID>_BASE_URL`` (e.g. ``OLLAMA_BASE_URL``) overrides a profile's base URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson

from ..errors import ConfigError
from .types import ModelAuth, ModelProfile

__all__ = ["ENV_MODEL_DEFAULTS", "default_model_profiles", "load_model_table"]

ENV_MODEL_DEFAULTS = "COORDINATOR_MODEL_DEFAULTS"
_ENTRY_KEYS = {
    "id",
    "name",
    "provider",
    "env",
    "enabled_env",
    "base_url",
    "priority",
    "models",
    "default_model",
    "enabled",
    "metadata",
}
_TRUE = {"1", "true", "yes", "on"}


def load_model_table(path: str | None = None) -> list[dict[str, Any]]:
    """The entries of a defaults file (``path``, else ``$COORDINATOR_MODEL_DEFAULTS``, else the
    built-in table). Unknown keys are an error."""
    path = path or os.environ.get(ENV_MODEL_DEFAULTS) or None
    try:
        if path:
            with open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = (resources.files("coordinator.models") / "defaults.json").read_bytes()
        data = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            "model_defaults", f"cannot read {path or 'built-in table'}: {exc}"
        ) from None
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError("model_defaults", "expected {'profiles': [...]}")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"model_defaults.profiles[{i}]", "must be an object")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(f"model_defaults.profiles[{i}].{sorted(unknown)[0]}", "unknown key")
        out.append(entry)
    return out


def default_model_profiles(
    env: Mapping[str, str] | None = None, *, path: str | None = None
) -> list[ModelProfile]:
    """The default profiles, enabled according to ``env`` (default: ``os.environ``)."""
    environ = os.environ if env is None else env
    profiles: list[ModelProfile] = []
    for entry in load_model_table(path):
        values = dict(entry)
        var = values.pop("env", None)
        enabled_env = values.pop("enabled_env", None)
        profile_id = str(values.get("id", ""))
        if var:
            auth = ModelAuth.env(str(var))
            enabled = bool(environ.get(str(var))) and values.get("enabled", True) is not False
        else:
            auth = ModelAuth.none()
            enabled = values.get("enabled", False) is True
            if enabled_env and environ.get(str(enabled_env), "").strip().lower() in _TRUE:
                enabled = True
        values["enabled"] = enabled
        url_override = environ.get(f"{profile_id.upper().replace('-', '_')}_BASE_URL")
        if url_override:
            values["base_url"] = url_override
        values["auth"] = auth
        if isinstance(values.get("models"), list):
            values["models"] = tuple(values["models"])
        profiles.append(ModelProfile.from_mapping(values))
    return profiles
