"""Pure functions and values: secrets, masking, configuration, failure kinds, public names."""

from __future__ import annotations

from importlib import resources

import pytest

import coordinator
from coordinator import (
    AuthConfig,
    ConfigError,
    CooldownPolicy,
    DecryptionError,
    FailureKind,
    Secret,
    SecretBox,
    generate_key,
)
from coordinator.store.secrets import mask, redact


def test_secret_box_round_trip_and_associated_data() -> None:
    box = SecretBox.from_text(generate_key())
    token = box.encrypt("sk-live-123", aad="profile-a")
    assert "sk-live" not in token and token.startswith("v1.")
    assert box.decrypt(token, aad="profile-a") == "sk-live-123"
    with pytest.raises(DecryptionError):
        box.decrypt(token, aad="profile-b")
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(DecryptionError):
        box.decrypt(tampered, aad="profile-a")
    with pytest.raises(DecryptionError):
        box.decrypt("garbage", aad="profile-a")


def test_key_rotation_old_key_still_decrypts() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox.from_text(old).encrypt("v", aad="x")
    rotated = SecretBox.from_text(f"{new},{old}")
    assert rotated.decrypt(token, aad="x") == "v"
    assert rotated.encrypt("v", aad="x").split(".")[1] == rotated.key_id
    with pytest.raises(DecryptionError, match="not configured"):
        SecretBox.from_text(new).decrypt(token, aad="x")


def test_hex_keys_are_accepted_and_bad_keys_refused() -> None:
    SecretBox.from_text("ab" * 32)
    for bad in ("", "short", "zz" * 32, generate_key()[:-4]):
        with pytest.raises(ConfigError):
            SecretBox.from_text(bad)


def test_secret_is_masked_in_repr_and_str() -> None:
    secret = Secret("sk-verysecretvalue-1234")
    assert "verysecret" not in repr(secret) and "verysecret" not in str(secret)
    assert "verysecret" not in repr([secret])
    assert secret.reveal() == "sk-verysecretvalue-1234"
    assert mask("sk-verysecretvalue-1234") == "****1234"
    assert mask("short") == "****"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Incorrect API key provided: sk-proj-abc123def456ghi789", "abc123def456"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGci"),
        ('{"access_token": "ya29.a0AfH6SMBx", "expires_in": 3600}', "ya29"),
        ("refresh_token=1//0gAbCdEfGh&x=1", "1//0gAbCdEfGh"),
        ("key AIzaSyA-1234567890abcdefghijklmn rejected", "AIzaSyA"),
        ("xai-abcdefghijklmnopqrstuvwx failed", "abcdefghijklmn"),
    ],
)
def test_redact_removes_token_shapes(text: str, leak: str) -> None:
    assert leak not in redact(text)


def test_redact_removes_known_values_and_limits_length() -> None:
    assert "hunter2" not in redact("password was hunter2!", known=["hunter2"])
    assert len(redact("x " * 1000)) <= 300


def test_cooldown_policy_schedule_and_validation() -> None:
    policy = CooldownPolicy(base_ms=60_000, multiplier=5, cap_ms=3_600_000)
    assert [policy.duration_ms(n) for n in range(0, 6)] == [
        0, 60_000, 300_000, 1_500_000, 3_600_000, 3_600_000,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="multiplier"):
        CooldownPolicy(base_ms=1, multiplier=0.5, cap_ms=10)
    with pytest.raises(ConfigError, match="cap_ms"):
        CooldownPolicy(base_ms=100, multiplier=2, cap_ms=10)


def test_auth_config_rejects_unknown_and_invalid_settings() -> None:
    with pytest.raises(ConfigError) as info:
        AuthConfig.from_mapping({"strategey": "priority"})
    assert info.value.field == "strategey"
    with pytest.raises(ConfigError) as info:
        AuthConfig.from_mapping({"cooldown": {"base": 1}})
    assert info.value.field == "cooldown.base"
    for bad in (
        {"strategy": "fastest"},
        {"session_ttl_s": 0},
        {"failure_window_ms": -1},
        {"strategies": {"openai": "nope"}},
        {"session_sticky": "yes"},
    ):
        with pytest.raises(ConfigError):
            AuthConfig.from_mapping(bad)
    config = AuthConfig.from_mapping({"strategies": {"openai": "priority"}})
    assert config.strategy_for("openai") == "priority"
    assert config.strategy_for("anthropic") == "round-robin"


def test_failure_kind_parse() -> None:
    assert FailureKind.parse("rate-limit") is FailureKind.RATE_LIMIT
    assert FailureKind.parse(FailureKind.CALLER) is FailureKind.CALLER
    with pytest.raises(ConfigError):
        FailureKind.parse("meh")


def test_all_is_complete_and_importable() -> None:
    public = {
        name
        for name, value in vars(coordinator).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("coordinator")
    }
    assert public <= set(coordinator.__all__)
    for name in coordinator.__all__:
        assert hasattr(coordinator, name), name


def test_error_tree_has_one_root() -> None:
    for name in coordinator.__all__:
        value = getattr(coordinator, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, coordinator.CoordinatorError), name


def test_every_lua_script_states_its_contract() -> None:
    from coordinator.store.functions import LUA_FOLDERS

    package = resources.files("coordinator")
    entries = [e for folder in LUA_FOLDERS for e in (package / folder).iterdir()]
    assert len([e for e in entries if e.name.endswith(".lua")]) > 30
    for entry in entries:
        if not entry.name.endswith(".lua") or entry.name.startswith("_"):
            continue
        text = entry.read_text()
        header = text.split("\n\n", 1)[0]
        assert "KEYS" in header and "ARGV[1]" in header and "Returns" in header, entry.name
        assert "'KEYS'" not in text and '"KEYS"' not in text, entry.name
