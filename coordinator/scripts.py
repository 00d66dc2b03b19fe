"""The Lua scripts, loaded once from ``coordinator/lua``.

Each ``<operation>.lua`` file is one atomic operation headed by its KEYS/ARGV/return contract.
Files whose name starts with ``_`` are libraries: ``_lib.lua`` (clock, JSON, events) is
prepended to every script, and a script names any other library it needs on a line of its own,
``--!include _pool.lua``, which is replaced by that file (libraries may include libraries;
each is included once). So shared helpers have one implementation and every script still runs
as one self-contained EVALSHA. Every script receives the test clock offset as ``ARGV[1]`` (zero
in production); the helper ``now_ms()`` reads Redis ``TIME`` and adds it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["script_names", "script_source"]


_INCLUDE = re.compile(r"^--!include (_[a-z0-9_]+\.lua)[ \t]*$", re.MULTILINE)


@cache
def _read(file_name: str) -> str:
    return (resources.files("coordinator") / "lua" / file_name).read_text()


@cache
def script_names() -> tuple[str, ...]:
    """Names of all operation scripts (file names without ``.lua``)."""
    folder = resources.files("coordinator") / "lua"
    return tuple(
        sorted(
            entry.name[:-4]
            for entry in folder.iterdir()
            if entry.name.endswith(".lua") and not entry.name.startswith("_")
        )
    )


@cache
def script_source(name: str) -> str:
    """The full source of one operation: the shared library followed by the operation."""
    if name not in script_names():
        raise KeyError(name)
    return _read("_lib.lua") + "\n" + _expand(_read(f"{name}.lua"), set())


def _expand(text: str, seen: set[str]) -> str:
    """Replace each ``--!include`` line by that library, recursively, each library once."""

    def include(match: re.Match[str]) -> str:
        library = match.group(1)
        if library in seen:
            return ""
        seen.add(library)
        return _expand(_read(library), seen)

    return _INCLUDE.sub(include, text)
