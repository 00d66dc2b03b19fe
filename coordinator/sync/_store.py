"""The store of synchronous code, and the bridge between a caller's thread and the store's loop.

A :class:`SyncStore` keeps an ordinary async :class:`~coordinator.Store` on a
:class:`~coordinator.sdk.BackgroundLoop` (an event loop on a thread of its own). A call of a
sync manager is the async manager's coroutine, run there while the caller's thread waits; a
function the caller passes (``execute``'s ``call``, ``login``'s ``on_url``) is run back in the
caller's thread (:class:`Bridge`), so nothing of the async managers' logic exists twice.

After ``fork()`` (gunicorn, Celery's prefork pool, ``multiprocessing``), the child has no loop
thread and shares the parent's sockets: the first call in the child connects anew on a new loop
and leaves the parent's objects untouched (:func:`_after_fork_in_child`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

from ..errors import ConfigError
from ..sdk.loop import BackgroundLoop
from ..store.connection import Store
from ..store.connection import connect as _connect

__all__ = ["Bridge", "SyncStore", "connect"]

log = logging.getLogger("coordinator.sync")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Adopted(Protocol):
    """What a SyncStore asks of the managers made on it when it closes."""

    def _closing(self) -> Coroutine[Any, Any, None] | None: ...


# Every open SyncStore, told after a fork; and, in a forked child, the parent's loops and
# stores it replaced: kept referenced so that they are never closed or finalized there (that
# would touch sockets the parent still uses).
_OPEN: weakref.WeakSet[SyncStore] = weakref.WeakSet()
_PARENTS: list[object] = []


def _after_fork_in_child() -> None:
    for store in list(_OPEN):
        store._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def connect(
    url: str | None = None, *, namespace: str = "coord", secret_key: str | None = None
) -> SyncStore:
    """Connect synchronously: the :class:`SyncStore` every sync manager of a process shares.

    The arguments are :func:`coordinator.connect`'s (``url`` defaults to
    ``$COORDINATOR_REDIS_URL``, else ``memory://``; ``secret_key`` to
    ``$COORDINATOR_SECRET_KEY``). Errors are its errors (``ConfigError``,
    ``StoreUnavailableError``).
    """
    return SyncStore(url, namespace=namespace, secret_key=secret_key)


class SyncStore:
    """A connected store on an event loop of its own, for synchronous code.

    Make one per process (:func:`connect`), at import time if you like: it may be shared by
    every thread, and a forked child connects anew on its first call. Sync managers are made
    on it (``SyncAuthProfileManager(store)``). :meth:`run` runs any coroutine on its loop,
    e.g. for the sync SDK clients or the async manager behind a sync one
    (``store.run(pool.manager.add_profile(...))``).
    """

    def __init__(
        self, url: str | None = None, *, namespace: str = "coord", secret_key: str | None = None
    ) -> None:
        self._url = url
        self._namespace = namespace
        self._secret_key = secret_key  # (kept to connect again after a fork; never shown)
        self._lock = threading.RLock()
        self._closed = False
        self._stale = False  # a forked child that has not connected yet
        self._generation = 0
        self._adopted: weakref.WeakSet[_Adopted] = weakref.WeakSet()
        self._loop, self._store = self._start()
        _OPEN.add(self)

    def __repr__(self) -> str:
        return f"SyncStore({self._store!r})"

    def _start(self) -> tuple[BackgroundLoop, Store]:
        loop = BackgroundLoop()
        try:
            store = loop.run(
                _connect(self._url, namespace=self._namespace, secret_key=self._secret_key)
            )
        except BaseException:
            loop.close()
            raise
        self._generation += 1
        return loop, store

    def _forked(self) -> None:
        """In a child right after ``fork()`` (one thread): the loop's thread is gone."""
        self._lock = threading.RLock()  # (another thread of the parent may have held it)
        if not self._closed:
            self._stale = True

    def _restart(self) -> None:
        """Connect again in a forked child, leaving the parent's loop and store alone."""
        with self._lock:
            if not self._stale:
                return
            if self._store.backend == "memory":
                raise ConfigError(
                    "url",
                    "memory:// keeps its data in the process that connected, which a forked "
                    "process cannot share: use a Redis URL, or connect in the child",
                )
            _PARENTS.append((self._loop, self._store))
            self._loop, self._store = self._start()
            self._stale = False
            log.info("reconnected to %s after a fork (pid %d)", self._store.url, os.getpid())

    def _state(self) -> tuple[int, BackgroundLoop, Store]:
        """The current generation, loop and store (connecting again first after a fork)."""
        if self._stale:
            self._restart()
        if self._closed:
            raise ConfigError("store", "this SyncStore is closed")
        return self._generation, self._loop, self._store

    def _adopt(self, manager: _Adopted) -> None:
        self._adopted.add(manager)

    @property
    def store(self) -> Store:
        """The async store, on this object's loop (a new one in a forked child)."""
        return self._state()[2]

    @property
    def loop(self) -> BackgroundLoop:
        """The event loop (and its thread) the store and the managers live on."""
        return self._state()[1]

    def run(self, coro: Coroutine[Any, Any, T], /) -> T:
        """Run ``coro`` on the store's loop; this thread waits for its result or exception.

        This is the ``run`` (:class:`~coordinator.sdk.Runner`) the sync SDK clients take.
        Interrupting the wait (``KeyboardInterrupt``) cancels the coroutine.
        """
        try:
            loop = self._state()[1]
            _refuse_loop_thread(loop)
        except BaseException:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # (a no-op once it is done)
            raise

    def call(self, make: Callable[[Bridge], Coroutine[Any, Any, T]], /) -> T:
        """Like :meth:`run`, for a coroutine made with a :class:`Bridge`: the functions it
        wraps are run in this thread while it waits."""
        loop = self._state()[1]
        _refuse_loop_thread(loop)
        bridge = Bridge(loop.loop)
        future = asyncio.run_coroutine_threadsafe(make(bridge), loop.loop)
        return bridge.wait(future)

    def close(self) -> None:
        """Close every manager made on this store, then the store and the loop's thread.
        Closing twice is allowed; any later call raises ``ConfigError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _OPEN.discard(self)
            if self._stale:  # a forked child that never connected: nothing here is its own
                return
            closing = [c for c in (m._closing() for m in list(self._adopted)) if c is not None]
            try:
                self._loop.run(_close_all(closing, self._store))
            finally:
                self._loop.close()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _close_all(managers: list[Coroutine[Any, Any, None]], store: Store) -> None:
    try:
        for close in managers:
            await close
    finally:
        await store.close()


def _refuse_loop_thread(loop: BackgroundLoop) -> None:
    """A sync call from the loop's own thread would wait for itself forever."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if running is loop.loop:
        raise ConfigError(
            "store",
            "a sync manager was called from its own event loop (a coroutine run there): "
            "await the async manager (.manager) instead",
        )


