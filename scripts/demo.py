"""Demonstration: four replicas share credential pools through one store.

Simulated providers answer 429 with Retry-After, 402 billing errors and 5xx on a schedule of
virtual time; the replicas pick keys, report what happened, and every replica sees every
cooldown and recovery. Time is virtual (the store's clock offset moves in 15 s steps), so the
fifteen simulated minutes take a few seconds.

Runs on the embedded backend (``memory://``) unless ``COORDINATOR_REDIS_URL`` is set, in which
case the four replicas each open their own connection to that Redis, in a fresh namespace.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator import (
    AuthConfig,
    AuthProfile,
    AuthProfileManager,
    Event,
    NoProfileAvailableError,
    Secret,
    Store,
    connect,
    generate_key,
)
from coordinator.models.classify import classify_response

TICK_S = 15
DURATION_S = 15 * 60
REPLICAS = 4


@dataclass
class Outage:
    """A window of virtual time in which a key (or a whole provider) answers with an error."""

    start_s: int
    end_s: int
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, object] = field(default_factory=dict)


# What each simulated key does, by virtual time (seconds since the demo started).
SCHEDULE: dict[str, list[Outage]] = {
    "openai-team-a": [Outage(60, 200, 429, {"retry-after": "90"}, {"error": {"type": "requests"}})],
    "openai-team-b": [
        Outage(300, 10_000, 402, {}, {"error": {"code": "insufficient_quota", "message": "quota"}})
    ],
    "openai-team-c": [],
    "anthropic-main": [Outage(120, 330, 529, {}, {"error": {"type": "overloaded_error"}})],
    "anthropic-backup": [Outage(480, 560, 500, {}, {"error": {"type": "api_error"}})],
}


def simulated_call(profile_id: str, t_s: int) -> tuple[int, dict[str, str], dict[str, object]]:
    """The simulated provider's answer for this key at this virtual time."""
    for outage in SCHEDULE[profile_id]:
        if outage.start_s <= t_s < outage.end_s:
            return outage.status, outage.headers, outage.body
    return 200, {}, {"choices": [{"message": {"content": "ok"}}]}


@dataclass
class Tally:
    """What happened, per profile and per replica."""

    calls: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_replica: dict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    refused: Counter[str] = field(default_factory=Counter)


async def one_call(
    replica: int, manager: AuthProfileManager, provider: str, t_s: int, tally: Tally, session: str
) -> None:
    """Pick a key, 'call' the provider with it and report the outcome."""
    try:
        profile = await manager.acquire(provider, session_id=session)
    except NoProfileAvailableError:
        tally.refused[provider] += 1
        return
    tally.calls[profile.id] += 1
    tally.by_replica[replica][profile.id] += 1
    status, headers, body = simulated_call(profile.id, t_s)
    verdict = classify_response(status, headers, body, now=time.time())
    if verdict.ok:
        tally.outcomes[profile.id]["ok"] += 1
        await manager.mark_success(profile.id)
        return
    assert verdict.kind is not None
    tally.outcomes[profile.id][str(status)] += 1
    await manager.mark_failed(
        profile.id, f"HTTP {status}", kind=verdict.kind, retry_after_s=verdict.retry_after_s
    )


