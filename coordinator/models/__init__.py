"""Model profiles across providers: :class:`ModelProfileManager`, one circuit breaker per
profile, the failure classifier, failover and ``execute()``, with their Lua operations.
"""

from __future__ import annotations

from .classify import Classification, classify, classify_exception, classify_response
from .config import BreakerConfig, ModelConfig
from .defaults import default_model_profiles
from .manager import ModelProfileManager
from .types import (
    ModelAttempt,
    ModelAuth,
    ModelCall,
    ModelProfile,
    ModelProfileStatus,
    ModelSelection,
    ReportResult,
    TokenSource,
)

__all__ = [
    "BreakerConfig",
    "Classification",
    "ModelAttempt",
    "ModelAuth",
    "ModelCall",
    "ModelConfig",
    "ModelProfile",
    "ModelProfileManager",
    "ModelProfileStatus",
    "ModelSelection",
    "ReportResult",
    "TokenSource",
    "classify",
    "classify_exception",
    "classify_response",
    "default_model_profiles",
]
