"""``coordinator doctor``: checks of the Redis a fleet shares, each an actionable finding.

:func:`diagnose` connects and checks connectivity and latency, the server version (7.0+),
the deployment mode, the function libraries, persistence, ``maxmemory-policy``, the secret
key, ACL permissions and clock skew. Each :class:`Finding` says what is wrong and what to do;
nothing here prints or returns a secret (URLs are redacted by the store).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import CoordinatorError, SecretError, StoreUnavailableError
from .models.manager import ModelProfileManager
from .oauth.manager import OAuthManager
from .pools.manager import AuthProfileManager
from .store import functions as scripts
from .store.connection import Store, connect, redact_url

__all__ = ["Finding", "diagnose", "worst"]

Level = Literal["ok", "warn", "error"]
_LEVELS: dict[str, int] = {"ok": 0, "warn": 1, "error": 2}

#: Above this median PING round trip a decision is noticeably slower (each is one round trip).
SLOW_PING_MS = 20.0
#: Above this difference between this host's clock and Redis's, times shown here mislead and
#: provider reset times (absolute) turn into wrong cooldowns.
CLOCK_SKEW_MS = 2000
_EVICTING = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
_VOLATILE = ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``level`` (ok, warn, error), what was found, and what to do."""

    check: str
    level: Level
    message: str
    action: str = ""

    def to_json(self) -> dict[str, str]:
        """Plain data for ``--json``."""
        return asdict(self)


def worst(findings: list[Finding]) -> Level:
    """The most serious level among ``findings``."""
    return max((f.level for f in findings), key=_LEVELS.__getitem__, default="ok")


async def diagnose(
    url: str | None, *, namespace: str = "coord", secret_key: str | None = None
) -> list[Finding]:
    """Connect to ``url`` and run every check; an unreachable store is one error finding."""
    started = time.perf_counter()
    try:
        store = await connect(url, namespace=namespace, secret_key=secret_key)
    except StoreUnavailableError as exc:
        return [_unreachable(exc)]
    except CoordinatorError as exc:  # a bad URL or secret key
        return [Finding("configuration", "error", str(exc), "fix the URL or the secret key")]
    connect_ms = (time.perf_counter() - started) * 1000
    try:
        return await _checks(store, connect_ms)
    finally:
        await store.close()


def _unreachable(exc: StoreUnavailableError) -> Finding:
    text = str(exc)
    if "NOPERM" in text or "no permissions" in text:
        action = "grant this user the commands coordinator runs (see the operations guide)"
        return Finding("acl", "error", text, action)
    if "7.0" in text and "FUNCTION" in text:
        return Finding("version", "error", text, "upgrade Redis to 7.0 or later")
    return Finding(
        "connectivity",
        "error",
        text,
        "check the URL, that Redis runs and that this host may reach it (firewall, TLS, auth)",
    )


async def _checks(store: Store, connect_ms: float) -> list[Finding]:
    findings = [await _latency(store, connect_ms)]
    if store.backend == "memory":
        findings.append(
            Finding(
                "mode",
                "warn",
                "embedded backend (memory://): nothing is shared with other processes",
                "give every replica the same redis:// URL ($COORDINATOR_REDIS_URL)",
            )
        )
        return findings
    checks: list[Callable[[Store], Awaitable[list[Finding]]]] = [
        _version_and_mode,
        _functions,
        _persistence,
        _eviction,
        _secret_key,
        _acl,
        _clock,
    ]
    for check in checks:
        try:
            findings.extend(await check(store))
        except StoreUnavailableError as exc:
            name = check.__name__.strip("_").replace("_", " ")
            findings.append(Finding(name, "warn", f"could not check: {exc}", "see the message"))
    return findings


async def _latency(store: Store, connect_ms: float) -> Finding:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        await store.ping()
        samples.append((time.perf_counter() - started) * 1000)
    median = statistics.median(samples)
    text = (
        f"{redact_url(store.url)} answers: PING {median:.2f} ms (median of 5), "
        f"connect {connect_ms:.0f} ms"
    )
    if median > SLOW_PING_MS:
        action = "every decision is one round trip: run the app next to Redis (same zone)"
        return Finding("connectivity", "warn", text, action)
    return Finding("connectivity", "ok", text)


