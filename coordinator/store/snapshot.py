"""The embedded backend (fakeredis with Lua) and its optional snapshot file.

``memory:///path/state.json`` keeps the embedded state across restarts: after writes the whole
keyspace is dumped (debounced), to a temporary file that is fsynced, given mode 0600 and then
renamed over the old one, so a crash leaves either the old or the new snapshot, never half.

One store at a time may keep its state in a file: it holds an exclusive lock (``flock``) on
``<path>.lock`` while it is open, and a second store (in this process or another) is refused
with a :class:`ConfigError` instead of silently overwriting the first one's writes.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import tempfile
from typing import Any

import orjson
import redis.exceptions as rexc

from ..errors import ConfigError, CorruptStateError

__all__ = ["SnapshotFile", "dump_to_file", "load_from_file", "new_memory_client"]

_FORMAT = 1


def new_memory_client() -> Any:
    """A fresh in-process fakeredis client (its own server) that answers text."""
    import fakeredis  # here: a process that talks to Redis never loads it

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)


class SnapshotFile:
    """The embedded state's file, held by one store: see :meth:`open`."""

    def __init__(self, path: str, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, path: str) -> SnapshotFile:
        """Check that the state can be written at ``path`` (its folder is made if needed) and
        lock it for this store; :class:`ConfigError` if it cannot be written or another store
        holds it."""
        path = os.path.abspath(path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            # Creating the lock file beside it proves the folder takes new files (the
            # snapshot is written to a temporary file there, then renamed).
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                "url", f"cannot keep the embedded state in {path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                "url",
                f"{path} is in use by another store (process {holder}); one store at a time "
                "may keep its state in a file",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a new owner)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


async def _dump(client: Any) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    async for key in client.scan_iter(count=1000):
        kind = await client.type(key)
        ttl = await client.pttl(key)
        entry: dict[str, Any] = {"key": key, "type": kind, "ttl_ms": ttl if ttl > 0 else None}
        if kind == "string":
            entry["value"] = await client.get(key)
        elif kind == "hash":
            entry["value"] = await client.hgetall(key)
        elif kind == "zset":
            entry["value"] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            entry["value"] = sorted(await client.smembers(key))
        elif kind == "list":
            entry["value"] = await client.lrange(key, 0, -1)
        elif kind == "stream":
            entry["value"] = await client.xrange(key)
        else:
            continue
        entries.append(entry)
    return {"format": _FORMAT, "keys": entries}


async def dump_to_file(client: Any, path: str) -> None:
    """Write the whole embedded keyspace to ``path`` atomically, mode 0600."""
    data = orjson.dumps(await _dump(client))
    await asyncio.to_thread(_write_atomically, path, data)


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".coordinator-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


async def load_from_file(client: Any, path: str) -> None:
    """Restore a snapshot written by :func:`dump_to_file` (a missing file is an empty store)."""
    try:
        raw = await asyncio.to_thread(_read, path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError("url", f"cannot read embedded state file: {exc.strerror}") from exc
    try:
        data = orjson.loads(raw)
        if data.get("format") != _FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        for entry in data["keys"]:
            await _restore(client, entry)
    except (ValueError, KeyError, TypeError, AttributeError, rexc.RedisError) as exc:
        # rexc.RedisError: a value the embedded server refuses (a null, a bad stream id).
        raise CorruptStateError(path, "snapshot", str(exc)[:200]) from exc


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


async def _restore(client: Any, entry: dict[str, Any]) -> None:
    key, kind, value = entry["key"], entry["type"], entry["value"]
    if kind == "string":
        await client.set(key, value)
    elif kind == "hash":
        await client.hset(key, mapping=value)
    elif kind == "zset":
        await client.zadd(key, {member: score for member, score in value})
    elif kind == "set":
        await client.sadd(key, *value)
    elif kind == "list":
        await client.rpush(key, *value)
    elif kind == "stream":
        for entry_id, fields in value:
            await client.xadd(key, fields, id=entry_id)
    else:
        raise ValueError(f"unknown key type {kind!r}")
    if entry.get("ttl_ms"):
        await client.pexpire(key, int(entry["ttl_ms"]))
