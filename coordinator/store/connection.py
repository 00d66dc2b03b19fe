"""The store: one connection to Redis (or the embedded backend) that every manager shares.

:func:`connect` understands::

    redis://[user:password@]host:port/db     rediss://...  (TLS)
    unix:///path/to/redis.sock
    redis+sentinel://host:port[,host:port]/service_name[/db]
    redis+cluster://host:port[,host:port]    (redis-py's cluster client)
    memory://                                 embedded: fakeredis running the same Lua scripts
    memory:///path/state.json                 embedded, kept across restarts (file mode 0600)

Every redis exception is translated here into :class:`StoreUnavailableError` with the cause
kept; nothing above this module sees a raw redis error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from ..errors import ConfigError, StoreUnavailableError
from . import functions as scripts
from ._packing import with_hiredis_packing
from .keys import validate_name
from .secrets import SecretBox

__all__ = ["Backend", "Store", "connect"]

Backend = Literal["redis", "sentinel", "cluster", "memory"]
ENV_URL = "COORDINATOR_REDIS_URL"
ENV_SECRET_KEY = "COORDINATOR_SECRET_KEY"

# The start of Redis's answer to an FCALL of a function it does not have (redis-py drops "ERR").
_NO_FUNCTION = "Function not found"

_UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterError,
    rexc.ResponseError,
    rexc.DataError,
    rexc.RedisError,
    OSError,
)


def _old_server(exc: rexc.ResponseError, url: str, command: str) -> StoreUnavailableError | None:
    """For an error answered to a FUNCTION command by a server that does not know the command
    (Redis before 7.0), an error that says what is needed; else None."""
    if "unknown command" not in str(exc).lower():
        return None
    return StoreUnavailableError(
        f"{url} does not know {command}: coordinator runs its operations as Redis functions, "
        "which need Redis 7.0 or newer"
    )


def _library_names(listing: Any) -> set[str]:
    """Library names in a FUNCTION LIST answer: a list of libraries (each a flat list of
    fields and values, or a dict), or a cluster client's dict of such lists per node."""
    if isinstance(listing, dict):
        nodes: list[Any] = list(listing.values())
    else:
        nodes = [listing]
    names: set[str] = set()
    for libraries in nodes:
        for library in libraries or []:
            if isinstance(library, dict):
                fields = library
            else:
                fields = dict(zip(library[::2], library[1::2], strict=False))
            name = fields.get(b"library_name", fields.get("library_name"))
            if name is not None:
                names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


@dataclass(frozen=True, slots=True)
class _Target:
    backend: Backend
    url: str
    path: str | None = None


def _parse_url(url: str) -> _Target:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        try:
            _ = urlsplit(url).port  # a port that is no number raises here, not in redis-py
        except ValueError as exc:
            raise ConfigError("url", f"invalid port: {exc}") from None
        return _Target("redis", url)
    if scheme == "redis+cluster":
        return _Target("cluster", url)
    if scheme == "redis+sentinel":
        return _Target("sentinel", url)
    if scheme == "memory":
        path = unquote(urlsplit(url).path) or None
        return _Target("memory", url, path)
    raise ConfigError(
        "url",
        f"unsupported scheme {scheme or '(none)'!r}; use redis://, rediss://, unix://, "
        "redis+sentinel://, redis+cluster:// or memory://",
    )


def _hosts(netloc: str) -> list[tuple[str, int]]:
    auth, _, hosts = netloc.rpartition("@")
    del auth
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        try:
            out.append((host.strip("[]"), int(port)))
        except ValueError:
            raise ConfigError("url", f"invalid host:port {part!r}") from None
    if not out:
        raise ConfigError("url", "no host given")
    return out


