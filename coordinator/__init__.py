"""coordinator: one consistent, failure-aware view of AI-provider credentials for many replicas.

All shared state lives in Redis and every decision is one Lua script on the Redis clock.
Start with :func:`connect` and :class:`AuthProfileManager`.
"""

from __future__ import annotations

from .breaker_config import BreakerConfig, ModelConfig
from .classify import Classification, classify, classify_exception, classify_response
from .config import AuthConfig, CooldownPolicy, Strategy
from .errors import (
    AllProfilesUnavailableError,
    ConfigError,
    CoordinatorError,
    CorruptStateError,
    CredentialNotFoundError,
    DecryptionError,
    LoginTimeoutError,
    MissingSecretError,
    NoProfileAvailableError,
    NotFoundError,
    OAuthAuthorizationError,
    OAuthError,
    OAuthProviderError,
    OAuthStateError,
    ProfileNotFoundError,
    ReauthRequiredError,
    RefreshInProgressError,
    SecretError,
    StoreUnavailableError,
)
from .events import Event, EventHub
from .failures import FailureKind
from .model_defaults import default_model_profiles
from .model_types import (
    ModelAttempt,
    ModelAuth,
    ModelCall,
    ModelProfile,
    ModelProfileStatus,
    ModelSelection,
    ReportResult,
    TokenSource,
)
from .models import ModelProfileManager
from .oauth import PRESETS as OAUTH_PRESETS
from .oauth import (
    AuthorizationRequest,
    DeviceAuthorization,
    LoopbackCallbackServer,
    OAuthConfig,
    OAuthCredential,
    OAuthManager,
    OAuthProvider,
)
from .oauth import preset as oauth_preset
from .profile_types import AuthProfile, CooldownResult, ProfileStatus
from .profiles import AuthProfileManager, get_auth_profile_manager, reset_auth_profile_manager
from .secrets import Secret, SecretBox, generate_key
from .store import Store, connect

__version__ = "0.1.0"

__all__ = [
    "OAUTH_PRESETS",
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
    "AllProfilesUnavailableError",
    "AuthorizationRequest",
    "DeviceAuthorization",
    "LoginTimeoutError",
    "LoopbackCallbackServer",
    "OAuthConfig",
    "OAuthCredential",
    "OAuthManager",
    "OAuthProvider",
    "oauth_preset",
    "AuthConfig",
    "AuthProfile",
    "AuthProfileManager",
    "ConfigError",
    "CooldownPolicy",
    "CooldownResult",
    "CoordinatorError",
    "CorruptStateError",
    "CredentialNotFoundError",
    "DecryptionError",
    "Event",
    "EventHub",
    "FailureKind",
    "MissingSecretError",
    "NoProfileAvailableError",
    "NotFoundError",
    "OAuthAuthorizationError",
    "OAuthError",
    "OAuthProviderError",
    "OAuthStateError",
    "ProfileNotFoundError",
    "ProfileStatus",
    "ReauthRequiredError",
    "RefreshInProgressError",
    "Secret",
    "SecretBox",
    "SecretError",
    "Store",
    "StoreUnavailableError",
    "Strategy",
    "__version__",
    "connect",
    "generate_key",
    "get_auth_profile_manager",
    "reset_auth_profile_manager",
]
