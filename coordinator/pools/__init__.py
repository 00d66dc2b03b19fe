"""Credential pools: :class:`AuthProfileManager` and its values, settings and Lua operations.

A pool holds the API keys (and OAuth-backed profiles) of one provider; a pick rotates among
the ready ones, keeps sessions sticky and skips those cooling down after a failure.
"""

from __future__ import annotations

from .config import AuthConfig, CooldownPolicy, Strategy
from .manager import AuthProfileManager
from .types import AuthProfile, CooldownResult, ProfileStatus

__all__ = [
    "AuthConfig",
    "AuthProfile",
    "AuthProfileManager",
    "CooldownPolicy",
    "CooldownResult",
    "ProfileStatus",
    "Strategy",
]
