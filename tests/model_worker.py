"""A replica in its own OS process that races to select a model profile (race tests)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from coordinator import connect
from coordinator.models.config import BreakerConfig, ModelConfig
from coordinator.models.manager import ModelProfileManager


def race_select(
    url: str,
    namespace: str,
    secret_key: str,
    offset_ms: int,
    breaker: dict[str, Any],
    start: Any,
    outbox: Any,
) -> None:
    """Connect, say ready, wait for the start signal, select once and report. A process that
    got a probe permit then hangs (holding it) until it is killed, like a dead prober."""
    asyncio.run(_race(url, namespace, secret_key, offset_ms, breaker, start, outbox))


async def _race(
    url: str,
    namespace: str,
    secret_key: str,
    offset_ms: int,
    breaker: dict[str, Any],
    start: Any,
    outbox: Any,
) -> None:
    store = await connect(url, namespace=namespace, secret_key=secret_key)
    store.time_offset_ms = offset_ms
    manager = ModelProfileManager(store, ModelConfig(breaker=BreakerConfig(**breaker)))
    outbox.put(("ready", os.getpid()))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, start.wait)
    selection = await manager.select_profile()
    if selection is None:
        outbox.put(("selected", os.getpid(), None, None, None))
    else:
        outbox.put(
            ("selected", os.getpid(), selection.profile_id, selection.reason, selection.permit)
        )
    if selection is not None and selection.probe:
        while True:  # the prober "dies" mid-call: it never reports
            time.sleep(3600)
    await store.close()
