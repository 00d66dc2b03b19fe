"""AuthProfileManager: pools of credentials per provider, shared by every replica.

All state lives in Redis under ``<ns>:{pool:<provider>}:*`` and every decision is one Lua
script (``coordinator/lua``) on Redis time: selection, cooldowns, recovery and sticky sessions
behave the same whichever replica asks. This module validates input, passes keys and
arguments, decodes replies and raises clear errors; it decides nothing on its own clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import ConfigError, CorruptStateError, NoProfileAvailableError, ProfileNotFoundError
from ..events import Event, EventHub, EventSource
from ..failures import FailureKind
from ..store.connection import Store
from ..store.keys import IndexKeys, PoolKeys, validate_id, validate_name, validate_session_id
from ..store.parsed import ParsedDefinitions
from ..store.secrets import redact
from ..validation import retry_after_ms
from .config import AuthConfig, CooldownPolicy
from .types import AuthProfile, CooldownResult, ProfileStatus

__all__ = ["AuthProfileManager"]

log = logging.getLogger("coordinator.profiles")

_SNAPSHOT_FORMAT = 1
# Picks made again after skipping a definition that does not parse, before giving up.
_CORRUPT_RETRIES = 8
_BILLING = FailureKind.BILLING
# The reports are given only the first static keys they touch (see lua/_pool.lua).
_ALL_KEYS = 7
_KEYS_NEEDED = {"mark_success": 2, "mark_failed": 5}

Sleep = Callable[[float], Awaitable[None]]


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


class AuthProfileManager(EventSource):
    """Credential pools with rotation, sticky sessions and cooldowns, shared through Redis.

    ``sleep`` is what :meth:`acquire` waits with (tests pass one that moves the store's clock
    offset instead of sleeping).
    """

    def __init__(
        self,
        store: Store,
        config: AuthConfig | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self.config = config or AuthConfig()
        self._index = IndexKeys(store.namespace)
        self._pool_keys: dict[str, PoolKeys] = {}
        self._static_keys: dict[tuple[str, int], list[bytes]] = {}
        self._pool_of: dict[str, str] = {}
        self._parsed = ParsedDefinitions(self._parse_definition)
        self._sleep = sleep
        self._policy_args = self._build_policy_args()
        self.events = EventHub(
            store, self._event_streams, poll_interval_s=self.config.event_poll_interval_s
        )

    def __repr__(self) -> str:
        return f"AuthProfileManager(store={self.store!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _build_policy_args(self) -> dict[bool, str]:
        """mark_failed's policy argument per cooldown class (billing or not): only the schedule
        that applies is sent, as one comma-separated argument (this is a hot path)."""
        c = self.config

        def policy(schedule: CooldownPolicy) -> str:
            values = [
                schedule.base_ms,
                schedule.multiplier,
                schedule.cap_ms,
                c.failure_window_ms,
                c.max_retry_after_ms,
            ]
            return ",".join(repr(v) for v in values)

        return {False: policy(c.cooldown), True: policy(c.billing_cooldown)}

    def _keys(self, provider: str) -> PoolKeys:
        keys = self._pool_keys.get(provider)
        if keys is None:
            keys = self._pool_keys[provider] = PoolKeys(self.store.namespace, provider)
        return keys

    def _static(self, provider: str, count: int = _ALL_KEYS) -> list[bytes]:
        """The first ``count`` of the pool's static keys (all seven, or the ones a report
        needs), encoded once: they are on every hot path."""
        static = self._static_keys.get((provider, count))
        if static is None:
            keys = self._keys(provider).all_static()[:count]
            static = self._static_keys[provider, count] = [k.encode() for k in keys]
        return static

    async def _providers(self) -> list[str]:
        members = await self.store.command("SMEMBERS", self._index.pools)
        return sorted(members)

    async def _event_streams(self) -> dict[str, str]:
        return {self._keys(p).events: p for p in await self._providers()}

    async def _locate(self, profile_id: str, *, refresh: bool = False) -> str | None:
        """The provider (pool) of a profile id: cached, else from the index."""
        if not refresh:
            cached = self._pool_of.get(profile_id)
            if cached is not None:
                return cached
        provider = await self.store.command("HGET", self._index.profiles, profile_id)
        if provider is None:
            self._pool_of.pop(profile_id, None)
            return None
        self._pool_of[profile_id] = provider
        return str(provider)

    def _parse_definition(self, raw: str) -> AuthProfile:
        profile = AuthProfile.from_record(raw, self.store.box)
        self._pool_of[profile.id] = profile.provider
        return profile

    async def _run_for_profile(
        self, script: str, profile_id: str, args: Sequence[Any]
    ) -> tuple[str | None, Any]:
        """Run a pool script about one profile (``args`` start with its id); retries once if
        the locator cache was stale."""
        # The cached pool first (an id in the cache was checked when it got there): this is
        # the hot path of every report.
        provider = self._pool_of.get(profile_id) if isinstance(profile_id, str) else None
        if provider is None:
            validate_id(profile_id, "profile_id")
            provider = await self._locate(profile_id, refresh=True)
            if provider is None:
                return None, None
        count = _KEYS_NEEDED.get(script, _ALL_KEYS)
        reply = await self.store.run(script, self._static(provider, count), args)
        if _is_missing(reply):
            fresh = await self._locate(profile_id, refresh=True)
            if fresh is not None and fresh != provider:
                provider = fresh
                reply = await self.store.run(script, self._static(provider, count), args)
        return provider, reply

    # -- profiles ------------------------------------------------------------------------

    async def add_profile(self, profile: AuthProfile | Mapping[str, Any]) -> AuthProfile:
        """Create or update a profile. An update keeps its counters and cooldowns.

        A profile id belongs to one provider: reusing it for another is a ``ConfigError``.
        """
        if not isinstance(profile, AuthProfile):
            profile = AuthProfile.from_mapping(profile)
        record = profile.to_record(self.store.box)
        owner = await self._locate(profile.id, refresh=True)
        if owner is not None and owner != profile.provider:
            raise ConfigError(
                "id", f"{profile.id!r} already belongs to provider {owner!r}; remove it first"
            )
        # The locator is written first: if we die before the pool script, it points at a pool
        # without the profile, which every operation treats as "unknown" (harmless).
        async with self.store.guard("index profile"):
            pipe = self.store.client.pipeline(transaction=False)
            pipe.hset(self._index.profiles, profile.id, profile.provider)
            pipe.sadd(self._index.pools, profile.provider)
            await pipe.execute()
        keys = self._keys(profile.provider)
        await self.store.run("add_profile", keys.all_static(), [profile.id, orjson.dumps(record)])
        self._pool_of[profile.id] = profile.provider
        return profile

    async def remove_profile(self, profile_id: str) -> bool:
        """Delete a profile (its sessions are unbound at once). Returns whether it existed."""
        provider, reply = await self._run_for_profile("remove_profile", profile_id, [profile_id])
        if provider is None:
            return False
        await self.store.command("HDEL", self._index.profiles, profile_id)
        self._pool_of.pop(profile_id, None)
        return bool(reply)

    async def get_profile(self, profile_id: str) -> AuthProfile:
        """The profile with this id; ``ProfileNotFoundError`` if there is none."""
        validate_id(profile_id, "profile_id")
        provider = await self._locate(profile_id)
        raw = None
        if provider is not None:
            raw = await self.store.command("HGET", self._keys(provider).profiles, profile_id)
            if raw is None:
                provider = await self._locate(profile_id, refresh=True)
                if provider is not None:
                    raw = await self.store.command(
                        "HGET", self._keys(provider).profiles, profile_id
                    )
        if raw is None:
            raise ProfileNotFoundError(profile_id)
        return self._parsed.get(profile_id, raw)

    async def list_profiles(self, provider: str | None = None) -> list[AuthProfile]:
        """All profiles (of one provider), sorted by provider and id. Corrupt ones are skipped;
        :meth:`get_status` names them."""
        providers = [validate_name(provider)] if provider else await self._providers()
        out: list[AuthProfile] = []
        for name in providers:
            raw_map = await self.store.command("HGETALL", self._keys(name).profiles)
            for profile_id, raw in sorted(
                _pairs(raw_map) if isinstance(raw_map, list) else raw_map.items()
            ):
                try:
                    out.append(self._parsed.get(profile_id, raw))
                except CorruptStateError:
                    continue
        return out

    # -- selection -----------------------------------------------------------------------

    async def get_next_profile(
        self,
        provider: str,
        session_id: str | None = None,
        model: str | None = None,
        exclude: Iterable[str] = (),
    ) -> AuthProfile | None:
        """Pick the profile to use now (one round trip), or ``None`` if none is usable."""
        profile, _retry_in = await self._pick(provider, session_id, model, exclude)
        return profile

    async def acquire(
        self,
        provider: str,
        session_id: str | None = None,
        model: str | None = None,
        exclude: Iterable[str] = (),
        *,
        wait_s: float = 0.0,
    ) -> AuthProfile:
        """Like :meth:`get_next_profile`, but raise :class:`NoProfileAvailableError` (with the
        time until the soonest recovery) when nothing is usable, or wait up to ``wait_s`` for
        that recovery first."""
        if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or wait_s < 0:
            raise ConfigError("wait_s", "must be a number >= 0")
        excluded = tuple(exclude)
        budget_ms = wait_s * 1000.0
        while True:
            profile, retry_in = await self._pick(provider, session_id, model, excluded)
            if profile is not None:
                return profile
            if retry_in is None or retry_in > budget_ms:
                raise NoProfileAvailableError(provider, retry_in)
            pause_ms = max(retry_in, 1)
            budget_ms -= pause_ms
            await self._sleep(pause_ms / 1000.0)

    async def _pick(
        self,
        provider: str,
        session_id: str | None,
        model: str | None,
        exclude: Iterable[str],
    ) -> tuple[AuthProfile | None, int | None]:
        script_keys = self._static_keys.get((provider, _ALL_KEYS)) or self._static(
            validate_name(provider)
        )
        ttl_ms: int | str = ""
        if session_id is not None and self.config.session_sticky:
            session_key = self._keys(provider).session(validate_session_id(session_id))
            script_keys = [*script_keys, session_key.encode()]
            ttl_ms = math.ceil(self.config.session_ttl_s * 1000)
        strategy = self.config.strategy_for(provider)
        excluded = list(exclude)
        for _ in range(_CORRUPT_RETRIES):
            args = _without_empty_tail(
                [
                    strategy,
                    model or "",
                    ttl_ms,
                    random.random() if strategy == "random" else "",
                    len(excluded) or "",
                    *excluded,
                ]
            )
            reply = await self.store.run("pick", script_keys, args)
            if int(reply[0]) == 0:
                retry_in = int(reply[1])
                return None, (retry_in if retry_in >= 0 else None)
            try:
                profile = self._parsed.get(reply[1], reply[2])
                break
            except CorruptStateError as exc:
                # The script checks only what it needs (the shape add_profile writes); a
                # definition edited by hand into something else is skipped here, and the pick
                # is made again without it, so that it never stops the others being picked.
                log.warning("profile %s: skipped a corrupt definition (%s)", reply[1], exc)
                excluded.append(reply[1])
        else:
            raise CorruptStateError(provider, "definitions", "too many corrupt profiles in a row")
        if self.events.has_subscribers:
            await self.events.emit_local(
                Event(
                    type="profile:selected",
                    profile_id=profile.id,
                    source=provider,
                    ts_ms=int(reply[4]),
                    data={"reason": reply[3], "session": session_id, "model": model},
                )
            )
        return profile, None

    # -- sessions ------------------------------------------------------------------------

    async def get_profile_for_session(
        self, session_id: str, provider: str | None = None
    ) -> AuthProfile | None:
        """The profile a session is bound to, if the binding holds (profile healthy and
        unchanged). A binding that no longer holds is dropped."""
        validate_session_id(session_id)
        providers = [validate_name(provider)] if provider else await self._providers()
        for name in providers:
            keys = self._keys(name)
            bound = await self.store.run(
                "session_get", [*keys.all_static(), keys.session(session_id)], []
            )
            if bound:
                try:
                    return await self.get_profile(bound)
                except ProfileNotFoundError:
                    return None
        return None

    async def release_session(self, session_id: str, provider: str | None = None) -> bool:
        """Forget a session's binding (in one pool, or all). Returns whether one existed."""
        validate_session_id(session_id)
        providers = [validate_name(provider)] if provider else await self._providers()
        removed = 0
        for name in providers:
            removed += int(await self.store.command("DEL", self._keys(name).session(session_id)))
        return removed > 0

    # -- health reports ------------------------------------------------------------------

    async def mark_failed(
        self,
        profile_id: str,
        error: BaseException | str | None = None,
        kind: FailureKind | str = FailureKind.UNKNOWN,
        retry_after_s: float | None = None,
        model: str | None = None,
    ) -> CooldownResult:
        """Record a failure (one round trip) and cool the profile down by the rules of
        ``kind``. A profile another replica removed meanwhile is reported as ``missing``."""
        failure = FailureKind.parse(kind)
        text = error if isinstance(error, str) else _describe(error)
        # failure is a StrEnum (sent as its value); the optional retry-after and model are sent
        # only when given (every argument costs time on the hot path).
        args: list[Any] = [
            profile_id,
            failure,
            redact(text),
            self._policy_args[failure is _BILLING],
        ]
        if retry_after_s is not None or model:
            args.append(retry_after_ms(retry_after_s))
            if model:
                args.append(model)
        _provider, reply = await self._run_for_profile("mark_failed", profile_id, args)
        if reply is None or _is_missing(reply):
            return CooldownResult("missing")
        if reply[0] == "ignored":
            return CooldownResult("ignored")
        if reply[5]:
            log.warning(
                "profile %s: replaced corrupt state record (field %s)", profile_id, reply[5]
            )
        return CooldownResult("cooling", int(reply[1]), int(reply[2]), int(reply[3]), reply[4])

    async def mark_success(self, profile_id: str, model: str | None = None) -> bool:
        """Record a success (one round trip): failure counters reset. Returns ``False`` if
        the profile no longer exists."""
        args = [profile_id, model] if model else [profile_id]
        _provider, reply = await self._run_for_profile("mark_success", profile_id, args)
        if reply is None or _is_missing(reply):
            return False
        if reply[1]:
            log.warning(
                "profile %s: replaced corrupt state record (field %s)", profile_id, reply[1]
            )
        return True

    async def clear_cooldown(self, profile_id: str) -> bool:
        """End a profile's cooldowns now and reset its counters (also repairs a corrupt state
        record). Returns whether it was cooling down. Unknown id: ``ProfileNotFoundError``."""
        _provider, reply = await self._run_for_profile("clear_cooldown", profile_id, [profile_id])
        if reply is None or _is_missing(reply):
            raise ProfileNotFoundError(profile_id)
        return bool(int(reply[1]))

    # -- status and snapshots --------------------------------------------------------------

    async def get_status(self, provider: str | None = None) -> list[ProfileStatus]:
        """Health of every profile (of one provider), computed on Redis time."""
        providers = [validate_name(provider)] if provider else await self._providers()
        out: list[ProfileStatus] = []
        for name in providers:
            reply = await self.store.run(
                "status", self._keys(name).all_static(), [self.config.failure_window_ms]
            )
            now = int(reply[0])
            pair_cooldowns: dict[str, dict[str, int]] = {}
            for pair, until in _pairs(reply[2]):
                pid, _, model = pair.partition("|")
                pair_cooldowns.setdefault(pid, {})[model] = max(0, int(float(until)) - now)
            for row in reply[1]:
                out.append(_status_row(name, now, row, pair_cooldowns.get(row[0], {})))
        return out

    async def export_state(self) -> dict[str, Any]:
        """A JSON-able snapshot of every pool: profiles (keys stay encrypted), counters and
        cooldowns. Sessions are not included."""
        pools: dict[str, Any] = {}
        exported_at = 0
        for name in await self._providers():
            reply = await self.store.run("export_pool", self._keys(name).all_static(), [])
            exported_at = int(reply[0])
            pools[name] = _snapshot_pool(reply)
        return {
            "format": _SNAPSHOT_FORMAT,
            "namespace": self.store.namespace,
            "exported_at_ms": exported_at,
            "pools": pools,
        }

    async def import_state(self, snapshot: Mapping[str, Any]) -> int:
        """Replace the pools named in ``snapshot`` (from :meth:`export_state`). Returns the
        number of profiles imported. Keys decrypt only with the same secret key."""
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != _SNAPSHOT_FORMAT:
            raise ConfigError("snapshot", f"expected an export with format {_SNAPSHOT_FORMAT}")
        pools = snapshot.get("pools")
        if not isinstance(pools, Mapping):
            raise ConfigError("snapshot.pools", "must be a mapping of provider to pool")
        total = 0
        for name, pool in pools.items():
            validate_name(name, "snapshot.pools")
            if not isinstance(pool, Mapping) or not isinstance(pool.get("profiles"), Mapping):
                raise ConfigError(f"snapshot.pools.{name}", "malformed pool")
            for pid, raw in pool["profiles"].items():
                validate_id(pid, f"snapshot.pools.{name}.profiles")
                AuthProfile.from_record(raw, self.store.box)  # refuse garbage before writing
            total += int(
                await self.store.run(
                    "import_pool", self._keys(name).all_static(), [orjson.dumps(dict(pool))]
                )
            )
            async with self.store.guard("index import"):
                pipe = self.store.client.pipeline(transaction=False)
                pipe.sadd(self._index.pools, name)
                for pid in pool["profiles"]:
                    pipe.hset(self._index.profiles, pid, name)
                await pipe.execute()
            for pid in pool["profiles"]:
                self._pool_of[pid] = name
        return total

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the event reader (the store stays open; it may be shared)."""
        await self.events.close()


def _without_empty_tail(args: list[Any]) -> list[Any]:
    """Drop trailing ``""`` arguments: the scripts read a missing optional argument as empty,
    and every argument sent costs the client and Redis time on the hot path."""
    while args and args[-1] == "":
        args.pop()
    return args


def _snapshot_pool(reply: Sequence[Any]) -> dict[str, Any]:
    """One pool of an export, from export_pool's reply: (profile, model) pairs and last-used
    times are split out of the shared hashes and sets, so the snapshot format stays the same
    whatever the Redis layout."""
    state: dict[str, Any] = {}
    model_state: dict[str, Any] = {}
    for field, raw in _pairs(reply[2]):
        (model_state if "|" in field else state)[field] = raw
    cooling: list[list[Any]] = []
    model_cooling: list[list[Any]] = []
    for member, until in _pairs(reply[4]):
        (model_cooling if "|" in member else cooling).append([member, int(float(until))])
    meta: dict[str, int] = {}
    usage: dict[str, int] = {}
    for field, value in _pairs(reply[5]):
        if field.startswith("used:"):
            usage[field[5:]] = int(value)
        elif field in ("seq", "gen"):
            meta[field] = int(value)
    return {
        "profiles": dict(_pairs(reply[1])),
        "state": state,
        "ready": [[k, int(float(v))] for k, v in _pairs(reply[3])],
        "cooling": cooling,
        "model_cooling": model_cooling,
        "model_state": model_state,
        "meta": meta,
        "usage": usage,
    }


def _is_missing(reply: Any) -> bool:
    if isinstance(reply, list) and reply and reply[0] == "missing":
        return True
    return reply == 0 and not isinstance(reply, bool)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _status_row(
    provider: str, now: int, row: Sequence[Any], model_cooldowns: Mapping[str, int]
) -> ProfileStatus:
    pid, raw_def, raw_state, cooling, ready, failures, billing, broken_field, last_used = row
    # Validation of stored values is the scripts' (load_def/load_state); here we only read.
    broken = broken_field or None
    definition = _json_object(raw_def)
    state = _json_object(raw_state)
    until = int(float(cooling)) if cooling not in ("", None) else None
    remaining = max(0, until - now) if until is not None else 0
    in_cooldown = remaining > 0
    return ProfileStatus(
        id=pid,
        provider=provider,
        type=definition.get("type") if isinstance(definition.get("type"), str) else None,
        priority=definition.get("priority")
        if isinstance(definition.get("priority"), int)
        else None,
        healthy=bool(int(ready)) and not in_cooldown and broken is None,
        in_cooldown=in_cooldown,
        cooldown_remaining_ms=remaining,
        cooldown_until_ms=until,
        cooldown_kind=state.get("cooldown_kind") if in_cooldown else None,
        failures=int(failures),
        billing_failures=int(billing),
        last_error=state.get("last_error"),
        last_error_kind=state.get("last_error_kind"),
        last_used_ms=int(last_used) if last_used else None,
        model_cooldowns=dict(model_cooldowns),
        broken_field=broken,
    )


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
