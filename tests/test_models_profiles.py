"""Model profiles: definitions, selection rules, round trips, events, corrupt values, defaults."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from coordinator import (
    AuthProfile,
    AuthProfileManager,
    ConfigError,
    CorruptStateError,
    ProfileNotFoundError,
    Secret,
    Store,
    connect,
)
from coordinator.models.config import BreakerConfig, ModelConfig
from coordinator.models.defaults import default_model_profiles, load_model_table
from coordinator.models.manager import ModelProfileManager
from coordinator.models.types import ModelAuth, ModelProfile, TokenSource
from coordinator.store.keys import ModelKeys
from coordinator.testing import RedisServer, advance_time

from .conftest import unique_namespace
from .model_helpers import (
    MINUTE_MS,
    add_three,
    breaker,
    event_types,
    events,
    fail,
    model_manager,
    profile,
    set_breaker,
    spy_on_scripts,
)


async def test_add_get_list_remove_enable_disable(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    got = await manager.get_profile("secondary")
    assert got.priority == 90 and got.auth.kind == "none"
    assert [p.id for p in await manager.list_profiles()] == ["primary", "secondary", "tertiary"]
    assert await manager.disable_profile("primary") is True
    assert await manager.disable_profile("primary") is False
    assert (await manager.get_profile("primary")).enabled is False
    sel = await manager.select_profile()
    assert sel is not None and (sel.profile_id, sel.reason) == ("secondary", "primary")
    assert await manager.enable_profile("primary") is True
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    assert await manager.remove_profile("primary") is True
    assert await manager.remove_profile("primary") is False
    with pytest.raises(ProfileNotFoundError):
        await manager.get_profile("primary")
    with pytest.raises(ProfileNotFoundError):
        await manager.enable_profile("primary")
    types = await event_types(store, "primary")
    assert types == [
        "profile:added", "profile:disabled", "profile:enabled", "profile:removed"
    ]  # fmt: skip


async def test_updating_priority_reorders_selection(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await manager.add_profile(profile("tertiary", 200))
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "tertiary"


async def test_models_exact_prefix_and_wildcard_and_resolved_model(store: Store) -> None:
    manager = model_manager(store)
    await manager.add_profile(profile("grok", 100, ("grok-*",), default_model="grok-2-latest"))
    await manager.add_profile(profile("claude", 90, ("claude-3-opus", "claude-3-5-*")))
    await manager.add_profile(profile("local", 10, ("*",)))
    cases: list[tuple[str | None, str, str | None, str]] = [
        (None, "grok", "grok-2-latest", "primary"),
        ("grok-beta", "grok", "grok-beta", "primary"),
        ("claude-3-opus", "claude", "claude-3-opus", "primary"),
        ("claude-3-5-sonnet", "claude", "claude-3-5-sonnet", "primary"),
        ("claude-2", "local", "claude-2", "primary"),
        ("llama3", "local", "llama3", "primary"),
    ]
    for wanted, pid, model, reason in cases:
        sel = await manager.select_profile(wanted)
        assert sel is not None
        assert (sel.profile_id, sel.model, sel.reason) == (pid, model, reason), wanted
    # No default: the first exact name listed; only patterns: no model named.
    sel = await manager.select_profile(exclude=["grok"])
    assert sel is not None and (sel.profile_id, sel.model) == ("claude", "claude-3-opus")
    sel = await manager.select_profile(exclude=["grok", "claude"])
    assert sel is not None and (sel.profile_id, sel.model) == ("local", None)
    await manager.disable_profile("local")
    assert await manager.select_profile("llama3") is None
    # Python's own matcher agrees with the script's.
    p = await manager.get_profile("claude")
    assert p.serves("claude-3-5-haiku") and not p.serves("claude-3-opus-x")
    assert p.resolve_model(None) == "claude-3-opus"


async def test_failover_reason_is_relative_to_the_model(store: Store) -> None:
    manager = model_manager(store)
    await manager.add_profile(profile("grok", 100, ("grok-*",)))
    await manager.add_profile(profile("openai", 80, ("gpt-*",)))
    await manager.add_profile(profile("router", 50, ("*",)))
    await fail(manager, 3, "grok")
    sel = await manager.select_profile("gpt-4o")
    assert sel is not None and (sel.profile_id, sel.reason) == ("openai", "primary")
    sel = await manager.select_profile("grok-2")
    assert sel is not None and (sel.profile_id, sel.reason) == ("router", "failover")


async def test_selection_and_failover_are_one_round_trip_each(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    calls: list[str] = []
    spy_on_scripts(store, lambda name, _keys, _args: calls.append(name))
    sel = await manager.select_profile("m")
    assert sel is not None
    nxt = await manager.get_next_available_profile(sel, "m", error="boom", kind="server")
    assert nxt is not None and (nxt.profile_id, nxt.reason) == ("secondary", "failover")
    nxt2 = await manager.get_next_available_profile(nxt, "m", kind="timeout", exclude=["primary"])
    assert nxt2 is not None and nxt2.profile_id == "tertiary"
    assert calls == ["model_select", "model_report", "model_report"]
    failovers = [(p, d["to"]) for t, p, d in await events(store) if t == "profile:failover"]
    assert failovers == [("primary", "secondary"), ("secondary", "tertiary")]
    # Nothing left: None, and no failover event.
    last = await manager.get_next_available_profile(
        nxt2, "m", kind="server", exclude=["primary", "secondary"]
    )
    assert last is None
    assert len([t for t, _, _ in await events(store) if t == "profile:failover"]) == 2


async def test_the_packed_selection_arguments_carry_any_model_name(store: Store) -> None:
    # The selection spec is one argument ("<ttl>,<count>,<ids>...,<model>"): a model name may
    # hold commas or anything else, exclusions and a session ride along.
    manager = model_manager(store)
    await add_three(manager)
    odd = 'gpt,4\t"x" ,,'
    sel = await manager.select_profile(odd, session_id="s-1", exclude=["primary"])
    assert sel is not None and (sel.profile_id, sel.model) == ("secondary", odd)
    assert sel.reason == "failover"
    nxt = await manager.get_next_available_profile(sel, odd, kind="server", session_id="s-2")
    assert nxt is not None and (nxt.profile_id, nxt.model) == ("primary", odd)
    failover = [d for t, _p, d in await events(store) if t == "profile:failover"]
    assert failover[-1]["model"] == odd and failover[-1]["to"] == "primary"


async def test_get_next_available_profile_classifies_an_exception(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None
    await manager.get_next_available_profile(sel, error=TimeoutError("slow"))
    failure = next(d for t, _, d in await events(store) if t == "profile:failure")
    assert failure["kind"] == "timeout" and "slow" in failure["error"]


async def test_sticky_session_keeps_its_profile_while_the_breaker_is_closed(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    sel = await manager.select_profile(session_id="chat-1")
    assert sel is not None and sel.profile_id == "secondary" and not sel.sticky
    again = await manager.select_profile(session_id="chat-1")
    assert again is not None and again.profile_id == "secondary" and again.sticky
    # The primary recovers: new sessions go back to it, the bound session stays.
    advance_time(store, MINUTE_MS)
    probe = await manager.select_profile()
    assert probe is not None and probe.reason == "testing"
    await manager.record_success(probe)
    fresh = await manager.select_profile(session_id="chat-2")
    assert fresh is not None and fresh.profile_id == "primary"
    bound = await manager.select_profile(session_id="chat-1")
    assert bound is not None and bound.profile_id == "secondary" and bound.reason == "failover"
    # Its profile fails: the session moves on.
    await manager.record_failure(bound, "billing")
    moved = await manager.select_profile(session_id="chat-1")
    assert moved is not None and moved.profile_id == "primary" and not moved.sticky


async def test_api_key_is_encrypted_at_rest_and_never_shown(store: Store) -> None:
    manager = model_manager(store)
    key = "sk-live-abcdefghijklmnopqrstuvwxyz012345"
    p = ModelProfile(
        id="paid", provider="openai", auth=ModelAuth.api_key(key), base_url="https://x.test/v1"
    )
    await manager.add_profile(p)
    raw = await store.command("HGET", ModelKeys(store.namespace).profiles, "paid")
    assert key not in raw and "ciphertext" in raw
    loaded = await manager.get_profile("paid")
    secret = loaded.secret()
    assert secret is not None and secret.reveal() == key
    assert key not in repr(loaded) and key not in repr(p) and key not in str(secret)
    # A ciphertext copied onto another profile does not decrypt (the id is the AAD).
    record = orjson.loads(raw)
    record["id"] = "thief"
    await store.command(
        "HSET", ModelKeys(store.namespace).profiles, "thief", orjson.dumps(record).decode()
    )
    stolen = (await manager.get_profile("thief")).secret()
    assert stolen is not None
    with pytest.raises(Exception, match="does not decrypt"):
        stolen.reveal()


async def test_api_key_without_secret_key_is_a_config_error(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COORDINATOR_SECRET_KEY", raising=False)
    store = await connect(redis_server.url, namespace=unique_namespace())
    try:
        manager = ModelProfileManager(store)
        with pytest.raises(ConfigError) as info:
            await manager.add_profile(
                ModelProfile(
                    id="k",
                    provider="openai",
                    auth=ModelAuth.api_key("sk-123"),
                    base_url="https://x.test",
                )
            )
        assert info.value.field == "secret_key" and "sk-123" not in str(info.value)
        # An environment variable needs no secret key.
        await manager.add_profile(
            ModelProfile(
                id="k",
                provider="openai",
                auth=ModelAuth.env("OPENAI_API_KEY"),
                base_url="https://x.test",
            )
        )
    finally:
        await store.close()


async def test_corrupt_values_skip_only_the_broken_profile(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    keys = ModelKeys(store.namespace)
    # One field of primary's breaker edited into garbage by hand, as the docs show it.
    await store.command("HSET", keys.breakers, "primary:epoch", "abc")
    await store.command("HSET", keys.profiles, "secondary", '{"priority":"high"}')
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "tertiary"
    assert "primary" in caplog.text and "breaker.epoch" in caplog.text
    status = {s.id: s for s in await manager.get_status()}
    assert status["primary"].broken_field == "breaker.epoch"
    assert status["secondary"].broken_field == "priority"
    assert status["tertiary"].broken_field is None and status["tertiary"].available
    # Reports against a corrupt breaker do not raise, and say so.
    result = await manager.record_failure("primary", "server")
    assert (result.status, result.broken_field) == ("corrupt", "breaker.epoch")
    # More shapes of garbage, one field at a time, in the fields selections read: every field
    # of an open or half-open breaker, the state, epoch and cooldown of a closed one.
    for garbage, field_name in (
        ({"state": "melted"}, "state"),
        ({"state": "open"}, "open_until_ms"),
        ({"state": "open", "open_until_ms": 1, "window": "10x"}, "window"),
        ({"state": "closed", "epoch": -1}, "epoch"),
        ({"state": "closed", "epoch": 1.5}, "epoch"),
        ({"state": "half_open", "permits": "p1=soon"}, "permits"),
        ({"state": "half_open", "permits": "p1"}, "permits"),
        ({"cooldown_until_ms": "1e999"}, "cooldown_until_ms"),
    ):
        await set_breaker(store, "primary", **garbage)
        sel = await manager.select_profile()
        assert sel is not None and sel.profile_id == "tertiary", garbage
        status = {s.id: s for s in await manager.get_status()}
        assert status["primary"].broken_field == f"breaker.{field_name}", garbage
        assert status["primary"].blocked and not status["primary"].available, garbage
    # Selections read nothing else of a closed breaker: garbage elsewhere is named by the
    # status and by reports, and the profile is still selected.
    for garbage, field_name in (
        ({"state": "closed", "window": "10x"}, "window"),
        ({"streak": "many"}, "streak"),
        ({"epoch": 4, "last_error_kind": "x", "failures_total": "lots"}, "failures_total"),
    ):
        await set_breaker(store, "primary", **garbage)
        sel = await manager.select_profile()
        assert sel is not None and sel.profile_id == "primary", garbage
        row = {s.id: s for s in await manager.get_status()}["primary"]
        assert (row.broken_field, row.state, row.epoch) == (
            f"breaker.{field_name}",
            "closed",
            sel.epoch,
        ), garbage
        assert not row.blocked and row.available, garbage
        result = await manager.record_success(sel)
        assert (result.status, result.broken_field) == ("corrupt", f"breaker.{field_name}")
    # The operator's repair.
    assert await manager.reset_breaker("primary") == "corrupt"
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    for garbage in ('{"id":"secondary"}', "nope", '{"priority":1,"enabled":"yes"}'):
        await store.command("HSET", keys.profiles, "secondary", garbage)
        with pytest.raises(CorruptStateError):
            await manager.get_profile("secondary")
        assert [p.id for p in await manager.list_profiles()] == ["primary", "tertiary"]


async def test_events_are_appended_once_and_reach_subscribers(store: Store) -> None:
    manager = model_manager(store, event_poll_interval_s=0.01)
    seen: list[tuple[str, str]] = []
    manager.on("*", lambda e: seen.append((e.type, e.profile_id)))
    await manager.events.wait_started()
    await add_three(manager)
    await fail(manager, 3)
    advance_time(store, MINUTE_MS)
    probe = await manager.select_profile()
    assert probe is not None
    await manager.record_success(probe)
    wanted = [
        ("profile:failure", "primary"),
        ("profile:circuit-opened", "primary"),
        ("profile:circuit-half-open", "primary"),
        ("profile:circuit-closed", "primary"),
    ]
    for _ in range(300):
        if all(w in seen for w in wanted):
            break
        await asyncio.sleep(0.01)
    assert [s for s in seen if s in wanted] == [wanted[0]] * 3 + wanted[1:]
    await manager.close()


async def test_a_second_replica_observing_the_same_transition_does_not_repeat_it(
    store: Store, backend_url: str, secret_key: str
) -> None:
    from .model_helpers import second_replica

    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    other_store = await second_replica(store, backend_url, secret_key)
    try:
        other = model_manager(other_store)
        advance_time(store, MINUTE_MS)
        advance_time(other_store, MINUTE_MS)
        await asyncio.gather(*(m.select_profile() for m in (manager, other) for _ in range(5)))
        await other.get_status()
        assert (await event_types(store)).count("profile:circuit-half-open") == 1
    finally:
        if other_store.backend != "memory":
            await other_store.close()


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ConfigError):
        BreakerConfig(min_calls=30, window_size=20)
    with pytest.raises(ConfigError):
        BreakerConfig(failure_rate_threshold=1.5)
    with pytest.raises(ConfigError):
        BreakerConfig(reset_timeout_ms=10_000, max_open_ms=5_000)
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_mapping({"breaker": {"failure_treshold": 3}})
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_mapping({"max_attempt": 3})
    cfg = ModelConfig.from_mapping({"breaker": {"failure_threshold": 5}, "max_attempts": 2})
    assert cfg.breaker.failure_threshold == 5 and cfg.breaker.window_size == 20
    assert BreakerConfig().open_period_ms(0) == 60_000
    assert BreakerConfig().open_period_ms(3) == 480_000
    assert BreakerConfig().open_period_ms(10) == 600_000


def test_profile_validation() -> None:
    good = {"id": "a", "provider": "openai", "base_url": "https://x.test", "auth": None}
    assert ModelProfile.from_mapping(good).auth.kind == "none"
    for bad in (
        {"base_url": "ftp://x"},
        {"models": []},
        {"models": "gpt-*"},
        {"models": ["g*pt"]},
        {"priority": True},
        {"enabled": "yes"},
        {"auth": {"api_key": "x", "env": "Y"}},
        {"auth": {"env": "1BAD"}},
        {"auth": {"pool": "Not A Pool"}},
        {"auth": {"magic": "x"}},
        {"colour": "red"},
        {"id": "bad id"},
    ):
        with pytest.raises(ConfigError):
            ModelProfile.from_mapping({**good, **bad})
    pooled = ModelProfile.from_mapping({**good, "auth": {"pool": "openai"}})
    assert pooled.auth.describe() == "pool(openai)"
    keyed = ModelProfile.from_mapping({**good, "auth": {"api_key": "sk-secretsecret"}})
    assert "secret" not in repr(keyed) and keyed.auth.describe() == "api_key(****)"


def test_defaults_come_from_the_environment_and_a_data_file(tmp_path: Any) -> None:
    profiles = {p.id: p for p in default_model_profiles({"ANTHROPIC_API_KEY": "sk-ant-x"})}
    assert [(p.id, p.priority) for p in sorted(profiles.values(), key=lambda p: -p.priority)] == [
        ("grok", 100), ("anthropic", 90), ("openai", 80), ("google", 70), ("ollama", 50)
    ]  # fmt: skip
    assert profiles["anthropic"].enabled and not profiles["grok"].enabled
    assert not profiles["ollama"].enabled and profiles["ollama"].auth.kind == "none"
    assert profiles["grok"].base_url == "https://api.x.ai/v1"
    assert profiles["grok"].auth.kind == "env" and profiles["grok"].auth.value == "GROK_API_KEY"
    env = {"GROK_API_KEY": "xai-1", "OLLAMA_ENABLED": "1", "OLLAMA_BASE_URL": "http://gpu:11434/v1"}
    profiles = {p.id: p for p in default_model_profiles(env)}
    assert profiles["grok"].enabled and profiles["ollama"].enabled
    assert profiles["ollama"].base_url == "http://gpu:11434/v1"
    # Another table, from a file.
    table = tmp_path / "models.json"
    table.write_text(
        '{"profiles":[{"id":"mine","provider":"openai","env":"MINE_KEY",'
        '"base_url":"https://mine.test/v1","priority":5,"models":["m-*"]}]}'
    )
    assert [p.id for p in default_model_profiles({"MINE_KEY": "k"}, path=str(table))] == ["mine"]
    table.write_text('{"profiles":[{"id":"x","bogus":1}]}')
    with pytest.raises(ConfigError, match="bogus"):
        load_model_table(str(table))
    table.write_text("not json")
    with pytest.raises(ConfigError):
        load_model_table(str(table))


async def test_load_defaults_adds_the_enabled_ones_for_selection(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("GROK_API_KEY", "ANTHROPIC_API_KEY", "OLLAMA_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    monkeypatch.setenv("GOOGLE_API_KEY", "g-1")
    manager = model_manager(store)
    await manager.load_defaults()
    sel = await manager.select_profile()
    assert sel is not None and (sel.profile_id, sel.model) == ("openai", "gpt-4o-mini")
    sel = await manager.select_profile("gemini-1.5-pro")
    assert sel is not None and sel.profile_id == "google"
    assert await manager.select_profile("claude-3-opus") is None


async def test_an_excluded_profile_that_does_not_serve_the_model_leaves_the_choice_primary(
    store: Store,
) -> None:
    manager = model_manager(store)
    await manager.add_profile(profile("gpt-only", 100, ("gpt-*",)))
    await manager.add_profile(profile("claude", 90, ("claude-*",)))
    await manager.add_profile(profile("both", 80, ("gpt-*", "claude-*")))
    sel = await manager.select_profile("claude-3", exclude=["gpt-only"])
    assert sel is not None and (sel.profile_id, sel.reason) == ("claude", "primary")
    sel = await manager.select_profile("claude-3", exclude=["claude"])
    assert sel is not None and (sel.profile_id, sel.reason) == ("both", "failover")


async def test_load_defaults_keeps_what_is_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    first = model_manager(store)
    added = await first.load_defaults()
    assert [p.id for p in added] == ["grok", "anthropic", "openai", "google", "ollama"]
    await first.disable_profile("openai")  # an operator's decision
    # A restart, and a replica whose environment lacks the key: neither changes what is stored.
    assert await model_manager(store).load_defaults() == []
    monkeypatch.delenv("OPENAI_API_KEY")
    assert await model_manager(store).load_defaults() == []
    assert (await first.get_profile("openai")).enabled is False
    # replace=True writes the defaults over it, enabled by this environment.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    assert len(await first.load_defaults(replace=True)) == 5
    assert (await first.get_profile("openai")).enabled is True


class FakeTokens:
    """A TokenSource (the OAuth manager's side of the contract)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def get_access_token(self, credential_id: str) -> Secret:
        self.asked.append(credential_id)
        return Secret(f"token-for-{credential_id}")


async def test_oauth_profiles_need_a_token_source(store: Store) -> None:
    assert isinstance(FakeTokens(), TokenSource)
    plain = model_manager(store)
    await plain.add_profile(profile("oa", 100, auth=ModelAuth.oauth("cred-1")))

    async def call(c: Any) -> str:
        return str(c.secret.reveal())

    with pytest.raises(ConfigError, match="token_source"):
        await plain.execute(call)
    tokens = FakeTokens()
    manager = ModelProfileManager(store, token_source=tokens)
    assert await manager.execute(call) == "token-for-cred-1"
    assert tokens.asked == ["cred-1"]


async def test_pool_backed_profile_takes_rotating_keys_and_reports_to_the_pool(
    store: Store,
) -> None:
    auth = AuthProfileManager(store)
    for i in range(2):
        await auth.add_profile(
            AuthProfile(id=f"k{i}", provider="openai", api_key=f"sk-pool-key-{i}-0123456789")
        )
    manager = ModelProfileManager(store, auth_manager=auth)
    await manager.add_profile(profile("pooled", 100, auth=ModelAuth.pool("openai")))
    await manager.add_profile(profile("backup", 10))
    used: list[str | None] = []

    async def ok(c: Any) -> str:
        used.append(c.credential_id)
        return "ok"

    assert [await manager.execute(ok) for _ in range(4)] == ["ok"] * 4
    assert sorted(used) == ["k0", "k0", "k1", "k1"]

    # A rate-limited key cools down in its pool; the model breaker does not count it.
    class RateLimited(Exception):
        failure_kind = "rate_limit"
        retry_after_s = 30

    async def limited(c: Any) -> str:
        if c.credential_id is not None:
            used.append(c.credential_id)
            raise RateLimited()
        return "backup"

    used.clear()
    assert await manager.execute(limited) == "backup"
    key = used[-1]
    statuses = {s.id: s for s in await auth.get_status("openai")}
    assert statuses[key].in_cooldown
    assert (await breaker(store, "pooled")).get("streak") in (None, [], {})
    # Both keys cooling: the pooled profile is skipped until the pool's recovery.
    assert await manager.execute(limited) == "backup"
    assert all(s.in_cooldown for s in await auth.get_status("openai"))
    used.clear()
    assert await manager.execute(ok) == "ok"
    assert used == [None]  # the backup ran: the pooled profile is skipped while it cools
    status = {s.id: s for s in await manager.get_status()}
    assert status["pooled"].cooldown_remaining_ms > 0


async def test_pool_backed_profile_without_auth_manager_is_a_config_error(store: Store) -> None:
    manager = model_manager(store)
    await manager.add_profile(profile("pooled", 100, auth=ModelAuth.pool("openai")))

    async def call(c: Any) -> str:
        return "x"

    with pytest.raises(ConfigError, match="auth_manager"):
        await manager.execute(call)


async def test_env_profile_whose_variable_is_unset_here_is_skipped_not_punished(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COORD_TEST_UNSET_KEY", raising=False)
    manager = model_manager(store)
    await manager.add_profile(profile("envy", 100, auth=ModelAuth.env("COORD_TEST_UNSET_KEY")))
    await manager.add_profile(profile("other", 50))

    async def call(c: Any) -> str:
        return c.profile.id

    assert await manager.execute(call) == "other"
    assert (await breaker(store, "envy")).get("failures_total") is None
    monkeypatch.setenv("COORD_TEST_UNSET_KEY", "sk-now-set")
    fresh = model_manager(store)  # a new process would read the variable anew
    assert await fresh.execute(call) == "envy"


async def test_breakers_survive_a_new_manager_and_deleted_functions(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 3)
    await store.unload_functions()
    fresh = model_manager(store)
    sel = await fresh.select_profile()
    assert sel is not None and sel.profile_id == "secondary"
    assert (await breaker(store, "primary"))["state"] == "open"


async def test_a_definition_only_python_finds_broken_is_skipped_too(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    keys = ModelKeys(store.namespace)
    raw = await store.command("HGET", keys.profiles, "secondary")
    record = orjson.loads(raw)
    record["base_url"] = "ftp://not-http"  # a string to the script, invalid to ModelProfile
    await store.command("HSET", keys.profiles, "secondary", orjson.dumps(record).decode())
    await fail(manager, 3)  # primary opens
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "tertiary"
    assert "secondary" in caplog.text
    nxt = await manager.get_next_available_profile(sel, kind="server")
    assert nxt is None
    advance_time(store, MINUTE_MS)
    probe = await manager.select_profile()
    assert probe is not None and probe.profile_id == "primary"
    nxt = await manager.get_next_available_profile(probe, kind="server")
    assert nxt is not None and nxt.profile_id == "tertiary"
    record["auth"] = {"kind": "telepathy"}  # refused by the script itself
    await store.command("HSET", keys.profiles, "secondary", orjson.dumps(record).decode())
    status = {s.id: s for s in await manager.get_status()}
    assert status["secondary"].broken_field == "auth"


async def test_a_token_source_failure_is_an_auth_failure_and_an_outage_propagates(
    store: Store,
) -> None:
    from coordinator import ReauthRequiredError, StoreUnavailableError

    class Broken:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        async def get_access_token(self, credential_id: str) -> Secret:
            raise self.exc

    async def call(c: Any) -> str:
        return str(c.profile.id)

    await model_manager(store).add_profile(profile("oa", 100, auth=ModelAuth.oauth("cred-1")))
    await model_manager(store).add_profile(profile("plain", 10))
    manager = ModelProfileManager(store, token_source=Broken(ReauthRequiredError("sign in")))
    assert await manager.execute(call) == "plain"
    failure = next(d for t, p, d in await events(store) if t == "profile:failure" and p == "oa")
    assert failure["kind"] == "auth"
    outage = ModelProfileManager(store, token_source=Broken(StoreUnavailableError("down")))
    with pytest.raises(StoreUnavailableError):
        await outage.execute(call)


async def test_a_secret_in_an_error_message_never_reaches_errors_or_events(store: Store) -> None:
    manager = model_manager(store)
    odd_key = "plainword1234"  # not shaped like a token: only knowing it can mask it
    await manager.add_profile(profile("k", 100, auth=ModelAuth.api_key(odd_key)))

    async def leaky(c: Any) -> str:
        raise RuntimeError(f"provider said: bad key {c.secret.reveal()} (sk-abcdefghijklmnop)")

    from coordinator import AllProfilesUnavailableError

    with pytest.raises(AllProfilesUnavailableError) as info:
        await manager.execute(leaky)
    text = str(info.value) + repr(info.value.attempts)
    assert odd_key not in text and "sk-abcdefghijklmnop" not in text and "****" in text
    for _t, _p, data in await events(store):
        assert odd_key not in str(data)
    status = {s.id: s for s in await manager.get_status()}
    assert status["k"].last_error is not None and odd_key not in status["k"].last_error


async def test_selection_is_the_same_whatever_the_shape_of_the_definition_json(
    store: Store,
) -> None:
    # Selection decodes each definition: model names with quotes, backslashes, brackets and
    # commas are matched as they are, and the key order of the JSON changes nothing.
    manager = model_manager(store)
    keys = ModelKeys(store.namespace)
    odd = ('a"quote*', "back\\slash", 'br]ack,"et', "plain-é")
    await manager.add_profile(profile("grok", 100, ("grok-*",), default_model="grok-2-latest"))
    await manager.add_profile(profile("claude", 90, ("claude-3-opus", "claude-3-5-*")))
    await manager.add_profile(profile("odd", 80, odd))
    await manager.add_profile(profile("local", 10, ("*",)))
    wanted_models = [
        None, "grok-beta", "claude-3-opus", "claude-3-5-sonnet", "claude-2", 'a"quote-1',
        "back\\slash", "br]ack,\"et", "plain-é", "plain",
    ]  # fmt: skip

    async def choices() -> list[tuple[str, str | None, str] | None]:
        out: list[tuple[str, str | None, str] | None] = []
        for excluded in ([], ["grok"], ["grok", "claude"]):
            for wanted in wanted_models:
                sel = await manager.select_profile(wanted, exclude=excluded)
                out.append(None if sel is None else (sel.profile_id, sel.model, sel.reason))
        return out

    as_written = await choices()
    assert as_written[0] == ("grok", "grok-2-latest", "primary")
    assert as_written[6] == ("odd", "back\\slash", "primary")
    assert as_written[7] == ("odd", 'br]ack,"et', "primary")
    assert as_written[len(wanted_models)] == ("claude", "claude-3-opus", "failover")
    assert as_written[2 * len(wanted_models)] == ("odd", "back\\slash", "failover")
    # The same definitions with their keys sorted.
    for pid in ("grok", "claude", "odd", "local"):
        record = orjson.loads(await store.command("HGET", keys.profiles, pid))
        sorted_raw = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
        assert not sorted_raw.startswith('{"enabled"')
        await store.command("HSET", keys.profiles, pid, sorted_raw)
    assert await choices() == as_written


async def test_a_definition_edited_to_disabled_is_not_chosen(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    keys = ModelKeys(store.namespace)
    raw = await store.command("HGET", keys.profiles, "primary")
    # Hand edits that leave the profile in the ranked index: a definition saying disabled is
    # skipped (and the index repaired); so is one with a second "enabled" key, which JSON
    # readers take as the value.
    await store.command("HSET", keys.profiles, "primary", raw.replace("true", "false", 1))
    sel = await manager.select_profile()
    assert sel is not None and (sel.profile_id, sel.reason) == ("secondary", "primary")
    assert await store.command("ZSCORE", keys.ranked, "primary") is None
    await manager.add_profile(profile("secondary", 90))
    raw = await store.command("HGET", keys.profiles, "secondary")
    await store.command("HSET", keys.profiles, "secondary", raw[:-1] + ',"enabled":false}')
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "tertiary"
    assert await store.command("ZSCORE", keys.ranked, "secondary") is None


async def test_a_definition_only_python_rejects_is_broken_in_the_status(store: Store) -> None:
    # The script accepts these definitions (every field it reads is sound); this package cannot
    # use them, so selection skips them and the status must not call them healthy.
    manager = model_manager(store)
    await add_three(manager)
    await manager.add_profile(profile("keyed", 70, auth=ModelAuth.api_key("sk-test-abcdef123456")))
    keys = ModelKeys(store.namespace)
    record = orjson.loads(await store.command("HGET", keys.profiles, "keyed"))
    record["auth"] = {"kind": "api_key", "cipher_text": record["auth"]["ciphertext"]}  # misspelt
    await store.command("HSET", keys.profiles, "keyed", orjson.dumps(record).decode())
    record = orjson.loads(await store.command("HGET", keys.profiles, "tertiary"))
    del record["id"]
    await store.command("HSET", keys.profiles, "tertiary", orjson.dumps(record).decode())
    status = {s.id: s for s in await manager.get_status()}
    assert status["keyed"].broken_field == "auth.ciphertext" and not status["keyed"].available
    assert status["tertiary"].broken_field == "definition" and not status["tertiary"].available
    assert status["primary"].broken_field is None and status["primary"].available


@pytest.mark.parametrize("which", ["profiles", "breakers", "ranked"])
async def test_a_models_key_of_the_wrong_type_is_named(store: Store, which: str) -> None:
    manager = model_manager(store)
    await add_three(manager)
    key = getattr(ModelKeys(store.namespace), which)
    await store.command("DEL", key)
    await store.command("SET", key, "garbage")
    with pytest.raises(CorruptStateError) as info:
        await manager.select_profile()
    assert info.value.subject == key and "string" in str(info.value)
    if which == "profiles":
        with pytest.raises(CorruptStateError):
            await manager.list_profiles()
    await store.command("DEL", key)  # the repair: delete it (and add the profiles again)
    await add_three(manager)
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"


async def test_record_failure_by_id_redacts_the_key_on_a_replica_that_never_parsed_it(
    store: Store,
) -> None:
    odd_key = "plainword1234"  # not shaped like a token: only knowing it can mask it
    await model_manager(store).add_profile(profile("k", 100, auth=ModelAuth.api_key(odd_key)))
    fresh = model_manager(store)  # another replica: it never selected nor parsed "k"
    await fresh.record_failure("k", "auth", error=f"Incorrect API key provided: {odd_key}.")
    await fresh.get_next_available_profile("k", error=f"again {odd_key}", kind="auth")
    status = {s.id: s for s in await fresh.get_status()}
    assert status["k"].last_error is not None and odd_key not in status["k"].last_error
    for _t, _p, data in await events(store):
        assert odd_key not in str(data)
