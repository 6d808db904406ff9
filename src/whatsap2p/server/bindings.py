"""Which key each phone number is bound to, kept in SQLite so it survives restarts.

The first registration of a number binds it to the key that made it; from then on only
that key may register it, until an operator releases it (`whatsap2p server release`).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from whatsap2p.errors import StoreError

__all__ = ["Bindings"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    phone    TEXT PRIMARY KEY,
    key      BLOB NOT NULL,
    bound_at TEXT NOT NULL
)
"""


class Bindings:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: each statement commits on its own, durably.
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")  # `release` may write meanwhile
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the bindings database {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def bind(self, phone: str, key: bytes) -> bool:
        """Bind `phone` to `key` if it is free; whether it is bound to `key` now (False:
        another key holds it)."""
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO bindings (phone, key, bound_at) VALUES (?, ?, ?)",
                (phone, key, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
            )
            row = self._db.execute("SELECT key FROM bindings WHERE phone = ?", (phone,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"bindings database: {exc}") from exc
        return row is not None and bytes(row[0]) == key

    def release(self, phone: str) -> bool:
        """Free `phone`; True if it was bound."""
        try:
            cursor = self._db.execute("DELETE FROM bindings WHERE phone = ?", (phone,))
        except sqlite3.Error as exc:
            raise StoreError(f"bindings database: {exc}") from exc
        return cursor.rowcount > 0

    def key_of(self, phone: str) -> bytes | None:
        row = self._db.execute("SELECT key FROM bindings WHERE phone = ?", (phone,)).fetchone()
        return None if row is None else bytes(row[0])
