"""A realistic fleet state for the operators' tools tests (CLI and the redis-cli guide): pools
with a cooling key and a pinned session, model profiles with an open breaker, an OAuth
credential whose refresh lock a worker holds, and a worker heartbeat."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from coordinator import AuthProfile, ModelAuth, ModelProfile, Store
from coordinator.fleet.heartbeats import Heartbeat
from coordinator.overview import Managers
from coordinator.store.keys import OAuthKeys

#: The stored API key (encrypted in Redis) that no command may print.
STORED_KEY = "sk-test-stored-0123456789abcdefSECRET"
#: An access token that no command may print.
ACCESS_TOKEN = "ya29.test-access-token-SECRET"
LOCK_PREFIX = "worker-1a2b3c"
LOCK_OWNER = f"{LOCK_PREFIX}:0f0f"


@dataclass(frozen=True)
class Fleet:
    """The ids the tests ask about."""

    cooling_key: str = "openai-main"
    pinned_session: str = "user-42"
    open_breaker: str = "gpt-4o"
    model_session: str = "chat-7"
    credential: str = "google:ops"
    worker: str = "worker-1"


async def save_credential(store: Store, credential_id: str, provider: str) -> None:
    """Store an OAuth credential as a sign-in would (tokens sealed with the store's key)."""
    assert store.box is not None
    k = OAuthKeys(store.namespace)

    def seal(name: str, value: str) -> str:
        assert store.box is not None
        return store.box.encrypt(value, aad=f"oauth:{credential_id}:{name}")

    fields = {
        "access_token": seal("access_token", ACCESS_TOKEN),
        "refresh_token": seal("refresh_token", "1//refresh-SECRET"),
        "token_type": "Bearer",
        "scopes": "openid email",
        "subject": "ops",
        "email": "ops@example.com",
    }
    await store.run(
        "oauth_save",
        [
            k.credential(credential_id),
            k.provider_credentials(provider),
            k.credentials,
            k.defaults,
            k.expiry,
            k.events,
        ],
        [credential_id, provider, orjson.dumps(fields).decode(), 3_600_000, "{}"],
    )


async def hold_refresh_lock(store: Store, credential_id: str, owner: str = LOCK_OWNER) -> None:
    """Take the credential's refresh lock as a worker does before it refreshes."""
    k = OAuthKeys(store.namespace)
    reply = await store.run(
        "oauth_acquire",
        [k.credential(credential_id), k.lock(credential_id), k.fences, k.events],
        [credential_id, owner, 300_000, 30_000, "force"],
    )
    assert reply[0] == "locked", reply


async def build_fleet(store: Store) -> Fleet:
    """Write the fleet's state into ``store`` (which needs a secret key)."""
    fleet = Fleet()
    m = Managers.over(store)
    try:
        pools, models = m.pools, m.models
        for pid, provider, env in [
            ("openai-main", "openai", "OPENAI_KEY_MAIN"),
            ("openai-backup", "openai", "OPENAI_KEY_BACKUP"),
            ("anthropic-1", "anthropic", "ANTHROPIC_KEY_1"),
        ]:
            await pools.add_profile(AuthProfile(id=pid, provider=provider, api_key_env=env))
        await pools.add_profile(
            AuthProfile(id="openai-stored", provider="openai", api_key=STORED_KEY, priority=-1)
        )
        await pools.mark_failed(
            fleet.cooling_key, f"401 invalid key {STORED_KEY}", kind="rate_limit"
        )
        bound = await pools.get_next_profile("openai", session_id=fleet.pinned_session)
        assert bound is not None
        for model in [
            ModelProfile(
                "gpt-4o",
                "openai",
                ModelAuth.pool("openai"),
                "https://api.openai.com/v1",
                ["gpt-4o"],
                priority=100,
            ),
            ModelProfile(
                "claude",
                "anthropic",
                ModelAuth.pool("anthropic"),
                "https://api.anthropic.com",
                ["claude-*"],
                priority=90,
            ),
            ModelProfile(
                "local",
                "ollama",
                ModelAuth.none(),
                "http://127.0.0.1:11434/v1",
                ["*"],
                priority=-10,
            ),
        ]:
            await models.add_profile(model)
        for _ in range(3):
            await models.record_failure(fleet.open_breaker, "server", error="503 overloaded")
        picked = await models.select_profile(session_id=fleet.model_session)
        assert picked is not None
        await save_credential(store, fleet.credential, "google")
        await hold_refresh_lock(store, fleet.credential)
        await Heartbeat(store, fleet.worker, 30).beat(
            {
                "id": fleet.worker,
                "state": "running",
                "version": "0.1.0",
                "refresh_runs": 3,
                "lock_owner": LOCK_PREFIX,
            }
        )
    finally:
        await m.close()
    return fleet
