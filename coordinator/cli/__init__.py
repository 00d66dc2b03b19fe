"""The operators' command line, ``coordinator``: parse, call the library, render."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