class Bridge:
    """Runs the functions a caller passes to one sync call in the caller's own thread.

    The async manager gets :meth:`callback`'s coroutine function in place of the caller's
    function: calling it hands the function to the caller's thread, which runs it (its
    thread-locals, a Flask request context, are there) and sends its result or exception back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    def callback(self, fn: Callable[P, R], field: str) -> Callable[P, Awaitable[R]]:
        """``fn`` as a coroutine function that runs ``fn`` in the caller's thread."""
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            raise ConfigError(
                field,
                "must be a plain function: a sync manager runs it in the calling thread "
                "(give coroutine functions to the async manager)",
            )

        async def in_caller_thread(*args: P.args, **kwargs: P.kwargs) -> R:
            answer: asyncio.Future[R] = self._loop.create_future()
            self._inbox.put(lambda: self._invoke(answer, field, lambda: fn(*args, **kwargs)))
            return await answer

        return in_caller_thread

    def optional_callback(
        self, fn: Callable[P, R] | None, field: str
    ) -> Callable[P, Awaitable[R]] | None:
        """:meth:`callback`, or ``None`` for ``None``."""
        return None if fn is None else self.callback(fn, field)

    def _invoke(self, answer: asyncio.Future[R], field: str, run: Callable[[], R]) -> None:
        """In the caller's thread. An ``Exception`` goes back to the async manager (which may
        classify it, fail over...); anything else (``KeyboardInterrupt``) stops the wait."""
        try:
            result = run()
        except Exception as exc:
            self._loop.call_soon_threadsafe(_settle, answer, None, exc)
            return
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise ConfigError(field, "returned an awaitable: give a plain function")
        self._loop.call_soon_threadsafe(_settle, answer, result, None)

    def wait(self, future: concurrent.futures.Future[T]) -> T:
        """Run the functions handed over until ``future`` is done; its result."""
        future.add_done_callback(lambda _done: self._inbox.put(None))
        try:
            while (job := self._inbox.get()) is not None:
                job()
            return future.result()
        except BaseException:
            future.cancel()  # (a no-op once it is done)
            raise


def _settle(answer: asyncio.Future[R], result: R | None, error: Exception | None) -> None:
    if answer.done():  # the call was cancelled meanwhile
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)  # type: ignore[arg-type]
