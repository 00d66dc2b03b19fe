"""The demonstration's journal: every transition the fleet wrote, as lines for people.

Events come from the observer replica (replica 0), which receives those written by any replica
or worker. They are kept once each (:attr:`Journal.events`, for the closing summary) and turned
into lines one step late, so that the calls of one step that failed together on several
replicas read as one line with their count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from coordinator import Event
from scripts.demo_scenario import INCIDENTS, TICK_S, clock, duration

ALARMS = {"token:expired", "credential:needs-reauth", "auth:failed"}  # never in this script
IGNORED = {"profile:added", "profile:selected", "profile:failure", "auth:started"}
REASONS = {
    "consecutive-failures": "consecutive failures",
    "failure-rate": "failure rate too high",
    "probe-failed": "the probe failed",
}


@dataclass(frozen=True)
class Line:
    """One journal line: virtual seconds, subject, text, and a style for the live view."""

    t_s: float
    subject: str
    text: str
    style: str = ""

    def plain(self) -> str:
        """The line as the plain log prints it."""
        return f"[{clock(self.t_s)}] {self.subject:<16} {self.text}"


def event_key(event: Event) -> str:
    """What identifies one transition, whichever replica received it."""
    return f"{event.source}/{event.stream_id}/{event.type}"


class Journal:
    """Transitions kept once each, turned into lines step by step."""

    def __init__(self, at: Callable[[int], float], logins: dict[str, tuple[int, int]]) -> None:
        self.at = at  # store time (ms) -> virtual seconds
        self.logins = logins  # credential id -> (replica that started, that finished)
        self.events: list[Event] = []
        self._keys: set[str] = set()
        self._pending: list[Event] = []
        self._notes: list[Line] = []
        self.tail: deque[Line] = deque(maxlen=12)

    def add(self, event: Event) -> None:
        """Keep an event (the first time it is received)."""
        key = event_key(event)
        if key not in self._keys:
            self._keys.add(key)
            self.events.append(event)
            self._pending.append(event)

    def note(self, line: Line) -> None:
        """Add a line that is not an event (a scripted incident, a warning)."""
        self._notes.append(line)

    def script(self, t_s: float) -> None:
        """Note the scripted incidents that begin or end at this step."""
        for incident in INCIDENTS:
            if t_s - TICK_S < incident.start_s <= t_s:
                self.note(Line(incident.start_s, "scripted", f"▶ {incident.title}", "yellow"))
            if incident.end_s is not None and t_s - TICK_S < incident.end_s <= t_s:
                self.note(Line(incident.end_s, "scripted", f"■ over: {incident.title}", "green"))

    def flush(self, before_s: float | None = None) -> list[Line]:
        """The lines of everything before virtual second ``before_s`` (all if None)."""
        ready: list[Event] = []
        later: list[Event] = []
        for event in self._pending:
            due = before_s is None or self.at(event.ts_ms) < before_s
            (ready if due else later).append(event)
        self._pending = later
        notes = [n for n in self._notes if before_s is None or n.t_s < before_s]
        self._notes = [n for n in self._notes if before_s is not None and n.t_s >= before_s]
        lines = notes + self._lines(ready)
        lines.sort(key=lambda line: line.t_s)
        self.tail.extend(lines)
        return lines

    def _lines(self, events: list[Event]) -> list[Line]:
        """Events grouped by step and subject: one line per group."""
        groups: dict[tuple[int, str, str], list[Event]] = {}
        for event in events:
            if event.type in IGNORED:
                continue
            step = int(self.at(event.ts_ms) // TICK_S)
            subject = "failover" if event.type == "profile:failover" else event.profile_id
            what = event.type
            if event.type == "profile:failover":
                what = f"{event.data.get('from')}>{event.data.get('to')}>{event.data.get('kind')}"
            groups.setdefault((step, subject, what), []).append(event)
        failed = {(k[0], k[1]): len(g) for k, g in groups.items() if k[2] == "profile:failed"}
        lines = []
        for (step, subject, what), group in groups.items():
            if what == "profile:failed":
                continue
            text, style = self._describe(group, failed.get((step, subject), 0))
            lines.append(Line(self.at(group[0].ts_ms), subject, text, style))
        return lines

    def _describe(self, group: list[Event], failed_calls: int) -> tuple[str, str]:
        first = group[0]
        data = first.data
        kind = first.type
        if kind == "profile:failover":
            count = f"  ×{len(group)}" if len(group) > 1 else ""
            return f"{data.get('from')} → {data.get('to')}{count} ({data.get('kind')})", "cyan"
        if kind == "profile:cooldown" and first.source != "models":
            longest = max(int(e.data.get("duration_ms", 0)) for e in group) / 1000
            calls = f"{failed_calls} failed call{'s' if failed_calls != 1 else ''}"
            return f"key cools down for {duration(longest)} ({data.get('kind')}; {calls})", "yellow"
        if kind == "profile:cooldown":
            left = int(data.get("duration_ms", 0)) / 1000
            return f"profile skipped for {duration(left)} ({data.get('kind')})", "yellow"
        if kind == "profile:recovered":
            return "key back in rotation", "green"
        return self._describe_other(first)

    def _describe_other(self, event: Event) -> tuple[str, str]:
        data = event.data
        kind = event.type
        if kind == "profile:circuit-opened":
            why = REASONS.get(str(data.get("reason")), str(data.get("reason")))
            again = " again" if data.get("reason") == "probe-failed" else ""
            open_s = int(data.get("open_ms", 0)) / 1000
            return f"breaker OPEN{again} for {duration(open_s)} ({why}: {data.get('kind')})", "red"
        if kind == "profile:circuit-half-open":
            return "breaker HALF-OPEN: one probe call may pass", "magenta"
        if kind == "profile:circuit-closed":
            after = int(data.get("after_ms", 0)) / 1000
            return f"breaker CLOSED: the probe succeeded (open for {duration(after)})", "green"
        if kind == "auth:success":
            start, finish = self.logins.get(event.profile_id, (0, 0))
            return (
                f"signed in with OAuth (login started on replica {start}, "
                f"callback taken by replica {finish})",
                "green",
            )
        if kind == "token:refreshed":
            rotated = ", refresh token rotated" if data.get("rotated") else ""
            until = clock(self.at(int(data.get("expires_at_ms", 0))))
            text = f"access token refreshed: version {data.get('version')}, valid until {until}"
            return text + rotated, "blue"
        if kind in ALARMS:
            return f"{kind} {data}", "bold red"
        return kind, ""
