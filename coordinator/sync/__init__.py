"""Synchronous managers for Flask, Django, Celery and scripts: the async managers, blocking.

::

    from coordinator.sync import SyncAuthProfileManager, connect

    store = connect()  # once per process; forks are handled
    pool = SyncAuthProfileManager(store)
    key = pool.acquire("openai", session_id="chat-42")

A :class:`SyncStore` keeps an async store on an event loop of its own thread; every method of
a sync manager runs the async method of the same name there and waits for it, so the Lua in
Redis stays the one implementation of every rule. The sync managers are generated from the
async ones (``_generated.py``, by ``scripts/gen_sync.py``); what cannot be generated (events,
closing, forks) lives in ``_base.py``. See docs/sync.md.
"""

from __future__ import annotations

from ._base import SyncManager, SyncSubscription
from ._generated import SyncAuthProfileManager, SyncModelProfileManager, SyncOAuthManager
from ._store import SyncStore, connect

__all__ = [
    "SyncAuthProfileManager",
    "SyncManager",
    "SyncModelProfileManager",
    "SyncOAuthManager",
    "SyncStore",
    "SyncSubscription",
    "connect",
]
