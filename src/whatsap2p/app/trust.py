"""The keys we have seen for each number (trust on first use), in `trust.json`:

    {"version": 1, "keys": {"+5511999990002": "<hex public key>"}}

The first key a number proves is pinned; a later, different key is not accepted until
the user says so (`trust`). Written atomically; a corrupt file is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from whatsap2p.app.storage import read_if_present, write_atomically
from whatsap2p.errors import StoreError
from whatsap2p.protocol.directory import E164
from whatsap2p.protocol.keys import KEY_BYTES, fingerprint

__all__ = ["FILE_NAME", "TrustStore"]

FILE_NAME = "trust.json"
FORMAT_VERSION = 1


class TrustStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, bytes] = {}

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        store = cls(path)
        raw = read_if_present(path)
        if raw is None:
            return store
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(f'expected an object with "version": {FORMAT_VERSION}')
            keys = data.get("keys", {})
            if not isinstance(keys, dict):
                raise ValueError('"keys" must be an object')
            for phone, hex_key in keys.items():
                key = bytes.fromhex(hex_key) if isinstance(hex_key, str) else b""
                if not E164.fullmatch(phone) or len(key) != KEY_BYTES:
                    raise ValueError(f"bad entry for {phone!r}")
                store._keys[phone] = key
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(
                f"{path} is corrupt ({exc}); fix or move it, it was not changed"
            ) from exc
        return store

    def pinned(self, phone: str) -> bytes | None:
        return self._keys.get(phone)

    def fingerprint_of(self, phone: str) -> str | None:
        key = self._keys.get(phone)
        return None if key is None else fingerprint(key)

    def pin(self, phone: str, key: bytes) -> None:
        if self._keys.get(phone) == key:
            return
        self._keys[phone] = key
        data = {"version": FORMAT_VERSION, "keys": {p: k.hex() for p, k in self._keys.items()}}
        try:
            write_atomically(self.path, (json.dumps(data, indent=2) + "\n").encode())
        except OSError as exc:
            raise StoreError(f"cannot save {self.path}: {exc.strerror}") from exc
