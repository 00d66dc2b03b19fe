"""ModelProfileManager: model profiles with circuit breakers shared by every replica.

A model profile is one way to serve a model (a provider, its endpoint, its credential, the
models it serves, a priority). Its circuit breaker lives in Redis under ``<ns>:{models}:*`` and
every decision is one Lua script on Redis time (``coordinator/lua/model_*.lua``):

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
from functools import partial
from typing import Any, Literal, TypeVar, cast

import httpx
import orjson

from ..errors import (
    AllProfilesUnavailableError,
    ConfigError,
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
from ..validation import retry_after_ms
from .classify import Classification, classify, classify_exception
from .config import ModelConfig
from .defaults import default_model_profiles
from .types import (
    BreakerState,
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
# The hot path's shortcuts: the verdict on a call that returned, and the auth kinds whose
# secret needs no I/O.
_SUCCESS = Classification(None)
_DIRECT_AUTH = frozenset({"api_key", "env", "none"})
# The auth kinds whose key this replica itself holds (a value it decrypts, or a variable of
# its environment): whether it can use it is known without I/O, before the call.
_LOCAL_KEY = frozenset({"api_key", "env"})


def _slot_setters(cls: type, names: Sequence[str]) -> list[Callable[[Any, Any], None]]:
    """The slot descriptors' setters of a frozen slots dataclass, in ``names`` order."""
    assert tuple(names) == tuple(cls.__slots__)  # type: ignore[attr-defined]
    return [cls.__dict__[name].__set__ for name in names]


# ModelSelection and ModelCall are frozen slots dataclasses without __post_init__: on the hot
# path they are filled through their slot descriptors, which costs half of the generated
# __init__ (one object.__setattr__ lookup per field). Same objects, same values.
_SEL_PROFILE, _SEL_MODEL, _SEL_REASON, _SEL_EPOCH, _SEL_PERMIT, _SEL_AT, _SEL_STICKY = (
    _slot_setters(
        ModelSelection,
        ("profile", "model", "reason", "epoch", "permit", "selected_at_ms", "sticky"),
    )
)
_CALL_SELECTION, _CALL_MODEL, _CALL_URL, _CALL_SECRET, _CALL_ATTEMPT, _CALL_CREDENTIAL = (
    _slot_setters(
        ModelCall, ("selection", "model", "base_url", "secret", "attempt", "credential_id")
    )
)


def _new_selection(
    profile: ModelProfile,
    model: str | None,
    reason: SelectionReason,
    epoch: int,
    permit: str | None,
    selected_at_ms: int,
    sticky: bool,
) -> ModelSelection:
    selection = object.__new__(ModelSelection)
    _SEL_PROFILE(selection, profile)
    _SEL_MODEL(selection, model)
    _SEL_REASON(selection, reason)
    _SEL_EPOCH(selection, epoch)
    _SEL_PERMIT(selection, permit)
    _SEL_AT(selection, selected_at_ms)
    _SEL_STICKY(selection, sticky)
    return selection


def _new_call(
    selection: ModelSelection,
    model: str | None,
    base_url: str,
    secret: Secret | None,
    attempt: int,
    credential_id: str | None,
) -> ModelCall:
    call = object.__new__(ModelCall)
    _CALL_SELECTION(call, selection)
    _CALL_MODEL(call, model)
    _CALL_URL(call, base_url)
    _CALL_SECRET(call, secret)
    _CALL_ATTEMPT(call, attempt)
    _CALL_CREDENTIAL(call, credential_id)
    return call


