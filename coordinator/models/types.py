"""The values the model profile manager takes and returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

from ..errors import ConfigError, CorruptStateError
from ..failures import FailureKind
from ..store.keys import validate_id, validate_name
from ..store.secrets import Secret, SecretBox, seal
from ..validation import json_mapping, reject_unknown

__all__ = [
    "AuthKind",
    "BreakerState",
    "ModelAttempt",
    "ModelAuth",
    "ModelCall",
    "ModelProfile",
    "ModelProfileStatus",
    "ModelSelection",
    "ReportResult",
    "SelectionReason",
    "TokenSource",
]

AuthKind = Literal["api_key", "env", "oauth", "pool", "none"]
BreakerState = Literal["closed", "open", "half_open"]
SelectionReason = Literal["primary", "failover", "testing"]
PRIORITY_LIMIT = 1_000_000_000
#: The ``broken_field`` names of the failure counts by kind (``<id>:failures_<kind>``).
BROKEN_COUNT_FIELDS = frozenset(
    f"breaker.failures_{kind.value}" for kind in FailureKind if kind is not FailureKind.CALLER
)
#: The ``broken_field`` names that do not stop selection (the breaker state is still shown):
#: the failure counts by kind, which selection never reads, and ``ranked``, an index entry
#: whose score was edited by hand (the profile is selected, out of its priority order).
NON_BLOCKING_FIELDS = BROKEN_COUNT_FIELDS | {"ranked"}
_ENV_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


@runtime_checkable
class TokenSource(Protocol):
    """Where OAuth-backed model profiles get their access tokens (the OAuth manager)."""

    async def get_access_token(self, credential_id: str) -> Secret:
        """A valid access token for the credential (refreshed if needed)."""
        ...


@dataclass(frozen=True, slots=True)
class ModelAuth:
    """How a model profile authenticates: exactly one way.

    Build it with :meth:`api_key` (encrypted before it reaches Redis), :meth:`env` (the name of
    an environment variable read on each replica, no secret in Redis), :meth:`oauth` (an OAuth
    credential id, tokens from the ``token_source``), :meth:`pool` (an
    :class:`~coordinator.profiles.AuthProfileManager` pool whose keys rotate underneath) or
    :meth:`none` (a local server such as ollama).
    """

    kind: AuthKind
    value: str | None = None
    secret: Secret | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "api_key":
            if isinstance(self.secret, str):
                object.__setattr__(self, "secret", Secret(self.secret))
            if not isinstance(self.secret, Secret) or self.value is not None:
                raise ConfigError("auth", "an api_key auth holds a Secret and nothing else")
        elif self.kind == "env":
            var = self.value
            if (
                not isinstance(var, str)
                or not var
                or not set(var) <= _ENV_CHARS
                or var[0].isdigit()
            ):
                raise ConfigError("auth.env", f"{var!r} is not an environment variable name")
        elif self.kind == "oauth":
            validate_id(self.value, "auth.oauth")
        elif self.kind == "pool":
            validate_name(self.value, "auth.pool")
        elif self.kind == "none":
            if self.value is not None:
                raise ConfigError("auth", "a 'none' auth takes no value")
        else:
            raise ConfigError("auth", f"{self.kind!r} is not api_key, env, oauth, pool or none")
        if self.kind != "api_key" and self.secret is not None:
            raise ConfigError("auth", "only an api_key auth holds a secret")

    @classmethod
    def api_key(cls, key: str | Secret) -> ModelAuth:
        """An API key, stored encrypted (needs a secret key on the store)."""
        return cls("api_key", secret=key if isinstance(key, Secret) else Secret(key))

    @classmethod
    def env(cls, var: str) -> ModelAuth:
        """An environment variable holding the API key, read on each replica."""
        return cls("env", var)

    @classmethod
    def oauth(cls, credential_id: str) -> ModelAuth:
        """An OAuth credential id; the manager's ``token_source`` supplies its tokens."""
        return cls("oauth", credential_id)

    @classmethod
    def pool(cls, provider: str) -> ModelAuth:
        """The name of an AuthProfileManager pool; each call takes that pool's next key."""
        return cls("pool", provider)

    @classmethod
    def none(cls) -> ModelAuth:
        """No credential (a local server)."""
        return cls("none")

    @classmethod
    def from_value(cls, data: object) -> ModelAuth:
        """From config data: ``{"api_key": ...}``, ``{"env": ...}``, ``{"oauth": ...}``,
        ``{"pool": ...}``, ``{"none": true}`` or ``None``."""
        if data is None:
            return cls.none()
        if isinstance(data, ModelAuth):
            return data
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ConfigError(
                "auth", "give exactly one of api_key, env, oauth, pool, none (as a mapping)"
            )
        ((kind, value),) = data.items()
        if kind == "api_key":
            if not isinstance(value, str | Secret):
                raise ConfigError("auth.api_key", "must be a string")
            return cls.api_key(value)
        if kind == "none":
            return cls.none()
        if kind in ("env", "oauth", "pool"):
            return cls(kind, value)
        raise ConfigError("auth", f"{kind!r} is not api_key, env, oauth, pool or none")

    def describe(self) -> str:
        """A safe, human description (never the secret)."""
        if self.kind == "api_key":
            return "api_key(****)"
        if self.kind == "none":
            return "none"
        return f"{self.kind}({self.value})"


