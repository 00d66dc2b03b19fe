"""What the demonstration shows while it runs: a live terminal view (``rich.live``) on a
terminal, else a plain log (the journal's lines, and one status line per virtual minute)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from coordinator import ModelProfileStatus, OAuthCredential, ProfileStatus
from scripts.demo_fleet import Fleet, Replica
from scripts.demo_journal import Line
from scripts.demo_scenario import DURATION_S, INCIDENTS, PROFILES, TICK_S, clock, duration

TEXT = {"replica", "key", "state", "profile", "provider", "breaker", "credential"}


@dataclass
class Snapshot:
    """The fleet's shared state at one moment, as replica 0 reads it from the store."""

    t_s: float
    keys: list[ProfileStatus]
    profiles: list[ModelProfileStatus]
    credentials: list[OAuthCredential]
    now_ms: int

    @classmethod
    async def read(cls, fleet: Fleet) -> Snapshot:
        """Read pools, breakers and credentials (three reads, on replica 0)."""
        first = fleet.replicas[0]
        keys = await first.pools.get_status()
        profiles = await first.models.get_status()
        credentials = await first.oauth.list_credentials()
        return cls(fleet.clock.now_s(), keys, profiles, credentials, await first.store.time_ms())


def cooling(status: ProfileStatus) -> str | None:
    """How long a key still cools down, and why (``None`` when it is ready). A rate limit
    cools the key for the model that was limited only: the longest of these counts too."""
    left_ms = max([status.cooldown_remaining_ms, *status.model_cooldowns.values()])
    if left_ms <= 0:
        return None
    kind = status.cooldown_kind or status.last_error_kind or "cooldown"
    return f"{duration(round(left_ms / 1000))} ({kind})"


def key_state(status: ProfileStatus) -> tuple[str, str]:
    """A key's state in words, and its style."""
    left = cooling(status)
    if left is None:
        return "ready", "green"
    return f"cooling {left}", "red" if "billing" in left else "yellow"


def breaker_state(status: ModelProfileStatus) -> tuple[str, str]:
    """A breaker's state in words, and its style."""
    state = status.state or "closed"
    if state == "open":
        return f"OPEN {duration(round(status.open_remaining_ms / 1000))}", "bold red"
    if state == "half_open":
        return "HALF-OPEN", "magenta"
    if status.cooldown_remaining_ms > 0:
        return f"skipped {duration(round(status.cooldown_remaining_ms / 1000))}", "yellow"
    return "closed", "green"


def status_line(snap: Snapshot, replicas: Sequence[Replica]) -> Line:
    """One line of the plain log: requests so far, breakers not closed, cooling keys, and
    when the access tokens expire."""
    sent = sum(r.tally.requests for r in replicas)
    ok = sum(r.tally.ok for r in replicas)
    states = [(s.id, breaker_state(s)[0]) for s in snap.profiles]
    unusual = [f"{pid} {state}" for pid, state in states if state != "closed"]
    keys = [f"{s.id} {left}" for s in snap.keys if (left := cooling(s)) is not None]
    tokens = [
        f"{c.subject or c.id} {_expires(c, snap.now_ms)}"
        for c in sorted(snap.credentials, key=lambda c: c.id)
    ]
    text = (
        f"{ok} of {sent} requests answered · breakers: {', '.join(unusual) or 'all closed'}"
        f" · keys cooling: {', '.join(keys) or 'none'}"
        f" · tokens expire in: {', '.join(tokens)}"
    )
    return Line(snap.t_s, "status", text)


def _expires(credential: OAuthCredential, now_ms: int) -> str:
    if credential.expires_at_ms is None:
        return "never"
    return clock((credential.expires_at_ms - now_ms) / 1000)[1:]


