"""The keys we have seen for each number (trust on first use), in `trust.json`:

    {"version": 1, "keys": {"+5511999990002": "<hex public key>"}}

The first key a number proves is pinned; a later, different key is not accepted until
the user says so (`trust`). Written atomically; a corrupt file is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from whatsap2p.app.storage import read_if_present, write_atomically
from whatsap2p.errors import PeerIdentityChanged, StoreError
from whatsap2p.protocol.directory import E164
from whatsap2p.protocol.keys import KEY_BYTES, fingerprint

__all__ = ["FILE_NAME", "Trust", "TrustStore"]

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
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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


class Trust:
    """Which key each number may use: the pinned one (pinned on first use), while keys
    that differ wait for the user's word (`accept`); `on_changed(phone, key)` is told
    once per new key."""

    def __init__(self, store: TrustStore, on_changed: Callable[[str, bytes], None]) -> None:
        self.store = store
        self._on_changed = on_changed
        #: Keys that differ from the pinned ones, waiting for the user's `accept`.
        self._changed: dict[str, bytes] = {}

    @property
    def changed(self) -> frozenset[str]:
        """Numbers that proved a key other than the pinned one, waiting for `accept`."""
        return frozenset(self._changed)

    def check(self, phone: str, key: bytes) -> PeerIdentityChanged | None:
        """None if `key` may be used for `phone` (pinning it on first use), else why not."""
        pinned = self.store.pinned(phone)
        if pinned is None:
            self.store.pin(phone, key)
            return None
        if pinned == key:
            return None
        if self._changed.get(phone) != key:
            self._changed[phone] = key
            self._on_changed(phone, key)
        return PeerIdentityChanged(
            f"identity changed: {phone} now proves key {fingerprint(key)}, not the "
            f"pinned {fingerprint(pinned)}; nothing was sent (use trust to accept it)"
        )

    def waiting(self, phone: str) -> bytes | None:
        """The changed key `phone` proved, if one waits for the user."""
        return self._changed.get(phone)

    def accept(self, phone: str, key: bytes) -> None:
        """The user trusts `key` for `phone` from now on."""
        self._changed.pop(phone, None)
        self.store.pin(phone, key)
