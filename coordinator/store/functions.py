"""The Lua operations, built once from each domain's folder into Redis function libraries.

The ``.lua`` files live beside the Python of their domain: ``store/_lib.lua`` (clock, JSON,
events, register), ``pools/``, ``models/`` and ``oauth/``. Every file name is unique across
the folders, so an operation is named by its file name alone.

Each ``<operation>.lua`` file is one atomic operation headed by its KEYS/ARGV/return contract.
Files whose name starts with ``_`` are libraries: ``_lib.lua`` (clock, JSON, events) comes first
in every operation, and an operation names any other library it needs on a line of its own,
``--!include _pool.lua`` (libraries may include libraries; each is included once).

Every operation is loaded as a Redis function (``FUNCTION LOAD``, Redis 7) of its own library,
and called with ``FCALL``:

- the libraries' code runs once, when the library loads: their helpers are made once, not on
  every call (in an ``EVALSHA`` script every ``local function`` is a new closure at every call;
  that was a quarter of a selection's instructions, measured with callgrind);
- the operation file, with its ``--!include`` lines removed, is the function's body, run on
  every call. Its ``KEYS`` and ``ARGV`` are the library's upvalues of those names, which
  ``register`` (in ``_lib.lua``) sets before each call, then it runs the ``BEGIN`` hooks that
  libraries holding per-call state add (keys taken from ``KEYS``, caches of one call).

A library and its function share one name, ``coordinator_<operation>_<digest>``, the digest
being that of the library's code: two versions of this package can share a server during a
rolling deploy, each calling its own code. Every operation receives the test clock offset as
``ARGV[1]`` (zero in production); the helper ``now_ms()`` reads Redis ``TIME`` and adds it.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["LIBRARY_PREFIX", "function_name", "library_source", "script_names"]


_INCLUDE = re.compile(r"^--!include (_[a-z0-9_]+\.lua)[ \t]*$", re.MULTILINE)
#: Every library (and function) of this package is named with this prefix.
LIBRARY_PREFIX = "coordinator_"


#: The folders of the ``coordinator`` package that hold Lua files, lowest layer first. They
#: are read as folders, not imported as packages: the store never imports a manager.
LUA_FOLDERS = ("store", "pools", "models", "oauth", "fleet")


@cache
def _lua_files() -> dict[str, Traversable]:
    """Every ``.lua`` file of the package by its name (names are unique across folders)."""
    files: dict[str, Traversable] = {}
    for folder in LUA_FOLDERS:
        for entry in (resources.files("coordinator") / folder).iterdir():
            if not entry.name.endswith(".lua"):
                continue
            if entry.name in files:
                raise RuntimeError(f"two Lua files named {entry.name} ({folder}/)")
            files[entry.name] = entry
    return files


@cache
def _read(file_name: str) -> str:
    return _lua_files()[file_name].read_text()


@cache
def script_names() -> tuple[str, ...]:
    """Names of all operations (file names without ``.lua``)."""
    return tuple(sorted(name[:-4] for name in _lua_files() if not name.startswith("_")))


def _libraries(text: str, seen: set[str]) -> str:
    """The libraries ``text`` includes, each expanded (its own includes in place), in the
    order they are first named; each library once."""
    parts: list[str] = []
    for library in _INCLUDE.findall(text):
        if library in seen:
            continue
        seen.add(library)
        parts.append(_expand(_read(library), seen))
    return "\n".join(parts)


def _expand(text: str, seen: set[str]) -> str:
    """A library with each ``--!include`` line replaced by that library, recursively."""

    def include(match: re.Match[str]) -> str:
        library = match.group(1)
        if library in seen:
            return ""
        seen.add(library)
        return _expand(_read(library), seen)

    return _INCLUDE.sub(include, text)


@cache
def _code(name: str) -> str:
    """The library's code without its name: the libraries, then the operation registered as
    ``FUNCTION_NAME`` (filled in by :func:`library_source`)."""
    if name not in script_names():
        raise KeyError(name)
    operation = _read(f"{name}.lua")
    body = _INCLUDE.sub("", operation)
    return (
        _read("_lib.lua")
        + "\n"
        + _libraries(operation, {"_lib.lua"})
        + "\nregister(FUNCTION_NAME, function()\n"
        + body
        + "\nend)\n"
    )


@cache
def function_name(name: str) -> str:
    """The name of operation ``name``'s library and function on the server: the operation and a
    digest of its code."""
    digest = hashlib.sha1(_code(name).encode(), usedforsecurity=False).hexdigest()[:16]
    return f"{LIBRARY_PREFIX}{name}_{digest}"


@cache
def library_source(name: str) -> str:
    """What ``FUNCTION LOAD`` receives for operation ``name``: the whole library."""
    function = function_name(name)
    return f"#!lua name={function}\nlocal FUNCTION_NAME = '{function}'\n" + _code(name)