class PlainView:
    """The log printed when stdout is not a terminal (CI, tests, a pipe): the journal's lines
    one step late (so that each step's events have all arrived), and after them, once per
    virtual minute, a status line of that moment."""

    lag_s = TICK_S

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._minute = -1
        self._status: Line | None = None

    def wants_snapshot(self, t_s: float) -> bool:
        """Whether this step's snapshot will be shown (the first step of each minute)."""
        return int(t_s // 60) != self._minute

    def show(self, lines: list[Line], snap: Snapshot | None) -> None:
        """Print the new journal lines, then the status line kept from an earlier step (its
        own events are among these lines); keep this step's for later."""
        for line in lines:
            print(line.plain())
        if self._status is not None:
            print(self._status.plain())
            self._status = None
        if snap is not None:
            self._minute = int(snap.t_s // 60)
            self._status = status_line(snap, self.fleet.replicas)
        sys.stdout.flush()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LiveView:
    """The live terminal view: replicas, pools, breakers, OAuth credentials and the tail of
    the journal, redrawn at every step."""

    def __init__(
        self,
        fleet: Fleet,
        console: Console,
        tail: Sequence[Line],
        picks: Sequence[tuple[str, int, str | None]],
    ) -> None:
        self.fleet = fleet
        self.console = console
        self.tail = tail
        self.picks = picks
        self._live = Live(console=console, auto_refresh=False, transient=False)

    lag_s = 0  # shows each step's transitions at once

    def wants_snapshot(self, t_s: float) -> bool:
        """The live view redraws everything at every step."""
        return True

    def show(self, lines: list[Line], snap: Snapshot | None) -> None:
        """Redraw with the latest snapshot."""
        if snap is not None:
            self._live.update(self._render(snap), refresh=True)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def _render(self, snap: Snapshot) -> Group:
        tables = [self._replicas(), self._keys(snap), self._breakers(snap), self._credentials(snap)]
        parts: list[RenderableType] = [self._header(snap)]
        for left, right in (tables[:2], tables[2:]):
            if self._width(left) + self._width(right) + 2 <= self.console.width:
                row = Table.grid(padding=(0, 2))
                row.add_row(left, right)
                parts.append(row)
            else:
                parts += [left, right]
        tail = Text("\n").join(
            Text.assemble((f"[{clock(x.t_s)}] ", "dim"), (f"{x.subject:<16} ", "bold"),
                          (x.text, x.style))
            for x in list(self.tail)[-max(4, min(12, self.console.height - 26)):]
        )  # fmt: skip
        parts.append(Panel(tail, title="transitions, as replica 0 receives them from any replica"))
        return Group(*parts)

    def _header(self, snap: Snapshot) -> Text:
        header = Text.assemble(
            ("coordinator demo  ", "bold"),
            (f"{len(self.fleet.replicas)} replicas and {len(self.fleet.workers)} refresh "
             f"workers on {self.fleet.shown_url}   ", ""),
            (f"{clock(snap.t_s)} of {clock(DURATION_S)[1:]} virtual", "bold cyan"),
        )  # fmt: skip
        for incident in INCIDENTS:
            if incident.active(snap.t_s):
                header.append(f"\n▶ {incident.title}", "yellow")
        return header

    def _width(self, table: Table) -> int:
        return Measurement.get(self.console, self.console.options, table).maximum

    @staticmethod
    def _table(title: str, *columns: str) -> Table:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        for name in columns:
            table.add_column(name, no_wrap=True, justify="left" if name in TEXT else "right")
        return table

    def _replicas(self) -> Table:
        table = self._table("requests per replica, and who answered them", "replica", "sent",
                            "ok", "failovers", *(p.id for p in PROFILES))  # fmt: skip
        for r in self.fleet.replicas:
            t = r.tally
            served = [str(t.served[p.id]) for p in PROFILES]
            table.add_row(str(r.index), str(t.requests), str(t.ok), str(t.hops), *served)
        return table

    def _keys(self, snap: Snapshot) -> Table:
        table = self._table("pool keys", "key", "picks", "state")
        picks = Counter(key for key, _ts, _model in self.picks)
        for status in sorted(snap.keys, key=lambda s: (s.provider, s.id)):
            state, style = key_state(status)
            table.add_row(status.id, str(picks[status.id]), Text(state, style))
        return table

    def _breakers(self, snap: Snapshot) -> Table:
        table = self._table("model profiles and their breakers", "profile", "provider",
                            "priority", "breaker", "failures")  # fmt: skip
        for s in snap.profiles:
            state, style = breaker_state(s)
            table.add_row(s.id, s.provider or "", str(s.priority), Text(state, style),
                          str(s.failures_total))  # fmt: skip
        return table

    def _credentials(self, snap: Snapshot) -> Table:
        table = self._table("OAuth credentials", "credential", "version", "expires in")
        for c in sorted(snap.credentials, key=lambda c: c.id):
            table.add_row(c.id, str(c.version), _expires(c, snap.now_ms))
        return table
