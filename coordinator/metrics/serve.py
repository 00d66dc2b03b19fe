"""What the refresh worker serves on ``/metrics``: the fleet gauges read at scrape time, the
counters fed from the event streams, and its own refresh tallies, in one registry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from functools import partial
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from ..errors import ConfigError
from ..events import Event, EventHub
from ..logs import event_context
from ..models.manager import ModelProfileManager
from ..oauth.manager import OAuthManager
from ..overview import Managers, event_streams
from ..pools.manager import AuthProfileManager
from ..store.connection import Store
from .counters import EventCounters, RefreshCounters
from .fleet import FleetCollector

__all__ = ["FleetMetrics"]

log = logging.getLogger("coordinator.metrics")


class FleetMetrics:
    """The fleet's metrics in :attr:`registry` (a registry of their own unless one is given).

    ``await start()`` registers the gauges (read through the given managers, on the running
    event loop, each scrape bounded by ``timeout_s``) and starts counting the events of every
    stream from that moment (``poll_interval_s`` where streams are polled: the embedded
    backend, a Cluster). :meth:`serve` exposes the registry over HTTP; ``await close()`` stops
    both. Each event is also logged at DEBUG on ``coordinator.metrics`` with its context.
    """

    def __init__(
        self,
        store: Store,
        *,
        pools: AuthProfileManager,
        models: ModelProfileManager,
        oauth: OAuthManager,
        registry: CollectorRegistry | None = None,
        timeout_s: float = 5.0,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.counters = EventCounters(self.registry)
        self.refreshes = RefreshCounters(self.registry)
        self._managers = Managers(store, pools, models, oauth)
        self._timeout_s = timeout_s
        self._hub = EventHub(store, partial(event_streams, store), poll_interval_s=poll_interval_s)
        self._collector: FleetCollector | None = None
        self._server: tuple[WSGIServer, threading.Thread] | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        """Register the gauges and start counting events (waits, at most ``timeout_s``, until
        the stream reader has fixed its starting point: events after it are all counted)."""
        if self._collector is None:
            loop = asyncio.get_running_loop()
            self._collector = FleetCollector(self._managers, loop=loop, timeout_s=self._timeout_s)
            self.registry.register(self._collector)
            self._hub.on("*", self._on_event)
        try:
            await asyncio.wait_for(self._hub.wait_started(), self._timeout_s)
        except TimeoutError:
            log.warning(
                "metrics: the event streams did not answer within %g s; counting starts when "
                "they do", self._timeout_s, extra={"operation": "metrics"},
            )  # fmt: skip
        self._started.set()

    async def wait_started(self) -> None:
        """Wait until :meth:`start` has run and events are counted (the stream reader has
        fixed its starting point: every event after it is counted)."""
        await self._started.wait()
        await self._hub.wait_started()

    def _on_event(self, event: Event) -> None:
        self.counters.count(event)
        log.debug("event %s", event.type, extra=event_context(event))

    def count_refresh_run(self, tallies: Mapping[str, int]) -> None:
        """Add one refresh run's tallies (``{"refreshed": 1, "busy": 0, ...}``)."""
        self.refreshes.count(tallies)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` from a thread (port 0: any free port). Returns
        the port. A port that cannot be bound is a :class:`ConfigError` on ``metrics_port``."""
        if self._server is not None:
            return int(self._server[0].server_port)
        try:
            self._server = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                "metrics_port", f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        bound = int(self._server[0].server_port)
        log.info(
            "metrics on http://%s:%d/metrics", host, bound, extra={"operation": "metrics"}
        )  # fmt: skip
        return bound

    @property
    def port(self) -> int | None:
        """The port :meth:`serve` listens on, or ``None``."""
        return int(self._server[0].server_port) if self._server is not None else None

    async def close(self) -> None:
        """Stop serving and stop reading the streams (the managers and store stay open)."""
        server, self._server = self._server, None
        if server is not None:
            httpd, thread = server
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()
            await asyncio.to_thread(thread.join, 5.0)
        await self._hub.close()
        if self._collector is not None:
            with contextlib.suppress(KeyError):
                self.registry.unregister(self._collector)
            self._collector = None
