"""The store: one connection to Redis (or the embedded backend) that every manager shares.

:func:`connect` understands::

    redis://[user:password@]host:port/db     rediss://...  (TLS)
    unix:///path/to/redis.sock
    redis+sentinel://host:port[,host:port]/service_name[/db]
    redis+cluster://host:port[,host:port]    (redis-py's cluster client)
    memory://                                 embedded: fakeredis running the same Lua scripts
    memory:///path/state.json                 embedded, kept across restarts (file mode 0600)

Any of them but ``memory://`` takes ``?socket_timeout=``, ``?socket_connect_timeout=`` and
``?pool_timeout=`` (seconds, see :class:`Timeouts`): together they bound how long a call may
wait on an unhealthy Redis.

Connections heal without ever running an operation twice: a pooled connection that the server
closed while it was idle (a restart, an idle ``timeout``, ``CLIENT KILL``) is found at EOF when
it is taken from the pool (of a standalone or Sentinel client, or of a cluster node), before
anything is written, and replaced. Nothing is retried once written: a call that fails after
sending raises :class:`StoreUnavailableError`, since the server may have run it.

Every redis exception is translated here into :class:`StoreUnavailableError` with the cause
kept; nothing above this module sees a raw redis error. No password or token of the URL
appears in an error, :attr:`Store.url` or ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from ..errors import ConfigError, StoreUnavailableError
from . import functions as scripts
from .keys import validate_name
from .secrets import SecretBox
from .snapshot import SnapshotFile, dump_to_file, load_from_file, new_memory_client

__all__ = ["Backend", "Store", "Timeouts", "connect", "redact_url"]

log = logging.getLogger(__name__)

Backend = Literal["redis", "sentinel", "cluster", "memory"]
ENV_URL = "COORDINATOR_REDIS_URL"
ENV_SECRET_KEY = "COORDINATOR_SECRET_KEY"

# The start of Redis's answer to an FCALL of a function it does not have (redis-py drops "ERR").
_NO_FUNCTION = "Function not found"

# redis-py's cluster errors (RedisClusterException) are no RedisError: list them apart.
_UNAVAILABLE = (rexc.RedisError, rexc.RedisClusterException, OSError)

# Query parameters whose value is a credential: masked wherever a URL is shown.
_SECRET_PARAMETERS = ("password", "passwd", "token", "secret")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a call may wait on an unhealthy Redis, in seconds (``?name=`` in the URL).

    On a server that stops answering, a call fails with :class:`StoreUnavailableError` after
    at most :attr:`bound_s`: the wait for a free pooled connection, then opening a connection
    if one is needed, then one wait for an answer. A server that is down (connection refused)
    fails a call at once. Nothing is retried, so nothing adds to the bound.
    """

    #: Waiting for an answer (or for a write to go out) on an open connection. Above the
    #: event reader's blocking read of 1 s.
    socket_timeout: float = 2.0
    #: Opening a connection (TCP and TLS handshake).
    socket_connect_timeout: float = 2.0
    #: Waiting for a free connection when all ``max_connections`` of the pool are busy
    #: (standalone and unix:// only: the Sentinel and Cluster clients fail at once instead).
    pool_timeout: float = 5.0

    @property
    def bound_s(self) -> float:
        """The longest a call waits before it fails: the sum of the three."""
        return self.pool_timeout + self.socket_connect_timeout + self.socket_timeout


@dataclass(frozen=True, slots=True)
class _Target:
    backend: Backend
    url: str  # as given: passed to redis-py, never shown
    path: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    params: tuple[tuple[str, str], ...] = ()  # the query without our timeouts


def _is_secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_PARAMETERS)


