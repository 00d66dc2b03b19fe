"""The cache of parsed definitions: picks hand out cached profiles, and only a changed
definition is parsed again."""

from __future__ import annotations

import pytest

from coordinator import AuthProfile, CorruptStateError, Store
from coordinator.store.parsed import ParsedDefinitions

from .helpers import add_keys, manager_for


def _counting_parser() -> tuple[ParsedDefinitions[str], list[str]]:
    parsed: list[str] = []

    def parse(raw: str) -> str:
        if raw == "garbage":
            raise CorruptStateError("p", "definition")
        parsed.append(raw)
        return raw.upper()

    return ParsedDefinitions(parse, capacity=3), parsed


def test_a_definition_is_parsed_once_while_its_text_is_unchanged() -> None:
    cache, parsed = _counting_parser()
    assert cache.get("a", "v1") == "V1"
    assert cache.get("a", "v1") == "V1"
    assert parsed == ["v1"]


def test_a_changed_definition_replaces_the_entry_of_its_id() -> None:
    cache, parsed = _counting_parser()
    cache.get("a", "v1")
    assert cache.get("a", "v2") == "V2"
    assert parsed == ["v1", "v2"]
    assert len(cache) == 1


def test_a_parse_error_propagates_and_caches_nothing() -> None:
    cache, _parsed = _counting_parser()
    with pytest.raises(CorruptStateError):
        cache.get("a", "garbage")
    assert len(cache) == 0
    assert cache.get("a", "v1") == "V1"


def test_a_full_cache_starts_again_empty_and_still_answers() -> None:
    cache, parsed = _counting_parser()
    for key in ("a", "b", "c"):
        cache.get(key, key)
    assert cache.get("d", "d") == "D"
    assert len(cache) == 1
    assert cache.get("a", "a") == "A"  # parsed again after the reset
    assert parsed == ["a", "b", "c", "d", "a"]


async def test_a_second_rotation_parses_no_definition(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = manager_for(store)
    ids = await add_keys(manager, 6)
    calls: list[str] = []
    original = AuthProfile.from_record

    def counting(raw: str, box: object) -> AuthProfile:
        calls.append(raw)
        return original(raw, box)  # type: ignore[arg-type]

    monkeypatch.setattr(AuthProfile, "from_record", staticmethod(counting))
    first = [await manager.get_next_profile("openai") for _ in ids]
    assert len(calls) == len(ids)
    second = [await manager.get_next_profile("openai") for _ in ids]
    assert len(calls) == len(ids)
    assert [p.id for p in second if p] == [p.id for p in first if p]
    # Re-adding a profile writes a new definition (a new generation): it is parsed again.
    await manager.add_profile(
        AuthProfile(id=ids[0], provider="openai", api_key="sk-test-rotated-0123456789abcdef")
    )
    again = await manager.get_profile(ids[0])
    assert len(calls) == len(ids) + 1
    assert again.api_key is not None and again.api_key.reveal().startswith("sk-test-rotated")
