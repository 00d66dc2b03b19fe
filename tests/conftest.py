"""Shared fixtures: real redis-server processes started by the suite, and the backends matrix.

Contract tests take the ``store`` fixture, which runs each test on the embedded backend, a real
standalone Redis and a real 3-master Redis Cluster. Every test gets its own namespace, so tests
never see each other's keys (and the machine's own Redis on 6379 is never used).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from coordinator import Store, connect, generate_key
from coordinator.testing import RedisCluster, RedisServer

BACKENDS = ["memory", "redis", "cluster"]
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def secret_key() -> str:
    """One encryption key for the whole run."""
    return generate_key()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server on a free loopback port, for the whole run."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on free loopback ports, for the whole run."""
    with RedisCluster(3) as cluster:
        yield cluster


def unique_namespace() -> str:
    """A namespace no other test of this run uses."""
    return f"t{os.getpid()}n{next(_namespaces)}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name of the running contract test."""
    return str(request.param)


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of the running test's backend (servers start on first use)."""
    if backend == "memory":
        return "memory://"
    if backend == "redis":
        return str(request.getfixturevalue("redis_server").url)
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.fixture
async def store(backend_url: str, secret_key: str) -> AsyncIterator[Store]:
    """A connected store on the test's backend, in a namespace of its own."""
    s = await connect(backend_url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        yield s
    finally:
        await s.close()
