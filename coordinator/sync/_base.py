"""What every synchronous manager shares: the async manager it drives, events, closing.

The methods of the sync managers are generated (``_generated.py``, written by
``scripts/gen_sync.py`` from the async managers); what cannot be generated lives here: the
event callbacks and subscriptions (the async forms are an async iterator and callbacks run on
the loop), closing, and making the async manager again in a forked child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from ..errors import ConfigError
from ..events import Event, EventCallback, EventHub
from ..models.manager import ModelProfileManager
from ..oauth.manager import OAuthManager
from ..pools.manager import AuthProfileManager
from ..store.connection import Store
from ._store import SyncStore

__all__ = ["SyncManager", "SyncSubscription", "async_of"]

log = logging.getLogger("coordinator.sync")


class AsyncManager(Protocol):
    """What the sync base needs of an async manager (all three have it)."""

    events: EventHub

    def on(self, event_type: str, callback: EventCallback) -> Callable[[], None]: ...

    def subscribe(self, *event_types: str) -> AsyncIterator[Event]: ...

    async def close(self) -> None: ...


M = TypeVar("M", bound=AsyncManager)


@dataclass(eq=False)
class _Listener:
    """A callback given to :meth:`SyncManager.on`, and how to detach it from the async one."""

    event_type: str
    callback: Callable[[Event], object]
    detach: Callable[[], None] | None = None


class SyncManager(Generic[M]):
    """The base of the sync managers: ``manager`` is the async manager they drive.

    Each method runs the async method of the same name on the store's loop and blocks until it
    returns; its exceptions are raised unchanged. Any number of threads may call one sync
    manager at once.
    """

    def __init__(self, store: SyncStore, build: Callable[[Store], M]) -> None:
        if not isinstance(store, SyncStore):
            raise ConfigError("store", "must be a SyncStore (coordinator.sync.connect())")
        self._sync_store = store
        self._build = build
        self._listeners: list[_Listener] = []
        self._closed = False
        generation, _loop, async_store = store._state()
        self._generation = generation
        self._manager = build(async_store)
        store._adopt(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._manager!r})"

    @property
    def store(self) -> SyncStore:
        """The :class:`SyncStore` this manager was made on."""
        return self._sync_store

    @property
    def manager(self) -> M:
        """The async manager this one drives, on the store's loop: for the coroutines you run
        there with ``store.run``. In a forked child, a new one, made on the first use."""
        if self._sync_store._state()[0] != self._generation:
            self._rebuild()
        return self._manager

    def _rebuild(self) -> None:
        """In a forked child: the same manager again on the child's store; the providers added
        to an OAuth manager and the ``on()`` callbacks carry over."""
        with self._sync_store._lock:
            generation, _loop, async_store = self._sync_store._state()
            if generation == self._generation:
                return
            old, new = self._manager, self._build(async_store)
            if isinstance(old, OAuthManager) and isinstance(new, OAuthManager):
                for provider in old.providers.values():
                    new.add_provider(provider)
            self._manager, self._generation = new, generation
            listeners = list(self._listeners)
        for listener in listeners:
            self._sync_store.run(_attach(new, listener, self._started_within()))

    def _started_within(self) -> float:
        return self._sync_store.store.timeouts.bound_s

    # -- events --------------------------------------------------------------------------

    def on(self, event_type: str, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for each event of this type (``*``: all) from any replica,
        from now on. Returns a function that unsubscribes.

        Events written after ``on()`` returns are delivered (it waits for the event reader to
        start, up to the store's timeouts). Callbacks run one at a time, in order, in a worker
        thread of the store's loop, not in the thread that called ``on()``; an exception they
        raise is logged.
        """
        if not callable(callback) or inspect.iscoroutinefunction(callback):
            raise ConfigError("callback", "must be a plain function (async: use .manager.on)")
        listener = _Listener(event_type, callback)
        self._sync_store.run(_attach(self.manager, listener, self._started_within()))
        with self._sync_store._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._sync_store._lock:
                if listener not in self._listeners:
                    return
                self._listeners.remove(listener)
            detach = listener.detach
            if detach is not None and not self._sync_store._closed:
                self._sync_store.run(_call(detach))

        return unsubscribe

    def subscribe(self, *event_types: str) -> SyncSubscription:
        """A blocking iterator over events (of the given types, or all) from every replica,
        from now on: ``for event in pool.subscribe("profile:cooldown"): ...``, or
        ``sub.get(timeout_s=1.0)``. Close it (``with``, ``close()``) when done."""
        return SyncSubscription(self._sync_store, self.manager, event_types)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the event reader (and an OAuth manager's own HTTP client); the store stays
        open. ``SyncStore.close()`` closes its managers too."""
        if self._closed:
            return
        self._closed = True
        self._sync_store.run(self.manager.close())

    def _closing(self) -> Coroutine[Any, Any, None] | None:
        """The close of the async manager, for the store's close (``None``: nothing to do)."""
        if self._closed or self._generation != self._sync_store._generation:
            return None
        self._closed = True
        return self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def async_of(value: object, store: SyncStore, field: str) -> Any:
    """For the generated constructors: the async manager behind a sync manager made on
    ``store``; any other value (a ``TokenSource`` of your own) as it is."""
    if isinstance(value, SyncManager):
        if value.store is not store:
            raise ConfigError(field, "must be made on the same SyncStore")
        return value.manager
    managers = AuthProfileManager | ModelProfileManager | OAuthManager
    if isinstance(value, managers) and value.store is not store.store:
        raise ConfigError(field, "pass the sync manager (this async one is of another store)")
    return value


async def _attach(manager: AsyncManager, listener: _Listener, started_within_s: float) -> None:
    """Register ``listener`` with the async manager (on its loop) and wait, a bounded time,
    for the event reader to fix its starting point."""
    loop = asyncio.get_running_loop()

    async def deliver(event: Event) -> None:
        await loop.run_in_executor(None, listener.callback, event)

    listener.detach = manager.on(listener.event_type, deliver)
    await _reader_started(manager.events, started_within_s)


async def _reader_started(events: EventHub, within_s: float) -> None:
    try:
        await asyncio.wait_for(events.wait_started(), within_s)
    except TimeoutError:
        log.warning(
            "the event reader has not started within %.1f s (is the store answering?); "
            "events will be delivered once it does",
            within_s,
        )


async def _call(fn: Callable[[], None]) -> None:
    fn()


async def _next(source: AsyncIterator[Event]) -> Event:
    return await anext(source)


class SyncSubscription:
    """Events from every replica, as a blocking iterator (see :meth:`SyncManager.subscribe`).

    ``for event in sub`` blocks for each event (and ends when the subscription is closed, from
    any thread); :meth:`get` waits at most ``timeout_s``. Events are queued from the moment
    ``subscribe()`` returns (up to 10,000; a slow reader loses the oldest). Read it from one
    thread at a time; :meth:`close` (or ``with``) ends it.
    """

    def __init__(self, store: SyncStore, manager: AsyncManager, event_types: tuple[str, ...]):
        self._store = store
        self._generation, loop, async_store = store._state()
        self._loop = loop.loop
        self._source = manager.subscribe(*event_types)
        self._lock = threading.Lock()
        self._closed = False
        # Start waiting for the first event at once, so the subscription exists from now on:
        # the run below ends after that wait has begun (the loop runs callbacks in order).
        first = asyncio.run_coroutine_threadsafe(_next(self._source), self._loop)
        self._pending: concurrent.futures.Future[Event] | None = first
        store.run(_reader_started(manager.events, async_store.timeouts.bound_s))

    def __repr__(self) -> str:
        return f"SyncSubscription(closed={self._closed})"

    def __iter__(self) -> SyncSubscription:
        return self

    def __next__(self) -> Event:
        event = self._wait(None)
        if event is None:  # closed
            raise StopIteration
        return event

    def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event; ``None`` when ``timeout_s`` passes first (``None``: no limit) or
        the subscription is closed."""
        return self._wait(timeout_s)

    def _wait(self, timeout_s: float | None) -> Event | None:
        with self._lock:
            if self._closed:
                return None
            if self._store._state()[0] != self._generation:
                raise ConfigError(
                    "subscription",
                    "a subscription does not survive a fork: subscribe again in this process",
                )
            pending = self._pending
            if pending is None:
                pending = asyncio.run_coroutine_threadsafe(_next(self._source), self._loop)
                self._pending = pending
        try:
            event = pending.result(timeout_s)
        except TimeoutError:
            return None  # (still waiting: the next call goes on with the same wait)
        except concurrent.futures.CancelledError:
            return None  # closed meanwhile
        with self._lock:
            if self._pending is pending:
                self._pending = None
        return event

    def close(self) -> None:
        """Stop receiving events; a thread waiting in it gets ``None`` (or the loop over it
        ends). Closing twice is allowed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = self._pending, None
            store = self._store
            if store._closed or store._stale or store._generation != self._generation:
                return  # (its loop is gone, or is a parent's)
        if pending is not None and pending.cancel():
            return  # the cancelled wait ends the source, on the loop
        self._store.run(_close_source(self._source))

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _close_source(source: AsyncIterator[Event]) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        await close()
