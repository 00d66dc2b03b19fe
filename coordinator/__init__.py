"""coordinator: one consistent, failure-aware view of AI-provider credentials for many replicas.

All shared state lives in Redis and every decision is one Lua script on the Redis clock.
Start with :func:`connect` and :class:`AuthProfileManager`.

The package is grouped by domain: ``store/`` (connections, Lua function loading, keys,
secrets), ``pools/`` (credential pools), ``models/`` (model profiles, circuit breakers,
failover), ``oauth/`` (sign-in and token refresh), ``sync/`` (the same managers for
synchronous code) and ``cli/`` (the operators' command line). Every public name is importable
from here.
"""

from __future__ import annotations

from . import _moved
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
from .models import (
    BreakerConfig,
    Classification,
    ModelAttempt,
    ModelAuth,
    ModelCall,
    ModelConfig,
    ModelProfile,
    ModelProfileManager,
    ModelProfileStatus,
    ModelSelection,
    ReportResult,
    TokenSource,
    classify,
    classify_exception,
    classify_response,
    default_model_profiles,
)
from .oauth import PRESETS as OAUTH_PRESETS
from .oauth import (
    AccessToken,
    AuthorizationRequest,
    DeviceAuthorization,
    LoopbackCallbackServer,
    OAuthConfig,
    OAuthCredential,
    OAuthManager,
    OAuthProvider,
)
from .oauth import preset as oauth_preset
from .pools import (
    AuthConfig,
    AuthProfile,
    AuthProfileManager,
    CooldownPolicy,
    CooldownResult,
    ProfileStatus,
    Strategy,
)
from .singletons import (
    get_auth_profile_manager,
    get_model_profile_manager,
    get_oauth_manager,
    reset_auth_profile_manager,
    reset_model_profile_manager,
    reset_oauth_manager,
)
from .store import Store, connect
from .store.secrets import Secret, SecretBox, generate_key
from .sync import (
    SyncAuthProfileManager,
    SyncModelProfileManager,
    SyncOAuthManager,
    SyncStore,
    SyncSubscription,
)
from .sync import connect as connect_sync

__version__ = "0.1.0"

__all__ = [
    "AccessToken",
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
    "SyncAuthProfileManager",
    "SyncModelProfileManager",
    "SyncOAuthManager",
    "SyncStore",
    "SyncSubscription",
    "__version__",
    "connect",
    "connect_sync",
    "generate_key",
    "get_auth_profile_manager",
    "get_model_profile_manager",
    "get_oauth_manager",
    "reset_auth_profile_manager",
    "reset_model_profile_manager",
    "reset_oauth_manager",
]

_moved.install()
