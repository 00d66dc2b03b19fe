"""The fleet's own state: what each worker process says about itself (heartbeats).

Workers (``python -m workers``) write a heartbeat with a TTL; ``coordinator status`` and
``redis-cli`` read them. See :mod:`.heartbeats`.
"""

from __future__ import annotations

from .heartbeats import Heartbeat, WorkerKeys, read_heartbeats

__all__ = ["Heartbeat", "WorkerKeys", "read_heartbeats"]
