"""The demonstration's closing summary, computed from what happened: the replicas' own tallies,
the transitions in the store's event streams, the picks each replica made, and what the fake
providers saw on the wire. Nothing in it is written down in advance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator import Event
from scripts.demo_fleet import Fleet
from scripts.demo_journal import ALARMS, Line, event_key
from scripts.demo_scenario import DURATION_S, INCIDENTS, PROFILES, TICK_S, Incident, clock, duration

Pick = tuple[str, int, str | None]  # key id, store time (ms), model


@dataclass
class Cooldown:
    """One cooldown of a key: the failures of one step, however many replicas reported them."""

    t_s: float
    key: str
    kind: str
    seconds: float
    start_ms: int
    until_ms: int
    model: str | None


@dataclass
class Results:
    """Everything the summary prints."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    hops: int = 0
    failovers: Counter[str] = field(default_factory=Counter)  # by failure kind
    cooldowns: list[Cooldown] = field(default_factory=list)
    recoveries: list[tuple[float, str]] = field(default_factory=list)
    opened: list[tuple[float, str, str]] = field(default_factory=list)  # t, profile, reason
    half_open: list[tuple[float, str]] = field(default_factory=list)
    closed: list[tuple[float, str]] = field(default_factory=list)
    refreshes: Counter[str] = field(default_factory=Counter)  # credential -> token:refreshed
    transitions: int = 0
    seen: list[int] = field(default_factory=list)  # per replica
    picks: int = 0
    cooling_picks: int = 0
    alarms: int = 0  # expired tokens, credentials needing a new login, failed logins

    @property
    def success_rate(self) -> float:
        """Answered requests, in percent."""
        return 100.0 * self.ok / self.requests if self.requests else 0.0


