"""Every Redis key shape, in one place.

Keys are ``<namespace>:{<hash tag>}:<name>``. Everything one Lua script touches shares one hash
tag, so each script runs unchanged on Redis Cluster:

* ``{pool:<provider>}``: one credential pool (profiles, state, rotation, cooldowns, sessions,
  events).
* ``{models}``: every model profile, its circuit breaker, sticky sessions and events.
* ``{index}``: the locator of profile ids and the list of pools (plain commands, no scripts).
* ``{workers}``: the refresh workers' heartbeats and their index (see :class:`WorkerKeys`).
* ``{oauth}``: OAuth login states, credentials, their expiry index, refresh locks, fences and
  events (see :class:`OAuthKeys`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = [
    "IndexKeys",
    "ModelKeys",
    "OAuthKeys",
    "PoolKeys",
    "WorkerKeys",
    "validate_id",
    "validate_name",
]

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def validate_id(value: object, field: str = "id") -> str:
    """Check a profile or credential id: 1–128 of ``A-Z a-z 0-9 . _ : @ + -``."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ConfigError(
            field,
            f"{value!r} is not a valid id (1-128 of A-Z a-z 0-9 . _ : @ + -, no leading sign)",
        )
    return value


def validate_name(value: object, field: str = "provider") -> str:
    """Check a provider / pool / namespace name: 1–64 of lowercase ``a-z 0-9 . _ -``."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(field, f"{value!r} is not a valid name (1-64 of a-z 0-9 . _ -)")
    return value


def validate_session_id(value: object) -> str:
    """Check a session id: 1–256 printable characters without whitespace."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 256
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise ConfigError("session_id", "must be 1-256 printable characters without whitespace")
    return value


@dataclass(frozen=True, slots=True)
class PoolKeys:
    """The keys of one credential pool (all in hash tag ``{pool:<provider>}``)."""

    namespace: str
    provider: str

    @property
    def prefix(self) -> str:
        """``<ns>:{pool:<provider>}``, the start of every key of this pool."""
        return f"{self.namespace}:{{pool:{self.provider}}}"

    @property
    def profiles(self) -> str:
        """HASH id -> profile definition (JSON; the secret is ciphertext)."""
        return f"{self.prefix}:profiles"

    @property
    def state(self) -> str:
        """HASH of flat health fields ``<member>:<field>``: member ``<id>`` (``gen``,
        ``failures``, ``billing_failures``, ``cooldown_until_ms``, ``last_error``,
        ``last_used_ms``, ...) or ``<id>|<model>`` (that pair's ``failures``,
        ``last_failure_ms``). Field names hold no ``:``, so split on the last one."""
        return f"{self.prefix}:state"

    @property
    def ready(self) -> str:
        """ZSET id -> rotation sequence; only profiles that are not cooling down."""
        return f"{self.prefix}:ready"

    @property
    def ranked(self) -> str:
        """ZSET (lex) ``<inverse priority>|<type rank>|<sequence>|<id>`` of ready profiles."""
        return f"{self.prefix}:ranked"

    @property
    def cooling(self) -> str:
        """ZSET -> cooldown end (ms, Redis time): ``<id>`` for a whole profile, ``<id>|<model>``
        for one (profile, model) pair."""
        return f"{self.prefix}:cooling"

    @property
    def meta(self) -> str:
        """HASH of pool counters: ``seq`` (rotation) and ``gen`` (profile generations)."""
        return f"{self.prefix}:meta"

    @property
    def events(self) -> str:
        """STREAM of this pool's transitions (capped)."""
        return f"{self.prefix}:events"

    def session(self, session_id: str) -> str:
        """STRING ``<id>\\t<generation>\\t<expires ms>`` with a TTL: one sticky session."""
        return f"{self.prefix}:session:{session_id}"

    def all_static(self) -> list[str]:
        """The keys every pool script receives, in the order it expects them (see
        ``pools/_pool.lua``)."""
        return [
            self.profiles,
            self.state,
            self.cooling,
            self.ready,
            self.events,
            self.ranked,
            self.meta,
        ]