def redact_url(url: str) -> str:
    """The URL with every credential replaced by ``****``: the password of the userinfo (or
    the whole userinfo when it has no ``:``, which cluster and Sentinel URLs read as a
    password) and the value of any query parameter named like a password or token."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:****@{hosts}" if sep else f"****@{hosts}"
    if query:
        masked = []
        for item in query.split("&"):
            name, sep, _ = item.partition("=")
            masked.append(f"{name}=****" if sep and _is_secret_parameter(unquote(name)) else item)
        query = "&".join(masked)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def _url_secrets(url: str) -> list[str]:
    """The credentials written in ``url`` (decoded), to scrub from any text shown."""
    parts = urlsplit(url)
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, sep, password = userinfo.partition(":")
        found.append(unquote(password if sep else user))
    found += [v for k, v in parse_qsl(parts.query) if _is_secret_parameter(k)]
    # Texts are scrubbed of these by replacement: a value of a letter or two would garble them.
    return [secret for secret in found if len(secret) >= 4]


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError("url", f"{name} must be a positive number of seconds, not {text!r}")
    return value


def _split_query(query: str) -> tuple[Timeouts, tuple[tuple[str, str], ...]]:
    """The timeouts named in a URL query and the other parameters, in order."""
    names = {f.name for f in fields(Timeouts)}
    given: dict[str, float] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in names:
            given[name] = _seconds(name, value)
        elif name == "timeout":  # redis-py's name for the pool wait: ambiguous here
            raise ConfigError(
                "url", "?timeout= is ambiguous: use pool_timeout, socket_timeout or "
                "socket_connect_timeout"
            )  # fmt: skip
        else:
            rest.append((name, value))
    return Timeouts(**given), tuple(rest)


def _parse_url(url: str) -> _Target:
    """The backend a URL names and its options; :class:`ConfigError` for anything that
    cannot be meant (checked before any connection is tried)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    parts = urlsplit(url)
    if scheme == "memory":
        return _memory_target(url)
    if scheme not in ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel"):
        raise ConfigError(
            "url",
            f"unsupported scheme {scheme or '(none)'!r}; use redis://, rediss://, unix://, "
            "redis+sentinel://, redis+cluster:// or memory://",
        )
    timeouts, params = _split_query(parts.query)
    if scheme in ("redis", "rediss", "unix"):
        _check_standalone(scheme, parts)
        return _Target("redis", url, timeouts=timeouts, params=params)
    backend: Backend = "cluster" if scheme == "redis+cluster" else "sentinel"
    allowed = {"password", "username", "max_connections"}
    if backend == "sentinel":
        allowed.add("sentinel_password")
    unknown = sorted({name for name, _ in params} - allowed)
    if unknown:
        raise ConfigError("url", f"unknown parameter(s) for {scheme}://: {', '.join(unknown)}")
    limit = dict(params).get("max_connections", "100")
    if not (limit.isdigit() and int(limit) > 0):
        raise ConfigError("url", f"max_connections must be a positive whole number: {limit!r}")
    return _Target(backend, url, timeouts=timeouts, params=params)


def _check_standalone(scheme: str, parts: SplitResult) -> None:
    """What redis-py would accept silently or fail on late: no host, a port or db that is no
    number."""
    if scheme == "unix":
        if not parts.path:
            raise ConfigError("url", "unix:// needs the socket's path: unix:///path/redis.sock")
        return
    try:
        _ = parts.port  # a port that is no number raises here, not in redis-py
    except ValueError as exc:
        raise ConfigError("url", f"invalid port: {exc}") from None
    if not parts.hostname:
        raise ConfigError("url", f"{scheme}:// needs a host: {scheme}://host:port/db")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError("url", f"the database must be a number: /{db}")


def _memory_target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.netloc:
        # memory://relative/x.json reads as host "relative" and path /x.json: refuse it
        # rather than write somewhere the user did not mean.
        raise ConfigError(
            "url",
            f"memory:// takes no host ({parts.netloc!r}); for a state file give an absolute "
            "path after three slashes: memory:///var/lib/app/state.json",
        )
    if parts.query or parts.fragment:
        raise ConfigError("url", "memory:// takes no parameters")
    path = unquote(parts.path) or None
    return _Target("memory", url, path=path)


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rpartition("@")[2]
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        host = host.strip("[]")
        if not host:
            raise ConfigError("url", "no host given: host:port[,host:port]")
        try:
            out.append((host, int(port)))
        except ValueError:
            raise ConfigError("url", f"invalid host:port {part!r}") from None
    return out


def _credentials(target: _Target) -> tuple[str | None, str | None]:
    """User and password from the userinfo (``user:password@`` or ``password@``), else from
    ``?username=`` / ``?password=``."""
    netloc = urlsplit(target.url).netloc
    params = dict(target.params)
    user, password = params.get("username"), params.get("password")
    if "@" in netloc:
        auth = netloc.rpartition("@")[0]
        name, sep, secret = auth.partition(":")
        if sep:
            user, password = unquote(name) or user, unquote(secret) or password
        else:
            password = unquote(name) or password
    return user or None, password or None