async def _info(store: Store, section: str) -> list[dict[str, Any]]:
    """``INFO section`` of the server (of every node answering, on a Cluster)."""
    async with store.guard(f"INFO {section}"):
        reply = await store.client.info(section)
    if reply and all(isinstance(v, dict) for v in reply.values()):
        return list(reply.values())  # a Cluster: node -> its INFO
    return [reply]


async def _version_and_mode(store: Store) -> list[Finding]:
    out = []
    versions = sorted({str(i.get("redis_version", "?")) for i in await _info(store, "server")})
    old = [v for v in versions if _major(v) < 7]
    if old:
        out.append(Finding("version", "error", f"Redis {', '.join(old)}", "upgrade to 7.0+"))
    else:
        out.append(Finding("version", "ok", f"Redis {', '.join(versions)} (7.0+ needed)"))
    roles = {str(i.get("role", "?")) for i in await _info(store, "replication")}
    if store.backend == "redis" and "slave" in roles:
        out.append(
            Finding(
                "mode",
                "error",
                "standalone URL points at a replica: writes fail",
                "point the URL at the primary, or use redis+sentinel:// to follow failovers",
            )
        )
    else:
        out.append(Finding("mode", "ok", {"redis": "standalone"}.get(store.backend, store.backend)))
    return out


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


async def _functions(store: Store) -> list[Finding]:
    ours, others = await store.function_libraries()
    wanted = len(scripts.script_names())
    out = []
    if len(ours) < wanted:
        out.append(
            Finding(
                "functions",
                "error",
                f"{len(ours)} of {wanted} libraries of this version loaded",
                "check the ACL allows FUNCTION LOAD; a replica loads them when it connects",
            )
        )
    else:
        out.append(Finding("functions", "ok", f"all {wanted} libraries of this version loaded"))
    if others:
        out.append(
            Finding(
                "functions",
                "warn",
                f"{len(others)} libraries of other versions on the server",
                "once no replica runs those versions: coordinator functions --prune",
            )
        )
    return out


async def _config(store: Store, name: str) -> str | None:
    """A ``CONFIG GET`` value, or ``None`` when CONFIG is not allowed (managed Redis)."""
    try:
        async with store.guard(f"CONFIG GET {name}"):
            reply = await store.client.config_get(name)
    except StoreUnavailableError:
        return None
    if reply and all(isinstance(v, dict) for v in reply.values()):
        reply = next(iter(reply.values()))  # a Cluster: the first node's answer
    value = reply.get(name) if reply else None
    return None if value is None else str(value)


async def _persistence(store: Store) -> list[Finding]:
    aof = any(str(i.get("aof_enabled", "0")) == "1" for i in await _info(store, "persistence"))
    save = await _config(store, "save")
    if aof:
        return [Finding("persistence", "ok", "append-only file on")]
    if save is None:
        return [
            Finding(
                "persistence",
                "warn",
                "AOF is off and CONFIG GET is not allowed: RDB snapshots unknown",
                "make sure your provider snapshots or replicates this Redis",
            )
        ]
    if save.strip():
        return [Finding("persistence", "ok", f"RDB snapshots on (save {save!r}); AOF off")]
    return [
        Finding(
            "persistence",
            "warn",
            "neither AOF nor RDB is on: cooldowns, breakers and OAuth tokens are lost when "
            "Redis restarts",
            "turn on AOF (appendonly yes, appendfsync everysec) or RDB (save 60 1000)",
        )
    ]


async def _eviction(store: Store) -> list[Finding]:
    policies = sorted({str(i.get("maxmemory_policy", "?")) for i in await _info(store, "memory")})
    text = f"maxmemory-policy {', '.join(policies)}"
    if any(p in _EVICTING for p in policies):
        return [
            Finding(
                "maxmemory-policy",
                "warn",
                f"{text}: Redis may evict coordinator keys (profiles, cooldowns, tokens) when "
                "memory is full",
                "set maxmemory-policy noeviction (or volatile-*) or use a Redis of its own",
            )
        ]
    if any(p in _VOLATILE for p in policies):
        return [
            Finding(
                "maxmemory-policy",
                "warn",
                f"{text}: sessions and refresh locks (keys with a TTL) may be evicted early",
                "prefer noeviction, and keep memory below maxmemory",
            )
        ]
    return [Finding("maxmemory-policy", "ok", text)]


