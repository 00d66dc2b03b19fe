"""``python -m workers`` (also ``coordinator worker``): run one refresh worker."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
