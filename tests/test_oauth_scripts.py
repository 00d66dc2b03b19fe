"""Contract tests of the OAuth Lua scripts, on the embedded backend, Redis and Redis Cluster.

They call the scripts directly (no provider involved): a state is consumed exactly once, the
refresh lock has one holder and increasing fences, a commit is a compare-and-set on the
credential version, ``invalid_grant`` marks a credential only if nobody refreshed it meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

from coordinator import Store
from coordinator.store.keys import OAuthKeys
from coordinator.testing import advance_time

LEAD_MS = 300_000
LOCK_MS = 30_000


def keys(store: Store) -> OAuthKeys:
    return OAuthKeys(store.namespace)


async def begin(store: Store, digest: str, provider: str = "p1", ttl_ms: int = 600_000) -> Any:
    k = keys(store)
    record = {"provider": provider, "redirect_uri": "http://127.0.0.1/cb", "verifier": "ct"}
    return await store.run(
        "oauth_begin",
        [k.state(digest), k.events],
        [orjson.dumps(record).decode(), ttl_ms, provider],
    )


async def consume(store: Store, digest: str, provider: str = "") -> Any:
    k = keys(store)
    return await store.run("oauth_consume", [k.state(digest), k.events], [provider])


async def save(
    store: Store,
    cid: str,
    provider: str = "p1",
    expires_in_ms: int = 3_600_000,
    refresh: str | None = "ct-refresh-1",
) -> Any:
    k = keys(store)
    fields = {"access_token": "ct-access-1", "token_type": "Bearer", "scopes": "a b"}
    if refresh is not None:
        fields["refresh_token"] = refresh
    return await store.run(
        "oauth_save",
        [
            k.credential(cid),
            k.provider_credentials(provider),
            k.credentials,
            k.defaults,
            k.expiry,
            k.events,
        ],
        [cid, provider, orjson.dumps(fields).decode(), expires_in_ms, "{}"],
    )


async def acquire(
    store: Store, cid: str, owner: str, mode: str = "get", seen: int | None = None
) -> dict[str, Any]:
    k = keys(store)
    args: list[Any] = [cid, owner, LEAD_MS, LOCK_MS, mode]
    if seen is not None:
        args.append(seen)
    reply = await store.run(
        "oauth_acquire", [k.credential(cid), k.lock(cid), k.fences, k.events], args
    )
    names = ("code", "fence", "version", "access", "refresh", "expires_at", "remaining", "wait")
    return dict(zip(names, reply, strict=False))


async def commit(
    store: Store,
    cid: str,
    owner: str,
    fence: int,
    base: int,
    refresh: str | None = None,
    expires_in_ms: int = 3_600_000,
) -> Any:
    k = keys(store)
    fields = {"access_token": f"ct-access-{owner}", "token_type": "Bearer"}
    if refresh is not None:
        fields["refresh_token"] = refresh
    return await store.run(
        "oauth_commit",
        [k.credential(cid), k.expiry, k.lock(cid), k.events],
        [cid, owner, fence, base, orjson.dumps(fields).decode(), expires_in_ms],
    )


async def events(store: Store) -> list[dict[str, str]]:
    return [fields for _id, fields in await store.client.xrange(keys(store).events)]


# -- login state ------------------------------------------------------------------------------


async def test_state_is_consumed_exactly_once(store: Store) -> None:
    assert (await begin(store, "d1"))[0] == 1
    first = await consume(store, "d1")
    assert first[0] == 1
    assert orjson.loads(first[1])["provider"] == "p1"
    assert list(await consume(store, "d1")) == [0, "replayed", "p1"]
    assert list(await consume(store, "never-issued")) == [0, "unknown", ""]
    types = [e["type"] for e in await events(store)]
    assert types == ["auth:started", "auth:failed", "auth:failed"]


async def test_concurrent_consumption_has_exactly_one_winner(store: Store) -> None:
    await begin(store, "race")
    replies = await asyncio.gather(*(consume(store, "race") for _ in range(25)))
    winners = [r for r in replies if r[0] == 1]
    assert len(winners) == 1
    assert all(r[1] == "replayed" for r in replies if r[0] == 0)


async def test_state_expires_on_redis_time(store: Store) -> None:
    await begin(store, "old", ttl_ms=600_000)
    advance_time(store, 599_000)
    await begin(store, "young", ttl_ms=600_000)
    advance_time(store, 2_000)
    assert list(await consume(store, "old")) == [0, "expired", "p1"]
    assert (await consume(store, "young"))[0] == 1


async def test_state_for_another_provider_is_refused_and_used_up(store: Store) -> None:
    await begin(store, "d2", provider="p1")
    assert list(await consume(store, "d2", provider="p2")) == [0, "provider", "p1"]
    assert (await consume(store, "d2", provider="p1"))[1] == "replayed"


async def test_a_state_is_never_issued_twice(store: Store) -> None:
    assert (await begin(store, "dup"))[0] == 1
    assert list(await begin(store, "dup")) == [0, "exists"]


# -- credentials ------------------------------------------------------------------------------


async def test_save_sets_default_expiry_index_and_version(store: Store) -> None:
    k = keys(store)
    now = await store.time_ms()
    version, expires_at, is_default, created = await save(store, "p1:a")
    assert (version, is_default, created) == (1, 1, 1)
    assert now + 3_600_000 <= int(expires_at) <= now + 3_600_000 + 5_000
    assert int(float(await store.client.zscore(k.expiry, "p1:a"))) == int(expires_at)
    version, _, is_default, created = await save(store, "p1:b")
    assert (version, is_default, created) == (1, 0, 1)
    # A new login of the same account: new version, still default, refresh token kept.
    version, _, is_default, created = await save(store, "p1:a", refresh=None)
    assert (version, is_default, created) == (2, 1, 0)
    assert await store.client.hget(k.credential("p1:a"), "refresh_token") == "ct-refresh-1"


async def test_unknown_expiry_is_never_stale_and_not_indexed(store: Store) -> None:
    await save(store, "p1:forever", expires_in_ms=-1, refresh=None)
    advance_time(store, 10 * 365 * 86_400_000)
    got = await acquire(store, "p1:forever", "o1")
    assert got["code"] == "fresh"
    assert await store.client.zscore(keys(store).expiry, "p1:forever") is None


async def test_remove_chooses_the_newest_remaining_default(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    advance_time(store, 10)
    await save(store, "p1:b")
    advance_time(store, 10)
    await save(store, "p1:c")
    remove_keys = [
        k.credential("p1:a"),
        k.provider_credentials("p1"),
        k.credentials,
        k.defaults,
        k.expiry,
        k.lock("p1:a"),
        k.events,
    ]
    reply = await store.run("oauth_remove", remove_keys, ["p1:a", "p1", "credential:removed", "{}"])
    assert list(reply) == [1, "p1:c"]
    assert await store.client.hget(k.defaults, "p1") == "p1:c"
    assert await store.client.zscore(k.expiry, "p1:a") is None
    assert (await store.run("oauth_remove", remove_keys, ["p1:a", "p1", "x", "{}"]))[0] == 0


# -- refresh lock, fences, commit -------------------------------------------------------------


async def test_fresh_token_needs_no_lock(store: Store) -> None:
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1")
    assert got["code"] == "fresh"
    assert got["access"] == "ct-access-1"
    assert await store.client.get(keys(store).lock("p1:a")) is None


async def test_refresh_lock_has_exactly_one_holder(store: Store) -> None:
    await save(store, "p1:a")
    advance_time(store, 3_600_000 - LEAD_MS + 1)  # inside the lead time
    replies = await asyncio.gather(*(acquire(store, "p1:a", f"o{i}") for i in range(25)))
    holders = [r for r in replies if r["code"] == "locked"]
    assert len(holders) == 1
    busy = [r for r in replies if r["code"] == "busy"]
    assert len(busy) == 24
    assert all(0 < int(r["wait"]) <= LOCK_MS for r in busy)


async def test_fences_increase_and_a_lapsed_lock_can_be_taken_over(store: Store) -> None:
    await save(store, "p1:a")
    first = await acquire(store, "p1:a", "o1", mode="force")
    assert first["code"] == "locked"
    assert (await acquire(store, "p1:a", "o2", mode="force"))["code"] == "busy"
    advance_time(store, LOCK_MS + 1)
    second = await acquire(store, "p1:a", "o2", mode="force")
    assert second["code"] == "locked"
    assert int(second["fence"]) > int(first["fence"])


async def test_commit_is_a_compare_and_set_on_the_version(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1", mode="force")
    base = int(got["version"])
    reply = await commit(store, "p1:a", "o1", int(got["fence"]), base, refresh="ct-refresh-2")
    assert reply[0] == 1 and int(reply[1]) == base + 1 and int(reply[3]) == 1
    assert await store.client.get(k.lock("p1:a")) is None  # released
    # A second commit from the same base is refused: a newer token is already stored.
    stale = await commit(store, "p1:a", "o1", int(got["fence"]), base, refresh="ct-refresh-3")
    assert list(stale) == [0, "stale", base + 1]
    assert await store.client.hget(k.credential("p1:a"), "refresh_token") == "ct-refresh-2"
    types = [e["type"] for e in await events(store)]
    assert types.count("token:refreshed") == 1


async def test_commit_without_a_new_refresh_token_keeps_the_old_one(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1", mode="force")
    reply = await commit(store, "p1:a", "o1", int(got["fence"]), int(got["version"]))
    assert int(reply[3]) == 0  # not rotated
    raw = await store.client.hgetall(k.credential("p1:a"))
    assert raw["refresh_token"] == "ct-refresh-1"
    assert raw["access_token"] == "ct-access-o1"


async def test_commit_after_the_lock_lapsed_still_stores_a_rotated_token(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    slow = await acquire(store, "p1:a", "slow", mode="force")
    advance_time(store, LOCK_MS + 1)
    other = await acquire(store, "p1:a", "other", mode="force")
    assert other["code"] == "locked"
    # The slow holder got a new (rotated) token: the version did not move, so it is kept.
    reply = await commit(
        store, "p1:a", "slow", int(slow["fence"]), int(slow["version"]), refresh="ct-rotated"
    )
    assert reply[0] == 1
    assert await store.client.hget(k.credential("p1:a"), "refresh_token") == "ct-rotated"
    # ... and the other holder's lock is left alone.
    assert (await store.client.get(k.lock("p1:a"))).startswith("other\t")


async def test_invalid_grant_marks_needs_reauth_only_when_nobody_refreshed(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    first = await acquire(store, "p1:a", "o1", mode="force")
    await commit(store, "p1:a", "o1", int(first["fence"]), int(first["version"]))
    late = await store.run(
        "oauth_reauth",
        [k.credential("p1:a"), k.expiry, k.lock("p1:a"), k.events],
        ["p1:a", "o2", int(first["version"]), "invalid_grant"],
    )
    assert list(late)[:2] == [0, "stale"]
    assert await store.client.hget(k.credential("p1:a"), "status") == "active"
    current = await acquire(store, "p1:a", "o3", mode="force")
    marked = await store.run(
        "oauth_reauth",
        [k.credential("p1:a"), k.expiry, k.lock("p1:a"), k.events],
        ["p1:a", "o3", int(current["version"]), "invalid_grant: refused"],
    )
    assert marked[0] == 1
    assert await store.client.hget(k.credential("p1:a"), "status") == "needs-reauth"
    assert await store.client.zscore(k.expiry, "p1:a") is None
    assert await store.client.get(k.lock("p1:a")) is None
    assert (await acquire(store, "p1:a", "o4"))["code"] == "needs-reauth"
    reauth = [e for e in await events(store) if e["type"] == "credential:needs-reauth"]
    assert len(reauth) == 1 and reauth[0]["profile"] == "p1:a"


async def test_token_expired_is_emitted_once_per_version(store: Store) -> None:
    await save(store, "p1:a", refresh=None)
    advance_time(store, 3_600_001)
    for _ in range(3):
        assert (await acquire(store, "p1:a", "o"))["code"] == "no-refresh"
    expired = [e for e in await events(store) if e["type"] == "token:expired"]
    assert len(expired) == 1


async def test_the_lead_is_capped_at_half_the_lifetime_as_issued(store: Store) -> None:
    # Keycloak's default: tokens live 300 s, exactly the default lead. Fresh from the
    # provider, such a token must not count as stale (that made every call refresh).
    await save(store, "p1:a", expires_in_ms=LEAD_MS)
    assert await store.client.hget(keys(store).credential("p1:a"), "lifetime_ms") == "300000"
    assert (await acquire(store, "p1:a", "o1"))["code"] == "fresh"
    # (Redis time moves on between calls: the fresh side keeps a 1 s margin.)
    advance_time(store, LEAD_MS // 2 - 1000)
    assert (await acquire(store, "p1:a", "o2"))["code"] == "fresh"
    advance_time(store, 1000)  # half the lifetime is left: refresh now
    assert (await acquire(store, "p1:a", "o3"))["code"] == "locked"


async def test_the_configured_lead_holds_for_long_lived_tokens(store: Store) -> None:
    await save(store, "p1:a", expires_in_ms=3_600_000)
    advance_time(store, 3_600_000 - LEAD_MS - 1000)
    assert (await acquire(store, "p1:a", "o1"))["code"] == "fresh"
    advance_time(store, 1000)
    assert (await acquire(store, "p1:a", "o2"))["code"] == "locked"


async def test_a_token_committed_while_the_caller_waited_is_used(store: Store) -> None:
    await save(store, "p1:a", expires_in_ms=3_600_000)
    advance_time(store, 3_600_000 - LEAD_MS + 1)
    holder = await acquire(store, "p1:a", "holder")
    waiter = await acquire(store, "p1:a", "waiter")
    assert (holder["code"], waiter["code"]) == ("locked", "busy")
    seen = int(waiter["version"])
    # The provider issues a token that lives 100 s; by the time the waiter reads it, it is
    # inside even the capped lead (50 s), but it is the refresh the waiter waited for.
    await commit(store, "p1:a", "holder", int(holder["fence"]), seen, expires_in_ms=100_000)
    advance_time(store, 60_000)
    again = await acquire(store, "p1:a", "waiter-2", seen=seen)
    assert again["code"] == "fresh" and again["access"] == "ct-access-holder"
    # Someone who did not wait for that commit refreshes it as usual ...
    assert (await acquire(store, "p1:a", "newcomer"))["code"] == "locked"
    await store.run("oauth_release", [keys(store).lock("p1:a")], ["newcomer"])
    # ... and once it has expired, even the waiter must not use it.
    advance_time(store, 40_000)
    assert (await acquire(store, "p1:a", "waiter-3", seen=seen))["code"] == "locked"


async def test_a_wrong_secret_key_fails_get_access_token_itself(store: Store) -> None:
    from coordinator.errors import DecryptionError
    from coordinator.oauth import OAuthManager, OAuthProvider
    from coordinator.store.secrets import SecretBox

    # Tokens stored by a replica whose secret_key is not ours.
    other = SecretBox.ephemeral()
    k = keys(store)
    fields = {
        name: other.encrypt(f"{name}-value", aad=f"oauth:p1:a:{name}")
        for name in ("access_token", "refresh_token")
    }
    await store.run(
        "oauth_save",
        [
            k.credential("p1:a"),
            k.provider_credentials("p1"),
            k.credentials,
            k.defaults,
            k.expiry,
            k.events,
        ],
        ["p1:a", "p1", orjson.dumps(fields).decode(), 3_600_000, "{}"],
    )
    prov = OAuthProvider(name="p1", client_id="c", token_endpoint="https://auth.example.test/token")
    m = OAuthManager(store, [prov])
    try:
        with pytest.raises(DecryptionError, match="access_token"):
            await m.get_access_token("p1:a")
        advance_time(store, 3_600_000 - LEAD_MS + 1)  # stale: the refresh token is read
        with pytest.raises(DecryptionError, match="refresh_token"):
            await m.get_access_token("p1:a")
        assert await store.client.get(k.lock("p1:a")) is None  # the lock was released
    finally:
        await m.close()


async def test_release_only_frees_the_callers_own_lock(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    await acquire(store, "p1:a", "owner", mode="force")
    assert await store.run("oauth_release", [k.lock("p1:a")], ["intruder"]) == 0
    assert await store.run("oauth_release", [k.lock("p1:a")], ["owner"]) == 1
    assert await store.client.get(k.lock("p1:a")) is None


async def test_all_oauth_keys_share_one_hash_slot(store: Store) -> None:
    k = keys(store)
    shapes = [
        k.state("d"),
        k.credential("p1:a"),
        k.provider_credentials("p1"),
        k.credentials,
        k.defaults,
        k.expiry,
        k.lock("p1:a"),
        k.fences,
        k.events,
    ]
    assert len({key_slot(key.encode()) for key in shapes}) == 1


async def test_functions_are_loaded_again_after_they_are_deleted(store: Store) -> None:
    await store.unload_functions()
    assert (await save(store, "p1:a"))[0] == 1
    assert (await acquire(store, "p1:a", "o1"))["code"] == "fresh"


async def test_due_for_refresh_reads_the_expiry_index_on_redis_time(store: Store) -> None:
    from coordinator.oauth import OAuthManager

    await save(store, "p1:soon", expires_in_ms=60_000)
    await save(store, "p1:later", expires_in_ms=3_600_000)
    await save(store, "p1:never", expires_in_ms=-1)
    m = OAuthManager(store)
    try:
        due = await m.due_for_refresh()  # the 5-minute lead
        assert [cid for cid, _ in due] == ["p1:soon"]
        advance_time(store, 3_600_000 - 200_000)
        assert [cid for cid, _ in await m.due_for_refresh()] == ["p1:soon", "p1:later"]
        assert len(await m.due_for_refresh(limit=1)) == 1
    finally:
        await m.close()


async def test_manager_lists_defaults_and_removes_without_secrets(store: Store) -> None:
    from coordinator.errors import CredentialNotFoundError
    from coordinator.oauth import OAuthManager

    await save(store, "p1:a")
    advance_time(store, 5)
    await save(store, "p1:b")
    await save(store, "p2:c", provider="p2")
    m = OAuthManager(store)
    try:
        listed = await m.list_credentials()
        assert [c.id for c in listed] == ["p1:a", "p1:b", "p2:c"]
        assert [c.is_default for c in listed] == [True, False, True]
        assert [c.id for c in await m.list_credentials("p1")] == ["p1:a", "p1:b"]
        assert all("ct-" not in repr(c) for c in listed)
        await m.set_default("p1:b")
        assert (await m.get_default("p1")).id == "p1:b"  # type: ignore[union-attr]
        assert await m.remove_credential("p1:b") is True
        assert (await m.get_default("p1")).id == "p1:a"  # type: ignore[union-attr]
        assert await m.remove_credential("p1:b") is False
        with pytest.raises(CredentialNotFoundError):
            await m.get_credential("p1:b")
        await m.remove_credential("p1:a")
        assert await m.get_default("p1") is None
    finally:
        await m.close()


# -- the fence check and renewal (oauth_hold), the worker's lead ------------------------------


async def hold(store: Store, cid: str, owner: str, fence: int, base: int) -> list[Any]:
    k = keys(store)
    reply = await store.run(
        "oauth_hold", [k.credential(cid), k.lock(cid)], [owner, fence, base, LOCK_MS]
    )
    return list(reply)


async def test_hold_extends_the_holders_lock_only_with_its_owner_and_fence(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1", mode="force")
    fence, base = int(got["fence"]), int(got["version"])
    advance_time(store, 20_000)
    reply = await hold(store, "p1:a", "o1", fence, base)
    until = await store.time_ms() + LOCK_MS
    assert reply[0] == 1 and until - 1000 <= int(reply[1]) <= until  # extended from now
    assert (await store.client.get(k.lock("p1:a"))).endswith(f"\t{reply[1]}")
    advance_time(store, 20_000)  # past the first until, inside the renewed one
    assert (await acquire(store, "p1:a", "o2", mode="force"))["code"] == "busy"
    assert await hold(store, "p1:a", "o1", fence + 1, base) == [0, "lost"]
    assert await hold(store, "p1:a", "o1x", fence, base) == [0, "lost"]
    assert await hold(store, "p1:a", "o", fence, base) == [0, "lost"]  # a prefix is no owner


async def test_hold_refuses_a_lapsed_lock_even_when_nobody_took_it(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1", mode="force")
    value = await store.client.get(k.lock("p1:a"))
    advance_time(store, LOCK_MS)
    assert await hold(store, "p1:a", "o1", int(got["fence"]), int(got["version"])) == [0, "lost"]
    assert await store.client.get(k.lock("p1:a")) == value  # not extended


async def test_hold_refuses_when_another_holder_took_over(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1", mode="force")
    advance_time(store, LOCK_MS + 1)
    assert (await acquire(store, "p1:a", "o2", mode="force"))["code"] == "locked"
    value = await store.client.get(k.lock("p1:a"))
    assert await hold(store, "p1:a", "o1", int(got["fence"]), int(got["version"])) == [0, "lost"]
    assert await store.client.get(k.lock("p1:a")) == value  # the new holder's, untouched


async def test_hold_refuses_a_changed_or_removed_credential(store: Store) -> None:
    k = keys(store)
    await save(store, "p1:a")
    got = await acquire(store, "p1:a", "o1", mode="force")
    fence, base = int(got["fence"]), int(got["version"])
    await save(store, "p1:a", refresh="ct-refresh-new-login")  # a new login: version + 1
    assert await hold(store, "p1:a", "o1", fence, base) == [0, "changed"]
    await store.client.delete(k.credential("p1:a"))
    assert await hold(store, "p1:a", "o1", fence, base) == [0, "missing"]


async def test_a_late_commit_is_refused_only_once_a_newer_token_is_stored(store: Store) -> None:
    # The slow holder's lock lapsed; another took over and committed first: the slow result
    # is refused and the newer token kept. (Had the other not committed yet, the slow one
    # would be stored: see test_commit_after_the_lock_lapsed_still_stores_a_rotated_token.)
    k = keys(store)
    await save(store, "p1:a")
    slow = await acquire(store, "p1:a", "slow", mode="force")
    advance_time(store, LOCK_MS + 1)
    other = await acquire(store, "p1:a", "other", mode="force")
    base = int(slow["version"])
    assert (await commit(store, "p1:a", "other", int(other["fence"]), base, "ct-other"))[0] == 1
    late = await commit(store, "p1:a", "slow", int(slow["fence"]), base, refresh="ct-slow")
    assert list(late) == [0, "stale", base + 1]
    assert await store.client.hget(k.credential("p1:a"), "refresh_token") == "ct-other"


async def test_the_workers_larger_fraction_of_the_lifetime_makes_a_token_due_earlier(
    store: Store,
) -> None:
    k = keys(store)
    await save(store, "p1:a", expires_in_ms=100_000)
    advance_time(store, 30_000)  # 70 s left
    args: list[Any] = ["p1:a", "o1", LEAD_MS, LOCK_MS, "get", ""]
    where = [k.credential("p1:a"), k.lock("p1:a"), k.fences, k.events]
    app = await store.run("oauth_acquire", where, args)  # default: half (50 s)
    assert app[0] == "fresh"
    assert (await store.run("oauth_acquire", where, [*args[:5], "", "0.75"]))[0] == "locked"
