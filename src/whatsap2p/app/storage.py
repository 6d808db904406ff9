"""Writing files in the data dir so that a crash never leaves half a file behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from whatsap2p.errors import StoreError

__all__ = ["DataDirLock", "read_if_present", "remove_leftovers", "write_atomically"]


def read_if_present(path: Path) -> bytes | None:
    """The file's bytes; None if it does not exist yet; StoreError if it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: temp file in the same folder, fsync, rename, fsync dir."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_leftovers(folder: Path) -> list[str]:
    """Remove the temporary files `write_atomically` left in `folder` when the process
    died before its rename (call it holding the data dir's lock); their names."""
    removed = []
    for leftover in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover.name)
    return removed


class DataDirLock:
    """An exclusive lock on a data dir, so two modules never write the same files.

    flock is released by the kernel when the process dies, so a killed module never
    leaves a stale lock behind.
    """

    FILE_NAME = ".lock"

    def __init__(self, folder: Path) -> None:
        self._path = folder / self.FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if we now hold the lock, False if another process does."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
