"""The worker reads OAuth providers with :mod:`coordinator.oauth.tables` (kept here as names)."""

from __future__ import annotations

from coordinator.oauth.tables import load_providers, providers_from_mapping

__all__ = ["load_providers", "providers_from_mapping"]