class _Unusable(Exception):
    """The selected profile's credential cannot be obtained on this replica now."""

    def __init__(self, kind: FailureKind, message: str, outcome: Outcome, cooldown_ms: int | None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.outcome = outcome
        self.cooldown_ms = cooldown_ms


def _describe(error: BaseException | str | None, known: Sequence[str] = ()) -> str:
    if error is None:
        return ""
    if isinstance(error, str):
        return redact(error, known)
    try:
        text = str(error)
    except Exception:
        text = ""
    return redact(f"{type(error).__name__}: {text}" if text else type(error).__name__, known)


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
        # Encoded once: keys and configuration are sent with every call (the hot path).
        # A report without a pick is given only the first three (see ModelKeys.all_static).
        self._static = [k.encode() for k in self.keys.all_static()]
        self._report_keys = self._static[:3]
        self._cfg_args = [a.encode() for a in self.config.script_args()]
        self._cfg_only = tuple(self._cfg_args)  # the arguments of a selection with defaults
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

    async def _run(self, script: str, args: Sequence[Any], keys: Sequence[bytes] = ()) -> Any:
        return await self.store.run(
            script, [*self._static, *keys] if keys else self._static, [*self._cfg_args, *args]
        )

    def _selection_spec(
        self, model: str | None, session_id: str | None, exclude: Iterable[str]
    ) -> tuple[str | None, list[bytes]]:
        """The scripts' selection spec (one argument, see ``select_profile`` in
        ``coordinator/lua/_model.lua``; ``None`` when everything is the default) and the
        session key, if any."""
        if model is None and session_id is None and not exclude:
            return None, []  # the common call: nothing to check or build
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigError("model", "must be a non-empty string or None")
        excluded = [validate_id(e, "exclude") for e in exclude]
        keys: list[bytes] = []
        ttl = 0
        if session_id is not None:
            validate_session_id(session_id)
            if self.config.session_sticky:
                keys.append(self.keys.session(session_id).encode())
                ttl = self._session_ttl_ms
        if not ttl and not excluded and model is None:
            return None, keys
        ids = "".join(f"{e}," for e in excluded)
        return f"{ttl},{len(excluded)},{ids}{model or ''}", keys

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
                log.warning("model profile %r skipped on this replica: %s", profile.id, problem)
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
        self, reply: Sequence[Any], at: int = 0
    ) -> tuple[ModelSelection | None, int | None, str | None]:
        """Decode a selection reply (packed, see ``select_profile`` in ``_model.lua``) that
        starts at ``reply[at]``: (selection, None, None), (None, ms until the soonest recovery
        or None if none, None), or (None, None, id) when the chosen profile's definition does
        not parse here."""
        head = str(reply[at + 1]).split(",")
        if int(reply[at]) == 0:
            if len(head) > 2:
                self._note_broken(head[2:])
            retry_in = int(head[0])
            return None, (retry_in if retry_in >= 0 else None), None
        if len(head) > 6:
            self._note_broken(head[6:])
        try:
            profile = self._parsed.get(head[0], reply[at + 3])
        except CorruptStateError:
            # The script checked the fields it needs; Python found another one broken. Report
            # it; the caller sees no selection rather than an exception about one profile.
            self._note_broken([f"{head[0]}:definition"])
            return None, None, head[0]
        if not profile.enabled:
            # The script read the first "enabled" of a hand-edited JSON that has two.
            self._note_broken([f"{head[0]}:enabled"])
            return None, None, head[0]
        selection = _new_selection(
            profile,
            str(reply[at + 2]) or None,
            cast(SelectionReason, head[1]),
            int(head[2]),
            head[3] or None,
            int(head[4]),
            head[5] == "1",
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
        raw = await self.store.command("HGET", self.keys.profiles, profile_id)
        if raw is None:
            raise ProfileNotFoundError(profile_id)
        return self._parsed.get(profile_id, raw)

    async def list_profiles(self) -> list[ModelProfile]:
        """All profiles, highest priority first (then by id). Corrupt ones are skipped;
        :meth:`get_status` names them."""
        raw_map = await self.store.command("HGETALL", self.keys.profiles)
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
        self, model: str | None, session_id: str | None, exclude: Iterable[str]
    ) -> tuple[ModelSelection | None, int | None]:
        excluded = list(exclude)
        for skip in self._excluded_here():
            if skip not in excluded:
                excluded.append(skip)
        for _ in range(_RESELECTS):
            spec, keys = self._selection_spec(model, session_id, excluded)
            # store.run directly (not _run): this is the hot path, one coroutine fewer.
            reply = await self.store.run(
                "model_select",
                [*self._static, *keys] if keys else self._static,
                self._cfg_only if spec is None else [*self._cfg_args, spec],
            )
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
    ) -> tuple[str, ModelSelection | None, int | None]:
        """Report one outcome (and for a failover pick the next profile). Returns the packed
        report head (see :func:`_report_result`; a failover's callers never need it decoded),
        the next selection and the ms until the soonest recovery."""
        epoch: int | str
        if isinstance(target, ModelSelection):
            profile_id, epoch, token = target.profile.id, target.epoch, target.permit or ""
        else:
            profile_id, epoch, token = validate_id(target, "profile_id"), "", ""
        # (a FailureKind is a StrEnum: it formats as its value)
        header = (
            f"{outcome},{kind or ''},{retry_ms},{epoch},{token},{1 if pick_next else 0},"
            f"{profile_id}"
        )
        script_keys = self._report_keys
        args = [*self._cfg_args, header, message] if message else [*self._cfg_args, header]
        if pick_next:
            # (the script skips the reported profile itself: no need to send it)
            exclude = [e for e in [*exclude, *self._excluded_here()] if e != profile_id]
            spec, keys = self._selection_spec(model, session_id, exclude)
            script_keys = [*self._static, *keys] if keys else self._static
            if spec is not None:
                args = [*self._cfg_args, header, message, spec]
        reply = await self.store.run("model_report", script_keys, args)
        head = str(reply[0])
        if head.startswith("corrupt,"):
            self._note_broken([f"{profile_id}:{head.split(',', 3)[3]}"])
        if not pick_next:
            return head, None, None
        selection, retry_in, unparsable = self._decode_selection(reply, 1)
        if selection is not None and not self._usable_here(selection.profile):
            await self._skip_here(selection)
            unparsable = selection.profile_id
        if unparsable is not None:
            # The next profile's definition does not parse here, or its key is not usable
            # here: pick again without it (one more round trip, only then).
            selection, retry_in = await self._select(
                model, session_id, [*exclude, profile_id, unparsable]
            )
        return head, selection, retry_in

    async def record_success(
        self, selection: ModelSelection | str, *, retry_after_s: float | None = None
    ) -> ReportResult:
        """Record a successful call (one round trip). ``retry_after_s``: the response said a
        quota is exhausted; the profile cools down that long even though the call worked."""
        head, _sel, _retry = await self._report(
            selection, "success", None, "", retry_after_ms(retry_after_s)
        )
        return _report_result(head)

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
        head, _sel, _retry = await self._report(
            selection, "failure", failure, self._message(selection, error), retry_after_ms(retry)
        )
        return _report_result(head)

    async def release(self, selection: ModelSelection) -> ReportResult:
        """Give back a selection that was not used (frees a half-open probe permit at once)."""
        head, _sel, _retry = await self._report(selection, "release", None, "", "")
        return _report_result(head)

    def _message(self, target: ModelSelection | str, error: BaseException | str | None) -> str:
        """The stored and emitted text of a reported error: token-shaped text redacted, and the
        profile's own key too (an ``api_key`` or ``env`` key this replica holds: of the
        selection's profile, or for an id the last definition this replica parsed)."""
        if error is None:
            return ""
        profile = (
            target.profile if isinstance(target, ModelSelection) else self._parsed.latest(target)
        )
        known: list[str] = []
        if profile is not None and profile.auth.kind in _LOCAL_KEY:
            try:
                secret = self._direct_secret(profile)
            except _Unusable:
                secret = None  # not held here: nothing of it can be in the error
            if secret is not None:
                known.append(secret.reveal())
        return _describe(error, known)

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
            self._message(failed, error),
            retry_after_ms(retry),
            pick_next=True,
            model=preferred_model,
            session_id=session_id,
            exclude=exclude,
        )
        return selection

    async def reset_breaker(self, profile_id: str) -> str:
        """Close a profile's breaker and end its cooldown now (an operator's decision; also
        repairs a corrupt breaker record). Returns the previous state."""
        validate_id(profile_id, "profile_id")
        reply = await self._run("model_reset", [profile_id])
        if reply[0] == "missing":
            raise ProfileNotFoundError(profile_id)
        return str(reply[0])

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
        limit = self.config.max_attempts if max_attempts is None else max_attempts
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError("max_attempts", "must be an integer >= 1")
        if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not wait_s >= 0:
            raise ConfigError("wait_s", "must be a number >= 0")
        budget_ms = float(wait_s) * 1000.0
        attempts: list[ModelAttempt] = []
        excluded: list[str] = []
        selection, retry_in = await self._select(model, session_id, excluded)
        while True:
            if selection is None:
                if len(attempts) < limit and retry_in is not None and retry_in <= budget_ms:
                    pause_ms = max(retry_in, 1)
                    budget_ms -= pause_ms
                    await self._sleep(pause_ms / 1000.0)
                    excluded = []
                    selection, retry_in = await self._select(model, session_id, excluded)
                    continue
                raise AllProfilesUnavailableError(attempts, retry_in)
            excluded.append(selection.profile_id)
            last = len(attempts) + 1 >= limit
            try:
                if selection.profile.auth.kind in _DIRECT_AUTH:
                    secret, key_id = self._direct_secret(selection.profile), None
                else:
                    secret, key_id = await self._credential(selection, session_id)
            except _Unusable as skip:
                attempts.append(
                    ModelAttempt(selection.profile_id, skip.kind, skip.message, selection.model)
                )
                retry_ms: int | str = skip.cooldown_ms if skip.cooldown_ms else ""
                _r, selection, retry_in = await self._report(
                    selection, skip.outcome, skip.kind, redact(skip.message), retry_ms,
                    pick_next=not last, model=model, session_id=session_id, exclude=excluded,
                )  # fmt: skip
                if last:
                    raise AllProfilesUnavailableError(attempts, None, limit_reached=True) from None
                continue
            except StoreUnavailableError:
                raise  # an outage is not the profile's fault, nor something to fail over from
            except ConfigError:
                if selection.probe:
                    await self.release(selection)
                raise
            except Exception as exc:
                # The token source failed (e.g. the OAuth credential needs a new login).
                kind = FailureKind.AUTH if isinstance(exc, OAuthError) else None
                verdict = classify_exception(exc, now=self._clock())
                if kind is not None or verdict.kind in (None, FailureKind.CALLER):
                    verdict = Classification(kind or FailureKind.AUTH, None, "credential")
                error: BaseException | None = exc
                secret, key_id = None, None
                result: Any = None
            else:
                context = _new_call(
                    selection,
                    selection.model,
                    selection.profile.base_url,
                    secret,
                    len(attempts) + 1,
                    key_id,
                )
                error = None
                try:
                    result = await call(context)
                except Exception as exc:
                    error = exc
                    verdict = classify_exception(exc, now=self._clock())
                else:
                    if isinstance(result, httpx.Response):
                        verdict = classify(result, now=self._clock())
                    else:
                        verdict = _SUCCESS
            if verdict.kind is None:
                success = self._report(
                    selection, "success", None, "", retry_after_ms(verdict.retry_after_s)
                )
                if key_id is not None:
                    await asyncio.gather(
                        success, self._pool_report(key_id, verdict, "", selection.model)
                    )
                else:
                    await success
                return cast(T, result)
            if verdict.kind is FailureKind.CALLER:
                if selection.probe:
                    await self.release(selection)
                if error is not None:
                    raise error
                return cast(T, result)
            known = [secret.reveal()] if error is not None and secret is not None else []
            message = _describe(error, known) if error is not None else verdict.reason
            attempts.append(
                ModelAttempt(selection.profile_id, verdict.kind, message, selection.model)
            )
            outcome: Outcome = "failure"
            retry: int | str = retry_after_ms(verdict.retry_after_s)
            if key_id is not None and verdict.kind in _KEY_LEVEL:
                # The key is at fault, not the provider: the pool cools the key down.
                outcome, retry = "release", ""
            failed_id, failed_model = selection.profile_id, selection.model
            report = self._report(
                selection, outcome, verdict.kind, message, retry,
                pick_next=not last, model=model, session_id=session_id, exclude=excluded,
            )  # fmt: skip
            if key_id is not None:
                (_r, selection, retry_in), _ = await asyncio.gather(
                    report, self._pool_report(key_id, verdict, message, failed_model)
                )
            else:
                _r, selection, retry_in = await report
            if last:
                raise AllProfilesUnavailableError(attempts, None, limit_reached=True)
            if selection is not None:
                log.info(
                    "failover from %s (%s) to %s", failed_id, verdict.kind.value,
                    selection.profile_id,
                )  # fmt: skip

    # -- status --------------------------------------------------------------------------

    async def get_status(self) -> list[ModelProfileStatus]:
        """Every profile with its breaker, on Redis time (highest priority first). Due open →
        half-open transitions are applied first. Corrupt records are shown with
        ``broken_field``."""
        reply = await self._run("model_status", [])
        now = int(reply[0])
        decay = self.config.breaker.failure_decay_ms
        out = [_status_row(now, decay, row) for row in reply[1]]
        out.sort(key=lambda s: (-(s.priority or 0), s.id))
        return out

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the event reader (the store stays open; it may be shared)."""
        await self.events.close()


def _report_result(head: str) -> ReportResult:
    """Decode a report head: "<status>,<breaker state>,<epoch, -1 if unknown>,<broken field>"."""
    status, state, epoch_text, broken = head.split(",", 3)
    epoch = int(epoch_text)
    return ReportResult(  # (status, state, epoch, broken_field)
        cast(Any, status),
        cast("BreakerState | None", state or None),
        epoch if epoch >= 0 else None,
        broken or None,
    )


def _as_dict(raw: str) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _num(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return int(value)
    return 0


def _status_row(now: int, decay_ms: int, row: Sequence[Any]) -> ModelProfileStatus:
    pid, raw_def, raw_breaker, broken = (str(x) for x in row)
    definition = _as_dict(raw_def) or {}
    breaker = _as_dict(raw_breaker) or {}
    state = breaker.get("state", "closed") if not broken.startswith("breaker") else None
    if state not in ("closed", "open", "half_open"):
        state = None
    streak = breaker.get("streak")
    streak_items = list(streak.values()) if isinstance(streak, dict) else streak or []
    consecutive = sum(1 for t in streak_items if isinstance(t, int | float) and now - t <= decay_ms)
    window = breaker.get("window") if isinstance(breaker.get("window"), str) else ""
    permits = breaker.get("permits")
    in_flight = (
        sum(1 for t in permits.values() if isinstance(t, int | float) and t > now)
        if isinstance(permits, dict)
        else 0
    )
    open_until = _num(breaker.get("open_until_ms")) if state == "open" else 0
    priority = definition.get("priority")
    enabled = definition.get("enabled")
    last_error = breaker.get("last_error")
    last_kind = breaker.get("last_error_kind")
    return ModelProfileStatus(
        id=pid,
        provider=definition.get("provider")
        if isinstance(definition.get("provider"), str)
        else None,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
        enabled=enabled if isinstance(enabled, bool) else None,
        state=cast("BreakerState | None", state),
        epoch=_num(breaker.get("epoch")),
        open_remaining_ms=max(0, open_until - now),
        cooldown_remaining_ms=max(0, _num(breaker.get("cooldown_until_ms")) - now),
        consecutive_failures=consecutive,
        window_calls=len(window or ""),
        window_failures=(window or "").count("1"),
        probes_in_flight=in_flight,
        reopens=_num(breaker.get("reopens")),
        failures_total=_num(breaker.get("failures_total")),
        last_error=last_error if isinstance(last_error, str) else None,
        last_error_kind=last_kind if isinstance(last_kind, str) else None,
        broken_field=broken or None,
    )
