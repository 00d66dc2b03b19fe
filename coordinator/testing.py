"""Helpers for tests (ours and yours): throw-away ``redis-server`` processes and a test clock.

:class:`RedisServer` and :class:`RedisCluster` start real servers on free loopback ports in a
temporary folder and stop them afterwards; they never touch a Redis you already run. A missing
``redis-server`` binary is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from .store.connection import Store

__all__ = [
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "advance_time",
    "free_port",
    "hold_time",
    "release_time",
]


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    With ``cluster_bus``, ``port + 10000`` (Redis Cluster's bus port) is free and valid too.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not cluster_bus:
            return port
        if port + 10000 > 65535:
            port -= 20000
        if port > 1024 and _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def advance_time(store: Store, ms: int) -> None:
    """Move the store's clock forward by ``ms``: the time held still (:func:`hold_time`), else
    the offset added to Redis ``TIME`` in every script."""
    if store.held_time_ms is not None:
        store.held_time_ms += ms
    else:
        store.time_offset_ms += ms


async def hold_time(store: Store, at_ms: int | None = None) -> int:
    """Hold the store's clock still at ``at_ms`` (default: its time now) and return that time.
    Every script then sees exactly this time until :func:`advance_time` moves it or
    :func:`release_time` lets it run again, so a test can check a deadline to the millisecond."""
    store.held_time_ms = await store.time_ms() if at_ms is None else int(at_ms)
    return store.held_time_ms


async def release_time(store: Store) -> None:
    """Let the store's clock run again. It goes on from the time it was held at, never back
    (the offset takes up the difference), so no deadline passed while held comes back."""
    held = store.held_time_ms
    if held is None:
        return
    store.held_time_ms = None
    running = await store.time_ms()
    if held > running:
        store.time_offset_ms += held - running


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed; `make test` installs the Debian package redis-server"
        )
    return path


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Process:
    """Context-manager protocol shared by the launchers: ``with X() as x`` starts and stops."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """One ``redis-server`` on a free loopback port, without persistence unless ``aof`` (an
    append-only file fsynced before each reply, so that what was acknowledged survives a
    kill -9). ``wrapper`` is a command to run it under (``valgrind --tool=callgrind ...``):
    the server's pid is then that command's, and starting may take up to a minute.

    For fault tests: :meth:`shutdown` (graceful), :meth:`kill` (SIGKILL), :meth:`pause` and
    :meth:`resume` (SIGSTOP, SIGCONT); :meth:`start` again brings the server back on the same
    port with the same folder (and so the same append-only file)."""

    def __init__(
        self,
        *extra: str,
        port: int | None = None,
        wrapper: Sequence[str] = (),
        aof: bool = False,
    ) -> None:
        self.port = port or free_port(cluster_bus="--cluster-enabled" in extra)
        persistence = ("--appendonly", "yes", "--appendfsync", "always") if aof else ()
        self._extra = (*persistence, *extra)
        self._wrapper = tuple(wrapper)
        self._dir = tempfile.mkdtemp(prefix="coordinator-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The process id of the running server (or of its wrapper), else ``None``."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (10 s at most, 60 s wrapped)."""
        os.makedirs(self._dir, exist_ok=True)
        args = [
            *self._wrapper,
            _binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
            "--appendonly", "no",  # (``aof`` puts "yes" later: the last one counts)
            "--dir", self._dir,
            "--logfile", os.path.join(self._dir, "redis.log"),
            *self._extra,
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + (60 if self._wrapper else 10)
        while not _ping(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = os.path.join(self._dir, "redis.log")
                tail = ""
                if os.path.exists(log):
                    with open(log) as handle:
                        tail = handle.read()[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)
        return self

    def shutdown(self) -> None:
        """Stop the server gracefully (``SHUTDOWN``: clients are disconnected, the
        append-only file flushed); keep its folder for :meth:`start`."""
        assert self._proc is not None, "not started"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"SHUTDOWN\r\n")
            with contextlib.suppress(OSError):
                sock.recv(64)  # the server closes the connection, answering nothing
        self._proc.wait(timeout=10)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (no chance to flush anything); keep its folder for :meth:`start`."""
        assert self._proc is not None, "not started"
        self._proc.kill()
        self._proc.wait(timeout=10)
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered (a stall)."""
        assert self._proc is not None, "not started"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a server stopped by :meth:`pause`."""
        assert self._proc is not None, "not started"
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its folder."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused server could not act on SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


class RedisCluster(_Process):
    """A Redis Cluster of ``masters`` primaries, each with ``replicas`` replicas, on free
    loopback ports. ``node_timeout_ms`` is how long a node may be unreachable before it is
    failed over (when it has a replica)."""

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000) -> None:
        self._replicas = replicas
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
            )
            for _ in range(masters * (1 + replicas))
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        """Start the nodes, join them with ``redis-cli --cluster create`` and wait for ``ok``
        (and for every replica to be in sync with its primary)."""
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    _binary("redis-cli"), "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", str(self._replicas), "--cluster-yes",
                ],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self._wait(lambda: all(self._ready(n.port) for n in self.nodes), "cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster: no {what} after {timeout_s} s")
            time.sleep(0.1)

    @staticmethod
    def _cli(port: int, *args: str) -> str:
        out = subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *args],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout

    @classmethod
    def _ready(cls, port: int) -> bool:
        if "cluster_state:ok" not in cls._cli(port, "cluster", "info"):
            return False
        replication = cls._cli(port, "info", "replication")
        return "role:master" in replication or "master_link_status:up" in replication

    def primary_of(self, key: str) -> RedisServer | None:
        """The node that serves ``key`` now, as a running node sees the cluster (``None``
        while no node does, as during a failover)."""
        alive = [n for n in self.nodes if n.pid is not None]
        slot = int(self._cli(alive[0].port, "cluster", "keyslot", key).strip())
        for line in self._cli(alive[0].port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rpartition(":")[2])
                    return next(n for n in self.nodes if n.port == port)
        return None

    def wait_for_failover(self, key: str, dead: RedisServer, timeout_s: float = 30) -> None:
        """Wait until a replica of ``dead`` (killed) serves ``key`` and every running node
        says ``cluster_state:ok``."""
        alive = [n for n in self.nodes if n.pid is not None]
        self._wait(
            lambda: (
                self.primary_of(key) not in (None, dead) and all(self._ready(n.port) for n in alive)
            ),
            "failover",
            timeout_s,
        )

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


class RedisSentinel(_Process):
    """A primary plus one Sentinel that monitors it as ``service`` (quorum 1). With
    ``replica``, a replica of the primary too, which the Sentinel promotes when the primary has
    not answered for ``down_after_ms``."""

    def __init__(
        self, service: str = "coordinator", *, replica: bool = False, down_after_ms: int = 30000
    ) -> None:
        self.service = service
        self.primary = RedisServer()
        self.replica = (
            RedisServer("--replicaof", "127.0.0.1", str(self.primary.port)) if replica else None
        )
        self.port = free_port()
        self._down_after_ms = down_after_ms
        self._dir = tempfile.mkdtemp(prefix="coordinator-sentinel-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<sentinel port>/<service>``."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def _cli(self, port: int, *args: str) -> str:
        out = subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *args],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return out.stdout

    def _wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if (self._proc is not None and self._proc.poll() is not None) or (
                time.monotonic() > deadline
            ):
                raise RuntimeError(f"redis sentinel: no {what} after {timeout_s} s")
            time.sleep(0.05)

    def master_port(self) -> int | None:
        """The primary's port as the Sentinel names it now."""
        out = self._cli(self.port, "sentinel", "get-master-addr-by-name", self.service).split()
        return int(out[1]) if len(out) == 2 and out[1].isdigit() else None

    def start(self) -> RedisSentinel:
        """Start the primary (and its replica, in sync) and the Sentinel; wait until the
        Sentinel knows them."""
        try:
            self.primary.start()
            if self.replica is not None:
                replica = self.replica.start()
                self._wait(
                    lambda: (
                        "master_link_status:up" in self._cli(replica.port, "info", "replication")
                    ),
                    "replica in sync",
                )
            self._start_sentinel()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self) -> None:
        conf = os.path.join(self._dir, "sentinel.conf")
        with open(conf, "w") as handle:
            handle.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} {self._down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
        self._proc = subprocess.Popen(
            [_binary("redis-server"), conf, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: self.master_port() == self.primary.port, "primary known", 10)
        if self.replica is not None:
            replica = f"{self.replica.port}"
            self._wait(
                lambda: replica in self._cli(self.port, "sentinel", "replicas", self.service),
                "replica known",
            )

    def wait_for_failover(self, timeout_s: float = 30) -> None:
        """Wait until the Sentinel names the replica as the primary."""
        assert self.replica is not None, "no replica to fail over to"
        port = self.replica.port
        self._wait(lambda: self.master_port() == port, "failover", timeout_s)

    def stop(self) -> None:
        """Stop the Sentinel, the primary and the replica."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._proc = None
        self.primary.stop()
        if self.replica is not None:
            self.replica.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