def _aad(profile_id: str) -> str:
    return f"model-profile:{profile_id}"


@dataclass(frozen=True, slots=True, eq=False)
class ModelProfile:
    """One way to serve a model: a provider, its endpoint, its credential, its models.

    ``models``: exact names, ``prefix*`` wildcards, ``*`` for all. ``default_model`` (or else
    the first exact name listed) is used when a call names no model. Higher ``priority`` first.
    """

    id: str
    provider: str
    auth: ModelAuth
    base_url: str
    models: Sequence[str] = ("*",)
    priority: int = 0
    name: str = ""
    default_model: str | None = None
    enabled: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id(self.id, "id")
        validate_name(self.provider, "provider")
        if not isinstance(self.auth, ModelAuth):
            object.__setattr__(self, "auth", ModelAuth.from_value(self.auth))
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError("base_url", f"{self.base_url!r} is not an http(s) URL")
        if isinstance(self.models, str) or not isinstance(self.models, Sequence):
            raise ConfigError("models", "must be a list of model names or patterns")
        models = tuple(self.models)
        if not models:
            raise ConfigError("models", "must name at least one model or pattern ('*' for all)")
        for m in models:
            if not isinstance(m, str) or not m or len(m) > 200 or not m.isprintable():
                raise ConfigError("models", f"{m!r} is not a model name or pattern")
            if "*" in m[:-1]:
                raise ConfigError("models", f"{m!r}: '*' is only allowed at the end")
        object.__setattr__(self, "models", models)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigError("priority", f"must be an integer, not {self.priority!r}")
        if abs(self.priority) > PRIORITY_LIMIT:
            raise ConfigError("priority", f"must be within ±{PRIORITY_LIMIT}")
        if not isinstance(self.name, str):
            raise ConfigError("name", "must be a string")
        if not self.name:
            object.__setattr__(self, "name", self.id)
        if self.default_model is not None and (
            not isinstance(self.default_model, str) or not self.default_model
        ):
            raise ConfigError("default_model", "must be a non-empty string or None")
        if not isinstance(self.enabled, bool):
            raise ConfigError("enabled", "must be true or false")
        json_mapping("metadata", self.metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelProfile):
            return NotImplemented
        return self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    def serves(self, model: str | None) -> bool:
        """Whether this profile serves ``model`` (any model when ``None``)."""
        if model is None:
            return True
        for pattern in self.models:
            if pattern == "*" or pattern == model:
                return True
            if pattern.endswith("*") and model.startswith(pattern[:-1]):
                return True
        return False

    def resolve_model(self, model: str | None) -> str | None:
        """The model a call uses: ``model``, else the default, else the first exact name."""
        if model:
            return model
        if self.default_model:
            return self.default_model
        return next((m for m in self.models if "*" not in m), None)

    def secret(self) -> Secret | None:
        """The API key of an ``api_key`` or ``env`` profile (env read lazily); else ``None``."""
        if self.auth.kind == "api_key":
            return self.auth.secret
        if self.auth.kind == "env":
            return Secret.from_env(str(self.auth.value), f"model profile {self.id!r}")
        return None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelProfile:
        """Build from plain data (config files); unknown keys are an error."""
        reject_unknown(data, cls.__dataclass_fields__, what="model profile field")
        values = dict(data)
        if "auth" in values:
            values["auth"] = ModelAuth.from_value(values["auth"])
        return cls(**values)

    # -- storage form --------------------------------------------------------------------

    def to_record(self, box: SecretBox | None) -> dict[str, Any]:
        """The definition stored in Redis; an API key is encrypted under the profile id."""
        auth: dict[str, Any]
        if self.auth.kind == "api_key":
            assert self.auth.secret is not None
            ciphertext = seal(
                box, self.auth.secret, aad=_aad(self.id), alternative="use ModelAuth.env()"
            )
            auth = {"kind": "api_key", "ciphertext": ciphertext}
        elif self.auth.kind == "none":
            auth = {"kind": "none"}
        else:
            auth = {"kind": self.auth.kind, "value": self.auth.value}
        record: dict[str, Any] = {"enabled": self.enabled}
        if self.default_model is not None:
            record["default_model"] = self.default_model
        record |= {
            "models": list(self.models),
            "id": self.id,
            "name": self.name,
            "provider": self.provider,
            "auth": auth,
            "base_url": self.base_url,
            "priority": self.priority,
            "metadata": dict(self.metadata),
        }
        return record

    @classmethod
    def from_record(cls, raw: str, box: SecretBox | None) -> ModelProfile:
        """Rebuild from the stored definition; an API key is decrypted lazily, on first use."""
        try:
            data = orjson.loads(raw)
            profile_id = data["id"]
            auth_data = data["auth"]
            kind = auth_data["kind"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorruptStateError("model profile", "definition", type(exc).__name__) from None
        try:
            auth: ModelAuth
            if kind == "api_key":
                ciphertext = auth_data.get("ciphertext")
                if not isinstance(ciphertext, str):
                    raise CorruptStateError(profile_id, "auth.ciphertext")
                secret = Secret.from_ciphertext(
                    box,
                    ciphertext,
                    aad=_aad(str(profile_id)),
                    owner=f"model profile {profile_id!r}",
                )
                auth = ModelAuth("api_key", secret=secret)
            elif kind == "none":
                auth = ModelAuth.none()
            else:
                auth = ModelAuth(kind, auth_data.get("value"))
            models = data["models"]
            return cls(
                id=profile_id,
                name=data.get("name") or profile_id,
                provider=data["provider"],
                auth=auth,
                base_url=data["base_url"],
                models=tuple(models) if isinstance(models, list) else models,
                priority=data["priority"],
                default_model=data.get("default_model"),
                enabled=data["enabled"],
                metadata=data.get("metadata") or {},
            )
        except (ConfigError, KeyError, TypeError, AttributeError) as exc:
            field_name = exc.field if isinstance(exc, ConfigError) else str(exc)
            raise CorruptStateError(str(profile_id), field_name) from None


@dataclass(frozen=True, slots=True)
class ModelSelection:
    """A profile chosen for one call, with what a later report needs.

    ``epoch`` is the breaker's epoch when it was chosen and ``permit`` the half-open probe
    permit (``None`` for an ordinary call): a report carrying an older epoch or an expired
    permit is not counted by the breaker. ``reason``: ``primary`` (the highest-priority profile
    serving the model), ``failover`` (a lower one, or one ranked below an excluded profile) or
    ``testing`` (a half-open probe).
    """

    profile: ModelProfile
    model: str | None
    reason: SelectionReason
    epoch: int
    permit: str | None
    selected_at_ms: int
    sticky: bool = False

    @property
    def profile_id(self) -> str:
        """The chosen profile's id."""
        return self.profile.id

    @property
    def probe(self) -> bool:
        """Whether this call is a half-open probe."""
        return self.permit is not None


@dataclass(frozen=True, slots=True)
class ReportResult:
    """What a report did.

    ``status``: ``recorded`` (counted by the breaker), ``stale`` (selected before the breaker
    changed state, or with an expired probe permit: statistics and cooldowns only),
    ``ignored`` (a caller error), ``released`` (a probe permit given back), ``missing`` (the
    profile no longer exists) or ``corrupt`` (its breaker record is broken: ``broken_field``).
    ``state`` / ``epoch``: the breaker after the report.
    """

    status: Literal["recorded", "stale", "ignored", "released", "missing", "corrupt"]
    state: BreakerState | None
    epoch: int | None
    broken_field: str | None = None


@dataclass(frozen=True, slots=True)
class ModelAttempt:
    """One profile tried by :meth:`~coordinator.models.ModelProfileManager.execute`."""

    profile_id: str
    kind: FailureKind
    message: str
    model: str | None = None

    def __str__(self) -> str:
        text = f": {self.message}" if self.message else ""
        return f"{self.profile_id} [{self.kind.value}{text}]"


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What the call passed to ``execute`` receives: where and how to call the provider.

    ``secret`` is the API key or OAuth access token (``None`` for ``auth=none``); reveal it only
    to put it in a request header. ``credential_id`` names the pool key used, if any.
    """

    selection: ModelSelection
    model: str | None
    base_url: str
    secret: Secret | None
    attempt: int
    credential_id: str | None = None

    @property
    def profile(self) -> ModelProfile:
        """The model profile being called."""
        return self.selection.profile


@dataclass(frozen=True, slots=True)
class ModelProfileStatus:
    """A model profile and its breaker, on Redis time. ``broken_field`` names a corrupt value.

    ``failures_by_kind``: the reported failures of each kind (``rate_limit``, ``billing``,
    ``auth``, ``server``, ``timeout``, ``unknown``) since the breaker was last reset, kinds
    never seen left out; ``failures_total`` counts every failure, resets included."""

    id: str
    provider: str | None
    priority: int | None
    enabled: bool | None
    state: BreakerState | None
    epoch: int
    open_remaining_ms: int
    cooldown_remaining_ms: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    probes_in_flight: int
    reopens: int
    failures_total: int
    last_error: str | None
    last_error_kind: str | None
    broken_field: str | None = None
    failures_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        """Whether a broken value keeps selections from choosing it: a broken definition,
        ``ranked.missing`` (an index entry removed by hand), or a breaker field that
        selections read (every field of an open or half-open breaker; of a closed one only
        ``state``, ``epoch`` and ``cooldown_until_ms``). ``NON_BLOCKING_FIELDS`` never do."""
        broken = self.broken_field
        if broken is None or broken in NON_BLOCKING_FIELDS:
            return False
        # (the state of a corrupt breaker is known only when selections still take it)
        return not (broken.startswith("breaker.") and self.state == "closed")

    @property
    def available(self) -> bool:
        """Whether a selection could choose it now (closed or probing, not cooling down, not
        :attr:`blocked`)."""
        return (
            bool(self.enabled)
            and not self.blocked
            and self.state in ("closed", "half_open")
            and self.cooldown_remaining_ms == 0
        )
