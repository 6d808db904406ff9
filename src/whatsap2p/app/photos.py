"""Photos: checking and streaming the ones we send, verifying and storing the ones we get.

A received photo is written under a temporary name while it streams in (hashed as it
goes), then checked (size, SHA-256, a real image of the announced type, not a
decompression bomb) and only then given its final name in `photos/`: the sender's file
name, sanitised, never a path, never replacing an existing file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import re
import shutil
import threading
import time
import unicodedata
import warnings
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from whatsap2p.config import IncomingLimits, Limits, MiB
from whatsap2p.errors import DeliveryFailed, NoRoom, PhotoRejected
from whatsap2p.protocol.events import PhotoOffer

__all__ = [
    "IncomingPhoto",
    "PhotoFile",
    "PhotoStore",
    "PhotoStream",
    "file_sha256",
    "photo_key",
    "prepare_photo",
    "safe_file_name",
]

_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
}
_UNSAFE = re.compile(r"[^\w .()+-]")
_MAX_STEM = 80
#: File systems take names of up to 255 bytes: the stem's UTF-8 (80 characters of 4 bytes
#: would be 320), " (9999)" for a name taken (`_place`) and the extension must fit.
_MAX_STEM_BYTES = 240


@dataclass(frozen=True, slots=True)
class PhotoFile:
    """A checked photo on disk: one we send, one we stored, one waiting in the outbox."""

    path: Path
    filename: str
    size: int
    sha256: str  # of the whole file; "" for one we send, until it has been sent (or hashed)
    mime: str
    key: str = ""  # for one we send: names it for a resume (photo_key)

    def describe(self) -> dict[str, object]:
        """The form kept in the history and shown to scripts (`bytes` is the size)."""
        return {
            "path": str(self.path),
            "filename": self.filename,
            "bytes": self.size,
            "sha256": self.sha256,
            "mime": self.mime,
        }

    @classmethod
    def from_description(cls, described: dict[str, object]) -> PhotoFile:
        return cls(
            Path(str(described["path"])),
            str(described["filename"]),
            int(str(described["bytes"])),
            str(described["sha256"]),
            str(described["mime"]),
        )


def _identify(path: Path, limits: Limits) -> str:
    """The MIME type of the image at `path`, or PhotoRejected saying why it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=tuple(_FORMATS)) as image:
                width, height = image.size
                if width * height > limits.max_photo_pixels:
                    raise PhotoRejected(
                        f"image of {width}x{height} pixels exceeds the "
                        f"{limits.max_photo_pixels}-pixel limit"
                    )
                fmt = image.format or ""
                image.verify()
    except PhotoRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PhotoRejected(f"image too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow signals a bad image with many exception types
        raise PhotoRejected("not a JPEG, PNG, GIF or WebP image") from exc
    if fmt not in _FORMATS:
        raise PhotoRejected("not a JPEG, PNG, GIF or WebP image")
    return _FORMATS[fmt]


def prepare_photo(path: Path, limits: Limits) -> PhotoFile:
    """Check a photo before sending and hash it (blocking: run it in a thread)."""
    try:
        resolved = path.expanduser().resolve(strict=True)
        if not resolved.is_file():
            raise PhotoRejected(f"{path} is not a file")
        size = resolved.stat().st_size
    except FileNotFoundError as exc:
        raise PhotoRejected(f"photo {path} does not exist") from exc
    except OSError as exc:
        raise PhotoRejected(f"cannot read photo {path}: {exc.strerror}") from exc
    except UnicodeEncodeError as exc:  # a lone surrogate: no file can have that name
        raise PhotoRejected(f"photo path {str(path)!r} is not a valid file name") from exc
    if size == 0:
        raise PhotoRejected(f"photo {path} is empty")
    if size > limits.max_photo_bytes:
        raise PhotoRejected(
            f"photo {path} is {size} bytes, more than the {limits.max_photo_bytes}-byte limit"
        )
    mime = _identify(resolved, limits)
    try:
        key = photo_key(resolved, size)
    except OSError as exc:
        raise PhotoRejected(f"cannot read photo {path}: {exc.strerror}") from exc
    return PhotoFile(resolved, safe_file_name(resolved.name, mime), size, "", mime, key)


_KEY_SAMPLE = 1024 * 1024


def photo_key(path: Path, size: int) -> str:
    """What names a photo for a resume, cheaply: the SHA-256 of its size and of its first
    and last MiB (blocking). Two files that share these but differ in the middle resume
    into a mix that the whole file's SHA-256, checked at the end, then refuses."""
    digest = hashlib.sha256(size.to_bytes(8, "big"))
    with path.open("rb") as source:
        digest.update(source.read(_KEY_SAMPLE))
        if size > _KEY_SAMPLE:
            source.seek(max(_KEY_SAMPLE, size - _KEY_SAMPLE))
            digest.update(source.read(_KEY_SAMPLE))
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a whole file (blocking)."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_KEY_SAMPLE):
            digest.update(block)
    return digest.hexdigest()


class PhotoStream:
    """The photo's bytes from `offset` on, in chunks: exactly `photo.size - offset` of
    them, or DeliveryFailed. They are read and hashed on a thread of the stream's own
    (both release the GIL) a few chunks ahead of the sender, so hashing costs the sender
    no time; once all are out, `sha256` is the digest of the whole file (the bytes before
    `offset` are hashed first)."""

    _AHEAD = 3

    def __init__(self, photo: PhotoFile, chunk_size: int, offset: int = 0) -> None:
        self._photo = photo
        self._chunk_size = chunk_size
        self._offset = offset
        self.sha256: str | None = None
        #: Bytes the receiver has or was handed so far (the resumed ones included): each
        #: chunk counts once the sender comes back for the next one, i.e. once sent.
        self.done = offset
        #: Called after each chunk is sent (a UI's progress bar).
        self.on_progress: Callable[[], None] | None = None

    async def __aiter__(self) -> AsyncGenerator[bytes]:
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        photo = self._photo

        def read(size: int) -> bytes:
            data = source.read(size)
            if len(data) != size:
                raise DeliveryFailed("the photo file shrank while it was being sent")
            digest.update(data)
            return data

        ahead: deque[asyncio.Future[bytes]] = deque()
        try:
            # (the file closes after the reader has stopped: no read is left to find it
            # closed when the sender stops early)
            with (
                photo.path.open("rb") as source,
                ThreadPoolExecutor(1, thread_name_prefix="photo-reader") as reader,
            ):
                try:
                    before = self._offset
                    while before:  # the bytes the receiver kept still count in the digest
                        step = min(before, _KEY_SAMPLE)
                        await loop.run_in_executor(reader, read, step)
                        before -= step
                    unread = photo.size - self._offset
                    while unread or ahead:
                        while unread and len(ahead) < self._AHEAD:
                            step = min(self._chunk_size, unread)
                            ahead.append(loop.run_in_executor(reader, read, step))
                            unread -= step
                        chunk = await ahead.popleft()
                        yield chunk
                        self.done += len(chunk)
                        if self.on_progress is not None:
                            self.on_progress()
                finally:
                    for early in ahead:  # the sender stopped: reads ahead are not needed
                        early.cancel()
                    reader.shutdown(cancel_futures=True)
        except OSError as exc:
            raise DeliveryFailed(f"cannot read the photo: {exc.strerror}") from exc
        self.sha256 = digest.hexdigest()


def safe_file_name(name: str, mime: str) -> str:
    """A file name with no path, no control characters, and the extension of its type."""
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    stem = Path(base).stem if Path(base).suffix.lower() in _KNOWN_SUFFIXES else base
    stem = _UNSAFE.sub("_", stem).strip(" .")[:_MAX_STEM]
    stem = stem.encode()[:_MAX_STEM_BYTES].decode("utf-8", "ignore").strip(" .")
    return (stem or "photo") + _EXTENSIONS[mime]


_KNOWN_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp"})


#: Writing straight to the disk (O_DIRECT) needs offsets, sizes and memory aligned to the
#: device's blocks: 4 KiB covers the devices in use (512-byte or 4 KiB sectors).
_BLOCK = 4096
#: The aligned buffer an arriving photo's bytes gather in, written out when full: 1 MiB
#: (each write waits for the device, so fewer, larger writes; docs/performance.md).
#: Touched once full, so each photo being written holds one (`_Stages`).
_STAGE = 256 * _BLOCK
_DIRECT = getattr(os, "O_DIRECT", 0)


class _Stages:
    """How many photos may hold a staging buffer at once, so that many photos arriving
    together cost `size` photos' memory, not one each. A photo takes its turn on the
    event loop before its offer is answered (so no thread ever waits for one), and gives
    it back when it closes, from whichever thread that is. A photo waiting for its turn
    holds no memory: its sender waits for the answer to its offer meanwhile."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = 0
        self._lock = threading.Lock()
        self._waiting: list[asyncio.Future[None]] = []

    @property
    def waiting(self) -> int:
        """Photos waiting for their turn."""
        with self._lock:
            return len(self._waiting)

    async def take(self) -> None:
        """Once a buffer is free for this photo."""
        while True:
            with self._lock:
                if self.taken < self.size:
                    self.taken += 1
                    return
                turn = asyncio.get_running_loop().create_future()
                self._waiting.append(turn)
            try:
                await turn
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiting.remove(turn)

    def give(self) -> None:
        """A buffer is free again (any thread): whoever waits looks again."""
        with self._lock:
            self.taken -= 1
            waiting, self._waiting = self._waiting, []
        for turn in waiting:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                turn.get_loop().call_soon_threadsafe(_wake, turn)


def _wake(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)


class _DiskWriter:
    """Appends a photo's bytes to its partial file straight to the disk, past the page
    cache, where the file system allows it (O_DIRECT; elsewhere through the cache as
    usual). Nobody reads a photo back while it arrives, and copying it into the page cache
    was a third of the receiver's CPU for a large photo (its pages are new memory each
    time). The bytes gather in a page-aligned buffer written out a whole MiB at a time;
    the last, partial block is written padded and the file then cut back to its size.
    The buffer is made at the first bytes to write (once the photo's turn came, see
    `_Stages`)."""

    def __init__(self, path: Path, keep: int) -> None:
        """Open `path` to append after its first `keep` bytes (a resume), dropping any
        after them."""
        aligned = keep - keep % _BLOCK
        with path.open("ab+") as kept:  # creates it; the tail of the kept bytes re-buffered
            kept.seek(aligned)
            tail = kept.read(keep - aligned)
            kept.truncate(keep)
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags | _DIRECT)
            self._direct = bool(_DIRECT)
        except OSError as exc:  # a file system without O_DIRECT says EINVAL
            if exc.errno != errno.EINVAL:
                raise
            self._fd = os.open(path, flags)
            self._direct = False
        self._buffer: mmap.mmap | None = None
        self._view = memoryview(b"")
        self._tail = tail
        self._at = aligned  # where the buffer's bytes go in the file
        self._fill = len(tail)  # (in the file until the buffer is made, in it after)

    def _stage(self) -> None:
        """Make the buffer, the kept tail in it: the file is then cut to whole blocks,
        which the buffer's first write-out overwrites from."""
        if self._buffer is None:
            self._buffer = mmap.mmap(-1, _STAGE)  # anonymous memory: page-aligned
            self._view = memoryview(self._buffer)
            self._view[: self._fill] = self._tail
            os.ftruncate(self._fd, self._at)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if view:
            self._stage()
        while view:
            step = min(len(view), _STAGE - self._fill)
            self._view[self._fill : self._fill + step] = view[:step]
            self._fill += step
            view = view[step:]
            if self._fill == _STAGE:
                self._write_out(_STAGE)
                self._at += _STAGE
                self._fill = 0

    def flush(self) -> None:
        """Write the bytes still in the buffer: the file ends with them (no writes after)."""
        if self._fill and self._buffer is not None:  # (without one, they are in the file)
            self._write_out(-(-self._fill // _BLOCK) * _BLOCK)  # whole blocks...
            self._at += self._fill
            self._fill = 0
            os.ftruncate(self._fd, self._at)  # ...cut back to the bytes

    def fsync(self) -> None:
        os.fsync(self._fd)

    def _write_out(self, size: int) -> None:
        done = 0
        while done < size:
            try:
                done += os.pwrite(self._fd, self._view[done:size], self._at + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                # A file system that took O_DIRECT at open but not these writes.
                flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_DIRECT)
                self._direct = False

    def close(self) -> None:
        os.close(self._fd)
        self._view.release()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


class IncomingPhoto:
    """One photo streaming in. Its bytes go to a partial file in `partial/`, named after
    the sender, the photo's key and its size; it becomes a stored photo once whole
    and verified, stays behind (hidden, never shown) if the transfer is interrupted so
    the same photo can resume from there, and is removed if it is found bad.

    Writing and hashing run on a thread of the photo's own (both release the GIL), so the
    event loop opens the next chunk while the last one goes to disk; at most
    `_IN_FLIGHT` chunks wait there, so a slow disk slows the sender down, not memory.
    The bytes go straight to the disk (`_DiskWriter`), so the fsync at the end has
    little left to wait for."""

    _IN_FLIGHT = 2

    def __init__(self, store: PhotoStore, key: str, path: Path, offer: PhotoOffer) -> None:
        self._store = store
        self._key = key
        self._path = path
        self._offer = offer
        self._digest = hashlib.sha256()
        self.offset = 0
        #: An earlier write failed (the disk is full, say): its bytes are not kept.
        self._failed = False
        try:
            if path.exists() and 0 < path.stat().st_size < offer.size:
                with path.open("rb") as kept:  # the hash resumes too
                    while block := kept.read(_KEY_SAMPLE):
                        self._digest.update(block)
                        self.offset += len(block)
            self._file: _DiskWriter | None = _DiskWriter(path, self.offset)
        except OSError as exc:
            store.release(key)
            raise _storing_failed("photos", exc) from exc
        self._written = self.offset
        self._staged = False  # holds one of the store's turns for a buffer
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="photo-writer")
        self._in_flight: deque[Future[None]] = deque()

    @property
    def path(self) -> Path:
        """Where its bytes are kept while it arrives (in `partial/`)."""
        return self._path

    @property
    def size(self) -> int:
        """Its size, once whole."""
        return self._offer.size

    @property
    def written(self) -> int:
        """How many of its bytes are here (kept from before, or written)."""
        return self._written

    @property
    def left(self) -> int:
        """How many of its bytes are still to come."""
        return self._offer.size - self._written

    async def turn(self) -> None:
        """Once this photo's turn to be written has come (see `_Stages`): taken before its
        bytes are asked for, so that photos waiting for theirs hold no memory."""
        if not self._staged:
            await self._store.stages.take()
            self._staged = True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data` for the disk (once this photo's turn has come); PhotoRejected or
        NoRoom if an earlier write failed."""
        await self.turn()
        self._in_flight.append(self._worker.submit(self._write, data))
        while len(self._in_flight) > self._IN_FLIGHT or (
            self._in_flight and self._in_flight[0].done()
        ):
            await asyncio.wrap_future(self._in_flight.popleft())

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            self._failed = True
            raise _storing_failed("the photo", exc) from exc
        self._digest.update(data)
        self._written += len(data)

    def _settle(self) -> None:
        """Wait for the queued writes (a couple of chunks at most); raise the first error."""
        try:
            while self._in_flight:
                self._in_flight.popleft().result()
        finally:
            self._in_flight.clear()
            self._worker.shutdown(wait=True)

    def finish(self, sha256: str) -> PhotoFile:
        """Verify against the sender's digest of the whole file and move into place
        (blocking: run it in a thread)."""
        offer = self._offer
        try:
            self._settle()
            assert self._file is not None
            try:
                self._file.flush()
                self._file.fsync()
            except OSError as exc:
                raise _storing_failed("the photo", exc) from exc
            self._close()
            if self._written != offer.size:
                raise PhotoRejected(f"received {self._written} of {offer.size} bytes")
            if self._digest.hexdigest() != sha256:
                raise PhotoRejected("photo damaged in transit: SHA-256 does not match")
            mime = _identify(self._path, self._store.limits)
            if mime != offer.mime:
                raise PhotoRejected(f"photo announced as {offer.mime} but is {mime}")
            filename = safe_file_name(offer.filename, mime)
            final = self._place(filename)
        except BaseException:
            self.discard()
            raise
        self._store.release(self._key)
        self._store.stored(self._key)
        return PhotoFile(final, filename, offer.size, sha256, mime)

    def _place(self, filename: str) -> Path:
        # os.link fails when the name exists, so an existing file is never replaced even
        # if another photo with the same name lands at the same moment.
        folder = self._store.folder
        stem, suffix = Path(filename).stem, Path(filename).suffix
        for attempt in range(1, 10_000):
            candidate = folder / (filename if attempt == 1 else f"{stem} ({attempt}){suffix}")
            try:
                os.link(self._path, candidate)
            except FileExistsError:
                continue
            self._path.unlink()
            return candidate
        raise PhotoRejected(f"too many photos named {filename!r}")

    def interrupted(self) -> None:
        """Keep the bytes received so far for a resume; nothing is shown. (Unless the same
        photo arrived whole meanwhile, over another connection: then they are not needed.)"""
        self._close()
        if (
            self._failed
            or not 0 < self._written < self._offer.size
            or self._store.arrived(self._key)
        ):
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        self._store.release(self._key)

    def discard(self) -> None:
        """The bytes are bad: remove them."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._store.release(self._key)

    def _close(self) -> None:
        with contextlib.suppress(PhotoRejected, NoRoom):
            self._settle()
        if self._file is not None:
            with contextlib.suppress(OSError):  # (bytes kept or not, a resume re-checks them)
                self._file.flush()
            self._file.close()
            self._file = None
        if self._staged:
            self._staged = False
            self._store.stages.give()


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


def _storing_failed(what: str, error: OSError) -> PhotoRejected | NoRoom:
    """Why the receiver cannot store `what`: no room on its disk is a refusal for now."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoRoom(f"receiver cannot store {what}: its disk is full")
    return PhotoRejected(f"receiver cannot store {what}: {error.strerror}")


_TWIN = "~"  # between a photo's key and the suffix of a second transfer of it at once


class PhotoStore:
    """The data dir's `photos/` folder, and `partial/` for transfers still under way.

    Arriving photos are given room before any of their bytes flow (`IncomingLimits`):
    each sender's share, everyone's together, and the disk's free space less a reserve
    (arriving photos counted at their whole size, interrupted ones at what they kept)."""

    def __init__(
        self,
        folder: Path,
        limits: Limits,
        partial: Path | None = None,
        incoming: IncomingLimits | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        self.folder = folder
        self.partial = partial or folder.parent / "partial"
        self.limits = limits
        self.incoming = incoming or IncomingLimits()
        #: Whether a number is a contact (strangers' photos share less room).
        self._known = known or (lambda phone: True)
        self.stages = _Stages(limits.max_photos_writing)
        self._active: dict[str, IncomingPhoto] = {}
        self._arrived: dict[str, None] = {}  # the photos stored lately (a bounded set)
        self._keep_partial = float("inf")

    def open(self, now: float, keep_partial: float) -> None:
        """Create the folders; drop partial transfers older than `keep_partial` seconds
        (and what versions before resumable transfers left in photos/)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self._keep_partial = keep_partial
        for leftover in self.folder.glob(".incoming-*.part"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        for partial in self.partial.glob("*.part"):
            with contextlib.suppress(OSError):
                if now - partial.stat().st_mtime > keep_partial:
                    partial.unlink()

    def begin(self, sender: str, offer: PhotoOffer, share: int | None = None) -> IncomingPhoto:
        """Take photo `offer` from `sender`, who may have `share` bytes of photos arriving
        (or kept) at once; NoRoom when it does not fit (see the class)."""
        key = f"{sender.lstrip('+')}-{offer.key}-{offer.size}"
        if key in self._active:  # the same photo arriving twice at once: no resume
            key = f"{key}{_TWIN}{os.urandom(4).hex()}"
        self._make_room(sender, key, offer.size, share)
        photo = self._active[key] = IncomingPhoto(self, key, self.partial / f"{key}.part", offer)
        return photo

    def _make_room(self, sender: str, key: str, size: int, share: int | None) -> None:
        """Room for `sender`'s photo `key` of `size` bytes (see the class), or NoRoom;
        the sender's own older interrupted transfers are dropped if that makes it fit."""
        limits = self.incoming
        now = time.time()
        source = key.split("-", 1)[0]  # (a partial's name starts with its sender's digits)
        stranger = not self._known(sender)
        own = 0  # the bytes this photo kept from an earlier transfer (part of its size)
        kept: list[tuple[float, Path, int]] = []  # the sender's interrupted transfers
        mine = total = size
        strangers = size if stranger else 0
        for path in self.partial.glob("*.part"):
            if path.stem in self._active:
                continue
            try:
                stat = path.stat()
                if now - stat.st_mtime > self._keep_partial:  # kept long enough
                    path.unlink()
                    continue
            except OSError:
                continue
            if path.stem == key:
                own = min(stat.st_size, size)
                continue
            total += stat.st_size
            digits = path.name.split("-", 1)[0]
            strangers += 0 if self._known(f"+{digits}") else stat.st_size
            if digits == source:
                mine += stat.st_size
                kept.append((stat.st_mtime, path, stat.st_size))
        arriving = list(self._active.values())
        for photo in arriving:
            total += photo.size
            digits = photo.path.name.split("-", 1)[0]
            strangers += 0 if self._known(f"+{digits}") else photo.size
            if digits == source:
                mine += photo.size
        kept.sort()  # the sender's own older interrupted transfers give way first
        dropped: list[Path] = []
        while kept and share is not None and mine > share:
            _, path, kept_size = kept.pop(0)
            dropped.append(path)
            mine -= kept_size
            total -= kept_size
            strangers -= kept_size if stranger else 0
        if share is not None and mine > share:
            raise NoRoom(
                f"photos arriving from {sender} would take more than their "
                f"{_mib(share)} share at once"
            )
        if stranger and strangers > limits.strangers_partial_bytes:
            raise NoRoom(
                "photos arriving from numbers not in the contacts take all the room they "
                f"may ({_mib(limits.strangers_partial_bytes)}) for now"
            )
        if total > limits.partial_bytes:
            raise NoRoom(
                f"photos arriving take all the room they may ({_mib(limits.partial_bytes)}) for now"
            )
        try:
            free = shutil.disk_usage(self.partial).free
        except OSError as exc:
            raise _storing_failed("photos", exc) from exc
        freed = sum(path.stat().st_size for path in dropped if path.exists())
        needed = size - own + sum(photo.size - photo.written for photo in arriving)
        if free + freed - needed < limits.disk_reserve:
            raise NoRoom(
                f"not enough room on the receiver's disk ({_mib(free)} free, "
                f"{_mib(needed)} needed by photos arriving, "
                f"{_mib(limits.disk_reserve)} kept free)"
            )
        for path in dropped:  # (only now that the photo is taken)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def release(self, key: str) -> None:
        self._active.pop(key, None)

    def stored(self, key: str) -> None:
        """Photo `key` arrived whole: what other transfers of it kept is not needed."""
        photo = key.split(_TWIN)[0]
        self._arrived[photo] = None
        while len(self._arrived) > 256:
            del self._arrived[next(iter(self._arrived))]
        for partial in self.partial.glob(f"{photo}*.part"):
            if partial.stem not in self._active:
                with contextlib.suppress(OSError):
                    partial.unlink()

    def arrived(self, key: str) -> bool:
        return key.split(_TWIN)[0] in self._arrived
