"""The demonstration's script: who is in the fleet, what the fake providers do and when.

Everything here is data (plus the pure function that says what a provider answers at a given
virtual time), so that the run, the view and the closing checks all read one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TICK_S = 10  # virtual seconds between two rounds of traffic
DURATION_S = 10 * 60  # virtual time the demonstration covers
REPLICAS = 4  # app replicas, each with its own managers
WORKERS = 2  # refresh workers (workers.Worker), racing for every due token
CHAT_PER_TICK = 3  # "best available model" requests per replica and tick
GEMINI_PER_TICK = 1  # gemini-1.5-flash requests per replica and tick
TOKEN_LIFETIME_S = 600  # access tokens issued by the fake Google accounts server
# A worker refreshes a token once this little of its lifetime is left (workers/settings.py:
# min(refresh_lead_s, refresh_lead_fraction * lifetime), with the worker's defaults).
WORKER_LEAD_S = min(600.0, 0.75 * TOKEN_LIFETIME_S)


@dataclass(frozen=True)
class Key:
    """One API key of a pool (the secret itself is made up at start-up, never printed)."""

    id: str
    provider: str


@dataclass(frozen=True)
class Profile:
    """One model profile: a provider behind a local fake server, in priority order."""

    id: str
    provider: str  # also the fake server that plays it
    priority: int
    models: tuple[str, ...]
    default_model: str
    pool: bool  # keys from the AuthProfileManager pool named after the provider, else one key


KEYS = (
    Key("openai-team-a", "openai"),
    Key("openai-team-b", "openai"),
    Key("openai-team-c", "openai"),
    Key("anthropic-main", "anthropic"),
    Key("anthropic-backup", "anthropic"),
)

PROFILES = (
    Profile("openai", "openai", 100, ("gpt-*",), "gpt-4o-mini", pool=True),
    Profile("anthropic", "anthropic", 90, ("claude-*",), "claude-3-5-sonnet-latest", pool=True),
    Profile("grok", "xai", 80, ("grok-*",), "grok-2-latest", pool=False),
    Profile("gemini", "google", 70, ("gemini-*",), "gemini-1.5-flash", pool=True),
)

# People signed in to Google with OAuth; their credentials form the "google" pool.
USERS = ("ada", "grace")


@dataclass(frozen=True)
class Incident:
    """A window of virtual time in which a key (``key``) or a whole provider (``key`` None)
    answers with an error. ``expect`` is what the coordinator should make of it: a key
    ``cooldown`` in its pool, or the model profile's ``breaker`` opening."""

    title: str
    provider: str
    key: str | None
    start_s: int
    end_s: int | None  # None: until the end
    status: int
    expect: str
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, object] = field(default_factory=dict)

    def active(self, t_s: float) -> bool:
        """Whether the incident is going on at virtual second ``t_s``."""
        return self.start_s <= t_s and (self.end_s is None or t_s < self.end_s)

    def applies(self, provider: str, key: str | None, t_s: float) -> bool:
        """Whether a call to ``provider`` with ``key`` at ``t_s`` meets this incident."""
        mine = self.key is None or self.key == key
        return self.provider == provider and mine and self.active(t_s)


INCIDENTS = (
    Incident(
        "openai-team-a is rate limited (429, Retry-After 90 s)",
        "openai", "openai-team-a", 60, 200, 429, "cooldown",
        {"retry-after": "90"},
        {"error": {"message": "Rate limit reached for requests", "type": "requests",
                   "code": "rate_limit_exceeded"}},
    ),
    Incident(
        "openai-team-b runs out of credit (402)",
        "openai", "openai-team-b", 180, None, 402, "cooldown",
        {},
        {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                   "code": "insufficient_quota"}},
    ),
    Incident(
        "the OpenAI API is down (503 for every key)",
        "openai", None, 300, 420, 503, "breaker",
        {},
        {"error": {"message": "The server is overloaded or not ready yet.",
                   "type": "server_error"}},
    ),
    Incident(
        "the Anthropic API is overloaded (529 for every key)",
        "anthropic", None, 360, 400, 529, "breaker",
        {},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ),
)  # fmt: skip


def incident_for(provider: str, key: str | None, t_s: float) -> Incident | None:
    """The incident a call to ``provider`` with ``key`` meets at virtual second ``t_s``."""
    for incident in INCIDENTS:
        if incident.applies(provider, key, t_s):
            return incident
    return None


def clock(seconds: float) -> str:
    """Virtual seconds since the start as ``+mm:ss``."""
    whole = max(0, int(seconds))
    return f"+{whole // 60:02d}:{whole % 60:02d}"


def duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``5 min``, ``4.5 min``, ``5 h``, ``4 h 59 min``."""
    if round(seconds) < 120:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60, 1)
    if minutes < 120:
        return f"{minutes:.0f} min" if minutes == int(minutes) else f"{minutes:.1f} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h" if rest == 0 else f"{hours} h {rest} min"
