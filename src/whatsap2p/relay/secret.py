"""The secret a directory server mints relay tokens with and a relay verifies them with:
one file, the same on both (`whatsap2p relay --secret FILE`; the server's default is the
same path, so both on one machine, run by one user, share it with no option at all).

    whatsap2p-relay-secret 1
    <32 random bytes, base64>

Created on first use with mode 0600, whole or not at all (never replacing one that
exists, even one another process created meanwhile); a file that does not parse, or
holds fewer than 32 bytes, is reported and never replaced: a new secret would silently
invalidate every token the other side mints.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from whatsap2p.keyfile import load_or_create_secret_file
from whatsap2p.protocol.relay import MIN_SECRET

__all__ = ["DEFAULT_SECRET", "load_or_create_secret"]

#: Where `whatsap2p relay` and `whatsap2p server` look for the secret by default.
DEFAULT_SECRET = platformdirs.user_data_path("whatsap2p") / "relay.secret"

_HEADER = "whatsap2p-relay-secret 1"


def load_or_create_secret(path: Path) -> bytes:
    return load_or_create_secret_file(
        path, _HEADER, "relay secret file", lambda: os.urandom(MIN_SECRET), _check
    )


def _check(secret: bytes) -> None:
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{len(secret)} bytes, fewer than {MIN_SECRET}")
