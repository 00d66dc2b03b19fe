"""Operators' tools on model profiles (issue 17) and redaction of pool keys (issue 15 §3), on
each backend: a forced-open breaker, failure counts by kind, releasing a sticky model session,
and a pool key of any shape echoed in a reported error."""

from __future__ import annotations

import asyncio
import io
import json
import math
from typing import Any

import pytest
from rich.console import Console

from coordinator import (
    AllProfilesUnavailableError,
    AuthProfile,
    AuthProfileManager,
    ConfigError,
    CorruptStateError,
    ModelAuth,
    ModelProfile,
    ModelProfileManager,
    ProfileNotFoundError,
    Store,
    connect,
)
from coordinator.cli import render
from coordinator.cli.main import main
from coordinator.failures import FailureKind
from coordinator.overview import Managers, fleet_status, recent_events
from coordinator.testing import RedisServer, advance_time, hold_time

from .conftest import unique_namespace
from .model_helpers import (
    MINUTE_MS,
    add_three,
    breaker,
    breaker_fields,
    events,
    fail,
    model_manager,
    succeed,
)
from .wire import Wire, wire_target

KINDS = [k.value for k in FailureKind if k is not FailureKind.CALLER]


def _opened(found: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for t, p, d in found if t == "profile:circuit-opened" and p == "primary"]


# -- forced open --------------------------------------------------------------------------


async def test_a_forced_open_takes_the_profile_out_until_its_time_then_probes(
    store: Store,
) -> None:
    manager = model_manager(store)
    await add_three(manager)
    now = await hold_time(store)
    before = await manager.select_profile()
    assert before is not None and (before.profile_id, before.epoch) == ("primary", 0)
    status = await manager.open_breaker("primary", for_s=30)
    assert (status.id, status.state, status.epoch, status.open_remaining_ms) == (
        "primary",
        "open",
        1,
        30_000,
    )
    assert not status.available and status.enabled
    assert _opened(await events(store)) == [
        {
            "reason": "forced",
            "epoch": 1,
            "open_ms": 30_000,
            "until_ms": now + 30_000,
            "reopens": 0,
            "from": "closed",
        }
    ]
    chosen = await manager.select_profile()
    assert chosen is not None and (chosen.profile_id, chosen.reason) == ("secondary", "failover")
    # A late report of a selection made before the forced open does not count.
    late = await manager.record_failure(before, "server", error="late")
    assert (late.status, late.state) == ("stale", "open")
    advance_time(store, 29_999)  # still open 1 ms before its time
    assert (await manager.select_profile()).profile_id == "secondary"  # type: ignore[union-attr]
    advance_time(store, 1)  # then half-open: a probe decides, as after any opening
    probe = await manager.select_profile()
    assert probe is not None and (probe.profile_id, probe.reason) == ("primary", "testing")
    await manager.record_success(probe)
    assert (await breaker(store, "primary"))["state"] == "closed"


async def test_a_forced_open_lasts_the_reset_timeout_by_default_and_a_failed_probe_reopens(
    store: Store,
) -> None:
    manager = model_manager(store, breaker={"reset_timeout_ms": 45_000})
    await add_three(manager)
    await hold_time(store)
    assert (await manager.open_breaker("primary")).open_remaining_ms == 45_000
    advance_time(store, 45_000)
    probe = await manager.select_profile()
    assert probe is not None and probe.reason == "testing"
    await manager.record_failure(probe, "server", error="still down")
    state = await breaker(store, "primary")  # the normal path: re-opened for twice as long
    assert (state["state"], state["reopens"], state["open_ms"]) == ("open", 1, 90_000)


