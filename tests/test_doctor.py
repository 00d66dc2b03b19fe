"""``coordinator doctor`` against a healthy Redis, one without persistence, one that may evict
keys, an unreachable URL, a wrong secret key, old libraries and a user short of permissions."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from coordinator import AuthProfile, AuthProfileManager, connect, generate_key
from coordinator.doctor import Finding, diagnose, worst
from coordinator.testing import RedisCluster, RedisServer, free_port

from .conftest import unique_namespace


def by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


def run_doctor(url: str, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The command as a user runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "--url", url, "doctor", *flags],
        capture_output=True,
        text=True,
        env=env,
    )
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope="module")
def healthy() -> Iterator[RedisServer]:
    """Append-only file on, noeviction: nothing to report."""
    with RedisServer(aof=True) as server:
        yield server


async def test_a_healthy_redis_has_no_finding_to_act_on(healthy: RedisServer) -> None:
    findings = await diagnose(healthy.url, namespace=unique_namespace())
    checks = by_check(findings)
    assert set(checks) >= {
        "connectivity",
        "version",
        "mode",
        "functions",
        "persistence",
        "maxmemory-policy",
        "secret key",
        "acl",
        "clock",
    }
    assert worst(findings) == "ok", [f for f in findings if f.level != "ok"]
    assert checks["mode"][0].message == "standalone"
    assert "append-only file on" in checks["persistence"][0].message
    code, out, err = run_doctor(healthy.url, "--json")
    assert code == 0, err
    assert {f["level"] for f in json.loads(out)} == {"ok"}
    code, out, _ = run_doctor(healthy.url, "--strict")
    assert code == 0 and "OK     persistence: append-only file on" in out


async def test_no_persistence_is_a_warning_with_what_to_do() -> None:
    with RedisServer("--save", "", "--appendonly", "no") as server:
        findings = await diagnose(server.url)
        (persistence,) = by_check(findings)["persistence"]
        assert persistence.level == "warn" and worst(findings) == "warn"
        assert "lost when Redis restarts" in persistence.message
        assert "appendonly yes" in persistence.action
        code, out, _ = run_doctor(server.url)
        assert code == 0 and "WARN   persistence" in out and "→ turn on AOF" in out
        assert run_doctor(server.url, "--strict")[0] == 1


async def test_an_evicting_maxmemory_policy_is_a_warning() -> None:
    with RedisServer("--maxmemory-policy", "allkeys-lru", aof=True) as server:
        findings = await diagnose(server.url)
        (policy,) = by_check(findings)["maxmemory-policy"]
        assert policy.level == "warn" and "allkeys-lru" in policy.message
        assert "evict coordinator keys" in policy.message and "noeviction" in policy.action
        code, out, _ = run_doctor(server.url, "--json")
        rows = {f["check"]: f for f in json.loads(out)}
        assert code == 0 and rows["maxmemory-policy"]["level"] == "warn"


async def test_an_unreachable_url_is_one_error_and_exit_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=1"
    findings = await diagnose(url)
    assert [(f.check, f.level) for f in findings] == [("connectivity", "error")]
    assert "check the URL" in findings[0].action
    code, out, err = run_doctor(url)
    assert code == 1 and err == "" and "ERROR  connectivity" in out
    assert "Traceback" not in out + err
    code, out, _ = run_doctor(url, "--json")
    assert code == 1 and json.loads(out)[0]["level"] == "error"


async def test_a_wrong_secret_key_and_old_libraries(healthy: RedisServer) -> None:
    namespace = unique_namespace()
    right = generate_key()
    store = await connect(healthy.url, namespace=namespace, secret_key=right)
    secret = "sk-test-doctor-0123456789abcdef"
    try:
        await AuthProfileManager(store).add_profile(
            AuthProfile(id="k1", provider="openai", api_key=secret)
        )
        old = "coordinator_pick_00000000feedf00d"
        await store.client.function_load(
            f"#!lua name={old}\nredis.register_function('{old}', function() return 1 end)",
            replace=True,
        )
        ok = by_check(await diagnose(healthy.url, namespace=namespace, secret_key=right))
        assert ok["secret key"][0].level == "ok" and "'k1'" in ok["secret key"][0].message
        (_, others) = ok["functions"]
        assert others.level == "warn" and "functions --prune" in others.action
        wrong = await diagnose(healthy.url, namespace=namespace, secret_key=generate_key())
        (key,) = by_check(wrong)["secret key"]
        assert key.level == "error" and "cannot decrypt pool profile 'k1'" in key.message
        assert secret not in json.dumps([f.to_json() for f in wrong])
        none = by_check(await diagnose(healthy.url, namespace=namespace, secret_key=""))
        assert none["secret key"][0].level == "error"
        assert "COORDINATOR_SECRET_KEY" in none["secret key"][0].action
    finally:
        await store.client.function_delete(old)
        await store.close()


async def test_a_user_without_a_needed_permission(healthy: RedisServer) -> None:
    user, password = f"limited{free_port()}", "pw-limited-0123"
    admin = await connect(healthy.url, namespace=unique_namespace())
    try:
        await admin.command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all", "-xread")
        url = f"redis://{user}:{password}@127.0.0.1:{healthy.port}/0"
        (acl,) = by_check(await diagnose(url))["acl"]
        assert acl.level == "error" and "may not run XREAD" in acl.message
        assert acl.action.startswith(f"ACL SETUSER {user}")
        code, out, err = run_doctor(url)
        assert code == 1 and password not in out + err
    finally:
        await admin.command("ACL", "DELUSER", user)
        await admin.close()


@pytest.mark.cluster
async def test_a_cluster_is_checked_on_its_nodes(redis_cluster: RedisCluster) -> None:
    findings = await diagnose(redis_cluster.url, namespace=unique_namespace())
    checks = by_check(findings)
    assert checks["mode"][0].message == "cluster"
    assert checks["acl"][0].level == "ok" and checks["version"][0].level == "ok"
    assert worst(findings) != "error", findings
