"""The worker's jobs, each one plain coroutine: refresh due tokens, apply due transitions."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from coordinator.errors import CoordinatorError, ReauthRequiredError
from coordinator.models import ModelProfileManager
from coordinator.oauth import OAuthManager
from coordinator.pools import AuthProfileManager

from .settings import WorkerSettings

__all__ = ["RefreshOutcome", "refresh_due", "sweep"]

log = logging.getLogger("coordinator.worker")
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class RefreshOutcome:
    """What one run of the refresh job did."""

    due: int = 0
    refreshed: int = 0
    needs_reauth: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


async def refresh_due(
    oauth: OAuthManager,
    settings: WorkerSettings,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> RefreshOutcome:
    """Refresh every credential whose token expires within the worker's lead, read from the
    expiry index (never a scan), ``settings.concurrency`` at a time, each after a random pause
    of up to ``settings.jitter_s``. Each refresh goes through the OAuth manager's lock, fence and
    compare-and-set commit, so workers and apps never refresh one credential twice."""
    rng = rng or random.Random()
    due = await oauth.due_for_refresh(settings.refresh_lead_s, limit=settings.max_batch)
    outcome = RefreshOutcome(due=len(due))
    gate = asyncio.Semaphore(settings.concurrency)

    async def one(credential_id: str) -> None:
        async with gate:
            await sleep(rng.uniform(0, settings.jitter_s))
            await _refresh_one(oauth, credential_id, outcome)

    await asyncio.gather(*(one(cid) for cid, _expires in due))
    return outcome


async def _refresh_one(oauth: OAuthManager, credential_id: str, outcome: RefreshOutcome) -> None:
    try:
        await oauth.get_access_token(credential_id)
    except ReauthRequiredError:
        outcome.needs_reauth += 1  # announced by the manager (credential:needs-reauth)
    except CoordinatorError as exc:
        outcome.failed += 1
        outcome.errors.append(f"{credential_id}: {type(exc).__name__}")
        log.warning("refresh of %s failed: %s", credential_id, exc)
    else:
        outcome.refreshed += 1


async def sweep(pools: AuthProfileManager, models: ModelProfileManager) -> None:
    """Apply the transitions that are due, with no traffic needed: cooldowns that ended
    (``profile:recovered``) and open breakers whose open period is over (half-open). The
    scripts that read the status apply them, each exactly once across the fleet, on Redis
    time; this job only makes sure someone reads."""
    await pools.get_status()
    await models.get_status()
