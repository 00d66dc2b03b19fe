"""Profile definitions already parsed, so that a pick hands out a cached object.

Every pick returns the chosen profile's stored definition (JSON). Parsing it again (JSON, field
checks, the encrypted key's wrapper) costs a few microseconds warm and 15-20 in a hot path
that runs cold; the cache turns that into one string comparison. It holds one entry per id,
so a profile that is re-added replaces its old entry instead of piling up versions, and its
size follows the number of profiles rather than the number of edits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ParsedDefinitions"]

T = TypeVar("T")

# Round-robin over more profiles than the cache holds is its worst case: every pick would
# miss. So it holds more than any pool we expect (the benchmark's largest is 10,000); an entry
# is the definition text plus the parsed object, about 1 KB.
DEFAULT_CAPACITY = 32_768


class ParsedDefinitions(Generic[T]):
    """``id -> (definition text, parsed value)``; a value is parsed again only when the text
    stored under its id changed. When full, it starts again empty (rare: capacity is above
    the profile count of any expected deployment)."""

    def __init__(self, parse: Callable[[str], T], capacity: int = DEFAULT_CAPACITY) -> None:
        self._parse = parse
        self._capacity = capacity
        self._entries: dict[str, tuple[str, T]] = {}

    def get(self, key: str, raw: str) -> T:
        """The parsed value of ``raw``, stored under ``key``. Parse errors propagate and cache
        nothing."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == raw:
            return entry[1]
        value = self._parse(raw)
        if entry is None and len(self._entries) >= self._capacity:
            self._entries.clear()
        self._entries[key] = (raw, value)
        return value

    def latest(self, key: str) -> T | None:
        """The value last parsed under ``key`` (whatever text is stored now), or ``None``."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        return len(self._entries)
