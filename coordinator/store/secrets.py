"""Secrets at rest and in memory.

* :class:`SecretBox` encrypts credentials with AES-256-GCM before they reach Redis. The
  credential id is the associated data, so a ciphertext copied onto another credential does not
  decrypt. A box holds a key ring: the first key encrypts, every key decrypts (rotation), and each
  ciphertext names the key that made it.
* :class:`Secret` holds a secret in memory and never shows it in ``repr``/``str``.
* :func:`redact` scrubs secrets out of free text (provider error messages) before it is logged,
  stored or put in an event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError, DecryptionError, MissingSecretError

__all__ = ["Secret", "SecretBox", "generate_key", "mask", "redact", "seal"]

_PREFIX = "v1"
_NONCE_BYTES = 12


def generate_key() -> str:
    """Return a fresh 256-bit key, url-safe base64, suitable for ``COORDINATOR_SECRET_KEY``."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _parse_key(text: str) -> bytes:
    text = text.strip()
    raw: bytes | None = None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raw = bytes.fromhex(text)
    else:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(
            "secret_key",
            "expected 32 bytes as url-safe base64 or 64 hex digits "
            "(generate one with `coordinator keygen`)",
        )
    return raw


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"coordinator-key-id" + key).hexdigest()[:8]


class SecretBox:
    """AES-256-GCM envelope for secrets stored in Redis, with a key ring for rotation."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        ring = [bytes(k) for k in keys]
        if not ring:
            raise ConfigError("secret_key", "at least one key is required")
        self._primary = _key_id(ring[0])
        self._ciphers = {_key_id(k): AESGCM(k) for k in ring}

    @classmethod
    def from_text(cls, text: str) -> SecretBox:
        """Build a box from ``key[,older_key...]``: the first key encrypts, all keys decrypt."""
        parts = [p for p in (s.strip() for s in text.split(",")) if p]
        return cls(_parse_key(p) for p in parts)

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A box with a random key that lives only as long as this process (embedded backend)."""
        return cls([os.urandom(32)])

    @property
    def key_id(self) -> str:
        """The id of the key that encrypts new secrets."""
        return self._primary

    def encrypt(self, plaintext: str, *, aad: str) -> str:
        """Encrypt ``plaintext`` bound to ``aad`` (the credential id)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._primary].encrypt(nonce, plaintext.encode(), aad.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_PREFIX}.{self._primary}.{body}"

    def decrypt(self, token: str, *, aad: str) -> str:
        """Decrypt a value made by :meth:`encrypt` with the same ``aad``."""
        try:
            prefix, kid, body = token.split(".", 2)
        except ValueError:
            raise DecryptionError(f"secret of {aad!r} is not a coordinator ciphertext") from None
        if prefix != _PREFIX:
            raise DecryptionError(f"secret of {aad!r} has unknown format {prefix!r}")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(
                f"secret of {aad!r} was encrypted with key {kid!r}, which is not configured"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad.encode())
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionError(
                f"secret of {aad!r} does not decrypt (wrong key or tampered value)"
            ) from exc
        return plain.decode()

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self._primary!r}, keys={len(self._ciphers)})"


def seal(box: SecretBox | None, secret: Secret, *, aad: str, alternative: str) -> str:
    """Encrypt a secret for storage; with no key configured this is a ``ConfigError`` (never
    plaintext). ``alternative`` tells the user how to keep the secret out of Redis instead."""
    if box is None:
        raise ConfigError(
            "secret_key",
            "storing an API key needs COORDINATOR_SECRET_KEY (or secret_key=) on this "
            f"backend; or {alternative} so that no secret reaches Redis",
        )
    return box.encrypt(secret.reveal(), aad=aad)


def mask(value: str) -> str:
    """Show a secret as ``****`` plus at most its last four characters (only for long values)."""
    if len(value) >= 16:
        return "****" + value[-4:]
    return "****"


class Secret:
    """A secret held in memory. ``repr``/``str`` are masked; :meth:`reveal` gives the value.

    The value may be produced lazily (decrypted or read from the environment on first use).
    """

    __slots__ = ("_loader", "_value")

    def __init__(self, value: str | None = None, *, loader: Callable[[], str] | None = None):
        if value is None and loader is None:
            raise ValueError("Secret needs a value or a loader")
        self._value = value
        self._loader = loader

    @classmethod
    def from_ciphertext(
        cls, box: SecretBox | None, ciphertext: str, *, aad: str, owner: str
    ) -> Secret:
        """A secret decrypted from ``ciphertext`` on first use (so a record can be read, and
        its other fields used, without the key)."""

        def decrypt() -> str:
            if box is None:
                raise MissingSecretError(f"{owner} holds an encrypted key but no secret_key is set")
            return box.decrypt(ciphertext, aad=aad)

        return cls(loader=decrypt)

    @classmethod
    def from_env(cls, var: str, owner: str) -> Secret:
        """A secret read from environment variable ``var`` on first use, on this replica.

        An unset or empty variable raises :class:`MissingSecretError` naming ``owner``.
        """

        def read_env() -> str:
            value = os.environ.get(var)
            if not value:
                raise MissingSecretError(f"{owner}: environment variable {var} is not set")
            return value

        return cls(loader=read_env)

    def reveal(self) -> str:
        """Return the secret in clear. Never log the result."""
        if self._value is None:
            assert self._loader is not None
            self._value = self._loader()
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.reveal() == other.reveal()

    def __hash__(self) -> int:
        return hash(self.reveal())


# One alternation, so that scrubbing a message is a single regex pass.
_TOKEN_RE = re.compile(
    r"(?P<scheme>\b(?:[Bb]earer|[Bb]asic))\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|(?P<name>\b(?i:api[_-]?key|access_token|refresh_token|id_token|client_secret|password|"
    r"code_verifier|code|token|x-api-key|authorization))(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"'&,;}]+"
    r"|\b(?:sk|xai|pk|rk|sess)-[A-Za-z0-9_-]{8,}"
    r"|\bAIza[0-9A-Za-z_-]{20,}"
    r"|\bgh[opsu]_[A-Za-z0-9]{20,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|[A-Za-z0-9_\-]{40,}"
)


def _sub_token(match: re.Match[str]) -> str:
    if match.group("scheme"):
        return f"{match.group('scheme')} ****"
    if match.group("name"):
        return f"{match.group('name')}{match.group('sep')}****"
    return "****"


@lru_cache(maxsize=1024)
def _scrub(text: str) -> str:
    # Cached: provider error messages repeat (the same 429 text thousands of times).
    return " ".join(_TOKEN_RE.sub(_sub_token, text).split())


def redact(text: str, known: Iterable[str] = (), *, limit: int = 300) -> str:
    """Remove secrets from free text: the ``known`` values and anything shaped like a token.

    The result is also cut to ``limit`` characters so that an error body cannot flood storage.
    """
    for secret in known:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "****")
    text = _scrub(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
