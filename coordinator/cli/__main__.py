"""``python -m coordinator.cli``: the same command line as ``coordinator``."""

from __future__ import annotations

from .main import main

raise SystemExit(main())
