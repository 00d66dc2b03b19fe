"""An event loop on a thread of its own, where synchronous code keeps its async managers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["BackgroundLoop"]

T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop running on a daemon thread.

    Synchronous code (Flask, Django, Celery, the sync SDK clients) creates its store and
    managers on it (``loop.run(connect(...))``) and calls them through :meth:`run`; the loop
    keeps their connections. Its :meth:`run` is the ``run`` a
    :class:`~coordinator.sdk.SyncCoordinatorTransport` takes.

    A loop serves the process that made it: after ``fork()`` its thread does not exist in the
    child, and :meth:`run` raises ``ConfigError`` there (``coordinator.sync`` connects again
    in the child by itself).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="coordinator-loop", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"BackgroundLoop(running={self.loop.is_running()})"

    def run(self, coro: Coroutine[Any, Any, T], /) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception) in this thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run called from its own loop: await instead")
        if os.getpid() != self._pid:
            coro.close()
            raise ConfigError(
                "loop",
                f"this BackgroundLoop was started in process {self._pid}, before a fork: make "
                "the loop, store and managers in the process that uses them (or use "
                "coordinator.sync, which connects again after a fork)",
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        """Stop the loop and its thread (close the managers and store first, through run)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
