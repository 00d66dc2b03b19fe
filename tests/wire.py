"""Commands counted on the wire: MONITOR on every node of a standalone Redis or a Cluster."""

from __future__ import annotations

import contextlib

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Monitor

from coordinator.testing import RedisCluster, RedisServer


def wire_target(backend: str, request: pytest.FixtureRequest) -> tuple[str, list[int]]:
    """The URL of the session's ``redis`` or ``cluster`` server, and every node's port."""
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url, [server.port]
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.url, [node.port for node in cluster.nodes]


class Wire:
    """The commands that clients send to any of ``ports``, as MONITOR shows them (not those
    that scripts run inside, which ``INFO commandstats`` would count too)."""

    def __init__(self, ports: list[int]) -> None:
        self._clients = [aioredis.Redis(port=port, decode_responses=True) for port in ports]
        self._monitors: list[Monitor] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Wire:
        for client in self._clients:
            self._stack.push_async_callback(client.aclose)
            self._monitors.append(await self._stack.enter_async_context(client.monitor()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def sent(self, marker: str) -> list[str]:
        """The commands sent since the last call (each node's stream read up to ``marker``,
        an ECHO sent to every node now)."""
        commands: list[str] = []
        for client, monitor in zip(self._clients, self._monitors, strict=True):
            await client.echo(marker)
            while True:
                seen = await monitor.next_command()
                if marker in seen["command"]:
                    break
                if seen["client_type"] != "lua":
                    commands.append(seen["command"].split(" ", 1)[0].upper())
        return commands