def _credentials(netloc: str) -> tuple[str | None, str | None]:
    if "@" not in netloc:
        return None, None
    auth = netloc.rpartition("@")[0]
    user, sep, password = auth.partition(":")
    if not sep:
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``****`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return parts._replace(netloc=netloc).geturl()
    return url


class Store:
    """A connection to Redis plus the Lua scripts; shared by every manager of a process.

    Use :func:`connect` to make one. ``time_offset_ms`` is added to Redis ``TIME`` inside
    every script: it is zero in production and lets tests move time forward without sleeping.
    """

    def __init__(
        self,
        client: Any,
        *,
        backend: Backend,
        url: str,
        namespace: str,
        box: SecretBox | None,
        persist_path: str | None = None,
    ) -> None:
        self._client = client
        self.backend: Backend = backend
        self.url = redact_url(url)
        self.namespace = namespace
        self.box = box
        self.time_offset_ms = 0
        # name -> (function name, library source; a function's library has the same name).
        # The runner is ours rather than redis-py's: it is the hot path of every operation,
        # and calling FCALL directly saves ~10 µs.
        self._functions: dict[str, tuple[str, str]] = {
            name: (scripts.function_name(name), scripts.library_source(name))
            for name in scripts.script_names()
        }
        self._persist_path = persist_path
        self._persist_task: asyncio.Task[None] | None = None
        self._persist_interval_s = 0.2
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"Store(backend={self.backend!r}, url={self.url!r}, namespace={self.namespace!r}, "
            f"encryption={'on' if self.box else 'off'})"
        )

    @property
    def client(self) -> Any:
        """The underlying redis-py client (for plain commands; wrap calls in :meth:`guard`)."""
        return self._client

    @property
    def persistent(self) -> bool:
        """Whether values written here outlive this process (any backend but plain memory://)."""
        return self.backend != "memory" or self._persist_path is not None

    @contextlib.asynccontextmanager
    async def guard(self, what: str) -> AsyncIterator[None]:
        """Translate redis errors raised inside the block into :class:`StoreUnavailableError`."""
        try:
            yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"{what} failed on {self.url}: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    def function_name(self, name: str) -> str:
        """The name under which operation ``name`` is loaded on the server (its library's and
        its function's)."""
        return self._functions[name][0]

    async def run(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        """Run one Lua operation in one round trip: FCALL, and when the server does not have
        the function (a flushed or restarted server, a new cluster node) FUNCTION LOAD and
        FCALL again. Keys may be pre-encoded bytes."""
        function, source = self._functions[name]
        client = self._client
        # Inline rather than `guard()`: this is the hot path of every operation.
        try:
            try:
                result = await client.execute_command(
                    "FCALL", function, len(keys), *keys, self.time_offset_ms, *args
                )
            except rexc.ResponseError as exc:
                if not str(exc).startswith(_NO_FUNCTION):
                    raise
                await client.function_load(source, replace=True)
                result = await client.execute_command(
                    "FCALL", function, len(keys), *keys, self.time_offset_ms, *args
                )
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"script {name} failed on {self.url}: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc
        if self._persist_path is not None:
            self._schedule_persist()
        return result

    async def command(self, *args: Any) -> Any:
        """Run one plain Redis command, with errors translated."""
        async with self.guard(f"command {args[0]}"):
            result = await self._client.execute_command(*args)
        self._schedule_persist()
        return result

    async def time_ms(self) -> int:
        """Redis ``TIME`` in milliseconds, plus the test offset."""
        async with self.guard("TIME"):
            seconds, micros = await self._client.time()
        return int(seconds) * 1000 + int(micros) // 1000 + self.time_offset_ms

    async def ping(self) -> None:
        """Check that the store answers; raises :class:`StoreUnavailableError` if not."""
        async with self.guard("PING"):
            await self._client.ping()

    async def load_functions(self) -> None:
        """``FUNCTION LOAD`` every operation the server does not have yet (on every primary of
        a cluster), so that a Lua error shows at connect time and the first call of each
        operation is one round trip (a function missing later is still loaded then). One
        ``FUNCTION LIST`` tells which are there: a replica that connects to a server where
        this version runs already loads nothing, and leaves what the libraries keep between
        calls as it is. ``REPLACE``: a library's name holds the digest of its code, so
        replacing one can only put the same code back, and two replicas starting together
        do not fail on each other's load."""
        loaded, _ = await self.function_libraries()
        present = set(loaded)
        async with self.guard("FUNCTION LOAD"):
            for function, source in self._functions.values():
                if function in present:
                    continue
                try:
                    await self._client.function_load(source, replace=True)
                except rexc.ResponseError as exc:
                    old = _old_server(exc, self.url, "FUNCTION LOAD")
                    if old is None:
                        raise
                    raise old from exc

    async def function_libraries(self) -> tuple[list[str], list[str]]:
        """The ``coordinator_*`` function libraries on the server (on every primary of a
        cluster): this version's that are loaded, and those of other versions (a rolling
        deploy, or versions that no replica runs any more), each list sorted."""
        async with self.guard("FUNCTION LIST"):
            try:
                listing = await self._client.function_list(library=f"{scripts.LIBRARY_PREFIX}*")
            except rexc.ResponseError as exc:
                old = _old_server(exc, self.url, "FUNCTION LIST")
                if old is None:
                    raise
                raise old from exc
        ours = {function for function, _ in self._functions.values()}
        found = _library_names(listing)
        return sorted(found & ours), sorted(found - ours)

    async def prune_functions(self) -> list[str]:
        """``FUNCTION DELETE`` the ``coordinator_*`` libraries of other versions and return
        their names. Only once no replica runs those versions: one that still does loads its
        functions again on its next call, at the cost of a round trip."""
        _, others = await self.function_libraries()
        await self._delete_libraries(others)
        return others

    async def unload_functions(self) -> None:
        """``FUNCTION DELETE`` this version's libraries (tests use it to prove that a missing
        function is loaded again); other libraries on the server are left alone."""
        await self._delete_libraries([function for function, _ in self._functions.values()])

    async def _delete_libraries(self, names: Sequence[str]) -> None:
        async with self.guard("FUNCTION DELETE"):
            for name in names:
                try:
                    await self._client.function_delete(name)
                except rexc.ResponseError as exc:
                    if "not found" not in str(exc).lower():  # gone already: as asked
                        raise

    def _schedule_persist(self) -> None:
        if self._persist_path is None or self._closed:
            return
        if self._persist_task is None or self._persist_task.done():
            self._persist_task = asyncio.get_running_loop().create_task(self._persist_later())

    async def _persist_later(self) -> None:
        await asyncio.sleep(self._persist_interval_s)
        await self.persist()

    async def persist(self) -> None:
        """Write the embedded state to its file now (no-op for other backends)."""
        if self._persist_path is None:
            return
        from .snapshot import dump_to_file

        await dump_to_file(self._client, self._persist_path)

    async def close(self) -> None:
        """Flush embedded state (if persisted) and close the connection."""
        if self._closed:
            return
        self._closed = True
        if self._persist_task is not None and not self._persist_task.done():
            self._persist_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._persist_task
        if self._persist_path is not None:
            await self.persist()
        with contextlib.suppress(Exception):
            await self._client.aclose()
        for sentinel in getattr(self._client, "_coordinator_sentinels", ()):
            with contextlib.suppress(Exception):
                await sentinel.aclose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _make_client(target: _Target) -> Any:
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
    }
    if target.backend == "redis":
        # A blocking pool: under a burst, callers wait (up to 10 s) for a free connection
        # instead of failing with "too many connections". ?max_connections=N in the URL.
        pool = aioredis.BlockingConnectionPool.from_url(target.url, timeout=10, **options)
        return _packing_with_hiredis(aioredis.Redis.from_pool(pool))  # owns (closes) the pool
    parts = urlsplit(target.url)
    user, password = _credentials(parts.netloc)
    if target.backend == "cluster":
        nodes = [ClusterNode(h, p) for h, p in _hosts(parts.netloc)]
        return RedisCluster(
            startup_nodes=nodes,
            username=user,
            password=password,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
        )
    if target.backend == "sentinel":
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            raise ConfigError("url", "redis+sentinel:// needs a service name: .../mymaster[/db]")
        service = segments[0]
        db = int(segments[1]) if len(segments) > 1 else 0
        query = parse_qs(parts.query)
        sentinel_password = query.get("sentinel_password", [None])[0]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            _hosts(parts.netloc),
            sentinel_kwargs={"password": sentinel_password} if sentinel_password else None,
            socket_timeout=5.0,
        )
        client = sentinel.master_for(
            service, db=db, username=user, password=password, decode_responses=True
        )
        # The Sentinel's own connections close with the store (see Store.close).
        client._coordinator_sentinels = list(sentinel.sentinels)
        return _packing_with_hiredis(client)
    raise AssertionError(target.backend)


def _packing_with_hiredis(client: Any) -> Any:
    """``client`` (standalone or Sentinel: one connection pool) with its commands packed by
    hiredis; set before the first connection is made (TCP, TLS and Unix sockets alike). The
    cluster client fixes its connection class inside and keeps redis-py's packer."""
    pool = client.connection_pool
    pool.connection_class = with_hiredis_packing(pool.connection_class)
    return client


async def connect(
    url: str | None = None,
    *,
    namespace: str = "coord",
    secret_key: str | None = None,
) -> Store:
    """Connect to the store every manager uses.

    ``url`` defaults to ``$COORDINATOR_REDIS_URL``, else ``memory://``. ``secret_key`` (default
    ``$COORDINATOR_SECRET_KEY``) encrypts secrets at rest: ``key[,older_key...]``, each 32 bytes
    as url-safe base64 or hex. Without a key, the plain embedded backend uses a random
    per-process key; every other backend refuses to store secrets (profiles may still name an
    environment variable instead).
    """
    url = url or os.environ.get(ENV_URL) or "memory://"
    validate_name(namespace, "namespace")
    target = _parse_url(url)
    key_text = secret_key if secret_key is not None else os.environ.get(ENV_SECRET_KEY)
    box = SecretBox.from_text(key_text) if key_text else None
    if target.backend == "memory":
        from .snapshot import load_from_file, new_memory_client

        client = new_memory_client()
        if target.path:
            await load_from_file(client, target.path)
        elif box is None:
            box = SecretBox.ephemeral()
    else:
        client = _make_client(target)
    store = Store(
        client,
        backend=target.backend,
        url=url,
        namespace=namespace,
        box=box,
        persist_path=target.path,
    )
    try:
        await store.ping()
        await store.load_functions()
    except StoreUnavailableError:
        await store.close()
        raise
    return store
