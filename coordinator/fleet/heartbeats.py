"""Worker heartbeats: one hash per worker with a TTL, and an index of the workers seen.

``<ns>:{workers}:worker:<id>`` (HASH, deleted by Redis ``heartbeat_ttl_s`` after the last
beat) holds ``id host pid version started_ms beat_ms state lock_owner`` (the start of the
owner of every refresh lock the worker takes) and, for each job, ``<job>_last_ms`` and
``<job>_runs``; ``<ns>:{workers}:index`` (ZSET) maps worker id -> last
beat (ms), so that readers list workers without scanning. Times are Redis ``TIME``; each write
is one Lua function (``worker_beat.lua``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..store import Store
from ..store.keys import WorkerKeys

__all__ = ["Heartbeat", "WorkerKeys", "read_heartbeats"]


class Heartbeat:
    """Writes one worker's heartbeat."""

    def __init__(self, store: Store, worker_id: str, ttl_s: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.keys = WorkerKeys(store.namespace)
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def beat(self, fields: Mapping[str, str | int]) -> int:
        """Write ``fields`` and ``beat_ms`` (Redis time) and renew the TTL; returns that time."""
        args: list[str | int] = [self.worker_id, self.ttl_ms]
        for name, value in fields.items():
            args += [name, value]
        keys = [self.keys.worker(self.worker_id), self.keys.index]
        return int(await self.store.run("worker_beat", keys, args))

    async def remove(self) -> None:
        """Delete the heartbeat at once (a worker that stops cleanly)."""
        keys = [self.keys.worker(self.worker_id), self.keys.index]
        await self.store.run("worker_beat", keys, [self.worker_id, 0])


async def read_heartbeats(store: Store) -> list[dict[str, str]]:
    """Every live worker's heartbeat, newest beat first (the hash's fields as text)."""
    keys = WorkerKeys(store.namespace)
    ids = [str(i) for i in await store.command("ZREVRANGE", keys.index, 0, -1)]
    if not ids:
        return []
    reply = await store.run("worker_list", [keys.index, *map(keys.worker, ids)], ids)
    return [_pairs(fields) for fields in reply[1:]]


def _pairs(flat: list[object] | Mapping[object, object]) -> dict[str, str]:
    if isinstance(flat, Mapping):
        return {str(k): str(v) for k, v in flat.items()}
    return {str(k): str(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}