def clock(ms: int) -> str:
    """Virtual time as +mm:ss."""
    seconds = max(0, ms // 1000)
    return f"+{seconds // 60:02d}:{seconds % 60:02d}"


class Timeline:
    """What the observer replica saw: transitions written by any replica, printed grouped per
    virtual second and profile (replicas whose calls failed together each report it, each
    possibly extending the deadline by the few ms between them, which reads as one line), and
    the cooldown windows and picks that the closing check compares."""

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self.seen: list[Event] = []
        self.windows: list[tuple[str, int, int]] = []
        self.picks: list[tuple[str, int]] = []

    def watch(self, observer: AuthProfileManager, replicas: list[AuthProfileManager]) -> None:
        """Listen on the observer for transitions, and on every replica for its own picks."""

        def show(event: Event) -> None:
            if event.type in ("profile:failed", "profile:cooldown", "profile:recovered"):
                self.seen.append(event)

        def record_window(event: Event) -> None:
            self.windows.append((event.profile_id, event.ts_ms, int(event.data["until_ms"])))

        observer.on("*", show)
        observer.on("profile:cooldown", record_window)
        for manager in replicas:  # a pick is a local event, with its Redis time
            manager.on("profile:selected", lambda e: self.picks.append((e.profile_id, e.ts_ms)))

    def print_until(self, before_ms: int | None = None) -> None:
        """Print what happened before ``before_ms`` (Redis time; everything if None). A tick
        is printed one tick late, so that its events that reached the observer late still
        join their line."""
        groups: dict[tuple[str, str, str], list[Event]] = {}
        later: list[Event] = []
        for event in self.seen:
            if before_ms is not None and event.ts_ms >= before_ms:
                later.append(event)
            else:
                group = (clock(event.ts_ms - self.start_ms), event.profile_id, event.type)
                groups.setdefault(group, []).append(event)
        self.seen[:] = later
        for (when, profile_id, kind), events in groups.items():
            if kind == "profile:recovered":
                print(f"[{when}] {profile_id:<17} recovered: back in rotation")
            elif kind == "profile:cooldown":
                reports = len(groups.get((when, profile_id, "profile:failed"), events))
                longest = max(int(e.data["duration_ms"]) for e in events) // 1000
                print(
                    f"[{when}] {profile_id:<17} cooling down {longest:>6} s  "
                    f"({events[0].data['kind']}, from {reports} failed call"
                    f"{'s' if reports > 1 else ''})"
                )

    def cooling_picks(self) -> list[tuple[str, int]]:
        """Picks of a key inside one of its cooldown windows (there must be none)."""
        return [
            (pid, ts)
            for pid, ts in self.picks
            if any(pid == wid and start < ts < until for wid, start, until in self.windows)
        ]


async def open_replicas(namespace: str) -> tuple[list[Store], list[AuthProfileManager]]:
    """Four replicas: one shared embedded store, or each its own connection to Redis."""
    url = os.environ.get("COORDINATOR_REDIS_URL") or "memory://"
    key = os.environ.get("COORDINATOR_SECRET_KEY") or generate_key()
    config = AuthConfig(strategy="round-robin", event_poll_interval_s=0.02)
    if url.startswith("memory://"):
        stores = [await connect(url, namespace=namespace, secret_key=key)] * REPLICAS
    else:
        stores = [await connect(url, namespace=namespace, secret_key=key) for _ in range(REPLICAS)]
    return stores, [AuthProfileManager(s, config) for s in stores]


async def add_keys(manager: AuthProfileManager) -> None:
    """The simulated keys, encrypted in the store."""
    for pid in SCHEDULE:
        provider = pid.split("-")[0]
        secret = Secret(f"sk-demo-{pid}-0123456789abcdef")
        await manager.add_profile(AuthProfile(id=pid, provider=provider, api_key=secret))


async def run_ticks(
    stores: list[Store], replicas: list[AuthProfileManager], timeline: Timeline, tally: Tally
) -> None:
    """Every virtual tick, each replica makes three calls; then virtual time moves on."""
    for t_s in range(0, DURATION_S, TICK_S):
        calls = []
        for i, manager in enumerate(replicas):
            calls.append(one_call(i, manager, "openai", t_s, tally, f"chat-{i}"))
            calls.append(one_call(i, manager, "openai", t_s, tally, f"batch-{i}-{t_s}"))
            calls.append(one_call(i, manager, "anthropic", t_s, tally, f"chat-{i}"))
        await asyncio.gather(*calls)
        await asyncio.sleep(0.03)  # let the event reader deliver this tick's transitions
        timeline.print_until(before_ms=timeline.start_ms + t_s * 1000)
        for s in set(stores):
            s.time_offset_ms += TICK_S * 1000
    for manager in replicas:
        await manager.get_status()  # any recoveries due now are announced
    await asyncio.sleep(0.2)
    timeline.print_until()


async def print_summary(manager: AuthProfileManager, timeline: Timeline, tally: Tally) -> None:
    """The closing check (no cooling key handed out), then calls and state per key."""
    print(
        f"\nchecked {len(timeline.picks)} picks against {len(timeline.windows)} cooldown "
        f"deadlines: {len(timeline.cooling_picks())} handed out a cooling key"
    )
    print("\nsummary")
    print(f"{'profile':<18}{'calls':>6}{'ok':>6}{'429':>5}{'402':>5}{'5xx':>5}  now")
    for status in await manager.get_status():
        o = tally.outcomes[status.id]
        five = sum(v for k, v in o.items() if k.startswith("5"))
        state = (
            f"cooling {status.cooldown_remaining_ms // 1000} s ({status.cooldown_kind})"
            if status.in_cooldown
            else "healthy"
        )
        print(
            f"{status.id:<18}{tally.calls[status.id]:>6}{o['ok']:>6}{o['429']:>5}"
            f"{o['402']:>5}{five:>5}  {state}"
        )
    for provider, count in tally.refused.items():
        print(f"calls refused because every {provider} key was cooling: {count}")
    print("\npicks per replica:")
    for i in range(REPLICAS):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(tally.by_replica[i].items()))
        print(f"  replica {i}: {counts}")


async def main() -> None:
    """Run the demonstration and print a timeline and a summary."""
    namespace = f"demo{os.getpid()}"
    stores, replicas = await open_replicas(namespace)
    print(f"coordinator demo: {REPLICAS} replicas on {stores[0].url} (namespace {namespace})")
    print("simulated keys: openai-team-a/b/c, anthropic-main/backup; 15 virtual minutes\n")
    await add_keys(replicas[0])
    timeline = Timeline(await stores[0].time_ms())
    timeline.watch(replicas[0], replicas)  # replica 0 observes what every replica writes
    await replicas[0].events.wait_started()
    tally = Tally()
    try:
        await run_ticks(stores, replicas, timeline, tally)
        await print_summary(replicas[-1], timeline, tally)
    finally:
        for manager in replicas:
            await manager.close()
        for s in set(stores):
            await s.close()


if __name__ == "__main__":
    asyncio.run(main())
