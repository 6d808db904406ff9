"""Long-term key files, for user modules (`identity.key`) and the server (`server.key`).

    whatsap2p-key 1
    <the 32-byte X25519 private key, base64>

Created on first start with mode 0600, written atomically; a file that does not parse is
reported and never replaced (replacing it would silently change who you are).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from whatsap2p.errors import StoreError
from whatsap2p.protocol.keys import StaticKey

__all__ = ["load_or_create_key"]

_HEADER = "whatsap2p-key 1"


def load_or_create_key(path: Path) -> StaticKey:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read key file {path}: {exc}") from exc
    lines = text.split()
    try:
        if " ".join(lines[:2]) != _HEADER or len(lines) != 3:
            raise ValueError("not a whatsap2p key file")
        return StaticKey.from_private(base64.b64decode(lines[2], validate=True))
    except (ValueError, binascii.Error) as exc:
        raise StoreError(f"key file {path} is corrupt ({exc}); it was not changed") from exc


def _create(path: Path) -> StaticKey:
    key = StaticKey.generate()
    data = f"{_HEADER}\n{base64.b64encode(key.private).decode()}\n".encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: if another process created the file meanwhile, keep theirs, never ours.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path)
    except OSError as exc:
        raise StoreError(f"cannot create key file {path}: {exc.strerror}") from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key
