"""The worker's jobs, each one plain coroutine: refresh due tokens, apply due transitions."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from coordinator.errors import CoordinatorError, OAuthProviderError, ReauthRequiredError
from coordinator.models import ModelProfileManager
from coordinator.oauth import OAuthManager
from coordinator.pools import AuthProfileManager

from .settings import WorkerSettings

__all__ = ["RefreshOutcome", "is_transient", "refresh_due", "sweep"]

log = logging.getLogger("coordinator.worker")
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class RefreshOutcome:
    """What one run of the refresh job did: ``due`` candidates read from the expiry index,
    each one ``refreshed``, ``fresh`` (not due yet by the worker's lead), ``busy`` (another
    replica held its lock), ``abandoned`` (the lock was lost before sending, or a newer token
    was stored meanwhile), ``needs_reauth`` or ``failed``; ``retries`` after transient errors."""

    due: int = 0
    refreshed: int = 0
    fresh: int = 0
    busy: int = 0
    abandoned: int = 0
    needs_reauth: int = 0
    failed: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def eventful(self) -> bool:
        """Whether the run did more than find every candidate fresh (worth an INFO line)."""
        return self.due > self.fresh


def is_transient(exc: OAuthProviderError) -> bool:
    """A failure worth trying again: no answer (network error, timeout), HTTP 429 or 5xx.
    An OAuth error code (``invalid_grant``, ``invalid_client``, ...) is an answer."""
    if exc.error is not None:
        return False
    return exc.status is None or exc.status == 429 or exc.status >= 500


async def refresh_due(
    oauth: OAuthManager,
    settings: WorkerSettings,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    stopping: asyncio.Event | None = None,
) -> RefreshOutcome:
    """Refresh every credential whose token is due by the worker's lead. Candidates are read
    from the expiry index (never a scan) with ``settings.refresh_lead_s`` as the window; the
    acquire script then decides per credential (the lead capped at
    ``settings.refresh_lead_fraction`` of its lifetime). ``settings.concurrency`` at a time,
    each after a random pause of up to ``settings.jitter_s``; none starts once ``stopping``
    is set. Each refresh goes through the OAuth manager's lock, fence check and
    compare-and-set commit, the same protocol as the apps'."""
    run = _Run(oauth, settings, sleep, rng or random.Random(), stopping or asyncio.Event())
    due = await oauth.due_for_refresh(settings.refresh_lead_s, limit=settings.max_batch)
    run.outcome.due = len(due)
    gate = asyncio.Semaphore(settings.concurrency)

    async def one(credential_id: str, expires_at_ms: int) -> None:
        async with gate:
            await sleep(run.rng.uniform(0, settings.jitter_s))
            if not run.stopping.is_set():  # stop taking work
                await run.refresh(credential_id, expires_at_ms)

    await asyncio.gather(*(one(cid, expires) for cid, expires in due))
    return run.outcome


@dataclass
class _Run:
    """One run of the refresh job."""

    oauth: OAuthManager
    settings: WorkerSettings
    sleep: Sleep
    rng: random.Random
    stopping: asyncio.Event
    outcome: RefreshOutcome = field(default_factory=RefreshOutcome)

    async def refresh(self, credential_id: str, expires_at_ms: int) -> None:
        """Refresh one credential if due; transient failures are tried again with backoff."""
        attempt = 0
        while True:
            try:
                result = await self.oauth.refresh_if_due(credential_id)
            except ReauthRequiredError:
                self.outcome.needs_reauth += 1  # announced by the manager
                return
            except OAuthProviderError as exc:
                if is_transient(exc) and await self._backoff(attempt, expires_at_ms):
                    self.outcome.retries += 1
                    attempt += 1
                    log.info(
                        "refresh of %s failed (%s); trying again", credential_id, exc,
                        extra={"credential": credential_id},
                    )  # fmt: skip
                    continue
                self._failed(credential_id, exc)
                return
            except CoordinatorError as exc:
                self._failed(credential_id, exc)
                return
            self._count(result)
            return

    async def _backoff(self, attempt: int, expires_at_ms: int) -> bool:
        """Wait before the next attempt; ``False`` (no wait) when the token would have expired
        by then, or the worker is stopping. The wait ends early when the worker stops."""
        s = self.settings
        delay = min(s.retry_max_s, s.retry_base_s * 2**attempt) * self.rng.uniform(0.5, 1.0)
        now_ms = await self.oauth.store.time_ms()
        if self.stopping.is_set() or now_ms + delay * 1000 >= expires_at_ms:
            return False
        pause = asyncio.ensure_future(self.sleep(delay))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([pause, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (pause, stop):
                waiter.cancel()
        return not self.stopping.is_set()

    def _count(self, result: str) -> None:
        if result == "refreshed":
            self.outcome.refreshed += 1
        elif result == "busy":
            self.outcome.busy += 1
        elif result == "abandoned":
            self.outcome.abandoned += 1
        else:  # fresh; no-refresh: the token serves until it expires, nothing to do
            self.outcome.fresh += 1

    def _failed(self, credential_id: str, exc: CoordinatorError) -> None:
        self.outcome.failed += 1
        self.outcome.errors.append(f"{credential_id}: {type(exc).__name__}")
        log.warning(
            "refresh of %s failed: %s", credential_id, exc, extra={"credential": credential_id}
        )


async def sweep(pools: AuthProfileManager, models: ModelProfileManager) -> None:
    """Apply the transitions that are due, with no traffic needed: cooldowns that ended
    (``profile:recovered``) and open breakers whose open period is over (half-open). The
    scripts that read the status apply them, each exactly once across the fleet, on Redis
    time; this job only makes sure someone reads."""
    await pools.get_status()
    await models.get_status()