@dataclass(frozen=True, slots=True)
class IndexKeys:
    """Locator keys (hash tag ``{index}``), written with plain commands, never in scripts."""

    namespace: str

    @property
    def profiles(self) -> str:
        """HASH profile id -> provider, to find a profile's pool from its id."""
        return f"{self.namespace}:{{index}}:profiles"

    @property
    def pools(self) -> str:
        """SET of providers that have (or had) a pool."""
        return f"{self.namespace}:{{index}}:pools"


@dataclass(frozen=True, slots=True)
class OAuthKeys:
    """The OAuth keys, all in hash tag ``{oauth}`` so every OAuth script runs on one shard."""

    namespace: str

    @property
    def prefix(self) -> str:
        """``<ns>:{oauth}``, the start of every OAuth key."""
        return f"{self.namespace}:{{oauth}}"

    def state(self, state_digest: str) -> str:
        """STRING JSON of one pending login, keyed by the SHA-256 of its ``state`` (with TTL)."""
        return f"{self.prefix}:state:{state_digest}"

    def credential(self, credential_id: str) -> str:
        """HASH of one credential: readable fields plus ciphertext token fields."""
        return f"{self.prefix}:cred:{credential_id}"

    def provider_credentials(self, provider: str) -> str:
        """ZSET credential id -> created ms, the credentials of one provider."""
        return f"{self.prefix}:provider:{provider}"

    @property
    def credentials(self) -> str:
        """ZSET credential id -> created ms, every credential."""
        return f"{self.prefix}:credentials"

    @property
    def defaults(self) -> str:
        """HASH provider -> default credential id."""
        return f"{self.prefix}:defaults"

    @property
    def expiry(self) -> str:
        """ZSET credential id -> access-token expiry (ms, Redis time), for the refresh worker."""
        return f"{self.prefix}:expiry"

    def lock(self, credential_id: str) -> str:
        """STRING ``<owner>\\t<fence>\\t<until ms>``: the refresh lock of one credential."""
        return f"{self.prefix}:lock:{credential_id}"

    @property
    def fences(self) -> str:
        """HASH credential id -> last fence number handed out with its refresh lock."""
        return f"{self.prefix}:fences"

    @property
    def events(self) -> str:
        """STREAM of OAuth events (capped)."""
        return f"{self.prefix}:events"


@dataclass(frozen=True, slots=True)
class ModelKeys:
    """The keys of the model profiles (all in hash tag ``{models}``)."""

    namespace: str

    @property
    def prefix(self) -> str:
        """``<ns>:{models}``, the start of every model key."""
        return f"{self.namespace}:{{models}}"

    @property
    def profiles(self) -> str:
        """HASH id -> model profile definition (JSON; an API key is ciphertext)."""
        return f"{self.prefix}:profiles"

    @property
    def breakers(self) -> str:
        """HASH of every breaker's flat fields, ``<id>:<field>`` (``primary:state``,
        ``primary:epoch``, ``primary:streak``, ...): one field per value, no JSON."""
        return f"{self.prefix}:breakers"

    @property
    def ranked(self) -> str:
        """ZSET id -> minus priority, of enabled profiles (selection order)."""
        return f"{self.prefix}:ranked"

    @property
    def meta(self) -> str:
        """HASH of counters (``probe_seq``: probe permit tokens)."""
        return f"{self.prefix}:meta"

    @property
    def events(self) -> str:
        """STREAM of model profile transitions (capped)."""
        return f"{self.prefix}:events"

    def session(self, session_id: str) -> str:
        """STRING profile id with a TTL: one sticky session."""
        return f"{self.prefix}:session:{session_id}"

    def all_static(self) -> list[str]:
        """The keys model scripts receive, in the order the scripts expect them (see
        ``models/_model.lua``)."""
        return [self.profiles, self.breakers, self.events, self.ranked, self.meta]


@dataclass(frozen=True, slots=True)
class WorkerKeys:
    """The keys of the workers' heartbeats (hash tag ``{workers}``)."""

    namespace: str

    @property
    def index(self) -> str:
        """ZSET worker id -> last beat (ms)."""
        return f"{self.namespace}:{{workers}}:index"

    def worker(self, worker_id: str) -> str:
        """HASH of one worker's heartbeat (with a TTL)."""
        return f"{self.namespace}:{{workers}}:worker:{worker_id}"
