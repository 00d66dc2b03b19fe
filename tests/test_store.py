"""The store: URLs, errors at the boundary, functions loaded again, round trips, persistence."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

import coordinator
from coordinator import (
    AuthProfile,
    AuthProfileManager,
    ConfigError,
    StoreUnavailableError,
    connect,
    scripts,
)
from coordinator.testing import RedisServer, free_port

from .conftest import unique_namespace
from .helpers import add_keys, manager_for


async def test_unsupported_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        await connect("mysql://localhost/db")
    assert info.value.field == "url"


@pytest.mark.parametrize("url", ["redis://:hunter2secret@localhost:x/0", "redis://h:99999/0"])
async def test_a_port_that_is_no_port_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        await connect(url)
    assert info.value.field == "url" and "hunter2secret" not in str(info.value)


async def test_unreachable_redis_is_store_unavailable_with_cause() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailableError) as info:
        await connect(f"redis://:hunter2secret@127.0.0.1:{port}/0")
    assert info.value.__cause__ is not None
    assert "hunter2secret" not in str(info.value)


async def test_default_url_comes_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COORDINATOR_REDIS_URL", raising=False)
    store = await connect()
    assert store.backend == "memory"
    await store.close()


async def test_invalid_secret_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        await connect("memory://", secret_key="too-short")
    assert info.value.field == "secret_key"


async def test_storing_a_key_on_redis_without_secret_key_is_refused(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COORDINATOR_SECRET_KEY", raising=False)
    store = await connect(redis_server.url, namespace=unique_namespace())
    try:
        manager = AuthProfileManager(store)
        with pytest.raises(ConfigError) as info:
            await manager.add_profile(AuthProfile(id="k", provider="openai", api_key="sk-plain"))
        assert info.value.field == "secret_key"
        # Naming an environment variable needs no key: no secret reaches Redis.
        await manager.add_profile(AuthProfile(id="e", provider="openai", api_key_env="OPENAI_KEY"))
        assert [p.id for p in await manager.list_profiles()] == ["e"]
    finally:
        await store.close()


async def test_functions_are_loaded_again_after_they_are_deleted(store: coordinator.Store) -> None:
    manager = manager_for(store)
    await add_keys(manager, 2)
    assert await manager.get_next_profile("openai") is not None
    await store.unload_functions()
    assert await manager.get_next_profile("openai") is not None
    assert (await manager.mark_failed("key-0", "x", kind="server")).status == "cooling"
    assert await manager.mark_success("key-1")


async def test_redis_going_away_is_store_unavailable(secret_key: str) -> None:
    with RedisServer() as server:
        store = await connect(server.url, namespace=unique_namespace(), secret_key=secret_key)
        manager = AuthProfileManager(store)
        await add_keys(manager, 1)
        server.stop()
        with pytest.raises(StoreUnavailableError) as info:
            await manager.get_next_profile("openai")
        assert info.value.__cause__ is not None
        await store.close()


async def test_hot_operations_are_one_round_trip_each(
    store: coordinator.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = manager_for(store)
    await add_keys(manager, 3)
    await manager.get_next_profile("openai")  # warm: scripts loaded, locator cached
    await manager.mark_failed("key-2", "x", kind="server")
    await manager.clear_cooldown("key-2")
    sent: list[str] = []
    original = store.client.execute_command
    original_packed = store._send_packed

    async def counting(*args: object, **kwargs: object) -> object:
        sent.append(str(args[0]))
        return await original(*args, **kwargs)

    async def counting_packed(command: tuple[object, ...]) -> object:
        sent.append(str(command[0]))
        return await original_packed(command)

    store.client.execute_command = counting
    # (a standalone or Sentinel store sends FCALL on a pooled connection, packed by hiredis)
    monkeypatch.setattr(store, "_send_packed", counting_packed)
    try:
        operations = {
            "get_next_profile": lambda: manager.get_next_profile(
                "openai", session_id="s", model="m", exclude=["x"]
            ),
            "mark_success": lambda: manager.mark_success("key-0"),
            "mark_failed": lambda: manager.mark_failed(
                "key-1", "x", kind="rate_limit", retry_after_s=3
            ),
        }
        for name, operation in operations.items():
            sent.clear()
            await operation()
            assert sent == ["FCALL"], name
    finally:
        del store.client.execute_command


async def test_embedded_state_survives_a_restart_in_a_0600_file(
    tmp_path: Path, secret_key: str
) -> None:
    path = tmp_path / "state" / "coordinator.json"
    url = f"memory://{path}"
    store = await connect(url, secret_key=secret_key)
    manager = AuthProfileManager(store)
    await add_keys(manager, 2)
    cooling = await manager.mark_failed("key-0", "429", kind="rate_limit", retry_after_s=600)
    await manager.get_next_profile("openai", session_id="s")
    await store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "sk-test" not in path.read_text()

    store = await connect(url, secret_key=secret_key)
    manager = AuthProfileManager(store)
    status = {s.id: s for s in await manager.get_status()}
    assert status["key-0"].in_cooldown and status["key-0"].cooldown_until_ms == cooling.until_ms
    assert status["key-0"].failures == 1
    profile = await manager.get_next_profile("openai", session_id="s")
    assert profile is not None and profile.id == "key-1"
    secret = profile.secret()
    assert secret is not None and secret.reveal().startswith("sk-test-openai")
    await store.close()


async def test_persisted_embedded_store_needs_a_secret_key_for_api_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COORDINATOR_SECRET_KEY", raising=False)
    store = await connect(f"memory://{tmp_path / 's.json'}")
    with pytest.raises(ConfigError):
        await AuthProfileManager(store).add_profile(
            AuthProfile(id="k", provider="openai", api_key="sk-plain")
        )
    await store.close()


async def test_corrupt_snapshot_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{garbage")
    with pytest.raises(coordinator.CorruptStateError):
        await connect(f"memory://{path}")


def test_repr_hides_passwords() -> None:
    from coordinator.store.connection import redact_url

    assert redact_url("redis://user:pw123@host:6379/0") == "redis://user:****@host:6379/0"


async def test_sentinel_urls_reach_the_monitored_primary(secret_key: str) -> None:
    from coordinator.testing import RedisSentinel

    with RedisSentinel("pool-primary") as sentinel:
        store = await connect(sentinel.url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            assert store.backend == "sentinel"
            manager = manager_for(store)
            await add_keys(manager, 2)
            picks = {(await manager.get_next_profile("openai")).id for _ in range(2)}  # type: ignore[union-attr]
            assert picks == {"key-0", "key-1"}
            assert (await manager.mark_failed("key-0", "x", kind="server")).status == "cooling"
        finally:
            await store.close()
    with pytest.raises(ConfigError):
        await connect("redis+sentinel://127.0.0.1:1")


async def test_unix_socket_urls_reach_redis(secret_key: str, tmp_path: Path) -> None:
    from redis.asyncio.connection import UnixDomainSocketConnection

    socket_path = tmp_path / "redis.sock"
    with RedisServer("--unixsocket", str(socket_path), "--unixsocketperm", "700"):
        store = await connect(
            f"unix://{socket_path}?db=0", namespace=unique_namespace(), secret_key=secret_key
        )
        try:
            assert store.backend == "redis"
            pool = store.client.connection_pool
            assert pool.connection_class is UnixDomainSocketConnection
            manager = manager_for(store)
            await add_keys(manager, 2)
            picks = {(await manager.get_next_profile("openai")).id for _ in range(2)}  # type: ignore[union-attr]
            assert picks == {"key-0", "key-1"}
            assert (await manager.mark_failed("key-0", "x", kind="server")).status == "cooling"
            assert (await manager.get_next_profile("openai")).id == "key-1"  # type: ignore[union-attr]
        finally:
            await store.close()


async def test_a_password_in_the_url_authenticates_and_never_shows(secret_key: str) -> None:
    import redis.asyncio as aioredis

    with RedisServer() as server:
        admin = aioredis.Redis(port=server.port)
        await admin.config_set("requirepass", "pw-right-horse-battery")
        await admin.aclose()
        url = f"redis://:pw-right-horse-battery@127.0.0.1:{server.port}/0"
        store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            assert "pw-right" not in repr(store) and "****" in repr(store)
            manager = manager_for(store)
            await add_keys(manager, 1)
            assert (await manager.get_next_profile("openai")).id == "key-0"  # type: ignore[union-attr]
        finally:
            await store.close()
        for wrong in (f"redis://:pw-wrong-staple@127.0.0.1:{server.port}/0",
                      f"redis://127.0.0.1:{server.port}/0"):  # fmt: skip
            with pytest.raises(StoreUnavailableError) as refused:
                await connect(wrong, namespace=unique_namespace())
            message = f"{refused.value} {refused.value.__cause__}"
            assert "pw-wrong" not in message and "pw-right" not in message
            assert "AuthenticationError" in message or "NOAUTH" in message


def _self_signed_tls_files(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "redis.crt", folder / "redis.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_rediss_urls_reach_redis_over_tls(secret_key: str, tmp_path: Path) -> None:
    from redis.asyncio.connection import SSLConnection

    cert_file, key_file = _self_signed_tls_files(tmp_path)
    tls_port = free_port()
    tls = (
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert_file),
        "--tls-key-file", str(key_file), "--tls-ca-cert-file", str(cert_file),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    with RedisServer(*tls):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert_file}"
        store = await connect(url, namespace=unique_namespace(), secret_key=secret_key)
        try:
            pool = store.client.connection_pool
            assert pool.connection_class is SSLConnection
            manager = manager_for(store)
            await add_keys(manager, 2)
            assert (await manager.mark_failed("key-0", "x", kind="server")).status == "cooling"
            assert (await manager.get_next_profile("openai")).id == "key-1"  # type: ignore[union-attr]
        finally:
            await store.close()
        # A client that does not trust the server's certificate is refused, as a clear error.
        with pytest.raises(StoreUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect(f"rediss://127.0.0.1:{tls_port}/0", namespace=unique_namespace())


async def test_one_manager_per_process_and_a_different_config_is_an_error() -> None:
    from coordinator import AuthConfig, get_auth_profile_manager, reset_auth_profile_manager

    await reset_auth_profile_manager()
    try:
        first = await get_auth_profile_manager("memory://")
        assert await get_auth_profile_manager("memory://") is first
        with pytest.raises(ConfigError):
            await get_auth_profile_manager("memory://", config=AuthConfig(strategy="priority"))
        with pytest.raises(ConfigError):
            await get_auth_profile_manager("memory:///elsewhere.json")
        await reset_auth_profile_manager()
        second = await get_auth_profile_manager("memory://", config=AuthConfig(strategy="priority"))
        assert second is not first and second.config.strategy == "priority"
    finally:
        await reset_auth_profile_manager()


async def test_unload_reaches_every_node_and_spares_other_libraries(
    store: coordinator.Store,
) -> None:
    name = store.function_name("pick")
    assert name == scripts.function_name("pick")
    assert re.fullmatch(r"coordinator_pick_[0-9a-f]{16}", name)
    # Another version of the package (a rolling deploy) has its own library for the same
    # operation; loading and unloading this version's leave it alone.
    other = "coordinator_pick_0123456789abcdef"
    await store.client.function_load(
        f"#!lua name={other}\nredis.register_function('{other}', function() return 1 end)",
        replace=True,
    )
    await store.load_functions()
    ours, others = await store.function_libraries()
    assert name in ours and len(ours) == len(scripts.script_names()) and other in others
    await store.unload_functions()
    assert await store.function_libraries() == ([], [other])
    manager = manager_for(store)
    await add_keys(manager, 1)
    assert await manager.get_next_profile("openai") is not None  # loaded again on first use
    assert name in (await store.function_libraries())[0]
    await store.client.function_delete(other)


async def test_a_server_without_functions_is_a_clear_error(
    store: coordinator.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis before 7.0 has no FUNCTION command: connecting says what is needed."""
    import redis.exceptions as rexc

    async def old_server(*args: object, **kwargs: object) -> None:
        raise rexc.ResponseError("unknown command 'FUNCTION', with args beginning with: 'LOAD'")

    for command in ("function_list", "function_load"):
        with monkeypatch.context() as patch:
            patch.setattr(store.client, command, old_server)
            await store.unload_functions()  # so that loading has something to load
            with pytest.raises(StoreUnavailableError, match=r"need Redis 7\.0 or newer") as info:
                await store.load_functions()
            assert isinstance(info.value.__cause__, rexc.ResponseError)


async def test_connecting_where_this_version_runs_loads_nothing(
    store: coordinator.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One FUNCTION LIST tells that every library is there already; none is loaded again."""
    await store.load_functions()
    loads: list[object] = []
    original = store.client.function_load

    async def counting(*args: object, **kwargs: object) -> object:
        loads.append(args)
        return await original(*args, **kwargs)

    monkeypatch.setattr(store.client, "function_load", counting)
    await store.load_functions()
    assert loads == []
    await store.unload_functions()
    await store.load_functions()
    assert len(loads) == len(scripts.script_names())
