"""ModelProfileManager: model profiles with circuit breakers shared by every replica.

A model profile is one way to serve a model (a provider, its endpoint, its credential, the
models it serves, a priority). Its circuit breaker lives in Redis under ``<ns>:{models}:*`` and
every decision is one Lua script on Redis time (``coordinator/models/model_*.lua``):

* :meth:`ModelProfileManager.select_profile`: one round trip (``model_select``);
* :meth:`ModelProfileManager.get_next_available_profile`: records the failure and picks the
  next profile in the same round trip (``model_report`` with a pick);
* :meth:`ModelProfileManager.execute`: a success costs two round trips (select + report), each
  failover hop one more. A profile backed by an AuthProfileManager pool costs one more round
  trip before the call (the pool lives in another hash tag, ``{pool:<provider>}``, that a
  ``{models}`` script cannot touch on a cluster), and its key report runs concurrently with the
  model report.

This module validates input, passes keys and arguments, decodes replies, obtains secrets and
raises clear errors; it decides nothing on its own clock. (The local clock only turns a
provider's absolute reset timestamps into durations, see :mod:`coordinator.classify`.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal, TypeVar, cast

import httpx
import orjson

from ..errors import (
    AllProfilesUnavailableError,
    ConfigError,
    CoordinatorError,
    CorruptStateError,
    DecryptionError,
    MissingSecretError,
    NoProfileAvailableError,
    OAuthError,
    ProfileNotFoundError,
    StoreUnavailableError,
)
from ..events import EventHub, EventSource
from ..failures import FailureKind
from ..pools.manager import AuthProfileManager
from ..store.connection import Store
from ..store.keys import ModelKeys, validate_id, validate_session_id
from ..store.parsed import ParsedDefinitions
from ..store.secrets import Secret, redact
from ..validation import number, retry_after_ms
from .classify import Classification, classify, classify_exception
from .config import ModelConfig
from .defaults import default_model_profiles
from .replies import report_result, status_row
from .types import (
    ModelAttempt,
    ModelCall,
    ModelProfile,
    ModelProfileStatus,
    ModelSelection,
    ReportResult,
    SelectionReason,
    TokenSource,
)

__all__ = ["ModelProfileManager"]

log = logging.getLogger("coordinator.models")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Outcome = Literal["success", "failure", "release", "unusable"]

# How many times one selection may pick again after skipping a profile (its definition does
# not parse here, or its key cannot be used on this replica). Each pick excludes one more id,
# so this only bounds a pathological case.
_RESELECTS = 32
# Failure kinds that concern one key of a pool, not the provider: for a pool-backed profile
# they cool the key down in its pool and do not count against the model profile's breaker.
_KEY_LEVEL = frozenset({FailureKind.AUTH, FailureKind.BILLING, FailureKind.RATE_LIMIT})
# A call that returned (not an httpx.Response) succeeded.
_SUCCESS = Classification(None)
# The auth kinds whose secret needs no I/O.
_DIRECT_AUTH = frozenset({"api_key", "env", "none"})
# The auth kinds whose key this replica itself holds (a value it decrypts, or a variable of
# its environment): whether it can use it is known without I/O, before the call.
_LOCAL_KEY = frozenset({"api_key", "env"})
# The longest forced opening of a breaker (ten years: beyond that, disable the profile).
_MAX_FORCED_OPEN_S = 10 * 365 * 86400


class _Unusable(Exception):
    """The selected profile's credential cannot be obtained on this replica now."""

    def __init__(self, kind: FailureKind, message: str, outcome: Outcome, cooldown_ms: int | None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.outcome = outcome
        self.cooldown_ms = cooldown_ms


@dataclass
class _Execution:
    """What one :meth:`ModelProfileManager.execute` carries from attempt to attempt."""

    model: str | None
    session_id: str | None
    limit: int
    budget_ms: float
    attempts: list[ModelAttempt] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Outcome:
    """What one call came to: its result or error, and the verdict on it."""

    result: Any
    error: BaseException | None
    verdict: Classification


@dataclass(frozen=True)
class _Step:
    """After one attempt: done (with the call's result), or the next selection."""

    done: bool
    result: Any = None
    selection: ModelSelection | None = None
    retry_in: int | None = None


def _budget_ms(wait_s: float) -> float:
    """How long :meth:`ModelProfileManager.execute` may wait for a recovery, in ms."""
    if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not wait_s >= 0:
        raise ConfigError("wait_s", "must be a number >= 0")
    return float(wait_s) * 1000.0


def _error_text(error: BaseException | str | None) -> str:
    """The text of a reported error, not yet redacted (``""`` for none)."""
    if error is None:
        return ""
    if isinstance(error, str):
        return error
    try:
        text = str(error)
    except Exception:
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ModelProfileManager(EventSource):
    """Model profiles, circuit breakers and failover across providers, shared through Redis.

    * ``auth_manager``: the :class:`~coordinator.profiles.AuthProfileManager` whose pools
      back profiles with ``ModelAuth.pool(...)``.
    * ``token_source``: supplies access tokens of profiles with ``ModelAuth.oauth(...)`` (the
      OAuth manager satisfies :class:`~coordinator.model_types.TokenSource`).
    * ``sleep``: what :meth:`execute` waits with (tests pass one that moves the store's clock).
    * ``clock``: Unix seconds, only to turn a provider's absolute reset times into durations.
    """

    def __init__(
        self,
        store: Store,
        config: ModelConfig | None = None,
        *,
        auth_manager: AuthProfileManager | None = None,
        token_source: TokenSource | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
    ) -> None:
        if config is not None and not isinstance(config, ModelConfig):
            raise ConfigError("config", "must be a ModelConfig")
        self.store = store
        self.config = config or ModelConfig()
        self.auth_manager = auth_manager
        self.token_source = token_source
        self.keys = ModelKeys(store.namespace)
        self._keys = self.keys.all_static()
        self._config_args = self.config.script_args()
        self._session_ttl_ms = math.ceil(self.config.session_ttl_s * 1000)
        self._sleep = sleep
        self._clock = clock
        self._parsed = ParsedDefinitions(partial(ModelProfile.from_record, box=store.box))
        self._reported_broken: set[str] = set()
        # Profiles whose key this replica cannot use (an unset variable, a key it cannot
        # decrypt): id -> when to look again (self._clock() seconds). Local on purpose: other
        # replicas may hold the key, so nothing is written to Redis and no breaker counts it.
        self._unusable_here: dict[str, float] = {}
        self._warned_unusable: set[str] = set()
        self.events = EventHub(
            store, self._event_streams, poll_interval_s=self.config.event_poll_interval_s
        )

    def __repr__(self) -> str:
        return f"ModelProfileManager(store={self.store!r})"

    # -- plumbing ------------------------------------------------------------------------

    async def _event_streams(self) -> dict[str, str]:
        return {self.keys.events: "models"}

    async def _run(self, script: str, args: Sequence[Any], session_key: str | None = None) -> Any:
        """Call a model script with the {models} keys (and a session key) and the breaker
        configuration, then ``args`` (ARGV[3]...)."""
        keys = self._keys if session_key is None else [*self._keys, session_key]
        try:
            return await self.store.run(script, keys, [*self._config_args, *args])
        except StoreUnavailableError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise await self._wrong_type(keys) from exc

    async def _command(self, *args: Any) -> Any:
        """A plain command on a {models} key (a read), with a key of the wrong type named."""
        try:
            return await self.store.command(*args)
        except StoreUnavailableError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise await self._wrong_type(self._keys) from exc

    async def _wrong_type(self, keys: Sequence[str]) -> CoordinatorError:
        """A script met a key of another type than the one it keeps there (a hand edit): the
        error names the key (an operator deletes it, or restores it from a backup)."""
        expected = dict(
            zip(keys, ("hash", "hash", "stream", "zset", "hash", "string"), strict=False)
        )
        for key, wanted in expected.items():
            found = str(await self.store.command("TYPE", key))
            if found not in ("none", wanted):
                return CorruptStateError(key, "type", f"holds a {found}, expected a {wanted}")
        return StoreUnavailableError("a {models} key changed type during the call; try again")

    def _selection_args(
        self,
        model: str | None,
        session_id: str | None,
        exclude: Iterable[str],
        tried: Sequence[str] = (),
    ) -> tuple[list[Any], str | None]:
        """The selection arguments of ``model_select`` / ``model_report`` (preferred model,
        session TTL, the excluded ids: first those ``tried`` by this request, whose recovery
        time the reply reports, then the others) and the session key, if any."""
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigError("model", "must be a non-empty string or None")
        tried = [validate_id(e, "exclude") for e in tried]
        excluded = [validate_id(e, "exclude") for e in exclude if e not in tried]
        session_key = None
        ttl = 0
        if session_id is not None:
            validate_session_id(session_id)
            if self.config.session_sticky:
                session_key = self.keys.session(session_id)
                ttl = self._session_ttl_ms
        return [model or "", ttl, len(tried), *tried, *excluded], session_key

    def _note_broken(self, broken: Any) -> None:
        for item in broken or []:
            text = str(item)
            if text not in self._reported_broken:
                self._reported_broken.add(text)
                profile_id, _, field_name = text.partition(":")
                log.warning(
                    "model profile %r skipped: corrupt stored value %r (see get_status)",
                    profile_id,
                    field_name,
                    extra={"profile": profile_id},
                )

    def _excluded_here(self) -> list[str]:
        """The profiles this replica skips because it cannot use their key, until their time
        to look again (see :meth:`_skip_here`)."""
        if not self._unusable_here:
            return []
        now = self._clock()
        for profile_id in [p for p, until in self._unusable_here.items() if until <= now]:
            del self._unusable_here[profile_id]
        return list(self._unusable_here)

    def _usable_here(self, profile: ModelProfile) -> bool:
        """Whether this replica can use the profile's key, as far as it knows without I/O:
        an ``env`` variable set here, an ``api_key`` it can decrypt (no or another
        ``secret_key`` cannot). Pool and OAuth keys are obtained by :meth:`execute`."""
        if profile.auth.kind not in _LOCAL_KEY:
            return True
        try:
            self._direct_secret(profile)
        except _Unusable as problem:
            if profile.id not in self._warned_unusable:
                self._warned_unusable.add(profile.id)
                log.warning(
                    "model profile %r skipped on this replica: %s",
                    profile.id,
                    problem,
                    extra={"profile": profile.id},
                )
            return False
        return True

    async def _skip_here(self, selection: ModelSelection) -> None:
        """This replica cannot use the selected profile's key: skip the profile here for
        ``unusable_cooldown_ms`` (then look again) and give its probe permit back. Nothing
        counts against it: replicas that hold the key keep using it."""
        recheck_s = self.config.unusable_cooldown_ms / 1000.0
        self._unusable_here[selection.profile_id] = self._clock() + recheck_s
        if selection.permit is not None:
            await self.release(selection)

    def _decode_selection(
        self, reply: Sequence[Any]
    ) -> tuple[ModelSelection | None, int | None, str | None]:
        """Decode a selection reply (see ``select_profile`` in ``_model_select.lua``):
        (selection, None, None), (None, ms until the soonest recovery (of a profile not
        excluded, or of one this request tried) or None if none, None), or (None, None, id)
        when the chosen profile's definition does not parse here."""
        if int(reply[0]) == 0:
            _found, wait, _now, broken, wait_tried = reply
            self._note_broken(broken)
            # (the soonest of either: -1 means none)
            waits = [int(w) for w in (wait, wait_tried) if int(w) >= 0]
            return None, (min(waits) if waits else None), None
        _found, profile_id, reason, epoch, token, now, sticky, model, raw, broken = reply
        self._note_broken(broken)
        profile_id = str(profile_id)
        try:
            profile = self._parsed.get(profile_id, raw)
        except CorruptStateError:
            # The script checked the fields it needs; Python found another one broken. Report
            # it; the caller sees no selection rather than an exception about one profile.
            self._note_broken([f"{profile_id}:definition"])
            return None, None, profile_id
        selection = ModelSelection(
            profile=profile,
            model=str(model) or None,
            reason=cast(SelectionReason, str(reason)),
            epoch=int(epoch),
            permit=str(token) or None,
            selected_at_ms=int(now),
            sticky=int(sticky) == 1,
        )
        return selection, None, None

    # -- profiles ------------------------------------------------------------------------

    async def add_profile(self, profile: ModelProfile | Mapping[str, Any]) -> ModelProfile:
        """Create or update a model profile. Its breaker is kept: re-adding a profile never
        closes an open breaker."""
        if not isinstance(profile, ModelProfile):
            profile = ModelProfile.from_mapping(profile)
        await self._add(profile, only_new=False)
        return profile

    async def _add(self, profile: ModelProfile, *, only_new: bool) -> bool:
        """Store a profile (``only_new``: only when its id is not taken); returns whether it
        was written."""
        record = profile.to_record(self.store.box)
        reply = await self._run(
            "model_add",
            [
                profile.id,
                orjson.dumps(record),
                profile.priority,
                1 if profile.enabled else 0,
                1 if only_new else 0,
            ],
        )
        return bool(reply[0] != "kept")

    async def load_defaults(
        self,
        env: Mapping[str, str] | None = None,
        *,
        path: str | None = None,
        replace: bool = False,
    ) -> list[ModelProfile]:
        """Add the default profiles (see :mod:`coordinator.model_defaults`; ``env`` decides
        which are enabled, default ``os.environ``) that do not exist yet, and return those it
        added. Existing profiles are left as they are, so a replica's restart neither undoes
        an operator's change (a disabled profile, another priority) nor writes its own
        environment over what other replicas see; a replica without a profile's key skips
        that profile by itself (see :meth:`select_profile`). ``replace=True`` writes every
        default over the stored profile (breakers are kept, as with :meth:`add_profile`)."""
        added: list[ModelProfile] = []
        for profile in default_model_profiles(env, path=path):
            if await self._add(profile, only_new=not replace):
                added.append(profile)
        return added

    async def remove_profile(self, profile_id: str) -> bool:
        """Delete a profile. Returns whether it existed. Its breaker record is deleted with it
        only when it holds nothing that matters (closed, no cooldown running, no failure that
        still counts in the streak or the window); otherwise it is kept, so removing and
        re-adding the profile never resets its breaker, cooldown or failure counts."""
        validate_id(profile_id, "profile_id")
        return bool(await self._run("model_remove", [profile_id]))

    async def _set_enabled(self, profile_id: str, enabled: bool) -> bool:
        validate_id(profile_id, "profile_id")
        reply = await self._run("model_set_enabled", [profile_id, 1 if enabled else 0])
        if reply[0] == "missing":
            raise ProfileNotFoundError(profile_id)
        if reply[0] == "corrupt":
            raise CorruptStateError(profile_id, str(reply[1]))
        return bool(reply[0] == "changed")

    async def enable_profile(self, profile_id: str) -> bool:
        """Enable a profile; returns whether it changed. Unknown id: ``ProfileNotFoundError``."""
        return await self._set_enabled(profile_id, True)

    async def disable_profile(self, profile_id: str) -> bool:
        """Disable a profile; returns whether it changed. Unknown id: ``ProfileNotFoundError``."""
        return await self._set_enabled(profile_id, False)

    async def get_profile(self, profile_id: str) -> ModelProfile:
        """The profile with this id; ``ProfileNotFoundError`` if there is none."""
        validate_id(profile_id, "profile_id")
        raw = await self._command("HGET", self.keys.profiles, profile_id)
        if raw is None:
            raise ProfileNotFoundError(profile_id)
        return self._parsed.get(profile_id, raw)

    async def list_profiles(self) -> list[ModelProfile]:
        """All profiles, highest priority first (then by id). Corrupt ones are skipped;
        :meth:`get_status` names them."""
        raw_map = await self._command("HGETALL", self.keys.profiles)
        items = (
            list(zip(raw_map[0::2], raw_map[1::2], strict=True))
            if isinstance(raw_map, list)
            else list(raw_map.items())
        )
        out: list[ModelProfile] = []
        for profile_id, raw in items:
            try:
                out.append(self._parsed.get(profile_id, raw))
            except CorruptStateError:
                continue
        out.sort(key=lambda p: (-p.priority, p.id))
        return out

    # -- selection and reports -----------------------------------------------------------

    async def _select(
        self,
        model: str | None,
        session_id: str | None,
        exclude: Iterable[str],
        tried: Sequence[str] = (),
    ) -> tuple[ModelSelection | None, int | None]:
        """Select (see :meth:`select_profile`); also returns the ms until the soonest recovery
        when nothing is selectable (of the profiles ``tried`` by this request too)."""
        excluded = list(exclude)
        for skip in self._excluded_here():
            if skip not in excluded:
                excluded.append(skip)
        for _ in range(_RESELECTS):
            args, session_key = self._selection_args(model, session_id, excluded, tried)
            reply = await self._run("model_select", args, session_key)
            selection, retry_in, unparsable = self._decode_selection(reply)
            if unparsable is not None:
                excluded.append(unparsable)  # its definition does not parse: skip it, pick again
            elif selection is None or self._usable_here(selection.profile):
                return selection, retry_in
            else:
                await self._skip_here(selection)  # its key is not usable here
                excluded.append(selection.profile_id)
        return None, None

    async def select_profile(
        self,
        preferred_model: str | None = None,
        session_id: str | None = None,
        exclude: Iterable[str] = (),
    ) -> ModelSelection | None:
        """Choose the profile to call now (one round trip), or ``None`` if none is usable.

        Highest priority first among enabled profiles that serve the model, whose breaker
        admits the call (closed, or half-open with a probe permit left), that are not
        cooling down and whose key this replica can use (an ``env`` variable set here, an
        ``api_key`` it can decrypt; else it picks again without that profile and skips it
        for ``unusable_cooldown_ms``, see :meth:`_skip_here`). A session keeps its profile
        while that profile's breaker is closed.
        """
        selection, _retry_in = await self._select(preferred_model, session_id, exclude)
        return selection

    async def _report(
        self,
        target: ModelSelection | str,
        outcome: Outcome,
        kind: FailureKind | None,
        message: str,
        retry_ms: int | str,
        *,
        pick_next: bool = False,
        model: str | None = None,
        session_id: str | None = None,
        exclude: Iterable[str] = (),
        tried: Sequence[str] = (),
    ) -> tuple[ReportResult, ModelSelection | None, int | None]:
        """Report one outcome (and for a failover pick the next profile, excluding ``exclude``
        and ``tried``, the profiles this request tried). Returns what the report did, the next
        selection and the ms until the soonest recovery (of a tried profile too)."""
        epoch: int | str
        if isinstance(target, ModelSelection):
            profile_id, epoch, token = target.profile.id, target.epoch, target.permit or ""
        else:
            profile_id, epoch, token = validate_id(target, "profile_id"), "", ""
        args: list[Any] = [profile_id, outcome, kind or "", retry_ms, epoch, token, message]
        session_key = None
        if pick_next:
            # (the script skips the reported profile itself: no need to send it)
            exclude = [e for e in [*exclude, *self._excluded_here()] if e != profile_id]
            tried = [e for e in tried if e != profile_id]
            pick_args, session_key = self._selection_args(model, session_id, exclude, tried)
            args += [1, *pick_args]
        else:
            args.append(0)
        reply = await self._run("model_report", args, session_key)
        result = report_result(reply)
        if result.status == "corrupt":
            self._note_broken([f"{profile_id}:{result.broken_field}"])
        if not pick_next:
            return result, None, None
        selection, retry_in, unparsable = self._decode_selection(reply[4])
        if selection is not None and not self._usable_here(selection.profile):
            await self._skip_here(selection)
            unparsable = selection.profile_id
        if unparsable is not None:
            # The next profile's definition does not parse here, or its key is not usable
            # here: pick again without it (one more round trip, only then).
            selection, retry_in = await self._select(
                model, session_id, [*exclude, unparsable], [*tried, profile_id]
            )
        return result, selection, retry_in

    async def record_success(
        self, selection: ModelSelection | str, *, retry_after_s: float | None = None
    ) -> ReportResult:
        """Record a successful call (one round trip). ``retry_after_s``: the response said a
        quota is exhausted; the profile cools down that long even though the call worked."""
        result, _sel, _retry = await self._report(
            selection, "success", None, "", retry_after_ms(retry_after_s)
        )
        return result

    async def record_failure(
        self,
        selection: ModelSelection | str,
        kind: FailureKind | str | None = None,
        *,
        error: BaseException | str | None = None,
        retry_after_s: float | None = None,
    ) -> ReportResult:
        """Record a failed call (one round trip). Without ``kind``, an exception ``error`` is
        classified (else ``unknown``). Pass the selection, not just the id, so that a report
        for a call selected before the breaker changed state is recognised as late."""
        failure, retry = self._failure_of(kind, error, retry_after_s)
        result, _sel, _retry = await self._report(
            selection,
            "failure",
            failure,
            await self._message(selection, error),
            retry_after_ms(retry),
        )
        return result

    async def release(self, selection: ModelSelection) -> ReportResult:
        """Give back a selection that was not used (frees a half-open probe permit at once)."""
        result, _sel, _retry = await self._report(selection, "release", None, "", "")
        return result

    async def _message(
        self, target: ModelSelection | str, error: BaseException | str | None
    ) -> str:
        """The stored and emitted text of a reported error (see :meth:`_redacted`), for the
        selection's profile; for an id, of the definition this replica last parsed, else of
        the stored one, read for this."""
        if error is None:
            return ""
        profile = (
            target.profile if isinstance(target, ModelSelection) else await self._known(target)
        )
        return self._redacted(profile, error)

    def _redacted(
        self, profile: ModelProfile | None, error: BaseException | str, used: Secret | None = None
    ) -> str:
        """An error's text with token-shaped text redacted, and every key of the profile this
        replica can read that the text may echo, whatever its shape: the secret the call
        used, the profile's own ``api_key`` or ``env`` key, and for a pool-backed profile the
        keys of that pool, found by the pool's own rule (``AuthProfileManager.keys_in``)."""
        text = _error_text(error)
        known = [used.reveal()] if used is not None else []
        kind = profile.auth.kind if profile is not None else None
        if profile is not None and kind in _LOCAL_KEY and used is None:
            try:
                own = self._direct_secret(profile)
            except _Unusable:
                own = None  # not held here: nothing of it can be in the error
            if own is not None:
                known.append(own.reveal())
        elif profile is not None and kind == "pool" and self.auth_manager is not None:
            known += self.auth_manager.keys_in(text, str(profile.auth.value))
        return redact(text, known)

    async def _known(self, profile_id: str) -> ModelProfile | None:
        """The definition of ``profile_id`` this replica last parsed, else the stored one
        (``None`` when there is none it can parse)."""
        profile = self._parsed.latest(validate_id(profile_id, "profile_id"))
        if profile is not None:
            return profile
        raw = await self._command("HGET", self.keys.profiles, profile_id)
        try:
            return None if raw is None else self._parsed.get(profile_id, raw)
        except CorruptStateError:
            return None

    def _failure_of(
        self,
        kind: FailureKind | str | None,
        error: BaseException | str | None,
        retry_after_s: float | None,
    ) -> tuple[FailureKind, float | None]:
        if kind is not None:
            return FailureKind.parse(kind), retry_after_s
        if isinstance(error, BaseException):
            verdict = classify_exception(error, now=self._clock())
            failure = verdict.kind or FailureKind.UNKNOWN
            return failure, retry_after_s if retry_after_s is not None else verdict.retry_after_s
        return FailureKind.UNKNOWN, retry_after_s

    async def get_next_available_profile(
        self,
        failed: ModelSelection | str,
        preferred_model: str | None = None,
        error: BaseException | str | None = None,
        kind: FailureKind | str | None = None,
        *,
        retry_after_s: float | None = None,
        session_id: str | None = None,
        exclude: Iterable[str] = (),
    ) -> ModelSelection | None:
        """Record the failure of ``failed`` and pick the next profile in the same round trip
        (``failed`` excluded); emits ``profile:failover`` (from, to) when one is found."""
        failure, retry = self._failure_of(kind, error, retry_after_s)
        _result, selection, _retry_in = await self._report(
            failed,
            "failure",
            failure,
            await self._message(failed, error),
            retry_after_ms(retry),
            pick_next=True,
            model=preferred_model,
            session_id=session_id,
            exclude=exclude,
        )
        return selection

    async def reset_breaker(self, profile_id: str) -> str:
        """Close a profile's breaker and end its cooldown now (an operator's decision), and
        forget its failure counts by kind; also repairs a corrupt breaker record. Returns the
        previous state. Unknown id: ``ProfileNotFoundError``."""
        return await self._close(profile_id, "reset")

    async def close_breaker(self, profile_id: str) -> str:
        """Close a profile's breaker and end its cooldown now, keeping its failure counts by
        kind (what undoes :meth:`open_breaker`; also repairs a corrupt breaker record).
        Returns the previous state. Unknown id: ``ProfileNotFoundError``."""
        return await self._close(profile_id, "close")

    async def _close(self, profile_id: str, mode: Literal["close", "reset"]) -> str:
        validate_id(profile_id, "profile_id")
        reply = await self._run("model_reset", [profile_id, mode])
        if reply[0] == "missing":
            raise ProfileNotFoundError(profile_id)
        return str(reply[0])

    async def open_breaker(
        self, profile_id: str, *, for_s: float | None = None
    ) -> ModelProfileStatus:
        """Force a profile's breaker open now, for ``for_s`` seconds (default: the breaker's
        ``reset_timeout_ms``), one round trip. Selections skip the profile from now on, on
        every replica; its epoch moves on, so late reports of earlier selections do not count;
        ``profile:circuit-opened`` is emitted with ``reason="forced"``. When the time is over
        the breaker half-opens and probes as after any opening (:meth:`close_breaker` closes
        it before). Returns the profile's status after the change. Unknown id:
        ``ProfileNotFoundError``; a corrupt breaker record: ``CorruptStateError`` (repair it
        with :meth:`reset_breaker`)."""
        validate_id(profile_id, "profile_id")
        period: int | str = ""
        if for_s is not None:
            seconds = number("for_s", for_s, low=0, high=_MAX_FORCED_OPEN_S, strict=True)
            period = max(1, math.ceil(seconds * 1000))
        reply = await self._run("model_open", [profile_id, period])
        if reply[0] == "missing":
            raise ProfileNotFoundError(profile_id)
        if reply[0] == "corrupt":
            raise CorruptStateError(
                self.keys.breakers,
                f"{profile_id}:{str(reply[1]).removeprefix('breaker.')}",
                f"model profile {profile_id!r} ({reply[1]}); reset_breaker repairs it",
            )
        decay = self.config.breaker.failure_decay_ms
        row = reply[3]
        return self._checked(status_row(int(reply[2]), decay, row), str(row[1]))

    async def release_session(self, session_id: str) -> bool:
        """Forget a sticky model session (one round trip): its next selection picks a profile
        again. Returns whether the session was bound to one."""
        validate_session_id(session_id)
        reply = await self._run("model_session_release", [], self.keys.session(session_id))
        return bool(reply)

    # -- execute -------------------------------------------------------------------------

    async def _credential(
        self, selection: ModelSelection, session_id: str | None
    ) -> tuple[Secret | None, str | None]:
        """The secret of an ``oauth`` or ``pool`` profile (which may need I/O), and the pool
        key id when the profile is pool-backed; the other kinds: :meth:`_direct_secret`."""
        profile = selection.profile
        auth = profile.auth
        if auth.kind == "oauth":
            return await self._oauth_token(profile.id, str(auth.value)), None
        # pool
        if self.auth_manager is None:
            raise ConfigError(
                "auth_manager",
                f"model profile {profile.id!r} draws keys from pool {auth.value!r}: "
                "pass auth_manager= to ModelProfileManager",
            )
        try:
            key = await self.auth_manager.acquire(
                str(auth.value), session_id, selection.model, wait_s=0
            )
        except NoProfileAvailableError as exc:
            cooldown = exc.retry_in_ms or self.config.unusable_cooldown_ms
            raise _Unusable(
                FailureKind.RATE_LIMIT,
                f"pool {auth.value!r} has no usable key",
                "unusable",
                max(1, cooldown),
            ) from exc
        if key.type == "oauth":
            assert key.oauth_credential_id is not None
            return await self._oauth_token(profile.id, key.oauth_credential_id), key.id
        secret = key.secret()
        try:
            if secret is not None:
                secret.reveal()
        except (MissingSecretError, DecryptionError) as exc:
            raise _Unusable(FailureKind.AUTH, str(exc), "release", None) from exc
        return secret, key.id

    @staticmethod
    def _direct_secret(profile: ModelProfile) -> Secret | None:
        """The secret of an ``api_key``, ``env`` or ``none`` profile (no I/O)."""
        if profile.auth.kind == "none":
            return None
        secret = profile.secret()
        assert secret is not None
        try:
            secret.reveal()
        except (MissingSecretError, DecryptionError) as exc:
            # Unset, or not decryptable, on this replica only (no or another secret_key): skip
            # it here, leave it to replicas that have it.
            raise _Unusable(FailureKind.AUTH, str(exc), "release", None) from exc
        return secret

    async def _oauth_token(self, profile_id: str, credential_id: str) -> Secret:
        if self.token_source is None:
            raise ConfigError(
                "token_source",
                f"model profile {profile_id!r} uses OAuth credential {credential_id!r}: "
                "pass token_source= (e.g. the OAuthManager) to ModelProfileManager",
            )
        return await self.token_source.get_access_token(credential_id)

    async def _pool_report(
        self, key_id: str | None, verdict: Classification, message: str, model: str | None
    ) -> None:
        if key_id is None or self.auth_manager is None:
            return
        if verdict.kind is None:
            await self.auth_manager.mark_success(key_id, model)
        elif verdict.kind in _KEY_LEVEL:
            await self.auth_manager.mark_failed(
                key_id, message, verdict.kind, verdict.retry_after_s, model
            )

    async def execute(
        self,
        call: Callable[[ModelCall], Awaitable[T]],
        *,
        model: str | None = None,
        session_id: str | None = None,
        max_attempts: int | None = None,
        wait_s: float = 0.0,
    ) -> T:
        """Run ``call`` with the selected profile and fail over until it succeeds.

        ``call`` receives a :class:`~coordinator.model_types.ModelCall` (model, base URL,
        secret) and returns anything; an ``httpx.Response`` it returns is classified like an
        exception it raises (so a returned 429 fails over too). A caller error (a malformed
        request) is raised (or returned) at once, without failover and without harming the
        profile. When nothing is left, raises :class:`AllProfilesUnavailableError` with every
        attempt and the time until the soonest recovery, or first waits up to ``wait_s`` for
        that recovery. A success costs two round trips; each failover hop one more.
        """
        run = _Execution(model, session_id, self._attempt_limit(max_attempts), _budget_ms(wait_s))
        selection, retry_in = await self._select(model, session_id, ())
        while True:
            if selection is None:
                if not await self._wait_for_recovery(run, retry_in):
                    raise AllProfilesUnavailableError(run.attempts, retry_in)
                run.excluded = []
                selection, retry_in = await self._select(model, session_id, ())
                continue
            step = await self._attempt(call, run, selection)
            if step.done:
                return cast(T, step.result)
            selection, retry_in = step.selection, step.retry_in

    def _attempt_limit(self, max_attempts: int | None) -> int:
        limit = self.config.max_attempts if max_attempts is None else max_attempts
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError("max_attempts", "must be an integer >= 1")
        return limit

    async def _wait_for_recovery(self, run: _Execution, retry_in: int | None) -> bool:
        """Nothing is selectable now: wait for the soonest recovery if attempts and the wait
        budget allow it (then returns True), else return False."""
        if len(run.attempts) >= run.limit or retry_in is None:
            return False
        pause_ms = max(retry_in, 1)
        if pause_ms > run.budget_ms:
            return False
        run.budget_ms -= pause_ms
        await self._sleep(pause_ms / 1000.0)
        return True

    async def _attempt(
        self,
        call: Callable[[ModelCall], Awaitable[Any]],
        run: _Execution,
        selection: ModelSelection,
    ) -> _Step:
        """One try of one selected profile: its credential, the call, the report (and for a
        failure the next selection, in the same round trip)."""
        run.excluded.append(selection.profile_id)
        secret: Secret | None = None
        key_id: str | None = None
        try:
            secret, key_id = await self._credential_for(selection, run.session_id)
        except _Unusable as skip:
            return await self._report_unusable(run, selection, skip)
        except (StoreUnavailableError, ConfigError):
            # An outage is not the profile's fault, nor something to fail over from; a
            # configuration error is this process's to fix.
            raise
        except Exception as exc:
            outcome = self._credential_failure(exc)
        else:
            outcome = await self._run_call(call, run, selection, secret, key_id)
        return await self._report_outcome(run, selection, outcome, secret, key_id)

    async def _credential_for(
        self, selection: ModelSelection, session_id: str | None
    ) -> tuple[Secret | None, str | None]:
        """The secret to call the selected profile with, and the pool key id if any. A
        configuration error gives the probe permit back before it propagates."""
        try:
            if selection.profile.auth.kind in _DIRECT_AUTH:
                return self._direct_secret(selection.profile), None
            return await self._credential(selection, session_id)
        except ConfigError:
            if selection.probe:
                await self.release(selection)
            raise

    def _credential_failure(self, exc: Exception) -> _Outcome:
        """The token source failed (e.g. the OAuth credential needs a new login): an auth
        failure of the profile."""
        kind = FailureKind.AUTH if isinstance(exc, OAuthError) else None
        verdict = classify_exception(exc, now=self._clock())
        if kind is not None or verdict.kind in (None, FailureKind.CALLER):
            verdict = Classification(kind or FailureKind.AUTH, None, "credential")
        return _Outcome(None, exc, verdict)

    async def _run_call(
        self,
        call: Callable[[ModelCall], Awaitable[Any]],
        run: _Execution,
        selection: ModelSelection,
        secret: Secret | None,
        key_id: str | None,
    ) -> _Outcome:
        """Call the provider and classify what came back."""
        context = ModelCall(
            selection=selection,
            model=selection.model,
            base_url=selection.profile.base_url,
            secret=secret,
            attempt=len(run.attempts) + 1,
            credential_id=key_id,
        )
        try:
            result = await call(context)
        except Exception as exc:
            return _Outcome(None, exc, classify_exception(exc, now=self._clock()))
        if isinstance(result, httpx.Response):
            return _Outcome(result, None, classify(result, now=self._clock()))
        return _Outcome(result, None, _SUCCESS)

    async def _report_outcome(
        self,
        run: _Execution,
        selection: ModelSelection,
        outcome: _Outcome,
        secret: Secret | None,
        key_id: str | None,
    ) -> _Step:
        """Report a success (done), give back a caller error (done: raised or returned), or
        report a failure and fail over."""
        verdict = outcome.verdict
        if verdict.kind is None:
            await self._keep_answer(self._report_success(selection, verdict, key_id), selection)
            return _Step(done=True, result=outcome.result)
        if verdict.kind is FailureKind.CALLER:
            if selection.probe:
                await self._keep_answer(self.release(selection), selection)
            if outcome.error is not None:
                raise outcome.error
            return _Step(done=True, result=outcome.result)
        return await self._fail_over(run, selection, outcome, secret, key_id)

    async def _report_success(
        self, selection: ModelSelection, verdict: Classification, key_id: str | None
    ) -> None:
        success = self._report(
            selection, "success", None, "", retry_after_ms(verdict.retry_after_s)
        )
        if key_id is None:
            await success
            return
        await asyncio.gather(success, self._pool_report(key_id, verdict, "", selection.model))

    @staticmethod
    async def _keep_answer(report: Awaitable[object], selection: ModelSelection) -> None:
        """Run a report made after the provider answered. The answer is paid for: if Redis
        fails now, the answer is still returned and only this report is lost (logged)."""
        try:
            await report
        except StoreUnavailableError as exc:
            log.warning(
                "the answer of %s is returned, but its report was lost: %s",
                selection.profile_id, exc, extra={"profile": selection.profile_id},
            )  # fmt: skip

    async def _fail_over(
        self,
        run: _Execution,
        selection: ModelSelection,
        outcome: _Outcome,
        secret: Secret | None,
        key_id: str | None,
    ) -> _Step:
        """Record a failed attempt and pick the next profile in the same round trip."""
        kind = outcome.verdict.kind
        assert kind is not None
        error = outcome.error
        message = (
            self._redacted(selection.profile, error, secret)
            if error is not None
            else outcome.verdict.reason
        )
        run.attempts.append(ModelAttempt(selection.profile_id, kind, message, selection.model))
        last = len(run.attempts) >= run.limit
        report_as: Outcome = "failure"
        retry: int | str = retry_after_ms(outcome.verdict.retry_after_s)
        if key_id is not None and kind in _KEY_LEVEL:
            # The key is at fault, not the provider: the pool cools the key down.
            report_as, retry = "release", ""
        report = self._report(
            selection, report_as, kind, message, retry,
            pick_next=not last, model=run.model, session_id=run.session_id, tried=run.excluded,
        )  # fmt: skip
        if key_id is not None:
            (_r, nxt, retry_in), _ = await asyncio.gather(
                report, self._pool_report(key_id, outcome.verdict, message, selection.model)
            )
        else:
            _r, nxt, retry_in = await report
        if last:
            raise AllProfilesUnavailableError(run.attempts, None, limit_reached=True)
        if nxt is not None:
            log.info(
                "failover from %s (%s) to %s", selection.profile_id, kind.value, nxt.profile_id,
                extra={
                    "event": "profile:failover", "profile": selection.profile_id,
                    "kind": kind.value, "model": selection.model,
                },
            )  # fmt: skip
        return _Step(done=False, selection=nxt, retry_in=retry_in)

    async def _report_unusable(
        self, run: _Execution, selection: ModelSelection, skip: _Unusable
    ) -> _Step:
        """The selected profile's credential cannot be obtained now: report it (no breaker
        count) and pick the next profile in the same round trip."""
        run.attempts.append(
            ModelAttempt(selection.profile_id, skip.kind, skip.message, selection.model)
        )
        last = len(run.attempts) >= run.limit
        _r, nxt, retry_in = await self._report(
            selection, skip.outcome, skip.kind, redact(skip.message), skip.cooldown_ms or "",
            pick_next=not last, model=run.model, session_id=run.session_id, tried=run.excluded,
        )  # fmt: skip
        if last:
            raise AllProfilesUnavailableError(run.attempts, None, limit_reached=True) from None
        return _Step(done=False, selection=nxt, retry_in=retry_in)

    # -- status --------------------------------------------------------------------------

    async def get_status(self) -> list[ModelProfileStatus]:
        """Every profile with its breaker, on Redis time (highest priority first). Due open →
        half-open transitions are applied first. Corrupt records are shown with
        ``broken_field``."""
        reply = await self._run("model_status", [])
        now = int(reply[0])
        decay = self.config.breaker.failure_decay_ms
        out = [self._checked(status_row(now, decay, row), row[1]) for row in reply[1]]
        out.sort(key=lambda s: (-(s.priority or 0), s.id))
        return out

    def _checked(self, status: ModelProfileStatus, raw: str) -> ModelProfileStatus:
        """The status row, with ``broken_field`` set when the definition is one the script
        accepts but this package cannot use (selection skips it too)."""
        if status.blocked or not raw:
            return status
        try:
            self._parsed.get(status.id, raw)
        except CorruptStateError as exc:
            return replace(status, broken_field=exc.field)
        return status

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the event reader (the store stays open; it may be shared)."""
        await self.events.close()
