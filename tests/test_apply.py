"""``coordinator apply -f coordinator.toml``: the declarative configuration file, its plan, its
changes (idempotent, ``--dry-run``, ``--prune``) and its errors (file, line, field)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from coordinator import AuthProfileManager, ModelProfileManager, Store, connect
from coordinator.cli.main import main
from coordinator.config_file import ConfigFileError, apply, load, parse, plan
from coordinator.store.keys import PoolKeys
from coordinator.testing import RedisServer

from .conftest import unique_namespace

EXAMPLE = Path(__file__).parent.parent / "examples" / "coordinator.toml"
POOL_IDS = {"openai-main", "openai-backup", "anthropic-1", "anthropic-2", "gemini-oauth"}
MODEL_IDS = {"gpt-4o", "claude-sonnet", "gemini", "local-llama"}


def test_the_example_file_is_valid() -> None:
    config = load(EXAMPLE)
    assert {p.id for p in config.pool_profiles} == POOL_IDS
    assert {p.provider for p in config.pool_profiles} == {"openai", "anthropic", "google"}
    assert {p.id for p in config.model_profiles} == MODEL_IDS
    assert [p.name for p in config.oauth_providers] == ["google"]
    assert config.auth_config.strategies == {"openai": "priority"}
    assert config.auth_config.cooldown.multiplier == 5
    assert config.model_config.max_attempts == 5
    assert config.model_config.breaker.max_open_ms == 600000
    assert config.oauth_config.refresh_lead_s == 300


async def test_apply_round_trips_the_file_on_every_backend(store: Store) -> None:
    pools, models = AuthProfileManager(store), ModelProfileManager(store)
    config = load(EXAMPLE)
    done = await apply(config, pools, models)
    assert {(c.action, c.kind, c.id) for c in done.changes} == {
        *(("add", "pool", i) for i in POOL_IDS),
        *(("add", "model", i) for i in MODEL_IDS),
    }
    stored = {p.id: p for p in await pools.list_profiles()}
    assert set(stored) == POOL_IDS
    assert stored["openai-main"].api_key_env == "OPENAI_KEY_MAIN"
    assert stored["openai-main"].priority == 10
    assert stored["gemini-oauth"].oauth_credential_id == "google-ops"
    stored_models = {m.id: m for m in await models.list_profiles()}
    assert set(stored_models) == MODEL_IDS
    assert stored_models["gpt-4o"].auth.describe() == "pool(openai)"
    assert stored_models["claude-sonnet"].default_model == "claude-sonnet-4-5"
    again = await plan(config, pools, models, prune=True)
    assert again.changes == [] and again.unmanaged == []


async def test_update_keeps_counters_and_a_moved_profile_is_recreated(store: Store) -> None:
    pools, models = AuthProfileManager(store), ModelProfileManager(store)
    text = EXAMPLE.read_text()
    await apply(parse(text), pools, models)
    await pools.mark_failed("anthropic-1", "429", kind="rate_limit")
    key_1 = 'api_key_env = "ANTHROPIC_KEY_1"'
    edited = text.replace(key_1, f"{key_1}\npriority = 7")
    edited = edited.replace(
        "[providers.anthropic.profiles.anthropic-2]", "[providers.bedrock.profiles.anthropic-2]"
    )
    done = await apply(parse(edited), pools, models)
    assert [str(c) for c in done.changes] == [
        "~ pool profile anthropic-1 (priority)",
        "- pool profile anthropic-2",
        "+ pool profile anthropic-2 (provider)",
    ]
    status = {s.id: s for s in await pools.get_status()}
    assert status["anthropic-1"].in_cooldown and status["anthropic-1"].priority == 7
    assert status["anthropic-2"].provider == "bedrock"
    assert (await plan(parse(edited), pools, models)).changes == []


def cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def base(redis_server: RedisServer) -> list[str]:
    return ["--url", redis_server.url, "--namespace", unique_namespace()]


def test_cli_apply_dry_run_prune_and_idempotence(
    base: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(EXAMPLE.read_text())

    def apply_json(*flags: str) -> dict[str, Any]:
        code, out, err = cli(*base, "apply", "-f", str(path), "--json", *flags, capsys=capsys)
        assert code == 0, err
        return dict(json.loads(out))

    def listed() -> set[str]:
        _code, out, _ = cli(*base, "profiles", "list", "--json", capsys=capsys)
        return {row["id"] for row in json.loads(out)}

    dry = apply_json("--dry-run")
    assert dry["dry_run"] and len(dry["changes"]) == len(POOL_IDS) + len(MODEL_IDS)
    assert listed() == set()  # a dry run writes nothing
    first = apply_json()
    assert len(first["changes"]) == 9 and listed() == POOL_IDS | MODEL_IDS
    assert apply_json()["changes"] == []  # idempotent
    code, out, _ = cli(*base, "apply", "-f", str(path), capsys=capsys)
    assert code == 0 and out.strip() == f"{path}: no changes"
    # The file no longer names openai-backup and local-llama, and gives gpt-4o a new priority.
    text = EXAMPLE.read_text()
    backup = text.index("[providers.openai.profiles.openai-backup]")
    text = text[:backup] + text[text.index("[providers.anthropic.profiles.anthropic-1]") :]
    text = text[: text.index("[models.profiles.local-llama]")] + text[text.index("# OAuth:") :]
    text = text.replace("priority = 100", "priority = 120")
    path.write_text(text)
    code, out, _ = cli(*base, "apply", "-f", str(path), "--dry-run", capsys=capsys)
    assert code == 0 and "would change 1 profiles" in out
    assert "~ model profile gpt-4o (priority)" in out
    assert "not in the file, kept: pool profile openai-backup" in out
    assert "not in the file, kept: model profile local-llama" in out
    kept = apply_json()
    assert kept["unmanaged"] == [
        {"kind": "pool", "id": "openai-backup"},
        {"kind": "model", "id": "local-llama"},
    ]
    assert "openai-backup" in listed()
    pruned = apply_json("--prune")
    assert {(c["action"], c["id"]) for c in pruned["changes"]} == {
        ("remove", "openai-backup"),
        ("remove", "local-llama"),
    }
    assert listed() == (POOL_IDS | MODEL_IDS) - {"openai-backup", "local-llama"}
    assert apply_json("--prune")["changes"] == []


async def test_a_profile_pruned_while_cooling_leaves_nothing_behind(
    redis_server: RedisServer, secret_key: str, tmp_path: Path
) -> None:
    namespace = unique_namespace()
    path = tmp_path / "coordinator.toml"
    path.write_text(EXAMPLE.read_text())
    base = ["--url", redis_server.url, "--namespace", namespace, "apply", "-f", str(path)]
    assert await asyncio.to_thread(main, base) == 0
    store = await connect(redis_server.url, namespace=namespace, secret_key=secret_key)
    pools = AuthProfileManager(store)
    try:
        await pools.mark_failed("openai-backup", "429", kind="rate_limit")
        await pools.get_next_profile("openai", session_id="s-1")
        path.write_text(
            EXAMPLE.read_text().replace(
                "[providers.openai.profiles.openai-backup]",
                "[providers.openai.profiles.openai-new]",
            )
        )
        assert await asyncio.to_thread(main, [*base, "--prune"]) == 0
        status = {s.id: s for s in await pools.get_status("openai")}
        assert set(status) == {"openai-main", "openai-new"}
        keys = PoolKeys(namespace, "openai")
        state = await store.command("HKEYS", keys.state)
        assert not [f for f in state if str(f).startswith("openai-backup")]
        assert not await store.command("ZSCORE", keys.cooling, "openai-backup")
        # Re-added later, it starts afresh: no cooldown, no counters, no session still bound.
        path.write_text(EXAMPLE.read_text())
        assert await asyncio.to_thread(main, [*base, "--prune"]) == 0
        back = {s.id: s for s in await pools.get_status("openai")}["openai-backup"]
        assert not back.in_cooldown and back.failures == 0 and back.last_error is None
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("old", "new", "field", "line_text"),
    [
        (
            'base_url = "https://api.openai.com/v1"',
            'base_url = "ftp://x"',
            "models.profiles.gpt-4o.base_url",
            'base_url = "ftp://x"',
        ),
        (
            'api_key_env = "ANTHROPIC_KEY_2"',
            'api_key = "sk-ant-api03-abc"',
            "providers.anthropic.profiles.anthropic-2.api_key",
            "api_key =",
        ),
        ("multiplier = 5", "multiplier = 0.5", "pools.cooldown.multiplier", "multiplier = 0.5"),
        (
            "failure_threshold = 3",
            "failure_threshold = 0",
            "models.breaker.failure_threshold",
            "failure_threshold = 0",
        ),
        (
            'strategy = "priority"',
            'strategy = "fastest"',
            "providers.openai.strategy",
            'strategy = "fastest"',
        ),
        (
            "client_secret_env =",
            "client_secret =",
            "oauth.providers.google.client_secret",
            "client_secret =",
        ),
        (
            "priority = 90",
            "priority = 90\nprio = 1",
            "models.profiles.claude-sonnet.prio",
            "prio = 1",
        ),
        ("max_attempts = 5", "max_attempts = ", "toml", "max_attempts = "),
        ("[oauth]", "[oath]", "oath", "[oath]"),
    ],
)
def test_errors_name_the_file_line_and_field(
    old: str,
    new: str,
    field: str,
    line_text: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = EXAMPLE.read_text()
    assert old in text
    bad = text.replace(old, new, 1)
    path = tmp_path / "coordinator.toml"
    path.write_text(bad)
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    error = caught.value
    assert error.path == str(path) and error.field == field
    assert line_text in bad.splitlines()[error.line - 1]
    code, out, err = cli("--url", "memory://", "apply", "-f", str(path), capsys=capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"coordinator: error: {path}:{error.line}: {field}: ")
    assert err.count("\n") == 1 and "sk-ant" not in err


def test_apply_runs_as_a_command(redis_server: RedisServer, tmp_path: Path) -> None:
    """The installed entry point (python -m coordinator) with a real file."""
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--url",
            redis_server.url,
            "--namespace",
            unique_namespace(),
            "apply",
            "-f",
            str(EXAMPLE),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "would change 9 profiles" in out.stdout and "+ pool profile openai-main" in out.stdout
