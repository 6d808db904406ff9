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

import base64
import binascii
import os
import tempfile
from pathlib import Path

import platformdirs

from whatsap2p.errors import StoreError
from whatsap2p.protocol.relay import MIN_SECRET

__all__ = ["DEFAULT_SECRET", "load_or_create_secret"]

#: Where `whatsap2p relay` and `whatsap2p server` look for the secret by default.
DEFAULT_SECRET = platformdirs.user_data_path("whatsap2p") / "relay.secret"

_HEADER = "whatsap2p-relay-secret 1"


def load_or_create_secret(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read relay secret file {path}: {exc}") from exc
    lines = text.split()
    try:
        if " ".join(lines[:2]) != _HEADER or len(lines) != 3:
            raise ValueError("not a whatsap2p relay secret file")
        secret = base64.b64decode(lines[2], validate=True)
        if len(secret) < MIN_SECRET:
            raise ValueError(f"{len(secret)} bytes, fewer than {MIN_SECRET}")
    except (ValueError, binascii.Error) as exc:
        raise StoreError(
            f"relay secret file {path} is corrupt ({exc}); it was not changed"
        ) from exc
    return secret


def _create(path: Path) -> bytes:
    secret = os.urandom(MIN_SECRET)
    data = f"{_HEADER}\n{base64.b64encode(secret).decode()}\n".encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name (mkstemp: mode 0600), then linked into place,
        # which fails if the name exists: another process creating it at the same moment
        # (the relay, the server) never reads a half-written file, nor do we replace theirs.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".relay-secret-")
    except OSError as exc:
        raise StoreError(f"cannot create relay secret file {path}: {exc.strerror}") from exc
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    except FileExistsError:
        return load_or_create_secret(path)
    except OSError as exc:
        raise StoreError(f"cannot create relay secret file {path}: {exc.strerror}") from exc
    finally:
        os.unlink(temporary)
    return secret
