"""``python -m coordinator``: the same command line as ``coordinator``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
