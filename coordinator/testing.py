"""Helpers for tests (ours and yours): throw-away ``redis-server`` processes and a test clock.

:class:`RedisServer` and :class:`RedisCluster` start real servers on free loopback ports in a
temporary folder and stop them afterwards; they never touch a Redis you already run. A missing
``redis-server`` binary is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from .store.connection import Store

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "advance_time", "free_port"]


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
    """Move the store's clock forward by ``ms`` (added to Redis ``TIME`` in every script)."""
    store.time_offset_ms += ms


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
    """One ``redis-server`` on a free loopback port, without persistence. ``wrapper`` is a
    command to run it under (``valgrind --tool=callgrind ...``): the server's pid is then that
    command's, and starting may take up to a minute."""

    def __init__(self, *extra: str, port: int | None = None, wrapper: Sequence[str] = ()) -> None:
        self.port = port or free_port(cluster_bus="--cluster-enabled" in extra)
        self._extra = extra
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
        args = [
            *self._wrapper,
            _binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
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

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its folder."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


class RedisCluster(_Process):
    """A Redis Cluster of ``masters`` primaries (no replicas) on free loopback ports."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
            )
            for _ in range(masters)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        """Start the nodes, join them with ``redis-cli --cluster create`` and wait for ``ok``."""
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    _binary("redis-cli"), "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", "0", "--cluster-yes",
                ],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while not all(self._state_ok(n.port) for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _state_ok(port: int) -> bool:
        out = subprocess.run(
            [_binary("redis-cli"), "-p", str(port), "cluster", "info"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return "cluster_state:ok" in out.stdout

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


class RedisSentinel(_Process):
    """A primary plus one Sentinel that monitors it as ``service`` (quorum 1)."""

    def __init__(self, service: str = "coordinator") -> None:
        self.service = service
        self.primary = RedisServer()
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="coordinator-sentinel-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<sentinel port>/<service>``."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def start(self) -> RedisSentinel:
        """Start the primary and the Sentinel; wait until the Sentinel knows the primary."""
        self.primary.start()
        conf = os.path.join(self._dir, "sentinel.conf")
        with open(conf, "w") as handle:
            handle.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            )
        self._proc = subprocess.Popen(
            [_binary("redis-server"), conf, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(
                [_binary("redis-cli"), "-p", str(self.port), "sentinel",
                 "get-master-addr-by-name", self.service],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if str(self.primary.port) in out.stdout:
                return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis sentinel did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the Sentinel and the primary."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._proc = None
        self.primary.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
