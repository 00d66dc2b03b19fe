"""Contract tests: the {models} ranked index edited by hand (issue 15 §5). A score changed or
an entry removed with redis-cli changes which profile a selection takes, never whether
selection works; get_status names the profile and the field, and enabling the profile (the
documented repair) ranks it again."""

from __future__ import annotations

import pytest

from coordinator import Store
from coordinator.store.keys import ModelKeys

from .model_helpers import add_three, model_manager


async def _statuses(store: Store) -> dict[str, tuple[str | None, bool]]:
    rows = await model_manager(store).get_status()
    return {row.id: (row.broken_field, row.available) for row in rows}


async def _chosen(store: Store) -> str:
    selection = await model_manager(store).select_profile()
    assert selection is not None
    return selection.profile_id


@pytest.mark.parametrize("score", ["-1000", "+inf", "-inf", "0.5"])
async def test_an_edited_score_is_named_and_repaired_by_enabling(store: Store, score: str) -> None:
    manager = model_manager(store)
    await add_three(manager)
    ranked = ModelKeys(store.namespace).ranked
    await store.command("ZADD", ranked, score, "tertiary")

    # Selection still works: tertiary takes the place its edited score gives it.
    expected = "tertiary" if score in ("-1000", "-inf") else "primary"
    assert await _chosen(store) == expected
    status = await _statuses(store)
    assert status["tertiary"] == ("ranked", True)  # named, and still selectable
    assert status["primary"] == (None, True)

    assert await manager.enable_profile("tertiary") is False  # unchanged, but ranked again
    assert float(await store.command("ZSCORE", ranked, "tertiary")) == -80
    assert (await _statuses(store))["tertiary"] == (None, True)
    assert await _chosen(store) == "primary"


async def test_a_removed_entry_is_named_and_repaired_by_enabling(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    ranked = ModelKeys(store.namespace).ranked
    await store.command("ZREM", ranked, "primary")

    assert await _chosen(store) == "secondary"  # primary is never selected now
    status = await _statuses(store)
    assert status["primary"] == ("ranked.missing", False)
    assert status["secondary"] == (None, True)

    assert await manager.enable_profile("primary") is False
    assert (await _statuses(store))["primary"] == (None, True)
    assert await _chosen(store) == "primary"


async def test_a_disabled_profile_is_not_ranked_and_not_named(store: Store) -> None:
    manager = model_manager(store)
    await add_three(manager)
    assert await manager.disable_profile("primary") is True
    status = await _statuses(store)
    assert status["primary"] == (None, False)  # out of the index, as it should be
    assert await _chosen(store) == "secondary"
