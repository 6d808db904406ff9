"""Long-term identity keys (X25519) and their fingerprints.

A fingerprint is the SHA-256 of the 32-byte public key, in lowercase hex: one token
that a person can compare and a command line can pass (`--server-key FP`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = ["StaticKey", "fingerprint", "normalise_fingerprint"]

KEY_BYTES = 32


def fingerprint(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


def normalise_fingerprint(text: str) -> str | None:
    """A fingerprint as typed (any case, with spaces or colons) -> canonical, or None."""
    cleaned = "".join(c for c in text.lower() if c not in " :-")
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        return None
    return cleaned


@dataclass(frozen=True, slots=True, repr=False)
class StaticKey:
    """A key pair. `repr` never shows the private half."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> StaticKey:
        return cls.from_private(
            X25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )

    @classmethod
    def from_private(cls, private: bytes) -> StaticKey:
        if len(private) != KEY_BYTES:
            raise ValueError(f"a private key is {KEY_BYTES} bytes, not {len(private)}")
        public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
        return cls(private, public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def __repr__(self) -> str:
        return f"StaticKey(fingerprint={self.fingerprint})"
