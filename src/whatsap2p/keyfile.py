"""Files that hold a secret: long-term keys, for user modules (`identity.key`) and the
server (`server.key`), and the secret a directory shares with its relays
(relay/secret.py).

    whatsap2p-key 1
    <the 32-byte X25519 private key, base64>

Created on first use with mode 0600, whole or not at all: written under another name,
then linked into place, which fails if the name exists meanwhile (another process, a
relay and a server starting at once, never reads a half-written file, and theirs is
kept, never replaced by ours). A file that does not parse is reported and never
replaced (replacing a key would silently change who you are).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from whatsap2p.errors import StoreError
from whatsap2p.protocol.keys import StaticKey

__all__ = ["load_or_create_key", "load_or_create_secret_file"]

_HEADER = "whatsap2p-key 1"


def load_or_create_key(path: Path) -> StaticKey:
    private = load_or_create_secret_file(
        path, _HEADER, "key file", lambda: StaticKey.generate().private, StaticKey.from_private
    )
    return StaticKey.from_private(private)


def load_or_create_secret_file(
    path: Path, header: str, what: str, fresh: Callable[[], bytes], check: Callable[[bytes], object]
) -> bytes:
    """The secret in `path` (a `header` line, then it in base64), or `fresh()` written
    there when there is no such file; `check(secret)` raises ValueError for one that is
    not valid. StoreError, naming the file as `what`, when it cannot be read, written or
    understood."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path, header, what, fresh, check)
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read {what} {path}: {exc}") from exc
    lines = text.split()
    try:
        if " ".join(lines[:-1]) != header or len(lines) != len(header.split()) + 1:
            raise ValueError(f"not a whatsap2p {what}")
        secret = base64.b64decode(lines[-1], validate=True)
        check(secret)
    except (ValueError, binascii.Error) as exc:
        raise StoreError(f"{what} {path} is corrupt ({exc}); it was not changed") from exc
    return secret


def _create(
    path: Path, header: str, what: str, fresh: Callable[[], bytes], check: Callable[[bytes], object]
) -> bytes:
    secret = fresh()
    data = f"{header}\n{base64.b64encode(secret).decode()}\n".encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # (0600)
    except OSError as exc:
        raise StoreError(f"cannot create {what} {path}: {exc.strerror}") from exc
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    except FileExistsError:  # (another process made it meanwhile: theirs it is)
        return load_or_create_secret_file(path, header, what, fresh, check)
    except OSError as exc:
        raise StoreError(f"cannot create {what} {path}: {exc.strerror}") from exc
    finally:
        os.unlink(temporary)
    return secret
