"""The package's shape: domain folders, old import paths, one manager of each kind per process."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import coordinator
from coordinator import (
    AuthConfig,
    BreakerConfig,
    ConfigError,
    ModelConfig,
    OAuthConfig,
    get_auth_profile_manager,
    get_model_profile_manager,
    get_oauth_manager,
    reset_auth_profile_manager,
    reset_model_profile_manager,
    reset_oauth_manager,
)
from coordinator._moved import MOVED


def test_each_old_module_path_is_the_new_module() -> None:
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old


def test_old_from_imports_give_the_same_objects() -> None:
    from coordinator.breaker_config import BreakerConfig as OldBreakerConfig
    from coordinator.model_types import ModelProfile as OldModelProfile
    from coordinator.profiles import AuthProfileManager as OldManager
    from coordinator.secrets import redact as old_redact

    from coordinator.store.secrets import redact

    assert OldManager is coordinator.AuthProfileManager
    assert OldModelProfile is coordinator.ModelProfile
    assert OldBreakerConfig is BreakerConfig
    assert old_redact is redact
    # The package's ``classify`` is still the function, not the old module of that name.
    importlib.import_module("coordinator.classify")
    assert callable(coordinator.classify) and coordinator.classify.__name__ == "classify"


def test_old_paths_work_in_a_fresh_interpreter() -> None:
    # ``import coordinator.profiles`` as the first import of a process, then attribute access.
    code = (
        "import coordinator.profiles, coordinator.model_types;"
        "print(coordinator.profiles.AuthProfileManager.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "coordinator.pools.manager"


def test_python_dash_m_coordinator_runs_the_cli() -> None:
    for module in ("coordinator", "coordinator.cli"):
        run = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("coordinator "), run.stdout


def test_lower_layers_never_import_higher_ones() -> None:
    # store/ is the lowest layer; the domains may use it, never the other way round. And the
    # Lua folders are read as folders (resources), not imported as packages.
    higher = ("pools", "models", "oauth", "cli", "fleet", "singletons")
    for path in (Path(coordinator.__file__).parent / "store").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert not module.startswith(higher), (path.name, module)
                assert not module.startswith(tuple(f"coordinator.{h}" for h in higher))
                if node.level == 2:  # from ..x import
                    assert not module.startswith(higher), (path.name, module)
    assert (
        "import_module"
        not in (Path(coordinator.__file__).parent / "store/functions.py").read_text()
    )


@pytest.fixture
async def fresh() -> AsyncIterator[None]:
    await _reset_all()
    try:
        yield
    finally:
        await _reset_all()


async def _reset_all() -> None:
    await reset_model_profile_manager()
    await reset_oauth_manager()
    await reset_auth_profile_manager()


@pytest.mark.usefixtures("fresh")
async def test_the_three_managers_share_one_store_per_url_and_namespace() -> None:
    pools = await get_auth_profile_manager("memory://")
    oauth = await get_oauth_manager("memory://")
    models = await get_model_profile_manager("memory://")
    assert pools.store is oauth.store is models.store
    # The model manager is wired to the process-wide pool and OAuth managers.
    assert models.auth_manager is pools and models.token_source is oauth
    assert await get_model_profile_manager("memory://") is models
    assert await get_oauth_manager("memory://") is oauth
    # Another namespace is another store.
    await reset_oauth_manager()
    elsewhere = await get_oauth_manager("memory://", namespace="other")
    assert elsewhere.store is not pools.store and elsewhere.store.namespace == "other"


@pytest.mark.usefixtures("fresh")
async def test_a_second_call_with_other_settings_is_a_config_error() -> None:
    models = await get_model_profile_manager("memory://")
    with pytest.raises(ConfigError, match="reset_model_profile_manager"):
        await get_model_profile_manager(
            "memory://", config=ModelConfig(breaker=BreakerConfig(failure_threshold=7))
        )
    with pytest.raises(ConfigError):
        await get_model_profile_manager("memory://", namespace="elsewhere")
    oauth = await get_oauth_manager("memory://")
    with pytest.raises(ConfigError, match="reset_oauth_manager"):
        await get_oauth_manager("memory://", config=OAuthConfig(refresh_lead_s=10))
    await get_auth_profile_manager("memory://")
    with pytest.raises(ConfigError, match="reset_auth_profile_manager"):
        await get_auth_profile_manager("memory://", config=AuthConfig(strategy="priority"))
    assert await get_model_profile_manager("memory://") is models
    assert await get_oauth_manager("memory://") is oauth


@pytest.mark.usefixtures("fresh")
async def test_reset_closes_the_store_only_with_its_last_manager() -> None:
    pools = await get_auth_profile_manager("memory://")
    models = await get_model_profile_manager("memory://")
    store = pools.store
    await reset_auth_profile_manager()
    await store.ping()  # still used by the model manager
    await reset_model_profile_manager()
    assert store._closed
    again = await get_auth_profile_manager("memory://")
    assert again is not pools and again.store is not store and models is not None


@pytest.mark.usefixtures("fresh")
async def test_a_store_handed_in_is_shared_but_never_closed_here() -> None:
    store = await coordinator.connect("memory://", namespace="handed")
    try:
        pools = await get_auth_profile_manager(store=store)
        models = await get_model_profile_manager(store=store)
        assert pools.store is store and models.store is store and models.auth_manager is pools
        await _reset_all()
        await store.ping()  # the caller's store stays open
    finally:
        await store.close()
