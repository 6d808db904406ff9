"""Photos: checking and streaming the ones we send, verifying and storing the ones we get.

A received photo is written under a temporary name while it streams in (hashed as it
goes), then checked (size, SHA-256, a real image of the announced type, not a
decompression bomb) and only then given its final name in `photos/`: the sender's file
name, sanitised, never a path, never replacing an existing file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import unicodedata
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image

from whatsap2p.config import Limits
from whatsap2p.errors import DeliveryFailed, PhotoRejected
from whatsap2p.protocol.events import PhotoOffer

__all__ = [
    "IncomingPhoto",
    "OutgoingPhoto",
    "PhotoStore",
    "StoredPhoto",
    "prepare_photo",
    "read_chunks",
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


@dataclass(frozen=True, slots=True)
class OutgoingPhoto:
    path: Path
    filename: str
    size: int
    sha256: str
    mime: str


@dataclass(frozen=True, slots=True)
class StoredPhoto:
    path: Path
    filename: str
    size: int
    sha256: str
    mime: str


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


def prepare_photo(path: Path, limits: Limits) -> OutgoingPhoto:
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
    if size == 0:
        raise PhotoRejected(f"photo {path} is empty")
    if size > limits.max_photo_bytes:
        raise PhotoRejected(
            f"photo {path} is {size} bytes, more than the {limits.max_photo_bytes}-byte limit"
        )
    mime = _identify(resolved, limits)
    digest = hashlib.sha256()
    try:
        with resolved.open("rb") as source:
            while block := source.read(1024 * 1024):
                digest.update(block)
    except OSError as exc:
        raise PhotoRejected(f"cannot read photo {path}: {exc.strerror}") from exc
    return OutgoingPhoto(
        resolved, safe_file_name(resolved.name, mime), size, digest.hexdigest(), mime
    )


async def read_chunks(photo: OutgoingPhoto, chunk_size: int) -> AsyncIterator[bytes]:
    """The photo's bytes in chunks; exactly `photo.size` of them, or DeliveryFailed."""
    remaining = photo.size
    try:
        with photo.path.open("rb") as source:
            while remaining:
                chunk = source.read(min(chunk_size, remaining))
                if not chunk:
                    raise DeliveryFailed("the photo file shrank while it was being sent")
                remaining -= len(chunk)
                yield chunk
    except OSError as exc:
        raise DeliveryFailed(f"cannot read the photo: {exc.strerror}") from exc


def safe_file_name(name: str, mime: str) -> str:
    """A file name with no path, no control characters, and the extension of its type."""
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    stem = Path(base).stem if Path(base).suffix.lower() in _KNOWN_SUFFIXES else base
    stem = _UNSAFE.sub("_", stem).strip(" .")[:_MAX_STEM].strip(" .")
    return (stem or "photo") + _EXTENSIONS[mime]


_KNOWN_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp"})


class IncomingPhoto:
    """One photo streaming in: a temp file that becomes a stored photo or disappears."""

    def __init__(self, folder: Path, offer: PhotoOffer, limits: Limits) -> None:
        self._folder = folder
        self._offer = offer
        self._limits = limits
        self._digest = hashlib.sha256()
        self._written = 0
        fd, temp = tempfile.mkstemp(prefix=".incoming-", suffix=".part", dir=folder)
        self._temp = Path(temp)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            raise PhotoRejected(f"receiver cannot store the photo: {exc.strerror}") from exc
        self._digest.update(data)
        self._written += len(data)

    def finish(self) -> StoredPhoto:
        """Verify and move into place (blocking: run it in a thread)."""
        offer = self._offer
        try:
            assert self._file is not None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            if self._written != offer.size:
                raise PhotoRejected(f"received {self._written} of {offer.size} bytes")
            if self._digest.hexdigest() != offer.sha256:
                raise PhotoRejected("photo damaged in transit: SHA-256 does not match")
            mime = _identify(self._temp, self._limits)
            if mime != offer.mime:
                raise PhotoRejected(f"photo announced as {offer.mime} but is {mime}")
            filename = safe_file_name(offer.filename, mime)
            final = self._place(filename)
        except BaseException:
            self.discard()
            raise
        return StoredPhoto(final, filename, offer.size, offer.sha256, mime)

    def _place(self, filename: str) -> Path:
        # os.link fails when the name exists, so an existing file is never replaced even
        # if another photo with the same name lands at the same moment.
        stem, suffix = Path(filename).stem, Path(filename).suffix
        for attempt in range(1, 10_000):
            candidate = self._folder / (filename if attempt == 1 else f"{stem} ({attempt}){suffix}")
            try:
                os.link(self._temp, candidate)
            except FileExistsError:
                continue
            self._temp.unlink()
            return candidate
        raise PhotoRejected(f"too many photos named {filename!r}")

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


class PhotoStore:
    """The data dir's `photos/` folder."""

    def __init__(self, folder: Path, limits: Limits) -> None:
        self.folder = folder
        self._limits = limits

    def open(self) -> None:
        """Create the folder and clear what an earlier run left half-received."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".incoming-*.part"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def begin(self, offer: PhotoOffer) -> IncomingPhoto:
        try:
            return IncomingPhoto(self.folder, offer, self._limits)
        except OSError as exc:
            raise PhotoRejected(f"receiver cannot store photos: {exc.strerror}") from exc
