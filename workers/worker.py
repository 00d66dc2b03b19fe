"""One worker process: an APScheduler ``AsyncIOScheduler`` running the refresh job, the sweep
and the heartbeat, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

import coordinator
from coordinator.fleet import Heartbeat
from coordinator.metrics import FleetMetrics
from coordinator.models import ModelProfileManager
from coordinator.oauth import OAuthConfig, OAuthManager, OAuthProvider
from coordinator.pools import AuthProfileManager
from coordinator.store import Store

from .jobs import refresh_due, sweep
from .settings import WorkerSettings

__all__ = ["Worker"]

log = logging.getLogger("coordinator.worker")
JOBS = ("refresh", "sweep")


class Worker:
    """The refresh worker. ``await worker.run()`` runs until :meth:`stop` (or a signal, when
    started with ``handle_signals=True``), then exits cleanly: no new work, in-flight refreshes
    given ``shutdown_grace_s`` to finish (then cancelled: their locks are released), heartbeat
    removed. With ``settings.metrics_port`` set, it serves Prometheus metrics there
    (:attr:`metrics`, a :class:`~coordinator.metrics.FleetMetrics`) while it runs."""

    def __init__(
        self,
        store: Store,
        providers: Iterable[OAuthProvider] = (),
        settings: WorkerSettings | None = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        self.store = store
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        oauth_config = OAuthConfig(
            refresh_lead_s=self.settings.refresh_lead_s,
            refresh_lead_fraction=self.settings.refresh_lead_fraction,
            refresh_timeout_s=self.settings.refresh_timeout_s,
            lock_ttl_s=self.settings.lock_ttl_s,
        )
        self.oauth = OAuthManager(store, providers, config=oauth_config)
        self.pools = AuthProfileManager(store)
        self.models = ModelProfileManager(store)
        self.heartbeat = Heartbeat(store, self.id, self.settings.heartbeat_ttl_s)
        self.metrics: FleetMetrics | None = None
        if self.settings.metrics_port:
            self.metrics = FleetMetrics(
                store,
                pools=self.pools,
                models=self.models,
                oauth=self.oauth,
                timeout_s=self.settings.metrics_timeout_s,
            )
        self.runs = dict.fromkeys(JOBS, 0)
        self.last_ms = dict.fromkeys(JOBS, 0)
        self._stopped = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()
        self._signals = 0
        self.started_ms = 0

    def __repr__(self) -> str:
        return f"Worker(id={self.id!r}, store={self.store!r})"

    async def run(self, *, handle_signals: bool = False) -> None:
        """Run the jobs until stopped; returns after a clean shutdown."""
        scheduler = self._scheduler()
        if handle_signals:
            self._install_signal_handlers()
        self.started_ms = await self.store.time_ms()
        await self._start_metrics()
        await self._beat("running")
        scheduler.start()
        log.info("worker %s started", self.id, extra=self._context)
        try:
            await self._stopped.wait()
        finally:
            # Paused first, shut down after the drain: shutting the scheduler down cancels
            # the job runs still in flight (APScheduler's asyncio executor does).
            scheduler.pause()
            await self._drain()
            scheduler.shutdown(wait=False)
            await self.close()
            log.info("worker %s stopped", self.id, extra=self._context)

    @property
    def _context(self) -> dict[str, str]:
        return {"worker": self.id}

    async def _start_metrics(self) -> None:
        """Count events from now on and serve ``/metrics`` (when a metrics port is set)."""
        if self.metrics is None:
            return
        try:
            await self.metrics.start()
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        except BaseException:
            await self.metrics.close()
            raise

    def stop(self) -> None:
        """Ask the worker to stop: no new job runs start; :meth:`run` returns once drained."""
        self._stopped.set()

    async def close(self) -> None:
        """Remove the heartbeat and stop the managers' event readers (the store stays open)."""
        try:
            await self.heartbeat.remove()
        except coordinator.CoordinatorError as exc:
            log.warning(
                "could not remove the heartbeat of %s: %s", self.id, exc, extra=self._context
            )
        if self.metrics is not None:
            await self.metrics.close()
        await self.oauth.close()
        await self.pools.close()
        await self.models.close()

    def _scheduler(self) -> AsyncIOScheduler:
        s = self.settings
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        every = {"refresh": s.refresh_interval_s, "sweep": s.sweep_interval_s}
        for job in JOBS:
            scheduler.add_job(
                self._job, "interval", args=[job], seconds=every[job], id=job,
                max_instances=1, coalesce=True, next_run_time=_now(),
            )  # fmt: skip
        scheduler.add_job(
            self._beat, "interval", args=["running"], seconds=s.heartbeat_interval_s,
            id="heartbeat", max_instances=1, coalesce=True,
        )  # fmt: skip
        return scheduler

    async def _job(self, job: str) -> None:
        """Run one job, tracked so that a shutdown can wait for it; a failure is logged and
        the next run tries again."""
        if self._stopped.is_set():
            return
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            await self._job_body(job)
            self.runs[job] += 1
            self.last_ms[job] = await self.store.time_ms()
        except coordinator.CoordinatorError as exc:
            log.warning("%s job failed: %s", job, exc, extra={**self._context, "job": job})
        finally:
            self._running.discard(task)

    async def _job_body(self, job: str) -> None:
        if job == "refresh":
            outcome = await refresh_due(self.oauth, self.settings, stopping=self._stopped)
            if self.metrics is not None:
                self.metrics.count_refresh_run(dataclasses.asdict(outcome))
            level = logging.INFO if outcome.eventful else logging.DEBUG
            log.log(level, "refresh: %s", outcome, extra={**self._context, "job": job})
        else:
            await sweep(self.pools, self.models)

    async def _beat(self, state: str) -> None:
        fields: dict[str, str | int] = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": coordinator.__version__,
            "state": state,
            "started_ms": self.started_ms,
            # Every refresh lock this worker takes has an owner starting with this.
            "lock_owner": self.oauth.lock_owner_prefix,
        }
        for job in JOBS:
            fields[f"{job}_runs"] = self.runs[job]
            fields[f"{job}_last_ms"] = self.last_ms[job]
        try:
            await self.heartbeat.beat(fields)
        except coordinator.CoordinatorError as exc:
            log.warning("heartbeat of %s failed: %s", self.id, exc, extra=self._context)

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then cancel what is left."""
        running = [t for t in self._running if not t.done()]
        if not running:
            return
        await self._beat("stopping")
        _done, pending = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning(
                "abandoned %d job run(s) after %.1f s", len(pending),
                self.settings.shutdown_grace_s, extra=self._context,
            )  # fmt: skip

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:  # a second signal: exit at once
            log.warning("second %s: exiting now", sig.name, extra=self._context)
            os._exit(128 + sig.value)
        log.info("%s: stopping (a second signal exits at once)", sig.name, extra=self._context)
        self.stop()


def _now() -> datetime:
    return datetime.now(UTC)
