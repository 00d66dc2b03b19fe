"""AuthProfileManager: pools of credentials per provider, shared by every replica.

All state lives in Redis under ``<ns>:{pool:<provider>}:*`` and every decision is one Lua
script (the ``.lua`` files of this folder) on Redis time: selection, cooldowns, recovery and
sticky sessions behave the same whichever replica asks. This module validates input, passes keys and
arguments, decodes replies and raises clear errors; it decides nothing on its own clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import (
    ConfigError,
    CorruptStateError,
    NoProfileAvailableError,
    ProfileNotFoundError,
    SecretError,
    StoreUnavailableError,
)
from ..events import Event, EventHub, EventSource
from ..failures import FailureKind
from ..store.connection import Store
from ..store.keys import IndexKeys, PoolKeys, validate_id, validate_name, validate_session_id
from ..store.parsed import ParsedDefinitions
from ..store.secrets import redact
from ..validation import number, retry_after_ms
from .config import AuthConfig, CooldownPolicy
from .snapshot import FORMAT, READABLE, checked_pool, pool_from_reply, pool_from_v1, score
from .types import AuthProfile, CooldownResult, ProfileStatus

__all__ = ["AuthProfileManager"]

log = logging.getLogger("coordinator.profiles")

# The type of each key of PoolKeys.all_static(), in that order (a session key is a string).
_KEY_TYPES = ("hash", "hash", "zset", "zset", "stream", "zset", "hash")
# Picks made again after skipping a definition that does not parse, before giving up.
_CORRUPT_RETRIES = 8

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
        self._pool_of: dict[str, str] = {}
        self._parsed = ParsedDefinitions(self._parse_definition)
        self._sleep = sleep
        self.events = EventHub(
            store, self._event_streams, poll_interval_s=self.config.event_poll_interval_s
        )

    def __repr__(self) -> str:
        return f"AuthProfileManager(store={self.store!r})"

    # -- plumbing ------------------------------------------------------------------------

    def _policy_args(self, failure: FailureKind) -> list[float]:
        """mark_failed's schedule arguments: the cooldown class of ``failure`` (billing or
        ordinary), the failure window and the longest honoured retry-after."""
        c = self.config
        schedule: CooldownPolicy = (
            c.billing_cooldown if failure is FailureKind.BILLING else c.cooldown
        )
        return [
            schedule.base_ms,
            schedule.multiplier,
            schedule.cap_ms,
            c.failure_window_ms,
            c.max_retry_after_ms,
        ]

    def _keys(self, provider: str) -> PoolKeys:
        keys = self._pool_keys.get(provider)
        if keys is None:
            keys = self._pool_keys[provider] = PoolKeys(self.store.namespace, provider)
        return keys

    async def _run(
        self, script: str, provider: str, args: Sequence[Any], session_key: str | None = None
    ) -> Any:
        """Run a pool script with the pool's keys (and a session's). A key of the wrong type (a
        hand edit) is reported as :class:`CorruptStateError` naming the key."""
        keys = self._keys(provider).all_static()
        if session_key is not None:
            keys.append(session_key)
        try:
            return await self.store.run(script, keys, args)
        except StoreUnavailableError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            wrong = await self._wrong_type(keys)
            if wrong is None:
                raise
            raise wrong from exc

    async def _wrong_type(self, keys: Sequence[str]) -> CorruptStateError | None:
        """The first of a pool script's keys that holds another type than the pool's layout
        says (rare: only after a script failed with WRONGTYPE)."""
        for key, expected in zip(keys, [*_KEY_TYPES, "string"], strict=False):
            actual = await self.store.command("TYPE", key)
            if actual not in ("none", expected):
                detail = f"holds a {actual}, not a {expected}: delete it or import an export"
                return CorruptStateError(key, "type", detail)
        return None

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
        reply = await self._run(script, provider, args)
        if _is_missing(reply):
            fresh = await self._locate(profile_id, refresh=True)
            if fresh is not None and fresh != provider:
                provider = fresh
                reply = await self._run(script, provider, args)
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
        await self._run("add_profile", profile.provider, [profile.id, orjson.dumps(record)])
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
        time until the soonest recovery) when nothing is usable, or wait up to ``wait_s`` (a
        finite number of seconds >= 0) for that recovery first."""
        number("wait_s", wait_s)
        excluded = _excluded(exclude)
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
        """One pick (one round trip, more only past a definition that does not parse):
        ``(profile, None)``, or ``(None, ms until the soonest recovery or None)``."""
        keys = self._keys(validate_name(provider))
        model = _checked_model(model)
        session_key, ttl_ms = None, 0
        if session_id is not None and self.config.session_sticky:
            session_key = keys.session(validate_session_id(session_id))
            ttl_ms = math.ceil(self.config.session_ttl_s * 1000)
        strategy = self.config.strategy_for(provider)
        fraction = random.random() if strategy == "random" else 0
        excluded = list(_excluded(exclude))
        for _ in range(_CORRUPT_RETRIES):
            args = [strategy, model or "", ttl_ms, fraction, *excluded]
            reply = await self._run("pick", provider, args, session_key)
            if int(reply[0]) == 0:
                retry_in = int(reply[1])
                return None, (retry_in if retry_in >= 0 else None)
            try:
                profile = self._parsed.get(reply[1], reply[2])
                break
            except CorruptStateError as exc:
                # The script decodes a definition only when selection needs its fields (the
                # priority walk); one edited by hand into something the client cannot read is
                # skipped here, and the pick made again without it, so that it never stops the
                # others being picked.
                log.warning(
                    "profile %s: skipped a corrupt definition (%s)",
                    reply[1],
                    exc,
                    extra={"pool": provider, "profile": reply[1]},
                )
                excluded.append(reply[1])
        else:
            raise CorruptStateError(provider, "definitions", "too many corrupt profiles in a row")
        if self.events.has_subscribers:
            data = {"reason": reply[3], "session": session_id, "model": model}
            await self.events.emit_local(
                Event("profile:selected", profile.id, provider, int(reply[4]), data)
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
            bound = await self._run("session_get", name, [], self._keys(name).session(session_id))
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
        model = _checked_model(model)
        text = error if isinstance(error, str) else _describe(error)
        args: list[Any] = [
            profile_id,
            failure.value,
            redact(text, self._keys_in(text, profile_id)),
            *self._policy_args(failure),
            retry_after_ms(retry_after_s),
            model or "",
        ]
        _provider, reply = await self._run_for_profile("mark_failed", profile_id, args)
        if reply is None or _is_missing(reply):
            return CooldownResult("missing")
        if reply[0] == "ignored":
            return CooldownResult("ignored")
        if reply[5]:
            log.warning(
                "profile %s: replaced a corrupt state field (%s)",
                profile_id,
                reply[5],
                extra={"pool": _provider, "profile": profile_id},
            )
        until, duration = int(reply[1]), int(reply[2])
        if until < 0:  # benched until cleared
            return CooldownResult("cooling", None, None, int(reply[3]), reply[4])
        return CooldownResult("cooling", until, duration, int(reply[3]), reply[4])

    def _keys_in(self, text: str, profile_id: str) -> list[str]:
        """The API keys of the reported profile's pool that ``text`` contains (see
        :meth:`keys_in`)."""
        provider = self._pool_of.get(profile_id)
        return [] if provider is None else self.keys_in(text, provider)

    def keys_in(self, text: str, provider: str) -> list[str]:
        """The API keys of ``provider``'s pool that this replica can read (of the profiles it
        has parsed: it picked them or read them) and that ``text`` contains: an error text may
        echo a key of any shape, which the token patterns of ``redact`` miss. No I/O."""
        if not text:
            return []
        found = []
        for pid, pool in list(self._pool_of.items()):
            profile = self._parsed.latest(pid) if pool == provider else None
            value = _readable_key(profile) if profile is not None else ""
            if value and value in text:
                found.append(value)
        return found

    async def mark_success(self, profile_id: str, model: str | None = None) -> bool:
        """Record a success (one round trip): failure counters reset. Returns ``False`` if
        the profile no longer exists."""
        args = [profile_id, _checked_model(model) or ""]
        _provider, reply = await self._run_for_profile("mark_success", profile_id, args)
        if reply is None or _is_missing(reply):
            return False
        if reply[1]:
            log.warning(
                "profile %s: replaced a corrupt state field (%s)",
                profile_id,
                reply[1],
                extra={"pool": _provider, "profile": profile_id},
            )
        return True

    async def clear_cooldown(self, profile_id: str) -> bool:
        """End a profile's cooldowns now and reset its counters (also repairs corrupt state
        fields). Returns whether it was cooling down. Unknown id: ``ProfileNotFoundError``."""
        _provider, reply = await self._run_for_profile("clear_cooldown", profile_id, [profile_id])
        if reply is None or _is_missing(reply):
            raise ProfileNotFoundError(profile_id)
        return bool(int(reply[1]))

    # -- status and snapshots --------------------------------------------------------------

    async def get_status(self, provider: str | None = None) -> list[ProfileStatus]:
        """Health of every profile (of one provider), computed on Redis time. Of all pools, a
        pool with a key of the wrong type is left out (and logged); asked for by name, it
        raises :class:`CorruptStateError` naming the key."""
        if provider:
            return await self._pool_status(validate_name(provider))
        out: list[ProfileStatus] = []
        for name in await self._providers():
            try:
                out.extend(await self._pool_status(name))
            except CorruptStateError as exc:
                log.warning("pool %s left out of the status: %s", name, exc, extra={"pool": name})
        return out

    async def _pool_status(self, name: str) -> list[ProfileStatus]:
        reply = await self._run("status", name, [self.config.failure_window_ms])
        now = int(reply[0])
        pair_cooldowns: dict[str, dict[str, int]] = {}
        for pair, until in _pairs(reply[2]):
            pid, _, model = pair.partition("|")
            end = score(until)
            left = -1 if end == "+inf" else max(0, end - now) if isinstance(end, int) else 0
            pair_cooldowns.setdefault(pid, {})[model] = left
        out = []
        for row in reply[1]:
            status = _status_row(name, now, row, pair_cooldowns.get(row[0], {}))
            out.append(self._with_definition_checked(status, row[1]))
        return out

    def _with_definition_checked(self, status: ProfileStatus, raw: str) -> ProfileStatus:
        """A status row whose definition the script accepted but the client cannot read (as a
        pick would find) is marked broken, naming the field."""
        if status.broken_field is not None or not raw:
            return status
        try:
            self._parsed.get(status.id, raw)
        except CorruptStateError as exc:
            return dataclasses.replace(status, broken_field=exc.field, healthy=False)
        return status

    async def export_state(self) -> dict[str, Any]:
        """A JSON-able snapshot of every pool: profiles (keys stay encrypted), counters and
        cooldowns. Sessions are not included."""
        pools: dict[str, Any] = {}
        exported_at = 0
        for name in await self._providers():
            reply = await self._run("export_pool", name, [])
            exported_at = int(reply[0])
            pools[name] = pool_from_reply(reply)
        return {
            "format": FORMAT,
            "namespace": self.store.namespace,
            "exported_at_ms": exported_at,
            "pools": pools,
        }

    async def import_state(self, snapshot: Mapping[str, Any]) -> int:
        """Replace the pools named in ``snapshot`` (from :meth:`export_state`, of this version
        or the previous format). Returns the number of profiles imported. Keys decrypt only
        with the same secret key."""
        if not isinstance(snapshot, Mapping) or snapshot.get("format") not in READABLE:
            raise ConfigError("snapshot", f"expected an export with format {FORMAT} (or 1)")
        pools = snapshot.get("pools")
        if not isinstance(pools, Mapping):
            raise ConfigError("snapshot.pools", "must be a mapping of provider to pool")
        checked: dict[str, dict[str, Any]] = {}
        for name, pool in pools.items():
            validate_name(name, "snapshot.pools")
            if snapshot["format"] == 1 and isinstance(pool, Mapping):
                pool = pool_from_v1(pool)
            checked[name] = checked_pool(name, pool)
            for raw in checked[name]["profiles"].values():
                AuthProfile.from_record(raw, self.store.box)  # refuse garbage before writing
        total = 0
        for name, pool in checked.items():
            total += int(await self._run("import_pool", name, [orjson.dumps(pool)]))
            await self._index_pool(name, pool["profiles"])
        return total

    async def _index_pool(self, name: str, profile_ids: Iterable[str]) -> None:
        """Point the locator at an imported pool's profiles."""
        ids = list(profile_ids)
        async with self.store.guard("index import"):
            pipe = self.store.client.pipeline(transaction=False)
            pipe.sadd(self._index.pools, name)
            for pid in ids:
                pipe.hset(self._index.profiles, pid, name)
            await pipe.execute()
        for pid in ids:
            self._pool_of[pid] = name

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the event reader (the store stays open; it may be shared)."""
        await self.events.close()


def _readable_key(profile: AuthProfile) -> str:
    """The API key of a profile as this replica reads it; ``""`` when it cannot (its variable
    is not set here, the key does not decrypt, or it is an OAuth profile)."""
    if profile.api_key_env is not None:
        return os.environ.get(profile.api_key_env, "")
    if profile.api_key is None:
        return ""
    try:
        return profile.api_key.reveal()
    except SecretError:
        return ""


_MODEL_LIMIT = 256


def _checked_model(model: object) -> str | None:
    """A model name as given (``None`` or ``""``: none), or ``ConfigError``: at most 256
    printable characters without whitespace."""
    if model is None or model == "":
        return None
    if (
        not isinstance(model, str)
        or len(model) > _MODEL_LIMIT
        or not model.isprintable()
        or any(c.isspace() for c in model)
    ):
        raise ConfigError("model", f"must be 1-{_MODEL_LIMIT} printable characters without spaces")
    return model


def _excluded(exclude: Iterable[str]) -> tuple[str, ...]:
    """The ids to exclude; a single string is refused (it would exclude its characters)."""
    if isinstance(exclude, str | bytes):
        raise ConfigError("exclude", "must be a collection of profile ids, not one string")
    return tuple(exclude)


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
    pid, raw_def, state_flat, cooling, ready, failures, billing, broken_field = row
    # Validation of stored values is the script's (load_def, read_numbers); here we only read.
    broken = broken_field or None
    definition = _json_object(raw_def)
    state = dict(_pairs(state_flat))
    end = score(cooling) if cooling not in ("", None) else None
    until = end if isinstance(end, int) else None
    until_cleared = end == "+inf"
    remaining = max(0, until - now) if until is not None else 0
    in_cooldown = remaining > 0 or until_cleared
    priority = definition.get("priority")
    return ProfileStatus(
        id=pid,
        provider=provider,
        type=definition.get("type") if isinstance(definition.get("type"), str) else None,
        priority=priority if isinstance(priority, int) else None,
        healthy=bool(int(ready)) and not in_cooldown and broken is None,
        in_cooldown=in_cooldown,
        cooldown_remaining_ms=remaining,
        cooldown_until_ms=until,
        cooldown_kind=state.get("cooldown_kind") if in_cooldown else None,
        failures=int(failures),
        billing_failures=int(billing),
        last_error=state.get("last_error"),
        last_error_kind=state.get("last_error_kind"),
        last_used_ms=_whole_ms(state.get("last_used_ms")),
        model_cooldowns=dict(model_cooldowns),
        broken_field=broken,
        until_cleared=until_cleared,
    )


def _whole_ms(text: str | None) -> int | None:
    """A stored time in ms, or None when absent or not a number (status names it broken)."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
