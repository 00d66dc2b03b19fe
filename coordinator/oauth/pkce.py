"""PKCE (RFC 7636) and ``state`` values: random, S256 only (``plain`` is never sent)."""

from __future__ import annotations

import base64
import hashlib
import secrets

__all__ = ["code_challenge", "new_state", "new_verifier", "state_digest"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def new_verifier() -> str:
    """A fresh code verifier: 64 unreserved characters (384 random bits; RFC 7636 §4.1)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str) -> str:
    """The S256 challenge of ``verifier``: ``BASE64URL(SHA256(verifier))`` without padding."""
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= _UNRESERVED:
        raise ValueError("a code verifier is 43-128 unreserved characters (RFC 7636 §4.1)")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def new_state() -> str:
    """A fresh ``state``: 256 random bits, url-safe (RFC 6749 §10.12 asks for unguessable)."""
    return secrets.token_urlsafe(32)


def state_digest(state: str) -> str:
    """The SHA-256 hex digest under which a state is stored (the state itself never is)."""
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()
