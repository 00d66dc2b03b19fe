"""The values the credential-pool manager takes and returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..errors import ConfigError, CorruptStateError
from ..store.keys import validate_id, validate_name
from ..store.secrets import Secret, SecretBox, seal
from ..validation import json_mapping, reject_unknown

__all__ = ["AuthProfile", "CooldownResult", "ProfileStatus", "ProfileType"]

ProfileType = Literal["api-key", "oauth"]
_ENV_RE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
PRIORITY_LIMIT = 1_000_000_000


@dataclass(frozen=True, slots=True, eq=False)
class AuthProfile:
    """One credential of a provider's pool.

    Give exactly one credential: ``api_key`` (encrypted before it reaches Redis),
    ``api_key_env`` (the name of an environment variable read on each replica, so that no
    secret reaches Redis) or, for ``type="oauth"``, ``oauth_credential_id``.
    ``priority``: higher first (``priority`` strategy). ``metadata``: free JSON data such as a
    model or base URL.
    """

    id: str
    provider: str
    type: ProfileType = "api-key"
    api_key: Secret | None = None
    api_key_env: str | None = None
    oauth_credential_id: str | None = None
    priority: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id(self.id, "id")
        validate_name(self.provider, "provider")
        if self.type not in ("api-key", "oauth"):
            raise ConfigError("type", f"{self.type!r} is not 'api-key' or 'oauth'")
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", Secret(self.api_key))
        if self.api_key is not None and not isinstance(self.api_key, Secret):
            raise ConfigError("api_key", "must be a string or a Secret")
        given = [
            name
            for name in ("api_key", "api_key_env", "oauth_credential_id")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ConfigError(
                "credential", "give exactly one of api_key, api_key_env, oauth_credential_id"
            )
        if self.type == "oauth" and self.oauth_credential_id is None:
            raise ConfigError("oauth_credential_id", "an oauth profile names its credential id")
        if self.type == "api-key" and self.oauth_credential_id is not None:
            raise ConfigError("type", "oauth_credential_id needs type='oauth'")
        if self.oauth_credential_id is not None:
            validate_id(self.oauth_credential_id, "oauth_credential_id")
        if self.api_key_env is not None and (
            not self.api_key_env
            or not set(self.api_key_env) <= _ENV_RE_CHARS
            or self.api_key_env[0].isdigit()
        ):
            raise ConfigError("api_key_env", f"{self.api_key_env!r} is not a variable name")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigError("priority", f"must be an integer, not {self.priority!r}")
        if abs(self.priority) > PRIORITY_LIMIT:
            raise ConfigError("priority", f"must be within ±{PRIORITY_LIMIT}")
        json_mapping("metadata", self.metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthProfile):
            return NotImplemented
        return self.id == other.id and self.provider == other.provider

    def __hash__(self) -> int:
        return hash((self.id, self.provider))

    def secret(self) -> Secret | None:
        """The API key of this profile (decrypted, or read from its environment variable).

        ``None`` for OAuth profiles, whose tokens come from the OAuth manager.
        """
        if self.api_key is not None:
            return self.api_key
        if self.api_key_env is not None:
            return Secret.from_env(self.api_key_env, f"profile {self.id!r}")
        return None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AuthProfile:
        """Build from plain data (config files); unknown keys are an error."""
        reject_unknown(data, cls.__dataclass_fields__, what="profile field")
        return cls(**dict(data))

    # -- storage form --------------------------------------------------------------------

    def to_record(self, box: SecretBox | None) -> dict[str, Any]:
        """The definition stored in Redis; the API key is encrypted under the profile id."""
        credential: dict[str, Any]
        if self.api_key is not None:
            ciphertext = seal(box, self.api_key, aad=_aad(self.id), alternative="give api_key_env")
            credential = {"kind": "secret", "ciphertext": ciphertext}
        elif self.api_key_env is not None:
            credential = {"kind": "env", "var": self.api_key_env}
        else:
            credential = {"kind": "oauth", "credential_id": self.oauth_credential_id}
        return {
            "id": self.id,
            "provider": self.provider,
            "type": self.type,
            "priority": self.priority,
            "credential": credential,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_record(cls, raw: str, box: SecretBox | None) -> AuthProfile:
        """Rebuild from the stored definition; the key is decrypted lazily, on first use."""
        try:
            data = orjson.loads(raw)
            profile_id = data["id"]
            credential = data["credential"]
            kind = credential["kind"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptStateError("profile", "definition", type(exc).__name__) from None
        api_key: Secret | None = None
        if kind == "secret":
            ciphertext = credential.get("ciphertext")
            if not isinstance(ciphertext, str):
                raise CorruptStateError(profile_id, "credential.ciphertext")
            api_key = Secret.from_ciphertext(
                box, ciphertext, aad=_aad(profile_id), owner=f"profile {profile_id!r}"
            )
        elif kind not in ("env", "oauth"):
            raise CorruptStateError(profile_id, "credential.kind", repr(kind))
        try:
            return cls(
                id=profile_id,
                provider=data["provider"],
                type=data["type"],
                api_key=api_key,
                api_key_env=credential.get("var") if kind == "env" else None,
                oauth_credential_id=credential.get("credential_id") if kind == "oauth" else None,
                priority=data["priority"],
                metadata=data.get("metadata") or {},
            )
        except (ConfigError, KeyError, TypeError) as exc:
            field_name = exc.field if isinstance(exc, ConfigError) else str(exc)
            raise CorruptStateError(profile_id, field_name) from None


def _aad(profile_id: str) -> str:
    return f"auth-profile:{profile_id}"


@dataclass(frozen=True, slots=True)
class CooldownResult:
    """What :meth:`AuthProfileManager.mark_failed` did.

    ``status``: ``cooling`` (a cooldown runs until ``until_ms``), ``ignored`` (a caller error),
    ``missing`` (the profile no longer exists: another replica removed it).
    ``scope``: ``profile`` or ``model`` (only that (profile, model) pair cools down).
    ``until_ms`` and ``duration_ms`` are ``None`` for a cooldown that lasts until cleared (an
    operator put ``+inf`` in the cooling set).
    """

    status: Literal["cooling", "ignored", "missing"]
    until_ms: int | None = None
    duration_ms: int | None = None
    failures: int | None = None
    scope: Literal["profile", "model"] | None = None


@dataclass(frozen=True, slots=True)
class ProfileStatus:
    """Health of one profile, on Redis time. ``broken_field`` names a corrupt stored value.

    ``until_cleared``: benched until ``clear_cooldown`` (an operator put ``+inf`` in the cooling
    set); it is then ``in_cooldown`` with no ``cooldown_until_ms``. ``model_cooldowns`` maps a
    model to the ms left of that pair's cooldown (-1: until cleared).
    """

    id: str
    provider: str
    type: str | None
    priority: int | None
    healthy: bool
    in_cooldown: bool
    cooldown_remaining_ms: int
    cooldown_until_ms: int | None
    cooldown_kind: str | None
    failures: int
    billing_failures: int
    last_error: str | None
    last_error_kind: str | None
    last_used_ms: int | None
    model_cooldowns: Mapping[str, int]
    broken_field: str | None = None
    until_cleared: bool = False