def _cooldowns(events: list[Event], at: Callable[[int], float]) -> list[Cooldown]:
    """Pool cooldown events, one per step and key (several replicas failing on the same key
    in one step each extend the deadline by a few ms: that is one cooldown)."""
    groups: dict[tuple[int, str], list[Event]] = {}
    for e in events:
        if e.type == "profile:cooldown" and e.source != "models":
            groups.setdefault((int(at(e.ts_ms) // TICK_S), e.profile_id), []).append(e)
    out = []
    for (_step, key), group in groups.items():
        longest = max(group, key=lambda e: int(e.data.get("duration_ms", 0)))
        until = max(int(e.data.get("until_ms", 0)) for e in group)
        model = group[0].data.get("model") if group[0].data.get("scope") == "model" else None
        out.append(
            Cooldown(at(group[0].ts_ms), key, str(longest.data.get("kind")),
                     int(longest.data.get("duration_ms", 0)) / 1000,
                     min(e.ts_ms for e in group), until, model)
        )  # fmt: skip
    return sorted(out, key=lambda c: c.t_s)


def _cooling_picks(picks: list[Pick], cooldowns: list[Cooldown]) -> int:
    """Picks of a key inside one of its cooldowns (for the cooling model, if model-scoped)."""
    return sum(
        1
        for key, ts, model in picks
        for c in cooldowns
        if c.key == key and c.model in (None, model) and c.start_ms < ts < c.until_ms
    )


def compute(fleet: Fleet, events: list[Event], picks: list[Pick]) -> Results:
    """The results of a run, from the replicas' tallies, the events and the picks."""
    at = fleet.clock.at
    r = Results(picks=len(picks))
    for replica in fleet.replicas:
        t = replica.tally
        r.requests, r.ok, r.failed, r.hops = (
            r.requests + t.requests, r.ok + t.ok, r.failed + t.failed, r.hops + t.hops,
        )  # fmt: skip
    r.cooldowns = _cooldowns(events, at)
    r.cooling_picks = _cooling_picks(picks, r.cooldowns)
    for e in events:
        t_s, kind = at(e.ts_ms), e.type
        if kind == "profile:failover":
            r.failovers[str(e.data.get("kind"))] += 1
        elif kind == "profile:recovered":
            r.recoveries.append((t_s, e.profile_id))
        elif kind == "profile:circuit-opened":
            r.opened.append((t_s, e.profile_id, str(e.data.get("reason"))))
        elif kind == "profile:circuit-half-open":
            r.half_open.append((t_s, e.profile_id))
        elif kind == "profile:circuit-closed":
            r.closed.append((t_s, e.profile_id))
        elif kind == "token:refreshed":
            r.refreshes[e.profile_id] += 1
        elif kind in ALARMS:
            r.alarms += 1
    keys = {event_key(e) for e in events}
    r.transitions = len(keys)
    r.seen = [len(keys & replica.seen) for replica in fleet.replicas]
    return r


def _times(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def recovery(incident: Incident, r: Results) -> tuple[str, float] | None:
    """Who recovered from an incident that ended, and how long after it ended (virtual
    seconds): the provider's breaker closing again, or the key coming back into rotation."""
    if incident.end_s is None:
        return None
    if incident.expect == "cooldown":
        back = [t for t, key in r.recoveries if key == incident.key and t >= incident.end_s]
        return (str(incident.key), back[0] - incident.end_s) if back else None
    for t, pid in r.closed:
        if t >= incident.end_s and any(p.id == pid and p.provider == incident.provider
                                       for p in PROFILES):  # fmt: skip
            return pid, t - incident.end_s
    return None


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def _cooldown_effect(incident: Incident, r: Results) -> str:
    mine = [c for c in r.cooldowns if c.key == incident.key and incident.active(c.t_s)]
    if not mine:
        return "the key never cooled down!"
    steps = ", then ".join(f"{duration(c.seconds)} ({c.kind}) at {clock(c.t_s)}" for c in mine)
    often = {1: "once", 2: "twice"}.get(len(mine), f"{len(mine)} times")
    text = f"the key cooled down {often}: {steps}"
    back = recovery(incident, r)
    if back is None:
        return text + "; still cooling at the end"
    assert incident.end_s is not None
    return text + f"; back in rotation at {clock(incident.end_s + back[1])}"


def _breaker_effect(incident: Incident, r: Results) -> str:
    ids = {p.id for p in PROFILES if p.provider == incident.provider}
    opened = [(t, why) for t, pid, why in r.opened if pid in ids and t >= incident.start_s]
    if not opened:
        return "the breaker never opened!"
    probes = sum(1 for _, why in opened if why == "probe-failed")
    text = f"breaker opened at {clock(opened[0][0])}, {_times(probes, 'probe')} failed"
    back = recovery(incident, r)
    if back is None or incident.end_s is None:
        return text + ", still open at the end"
    return (
        text + f", closed at {clock(incident.end_s + back[1])}: "
        f"{duration(back[1])} after the provider recovered"
    )


def incident_lines(incident: Incident, r: Results, hits: int) -> list[str]:
    """What the fleet made of one scripted incident (its time to recover included)."""
    end = clock(incident.end_s) if incident.end_s is not None else "the end"
    effect = (_cooldown_effect if incident.expect == "cooldown" else _breaker_effect)(incident, r)
    return [
        f"  {clock(incident.start_s)} to {end}: {incident.title}, met by {_times(hits, 'call')}",
        f"      → {effect}",
    ]


def _recoveries(r: Results) -> str:
    found = [(i, back) for i in INCIDENTS if (back := recovery(i, r)) is not None]
    parts = [f"{who} {duration(lag)}" for _, (who, lag) in found]
    left = sum(1 for i in INCIDENTS if i.end_s is None)
    return (
        f"{', '.join(parts) or 'nothing'} after their incident ended (virtual); "
        f"{_times(left, 'incident')} still going on at the end"
    )


def render(fleet: Fleet, r: Results, wall_s: float, warnings: list[Line]) -> list[str]:
    """The summary, as printed lines."""
    accounts = fleet.fakes.accounts
    hits: Counter[str] = Counter()
    for api in fleet.fakes.apis.values():
        hits.update(api.hits)
    refused = sum(api.refused for api in fleet.fakes.apis.values())
    waits = sum(x.tally.waited for x in fleet.replicas)
    tokens = sum(x.tally.tokens for x in fleet.replicas)
    lines = [
        f"summary: {DURATION_S // 60} virtual minutes in {wall_s:.1f} s, "
        f"{len(fleet.replicas)} replicas and {len(fleet.workers)} refresh workers on "
        f"{fleet.shown_url}",
        f"  requests         {r.requests} sent, {r.ok} answered ({r.success_rate:.1f} %), "
        f"{r.failed} failed",
        f"  failovers        {sum(r.failovers.values())} hops inside execute() "
        f"({_counts(r.failovers)}), for {sum(hits.values())} calls that met an incident",
        f"  key cooldowns    {len(r.cooldowns)} ({_counts(Counter(c.kind for c in r.cooldowns))}"
        f"), {len(r.recoveries)} back in rotation; {r.cooling_picks} of {r.picks} picks "
        "handed out a cooling key",
        f"  breaker trips    {len(r.opened)} opened "
        f"({_counts(Counter(why for _, _, why in r.opened))}), "
        f"{len(r.half_open)} half-open, {len(r.closed)} closed again",
        f"  OAuth refreshes  {sum(r.refreshes.values())} for "
        f"{accounts.came_due(fleet.synced_s)} tokens that came due ({_counts(r.refreshes)}); "
        f"{accounts.refresh_requests} refresh requests reached the provider, "
        f"{accounts.reused} reused a refresh token; apps waited for {waits} of the {tokens} "
        "tokens they used",
        f"  every replica    received {min(r.seen, default=0)} of the {r.transitions} "
        f"transitions (per replica: {', '.join(str(n) for n in r.seen)})",
        f"  time to recover  {_recoveries(r)}",
        f"  unexpected       {len(warnings) + refused + r.failed + r.alarms} (warnings logged "
        f"{len(warnings)}, calls refused by a provider {refused}, failed requests {r.failed}, "
        f"OAuth alarms {r.alarms})",
        "incidents: scripted, then what the fleet did (virtual time)",
    ]
    for incident in INCIDENTS:
        lines += incident_lines(incident, r, hits[incident.title])
    lines.append("per replica")
    for x in fleet.replicas:
        served = ", ".join(f"{p.id} {x.tally.served[p.id]}" for p in PROFILES)
        errors = f"; errors: {_counts(x.tally.errors)}" if x.tally.errors else ""
        lines.append(
            f"  replica {x.index}: {x.tally.requests} requests, {x.tally.ok} answered "
            f"({served}), {x.tally.hops} failovers{errors}"
        )
    return lines
