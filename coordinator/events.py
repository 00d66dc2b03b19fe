"""Events: transitions written by the Lua scripts to capped Redis streams, fanned out locally.

Every transition (``profile:failed``, ``profile:cooldown``, ``profile:recovered``, ...) is
appended to its pool's stream by the very script that makes it, so each happens exactly once
across all replicas. An :class:`EventHub` reads those streams (started lazily, on the first
subscriber) and hands each event to local callbacks and async iterators; events that only
concern this process (``profile:selected``) are delivered locally without touching Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .errors import CoordinatorError
from .store.connection import Store

__all__ = ["Event", "EventCallback", "EventHub", "EventSource"]

log = logging.getLogger("coordinator.events")

EventCallback = Callable[["Event"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Event:
    """One transition. ``ts_ms`` is Redis time; ``data`` never holds a secret."""

    type: str
    profile_id: str
    source: str
    ts_ms: int
    data: dict[str, Any] = field(default_factory=dict)
    stream_id: str | None = None

    def expand(self) -> list[Event]:
        """The events one stream entry stands for.

        A pool failure that starts or extends a cooldown is delivered as ``profile:failed``
        followed by ``profile:cooldown``. Model profiles write every event as its own entry;
        an entry of an earlier version whose failure carries its failover (data ``failover``)
        is delivered as ``profile:failure`` followed by ``profile:failover``.
        """
        if self.type == "profile:failed" and "until_ms" in self.data:
            keep = ("kind", "model", "scope", "until_ms", "duration_ms")
            cooldown = {k: v for k, v in self.data.items() if k in keep}
            return [self, replace(self, type="profile:cooldown", data=cooldown)]
        if self.type == "profile:failure" and isinstance(self.data.get("failover"), dict):
            failure = {k: v for k, v in self.data.items() if k != "failover"}
            return [
                replace(self, data=failure),
                replace(self, type="profile:failover", data=dict(self.data["failover"])),
            ]
        return [self]

    @classmethod
    def from_stream(cls, source: str, stream_id: str, fields: dict[str, str]) -> Event:
        """Decode one stream entry; an entry edited into garbage decodes with empty data."""
        try:
            data = orjson.loads(fields.get("data", "{}"))
            if not isinstance(data, dict):
                data = {}
        except orjson.JSONDecodeError:
            data = {}
        try:
            ts = int(fields.get("ts", "0"))
        except ValueError:
            ts = 0
        return cls(
            type=fields.get("type", "unknown"),
            profile_id=fields.get("profile", ""),
            source=source,
            ts_ms=ts,
            data=data,
            stream_id=stream_id,
        )


StreamSource = Callable[[], Awaitable[dict[str, str]]]

# How long one blocking XREAD waits for new entries at most: short enough that the list of
# pools is looked at again about once a second. It is also kept to half the store's socket
# timeout (see EventHub.__init__), so that a quiet stream is never taken for a dead server.
_BLOCK_MS = 1000
# The longest pause between attempts to read while the store does not answer.
_MAX_RETRY_PAUSE_S = 5.0


class EventHub:
    """Local fan-out of the events of a set of streams.

    ``streams`` returns ``{stream key: source name}`` and is asked again about once a second,
    so pools created later (by any replica) are followed too. On standalone Redis and Sentinel
    the reader blocks in ``XREAD`` until an entry arrives (events are delivered within a round
    trip, and an idle replica sends one command a second); on a Cluster (streams in different
    slots) and the embedded backend it polls every ``poll_interval_s``.
    """

    def __init__(
        self,
        store: Store,
        streams: StreamSource,
        *,
        poll_interval_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._streams = streams
        self._poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._callbacks: dict[str, list[EventCallback]] = {}
        self._queues: list[tuple[frozenset[str] | None, asyncio.Queue[Event]]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_ids: dict[str, str] = {}
        self._stream_list: dict[str, str] | None = None
        self._streams_due = 0.0
        self._started = asyncio.Event()
        self._closed = False
        self._blocking = store.backend in ("redis", "sentinel")
        self._block_ms = max(1, min(_BLOCK_MS, int(store.timeouts.socket_timeout * 500)))

    def on(self, event_type: str, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``event_type`` (``*`` for all).

        Returns a function that unsubscribes. The callback may be sync or async; an exception
        it raises is logged and does not stop delivery.
        """
        self._callbacks.setdefault(event_type, []).append(callback)
        self._ensure_started()

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.get(event_type, []).remove(callback)

        return unsubscribe

    async def subscribe(self, *event_types: str, max_queue: int = 10_000) -> AsyncIterator[Event]:
        """Iterate over events (of the given types, or all) as they arrive, from now on."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=max_queue)
        entry = (frozenset(event_types) or None, queue)
        self._queues.append(entry)
        self._ensure_started()
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(entry)

    async def wait_started(self) -> None:
        """Wait until the reader has fixed its starting point (events after it are seen);
        while the store does not answer, that waits for it to answer."""
        self._ensure_started()
        await self._started.wait()

    async def emit_local(self, event: Event) -> None:
        """Deliver an event that does not go through Redis (e.g. ``profile:selected``)."""
        await self._dispatch(event)

    @property
    def has_subscribers(self) -> bool:
        """Whether anything listens (lets callers skip building local events)."""
        return bool(self._queues) or any(self._callbacks.values())

    def _ensure_started(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            try:
                if not self._started.is_set():
                    await self._fix_starting_point()
                delivered, waited = await self._read_once()
            except CoordinatorError as exc:
                # Redis away: retry with a growing pause (up to 5 s), saying so once per
                # outage rather than at every attempt.
                failures += 1
                if failures == 1:
                    log.warning(
                        "event reader: %s; retrying until the store answers",
                        exc,
                        extra={"operation": "events"},
                    )
                else:
                    log.debug(
                        "event reader: attempt %d failed: %s",
                        failures,
                        exc,
                        extra={"operation": "events"},
                    )
                await self._sleep(min(self._poll_interval_s * 2**failures, _MAX_RETRY_PAUSE_S))
                continue
            if failures:
                log.warning(
                    "event reader: the store answers again (after %d attempts)",
                    failures,
                    extra={"operation": "events"},
                )
                failures = 0
            # A blocking read that came back empty has already waited; anything else that
            # found nothing (polling, no pool yet) pauses before reading again.
            if not delivered and not waited:
                await self._sleep(self._poll_interval_s)

    async def _fix_starting_point(self) -> None:
        """Start exactly after the newest entry of every stream that exists now; streams that
        appear later are read from their beginning (all their events are new to us)."""
        for key in await self._streams():
            async with self._store.guard("XREVRANGE events"):
                newest = await self._store.client.xrevrange(key, count=1)
            self._last_ids[key] = newest[0][0] if newest else "0-0"
        self._started.set()

    async def _current_streams(self) -> dict[str, str]:
        # The list of streams changes rarely (a new pool); re-read it about once a second.
        # A stream found later is read from its beginning, so nothing is lost meanwhile.
        loop = asyncio.get_running_loop()
        if self._stream_list is None or loop.time() >= self._streams_due:
            self._stream_list = await self._streams()
            self._streams_due = loop.time() + max(1.0, 10 * self._poll_interval_s)
        return self._stream_list

    async def _read_once(self) -> tuple[int, bool]:
        """Read and deliver what is new; returns (events delivered, whether the read waited
        on the server for entries)."""
        streams = await self._current_streams()
        if not streams:
            return 0, False
        wanted = {key: self._last_ids.get(key, "0-0") for key in streams}
        async with self._store.guard("XREAD events"):
            if self._store.backend == "cluster":
                # Streams live in different slots: one XREAD each, pipelined (one round trip
                # per node).
                pipe = self._store.client.pipeline()
                for key, last in wanted.items():
                    pipe.xread({key: last}, count=500)
                replies = [item for reply in await pipe.execute() for item in reply or []]
            else:
                block = self._block_ms if self._blocking else None
                replies = await self._store.client.xread(wanted, count=500, block=block) or []
        delivered = 0
        for key, entries in replies:
            source = streams.get(key, "")
            for stream_id, fields in entries:
                self._last_ids[key] = stream_id
                for event in Event.from_stream(source, stream_id, fields).expand():
                    await self._dispatch(event)
                    delivered += 1
        return delivered, self._blocking

    async def _dispatch(self, event: Event) -> None:
        for callback in [*self._callbacks.get(event.type, []), *self._callbacks.get("*", [])]:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception(
                    "event callback for %s failed",
                    event.type,
                    extra={"event": event.type, "profile": event.profile_id},
                )
        for types, queue in self._queues:
            if types is None or event.type in types:
                if queue.full():
                    queue.get_nowait()  # keep the newest: a slow reader loses the oldest
                queue.put_nowait(event)

    async def close(self) -> None:
        """Stop reading streams."""
        self._closed = True
        task = self._task
        if task is None:
            return
        # Cancel until it takes: on Python 3.11, asyncio.wait_for (which redis-py wraps
        # around every socket write) swallows a cancellation that arrives just as the write
        # completes, and the reader would then sit in a blocking XREAD for up to a second.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class EventSource:
    """``on()`` and ``subscribe()`` for a manager whose :class:`EventHub` is ``self.events``."""

    events: EventHub

    def on(self, event_type: str, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for each event of this type (``*``: all) from any replica.
        Returns an unsubscribe function."""
        return self.events.on(event_type, callback)

    def subscribe(self, *event_types: str) -> AsyncIterator[Event]:
        """Async iterator over events (of the given types) from every replica, from now on."""
        return self.events.subscribe(*event_types)