class Store:
    """A connection to Redis plus the Lua scripts; shared by every manager of a process.

    Use :func:`connect` to make one. ``time_offset_ms`` is added to Redis ``TIME`` inside
    every script: it is zero in production and lets tests move time forward without sleeping;
    ``held_time_ms``, when set (tests only), is the time every script sees instead, so that a
    test can check a boundary to the millisecond (see :mod:`coordinator.testing`).
    ``timeouts`` bound how long a call may wait on an unhealthy Redis.
    """

    def __init__(
        self,
        client: Any,
        *,
        backend: Backend,
        url: str,
        namespace: str,
        box: SecretBox | None,
        timeouts: Timeouts | None = None,
        snapshot: SnapshotFile | None = None,
    ) -> None:
        self._client = client
        self.backend: Backend = backend
        self.url = redact_url(url)
        self._secrets = _url_secrets(url)
        self.namespace = namespace
        self.box = box
        self.timeouts = timeouts or Timeouts()
        self.time_offset_ms = 0
        self.held_time_ms: int | None = None
        # name -> (function name, library source; a function's library has the same name).
        self._functions: dict[str, tuple[str, str]] = {
            name: (scripts.function_name(name), scripts.library_source(name))
            for name in scripts.script_names()
        }
        self._snapshot = snapshot
        self._persist_task: asyncio.Task[None] | None = None
        self._persist_interval_s = 0.2
        self._closed = False
        # Told of every round trip (operation, its arguments, seconds), e.g. by
        # coordinator.metrics.AppMetrics; empty, so free, unless metrics are attached.
        self.observers: list[Callable[[str, Sequence[Any], float], None]] = []

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
        return self.backend != "memory" or self._snapshot is not None

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        text = f"{what} failed on {self.url}: {type(exc).__name__}: {str(exc)[:200]}"
        for secret in self._secrets:  # redis-py's texts carry none; make sure of it
            text = text.replace(secret, "****")
        return StoreUnavailableError(text)

    @contextlib.asynccontextmanager
    async def guard(self, what: str) -> AsyncIterator[None]:
        """Translate redis errors raised inside the block into :class:`StoreUnavailableError`."""
        started = time.perf_counter()
        try:
            yield
        except _UNAVAILABLE as exc:
            raise self._unavailable(what, exc) from exc
        finally:
            if self.observers:
                self._observe(what, (), started)

    def _observe(self, operation: str, args: Sequence[Any], started: float) -> None:
        seconds = time.perf_counter() - started
        for observer in self.observers:
            observer(operation, args, seconds)

    def function_name(self, name: str) -> str:
        """The name under which operation ``name`` is loaded on the server (its library's and
        its function's)."""
        return self._functions[name][0]

    async def run(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Any:
        """Run one Lua operation in one round trip: FCALL, and when the server does not have
        the function (a flushed or restarted server, a new cluster node) FUNCTION LOAD and
        FCALL again (the first FCALL ran nothing). Keys may be pre-encoded bytes."""
        function, source = self._functions[name]
        command = ("FCALL", function, len(keys), *keys, self._clock_arg(), *args)
        started = time.perf_counter()
        try:
            try:
                result = await self._fcall(command, keys)
            except rexc.ResponseError as exc:
                if not str(exc).startswith(_NO_FUNCTION):
                    raise
                await self._client.function_load(source, replace=True)
                result = await self._fcall(command, keys)
        except _UNAVAILABLE as exc:
            raise self._unavailable(f"script {name}", exc) from exc
        finally:
            if self.observers:
                self._observe(name, args, started)
        self._schedule_persist()
        return result

    async def _fcall(self, command: tuple[Any, ...], keys: Sequence[str | bytes]) -> Any:
        if self.backend in ("redis", "sentinel"):
            return await self._send_packed(command)
        if self.backend != "cluster" or not keys:
            return await self._client.execute_command(*command)
        # Every key of an operation shares one hash tag, so the first key names the node. Left
        # to itself, the cluster client would ask a server for FCALL's keys (COMMAND GETKEYS,
        # twice) before each call. initialize() refreshes the slot map once redis-py marked it
        # stale (a node that could not be reached: a failover), and does nothing otherwise;
        # MOVED and ASK are followed inside execute_command.
        await self._client.initialize()
        node = self._client.get_node_from_key(keys[0])
        return await self._client.execute_command(*command, target_nodes=node)

    async def _send_packed(self, command: tuple[Any, ...]) -> Any:
        """Run one command on a connection of the client's pool, packed by hiredis (the C
        extension redis-py reads replies with). It is what the client's ``execute_command``
        does when nothing is retried: take a connection (checked as the pool checks it), send,
        read the reply (an error reply raises), give the connection back (redis-py closes one
        that failed first). The asyncio client would pack every argument in Python: the
        benchmark's fleet makes 13-18 % fewer decisions per second that way (see
        docs/performance.md). Arguments are str, bytes or int."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(hiredis.pack_command(command))
            return await connection.read_response()
        finally:
            await pool.release(connection)

    async def command(self, *args: Any) -> Any:
        """Run one plain Redis command, with errors translated."""
        async with self.guard(f"command {args[0]}"):
            result = await self._client.execute_command(*args)
        self._schedule_persist()
        return result

    def _clock_arg(self) -> int | str:
        """ARGV[1] of every operation: the time held still (``=<ms>``), else the offset."""
        if self.held_time_ms is not None:
            return f"={self.held_time_ms}"
        return self.time_offset_ms

    async def time_ms(self) -> int:
        """Redis ``TIME`` in milliseconds, plus the test offset (or the time held still)."""
        if self.held_time_ms is not None:
            return self.held_time_ms
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
        this version runs already loads nothing. ``REPLACE``: a library's name holds the
        digest of its code, so replacing one can only put the same code back, and two
        replicas starting together do not fail on each other's load."""
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
        if self._snapshot is None or self._closed:
            return
        if self._persist_task is None or self._persist_task.done():
            self._persist_task = asyncio.get_running_loop().create_task(self._persist_later())

    async def _persist_later(self) -> None:
        await asyncio.sleep(self._persist_interval_s)
        try:
            await self.persist()
        except StoreUnavailableError as exc:
            # No caller to raise to: say it now; the next write tries again, close() raises.
            log.warning("%s", exc)

    async def persist(self) -> None:
        """Write the embedded state to its file now (no-op for other backends); raises
        :class:`StoreUnavailableError` when the file cannot be written."""
        if self._snapshot is None:
            return
        try:
            await dump_to_file(self._client, self._snapshot.path)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot write the embedded state to {self._snapshot.path}: {exc.strerror}"
            ) from exc

    async def close(self) -> None:
        """Flush embedded state (if persisted) and close the connection. Raises
        :class:`StoreUnavailableError` (after closing) if the state could not be written."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._persist_task is not None and not self._persist_task.done():
                self._persist_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._persist_task
            await self.persist()
        finally:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            for sentinel in getattr(self._client, "_coordinator_sentinels", ()):
                with contextlib.suppress(Exception):
                    await sentinel.aclose()
            if self._snapshot is not None:
                self._snapshot.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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


def _client_options(timeouts: Timeouts) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": timeouts.socket_timeout,
        "socket_connect_timeout": timeouts.socket_connect_timeout,
        # Never send a command again once it was written: the server may have run it. (A
        # connection found dead before writing is replaced by the pool; see the module doc.)
        "retry": Retry(NoBackoff(), 0),
    }


def _no_maintenance_notifications() -> MaintNotificationsConfig:
    # redis-py skips its check for a connection closed while idle, when the pool hands one
    # out, if maintenance notifications are on (they arrive on idle connections as RESP3
    # pushes). They are a Redis Enterprise feature we do not use; that check is what
    # replaces a dead connection before anything is written on it.
    return MaintNotificationsConfig(enabled=False)


def _standalone_client(target: _Target) -> Any:
    # A blocking pool: under a burst, callers wait (up to pool_timeout) for a free
    # connection instead of failing with "too many connections". ?max_connections=N.
    url = urlsplit(target.url)._replace(query=urlencode(target.params)).geturl()
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            # (?max_connections= in the URL wins over this default)
            max_connections=_DEFAULT_MAX_CONNECTIONS,
            timeout=target.timeouts.pool_timeout,
            maint_notifications_config=_no_maintenance_notifications(),
            **_client_options(target.timeouts),
        )
        # redis-py reads unknown parameters as connection options: a name it does not know
        # fails when a connection is made. Make one (unconnected) now to say so at once.
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError("url", f"invalid parameter: {exc}") from None
    return aioredis.Redis.from_pool(pool)  # owns (closes) the pool


#: Connections per pool (per node on a Cluster) unless ``?max_connections=`` says otherwise.
#: redis-py's blocking pool does not hand a freed connection to the longest waiter, so a
#: process with more concurrent calls than connections can starve some of them: size it for
#: the concurrency of one process.
_DEFAULT_MAX_CONNECTIONS = 100


def _max_connections(target: _Target) -> int:
    """``?max_connections=`` of a Sentinel or Cluster URL (per node), else redis-py's 100.
    These clients do not queue for a free connection: beyond it a call fails at once."""
    return int(dict(target.params).get("max_connections", str(_DEFAULT_MAX_CONNECTIONS)))


def _cluster_client(target: _Target) -> Any:
    user, password = _credentials(target)
    nodes = [ClusterNode(h, p) for h, p in _hosts(urlsplit(target.url).netloc)]
    client = RedisCluster(
        startup_nodes=nodes,
        username=user,
        password=password,
        max_connections=_max_connections(target),
        **_client_options(target.timeouts),
    )
    # redis-py makes every node's connections from this one dict (the startup nodes, made
    # already, are set apart); its constructor takes no connection class.
    client.connection_kwargs["connection_class"] = _ClusterConnection
    for node in client.startup_nodes:
        node.connection_class = _ClusterConnection
    return client


class _ClusterConnection(Connection):
    """A cluster node's connection, checked before each use as the standalone pool checks its
    own: redis-py's cluster nodes hand out an idle connection unchecked, and disconnect it
    first only when it says it should reconnect. One the server closed while it sat idle (a
    restart, the idle ``timeout``, ``CLIENT KILL``) says so here: it is then closed and opened
    again before anything is written on it, so the call is sent once, on a live connection."""

    def should_reconnect(self) -> bool:
        """Whether the connection must be opened again before its next command: marked so by
        redis-py, or closed by the server (its reader is at EOF: nothing can be pending)."""
        marked = bool(super().should_reconnect())  # type: ignore[no-untyped-call]
        reader = self._reader
        return marked or (reader is not None and reader.at_eof())


def _sentinel_client(target: _Target) -> Any:
    parts = urlsplit(target.url)
    segments = [s for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ConfigError("url", "redis+sentinel:// needs a service name: .../mymaster[/db]")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ConfigError("url", f"the database must be a number: /{segments[1]}")
    db = int(segments[1]) if len(segments) == 2 else 0
    user, password = _credentials(target)
    options = _client_options(target.timeouts)
    sentinel_kwargs = {k: v for k, v in options.items() if k != "decode_responses"}
    sentinel_password = dict(target.params).get("sentinel_password")
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(_hosts(parts.netloc), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(
        segments[0],
        db=db,
        username=user,
        password=password,
        maint_notifications_config=_no_maintenance_notifications(),
        max_connections=_max_connections(target),
        **options,
    )
    # The Sentinel's own connections close with the store (see Store.close).
    client._coordinator_sentinels = list(sentinel.sentinels)
    return client


_CLIENTS = {"redis": _standalone_client, "cluster": _cluster_client, "sentinel": _sentinel_client}


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
        return await _connect_memory(target, namespace, box)
    store = Store(
        _CLIENTS[target.backend](target),
        backend=target.backend,
        url=url,
        namespace=namespace,
        box=box,
        timeouts=target.timeouts,
    )
    try:
        await store.ping()
        await store.load_functions()
    except StoreUnavailableError:
        await store.close()
        raise
    return store


async def _connect_memory(target: _Target, namespace: str, box: SecretBox | None) -> Store:
    """The embedded backend; with a path, its file is locked for this store and read."""
    client = new_memory_client()
    snapshot = None
    if target.path:
        snapshot = SnapshotFile.open(target.path)  # ConfigError: unwritable, or in use
        try:
            await load_from_file(client, snapshot.path)
        except BaseException:
            snapshot.close()
            raise
    elif box is None:
        box = SecretBox.ephemeral()
    store = Store(
        client, backend="memory", url=target.url, namespace=namespace, box=box, snapshot=snapshot
    )
    await store.load_functions()
    return store