async def _encrypted_values(store: Store) -> tuple[list[tuple[str, Any]], int]:
    """The stored API keys (owner, Secret) of pool and model profiles, and the number of
    OAuth credentials (whose tokens are encrypted too)."""
    pools = AuthProfileManager(store)
    models = ModelProfileManager(store)
    oauth = OAuthManager(store)
    try:
        found: list[tuple[str, Any]] = [
            (f"pool profile {p.id!r}", p.api_key)
            for p in await pools.list_profiles()
            if p.api_key is not None
        ]
        found += [
            (f"model profile {m.id!r}", m.auth.secret)
            for m in await models.list_profiles()
            if m.auth.kind == "api_key"
        ]
        credentials = len(await oauth.list_credentials())
    finally:
        await pools.close()
        await models.close()
        await oauth.close()
    return found, credentials


async def _secret_key(store: Store) -> list[Finding]:
    stored, credentials = await _encrypted_values(store)
    if store.box is None:
        if stored or credentials:
            return [
                Finding(
                    "secret key",
                    "error",
                    f"no secret key here, but {len(stored)} stored API keys and {credentials} "
                    "OAuth credentials are encrypted",
                    "set COORDINATOR_SECRET_KEY to the key the fleet uses",
                )
            ]
        return [Finding("secret key", "ok", "not set; nothing encrypted is stored")]
    if not stored:
        return [
            Finding(
                "secret key", "ok", f"set (key id {store.box.key_id}); no stored API key to try"
            )
        ]
    owner, secret = stored[0]
    try:
        secret.reveal()
    except SecretError:
        return [
            Finding(
                "secret key",
                "error",
                f"the secret key cannot decrypt {owner}",
                "set COORDINATOR_SECRET_KEY to the fleet's key (new,old while rotating)",
            )
        ]
    return [Finding("secret key", "ok", f"set and decrypts {owner}")]


#: One command of each kind coordinator runs, with a key of its namespace.
def _needed_commands(store: Store) -> list[list[str]]:
    key = f"{store.namespace}:{{index}}:profiles"
    return [
        ["FCALL", scripts.function_name(scripts.script_names()[0]), "1", key],
        ["FUNCTION", "LIST"],
        ["FUNCTION", "LOAD", "x"],
        ["HGETALL", key],
        ["HSET", key, "f", "v"],
        ["XREAD", "STREAMS", key, "0"],
        ["TIME"],
    ]


async def _server_command(store: Store, *args: str) -> Any:
    """A command about the server, not a key (on a Cluster: sent to one node, which shares
    the others' ACL when they are configured alike)."""
    if store.backend != "cluster":
        return await store.command(*args)
    async with store.guard(f"command {args[0]}"):
        node = store.client.get_random_node()
        return await store.client.execute_command(*args, target_nodes=node)


async def _acl(store: Store) -> list[Finding]:
    try:
        user = str(await _server_command(store, "ACL", "WHOAMI"))
    except StoreUnavailableError:
        return [
            Finding(
                "acl",
                "warn",
                "ACL WHOAMI is not allowed: permissions not checked",
                "check the user may run FCALL, FUNCTION, XREAD and hash/zset commands",
            )
        ]
    denied = []
    for command in _needed_commands(store):
        try:
            reply = await _server_command(store, "ACL", "DRYRUN", user, *command)
        except StoreUnavailableError:
            return [Finding("acl", "warn", f"user {user!r}: ACL DRYRUN not allowed", "")]
        if str(reply) != "OK":
            denied.append(" ".join(command[:2]) if command[0] == "FUNCTION" else command[0])
    if denied:
        return [
            Finding(
                "acl",
                "error",
                f"user {user!r} may not run {', '.join(denied)}",
                f"ACL SETUSER {user} +@read +@write +@stream +@scripting +function "
                f"~{store.namespace}:*",
            )
        ]
    return [Finding("acl", "ok", f"user {user!r} may run what coordinator needs")]


async def _clock(store: Store) -> list[Finding]:
    before = time.time() * 1000
    server_ms = await store.time_ms() - store.time_offset_ms
    after = time.time() * 1000
    skew = server_ms - (before + after) / 2
    text = f"this host's clock is {abs(skew):.0f} ms {'behind' if skew > 0 else 'ahead of'} Redis"
    if abs(skew) > CLOCK_SKEW_MS:
        return [Finding("clock", "warn", text, "run NTP (chrony, systemd-timesyncd) on this host")]
    return [Finding("clock", "ok", text + " (decisions use Redis time)")]
