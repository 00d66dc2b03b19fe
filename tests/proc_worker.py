"""A replica in its own OS process, driven by commands over a queue (multi-process tests)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

from coordinator import AuthProfileManager, Event, connect


def run_replica(url: str, namespace: str, secret_key: str, inbox: Any, outbox: Any) -> None:
    """Entry point of a spawned process: answer each command with one reply."""
    asyncio.run(_serve(url, namespace, secret_key, inbox, outbox))


async def _serve(url: str, namespace: str, secret_key: str, inbox: Any, outbox: Any) -> None:
    store = await connect(url, namespace=namespace, secret_key=secret_key)
    manager = AuthProfileManager(store)
    selected: list[tuple[str, int]] = []

    def record(event: Event) -> None:
        selected.append((event.profile_id, event.ts_ms))

    manager.on("profile:selected", record)
    loop = asyncio.get_running_loop()
    outbox.put(("ready", None))
    while True:
        command = await loop.run_in_executor(None, inbox.get)
        op, args = command[0], command[1:]
        if op == "stop":
            break
        if op == "pick":
            count, session = args
            selected.clear()
            for _ in range(count):
                await manager.get_next_profile("openai", session_id=session)
            outbox.put(("picked", list(selected)))
        elif op == "fail":
            result = await manager.mark_failed(args[0], "429 from test", kind=args[1])
            outbox.put(("failed", (result.until_ms, result.duration_ms, result.failures)))
        elif op == "advance":
            store.time_offset_ms += args[0]
            outbox.put(("advanced", store.time_offset_ms))
        elif op == "status":
            rows = [
                (s.id, s.failures, s.billing_failures, s.in_cooldown, s.cooldown_until_ms)
                for s in await manager.get_status("openai")
            ]
            outbox.put(("status", rows))
    await manager.close()
    await store.close()
    outbox.put(("stopped", None))


class Replica:
    """Parent-side handle of one replica process."""

    def __init__(self, ctx: Any, url: str, namespace: str, secret_key: str) -> None:
        self.inbox: Any = ctx.Queue()
        self.outbox: Any = ctx.Queue()
        self.process: mp.process.BaseProcess = ctx.Process(
            target=run_replica, args=(url, namespace, secret_key, self.inbox, self.outbox)
        )
        self.process.start()
        assert self.reply()[0] == "ready"

    def send(self, *command: Any) -> None:
        """Send a command without waiting."""
        self.inbox.put(command)

    def reply(self, timeout: float = 60) -> Any:
        """The next reply."""
        return self.outbox.get(timeout=timeout)

    def call(self, *command: Any) -> Any:
        """Send a command and return its reply's payload."""
        self.send(*command)
        return self.reply()[1]

    def stop(self) -> None:
        """Stop the process cleanly."""
        if self.process.is_alive():
            self.send("stop")
            self.reply()
        self.process.join(timeout=30)