async def test_a_forced_open_of_a_half_open_breaker_drops_its_probe_permits(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await hold_time(store)
    await fail(manager, 3)
    advance_time(store, MINUTE_MS)
    probe = await manager.select_profile()
    assert probe is not None and probe.reason == "testing"
    status = await manager.open_breaker("primary", for_s=0.001)
    assert (status.state, status.open_remaining_ms, status.probes_in_flight) == ("open", 1, 0)
    assert (await manager.record_success(probe)).status == "stale"  # its permit is gone
    assert (await breaker(store, "primary"))["reopens"] == 0  # kept, as it was


async def test_open_breaker_refuses_bad_input_and_writes_nothing(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    before = await breaker_fields(store, "primary")
    with pytest.raises(ProfileNotFoundError):
        await manager.open_breaker("nope")
    for bad in (0, -1, math.nan, math.inf, True, "5", 10 * 365 * 86400 + 1):
        with pytest.raises(ConfigError) as info:
            await manager.open_breaker("primary", for_s=bad)  # type: ignore[arg-type]
        assert info.value.field == "for_s"
    await store.command("HSET", manager.keys.breakers, "primary:epoch", "x7")
    with pytest.raises(CorruptStateError) as corrupt:
        await manager.open_breaker("primary", for_s=10)
    assert corrupt.value.subject == manager.keys.breakers
    assert corrupt.value.field == "primary:epoch" and "'primary'" in str(corrupt.value)
    assert await breaker_fields(store, "primary") == {**before, "epoch": "x7"}
    assert await manager.reset_breaker("primary") == "corrupt"
    assert (await manager.open_breaker("primary", for_s=10)).state == "open"


async def test_close_breaker_undoes_a_forced_open_and_keeps_the_counts(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    await fail(manager, 1)
    await manager.open_breaker("primary", for_s=600)
    assert await manager.close_breaker("primary") == "open"
    chosen = await manager.select_profile()
    assert chosen is not None and (chosen.profile_id, chosen.reason) == ("primary", "primary")
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert status.failures_by_kind == {"server": 1} and status.epoch == 2
    assert (status.failures_total, status.last_error) == (1, "500 from test")
    closed = [d for t, p, d in await events(store) if t == "profile:circuit-closed"]
    assert closed == [{"epoch": 2, "reason": "forced", "from": "open"}]
    assert await manager.close_breaker("primary") == "closed"
    with pytest.raises(ProfileNotFoundError):
        await manager.close_breaker("nope")


# -- failure counts by kind ---------------------------------------------------------------


async def test_status_counts_failures_by_kind_until_a_reset(store: Store) -> None:
    manager = model_manager(store, breaker={"failure_threshold": 100, "min_calls": 20})
    await add_three(manager)
    for kind in [*KINDS, "rate_limit", "server", "server"]:
        result = await manager.record_failure("primary", kind, error=f"{kind} happened")
        assert result.status == "recorded"
    assert (await manager.record_failure("primary", "caller")).status == "ignored"
    sel = await manager.select_profile()
    assert sel is not None
    await manager.release(sel)  # not a failure
    status = {s.id: s for s in await manager.get_status()}
    expected = dict.fromkeys(KINDS, 1) | {"rate_limit": 2, "server": 3}
    assert status["primary"].failures_by_kind == expected
    assert status["primary"].failures_total == 9 and status["secondary"].failures_by_kind == {}
    # As an operator reads them: flat fields of the breakers hash.
    fields = await breaker_fields(store, "primary")
    assert {k: fields[f"failures_{k}"] for k in ("server", "billing")} == {
        "server": "3",
        "billing": "1",
    }
    assert await manager.close_breaker("primary") == "closed"
    assert (await manager.get_status())[0].failures_by_kind == expected  # close keeps them
    await manager.reset_breaker("primary")
    after = {s.id: s for s in await manager.get_status()}["primary"]
    assert after.failures_by_kind == {} and after.failures_total == 9
    remaining = await breaker_fields(store, "primary")
    assert not any(f"failures_{kind}" in remaining for kind in KINDS)


async def test_a_profile_removed_with_nothing_to_keep_leaves_no_count_behind(store: Store) -> None:
    manager = model_manager(store, breaker={"window_size": 2, "min_calls": 2})
    await add_three(manager)
    await fail(manager, 1)
    await succeed(manager, 2)  # the failure has left the window and the streak
    assert (await breaker_fields(store, "primary"))["failures_server"] == "1"
    assert await manager.remove_profile("primary")
    assert set(await breaker_fields(store, "primary")) == {"epoch"}


@pytest.mark.parametrize("garbage", ["abc", "-3", "2.5", ""])
async def test_a_corrupt_count_is_named_by_the_status_and_stops_nothing(
    store: Store, garbage: str
) -> None:
    manager = model_manager(store, breaker={"failure_threshold": 10})
    await add_three(manager)
    await manager.record_failure("primary", "timeout", error="slow")
    await store.command("HSET", manager.keys.breakers, "primary:failures_server", garbage)
    status = {s.id: s for s in await manager.get_status()}["primary"]
    assert (status.broken_field, status.state, status.available) == (
        "breaker.failures_server",
        "closed",
        True,
    )
    assert status.failures_by_kind == {"timeout": 1}
    # Selection and reports go on: the count is left as it is, the others still count.
    sel = await manager.select_profile()
    assert sel is not None and sel.profile_id == "primary"
    assert (await manager.record_failure(sel, "server", error="500")).status == "recorded"
    await manager.record_failure("primary", "timeout", error="slow")
    fields = await breaker_fields(store, "primary")
    assert (fields["failures_server"], fields["failures_timeout"]) == (garbage, "2")
    # The operator's view renders it, naming the field.
    managers = Managers.over(store)
    text = _rendered(render.fleet_tables(await fleet_status(managers)))
    await managers.close()
    assert "closed, broken breaker.failures_server" in text and "timeout 2" in text
    await manager.close_breaker("primary")  # keeps the counts, the broken one too
    kept = {s.id: s for s in await manager.get_status()}["primary"]
    assert kept.broken_field == "breaker.failures_server"
    await manager.reset_breaker("primary")  # the repair
    repaired = {s.id: s for s in await manager.get_status()}["primary"]
    assert repaired.broken_field is None and repaired.failures_by_kind == {}


async def test_selection_and_a_success_report_never_read_the_counts(
    redis_server: RedisServer, secret_key: str
) -> None:
    # MONITOR shows every command a script runs: the counts are written by failure reports
    # and read by the status only.
    import redis.asyncio as aioredis

    store = await connect(redis_server.url, namespace=unique_namespace(), secret_key=secret_key)
    client = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        manager = model_manager(store, breaker={"window_size": 4, "min_calls": 4})
        await add_three(manager)
        await succeed(manager, 4)
        async with client.monitor() as monitor:

            async def seen(marker: str) -> list[str]:
                await client.echo(marker)
                out: list[str] = []
                while marker not in (line := (await monitor.next_command())["command"]):
                    out.append(line)
                return out

            await seen("--marker-start--")
            await succeed(manager, 1)  # a selection and a steady success
            steady = await seen("--marker-steady--")
            await fail(manager, 1)
            failure = await seen("--marker-failure--")
            await succeed(manager, 1)  # a success that ends a streak (it writes)
            unsteady = await seen("--marker-unsteady--")
            await manager.get_status()
            status = await seen("--marker-status--")
        assert len(steady) >= 2 and len(unsteady) > len(steady)
        counts = [f"primary:failures_{kind}" for kind in KINDS]
        assert not any(name in c for c in [*steady, *unsteady] for name in counts)
        assert any("HINCRBY" in c and "primary:failures_server" in c for c in failure)
        assert any("primary:failures_server" in c for c in status)
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize("wire_backend", ["redis", "cluster"])
async def test_each_operator_call_is_one_round_trip_on_the_wire(
    wire_backend: str, request: pytest.FixtureRequest, secret_key: str
) -> None:
    url, ports = wire_target(wire_backend, request)
    store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
    try:
        manager = model_manager(store)
        await add_three(manager)
        await manager.select_profile(session_id="chat-1")
        calls = {
            "open_breaker": lambda: manager.open_breaker("primary", for_s=30),
            "close_breaker": lambda: manager.close_breaker("primary"),
            "reset_breaker": lambda: manager.reset_breaker("primary"),
            "release_session": lambda: manager.release_session("chat-1"),
        }
        async with Wire(ports) as wire:
            await wire.sent("--marker-start--")
            for name, call in calls.items():
                await call()
                assert await wire.sent(f"--marker-{name}--") == ["FCALL"], name
    finally:
        await store.close()


# -- sticky model sessions ----------------------------------------------------------------


async def test_release_session_forgets_a_sticky_model_session(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    pinned = await manager.select_profile(session_id="chat-1", exclude=["primary"])
    assert pinned is not None and pinned.profile_id == "secondary"
    again = await manager.select_profile(session_id="chat-1")
    assert again is not None and again.profile_id == "secondary"  # sticky
    assert await manager.release_session("chat-1") is True
    assert await manager.release_session("chat-1") is False
    fresh = await manager.select_profile(session_id="chat-1")
    assert fresh is not None and fresh.profile_id == "primary"
    with pytest.raises(ConfigError):
        await manager.release_session("two words")


# -- a pool key echoed in an error (issue 15 §3) ------------------------------------------

PLAIN = "PlainAbc12Zq9"
OTHER = "OtherPlainKey7"


def _rendered(renderable: Any) -> str:
    """What the command line prints for ``renderable`` (a wide console, no colours)."""
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


async def test_a_pool_key_of_any_shape_echoed_in_a_model_failure_is_never_stored(
    store: Store,
    secret_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Neither key looks like a token: only knowing the pool's keys can remove them.
    monkeypatch.setenv("TEAM_B_KEY", OTHER)
    pools = AuthProfileManager(store)
    models = ModelProfileManager(store, auth_manager=pools)
    await pools.add_profile(AuthProfile(id="team-a", provider="openai", api_key=PLAIN))
    await pools.add_profile(AuthProfile(id="team-b", provider="openai", api_key_env="TEAM_B_KEY"))
    await models.add_profile(
        ModelProfile("gpt", "openai", ModelAuth.pool("openai"), "https://x.test/v1", ["gpt-*"])
    )
    held = {(await pools.acquire("openai")).id for _ in range(2)}  # the app uses both keys
    assert held == {"team-a", "team-b"}
    text = f"Incorrect API key provided: {PLAIN}. (also tried {OTHER})"
    first = await models.record_failure("gpt", "auth", error=text)  # by id
    assert first.status == "recorded"
    await models.record_failure("gpt", "server", error=RuntimeError(text))
    await models.get_next_available_profile("gpt", error=text, kind="server")

    async def echoing(call: Any) -> str:  # the call fails, echoing the key it did not use
        other = PLAIN if call.credential_id == "team-b" else OTHER
        raise RuntimeError(f"503 upstream; last key {other}")

    await models.reset_breaker("gpt")
    with pytest.raises(AllProfilesUnavailableError) as info:
        await models.execute(echoing, max_attempts=1)
    assert "****" in info.value.attempts[0].message

    status = {s.id: s for s in await models.get_status()}["gpt"]
    assert status.last_error is not None and "****" in status.last_error
    managers = Managers.over(store)
    try:
        fleet = await fleet_status(managers)
        outputs = [
            str(await store.command("HGETALL", models.keys.breakers)),
            str(await store.command("XRANGE", models.keys.events, "-", "+")),
            str(await models.get_status()),
            json.dumps(await pools.export_state()),
            json.dumps(fleet.to_json(), default=str),
            _rendered(render.fleet_tables(fleet)),
            str(await recent_events(store, limit=100)),
        ]
    finally:
        await managers.close()
    if store.backend != "memory":  # the command line, as an operator runs it
        monkeypatch.setenv("COORDINATOR_SECRET_KEY", secret_key)
        base = ["--url", store.url, "--namespace", store.namespace]
        for args in (["status"], ["status", "--json"], ["events", "tail", "-n", "100"], ["export"]):
            assert await asyncio.to_thread(main, [*base, *args]) == 0  # (its own loop)
            outputs.append(capsys.readouterr().out)
        assert "gpt" in outputs[-4]
    for output in outputs:
        assert PLAIN not in output and OTHER not in output
    assert any("Incorrect API key provided: ****. (also tried ****)" in o for o in outputs)
    await models.close()
    await pools.close()
