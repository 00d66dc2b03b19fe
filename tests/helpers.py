"""Small builders shared by the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from coordinator import AuthConfig, AuthProfile, AuthProfileManager, Store

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


async def add_keys(
    manager: AuthProfileManager,
    count: int,
    provider: str = "openai",
    *,
    prefix: str = "key",
    priority: int = 0,
) -> list[str]:
    """Add ``count`` API-key profiles named ``<prefix>-<i>``; returns their ids."""
    ids = []
    for i in range(count):
        pid = f"{prefix}-{i}"
        await manager.add_profile(
            AuthProfile(
                id=pid,
                provider=provider,
                api_key=f"sk-test-{provider}-{prefix}-{i}-0123456789abcdef",
                priority=priority,
            )
        )
        ids.append(pid)
    return ids


def clock_sleeper(store: Store) -> Callable[[float], Awaitable[None]]:
    """A ``sleep`` that moves the store's clock instead of waiting."""

    async def sleep(seconds: float) -> None:
        store.time_offset_ms += int(seconds * 1000) + 1

    return sleep


def manager_for(store: Store, **config: object) -> AuthProfileManager:
    """A manager on ``store`` with ``AuthConfig(**config)``."""
    return AuthProfileManager(store, AuthConfig.from_mapping(config), sleep=clock_sleeper(store))


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the event loop until ``condition()`` holds (another task's work, such as the
    event reader's, has to happen); fails after ``timeout`` seconds."""

    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)
