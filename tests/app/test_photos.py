from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import image_bytes
from whatsap2p.app import photos
from whatsap2p.app.photos import (
    IncomingPhoto,
    PhotoStore,
    photo_key,
    prepare_photo,
    safe_file_name,
)
from whatsap2p.config import Limits
from whatsap2p.errors import PhotoRejected
from whatsap2p.protocol.events import PhotoOffer

LIMITS = Limits()
KEEP = 3600.0
SENDER = "+5511999990009"


def offer_for(data: bytes, filename: str = "cat.png", mime: str = "image/png") -> PhotoOffer:
    return PhotoOffer(
        "p1",
        "2026-11-27T10:00:00+00:00",
        filename,
        len(data),
        hashlib.sha256(data[:10]).hexdigest(),  # the key: any digest names the photo
        mime,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_every_supported_format_is_prepared(tmp_path: Path, fmt: str, mime: str) -> None:
    path = tmp_path / f"pic.{fmt.lower()}"
    path.write_bytes(image_bytes(fmt))
    photo = prepare_photo(path, LIMITS)
    assert photo.mime == mime
    assert photo.key == photo_key(path, photo.size)  # names it for a resume
    assert photo.sha256 == ""  # the whole file is hashed while it is sent


def test_what_cannot_be_sent_says_why(tmp_path: Path) -> None:
    with pytest.raises(PhotoRejected, match="does not exist"):
        prepare_photo(tmp_path / "missing.png", LIMITS)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(PhotoRejected, match="not a JPEG, PNG, GIF or WebP"):
        prepare_photo(tmp_path / "notes.png", LIMITS)
    (tmp_path / "big.png").write_bytes(image_bytes())
    with pytest.raises(PhotoRejected, match="limit"):
        prepare_photo(tmp_path / "big.png", Limits(max_photo_bytes=10))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(PhotoRejected, match="empty"):
        prepare_photo(tmp_path / "empty.png", LIMITS)
    with pytest.raises(PhotoRejected, match="not a file"):
        prepare_photo(tmp_path, LIMITS)


def test_decompression_bombs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path)  # small file, 400 megapixels
    assert path.stat().st_size < 1_000_000
    with pytest.raises(PhotoRejected, match=r"pixel|decode safely"):
        prepare_photo(path, LIMITS)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../etc/passwd", "passwd.png"),
        ("..\\..\\windows\\system32\\evil.exe", "evil.exe.png"),
        ("/abs/path/cat.jpg", "cat.png"),
        ("...", "photo.png"),
        ("\x1b[31mred\u202e.png", "_31mred.png"),
        ("a" * 500 + ".png", "a" * 80 + ".png"),
        ("ok name (1).PNG", "ok name (1).png"),
    ],
)
def test_file_names_from_senders_are_sanitised(name: str, safe: str) -> None:
    assert safe_file_name(name, "image/png") == safe


def write(incoming: IncomingPhoto, data: bytes) -> None:
    """The receiving loop's write (queued to the photo's writer thread), from a test."""
    asyncio.run(incoming.write(data))


def store_one(store: PhotoStore, data: bytes, **kw: str) -> Path:
    incoming = store.begin(SENDER, offer_for(data, **kw))
    write(incoming, data)
    return incoming.finish(sha256(data)).path


def test_received_photos_never_overwrite(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    data = image_bytes()
    (tmp_path / "photos" / "cat.png").write_bytes(b"precious")
    first = store_one(store, data)
    second = store_one(store, data)
    assert first.name == "cat (2).png"
    assert second.name == "cat (3).png"
    assert (tmp_path / "photos" / "cat.png").read_bytes() == b"precious"
    assert first.read_bytes() == data
    escaped = store_one(store, data, filename="../../outside.png")
    assert escaped.parent == tmp_path / "photos"
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == [
        "cat (2).png",
        "cat (3).png",
        "cat.png",
        "outside.png",
    ]


@pytest.mark.parametrize(
    ("data", "offered", "reason"),
    [
        (image_bytes(), image_bytes()[:-1] + b"X", "SHA-256 does not match"),
        (b"#!/bin/sh\nrm -rf /\n", None, "not a JPEG, PNG, GIF or WebP"),
        (image_bytes("JPEG"), None, "announced as image/png but is image/jpeg"),
    ],
)
def test_bad_photos_are_rejected_and_leave_nothing(
    tmp_path: Path, data: bytes, offered: bytes | None, reason: str
) -> None:
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    incoming = store.begin(SENDER, offer_for(offered or data))
    write(incoming, data)
    with pytest.raises(PhotoRejected, match=reason):
        incoming.finish(sha256(offered or data))  # what the sender hashed
    assert list((tmp_path / "photos").iterdir()) == []
    assert list((tmp_path / "partial").iterdir()) == []  # bad bytes are not kept either


def test_an_interrupted_photo_is_kept_hidden_and_resumes(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    data = image_bytes(marker=bytes(10_000))
    incoming = store.begin(SENDER, offer_for(data))
    assert incoming.offset == 0
    write(incoming, data[:6000])
    incoming.interrupted()  # the connection dropped
    assert list((tmp_path / "photos").iterdir()) == []  # nothing shown or stored
    (partial,) = (tmp_path / "partial").iterdir()
    resumed = store.begin(SENDER, offer_for(data))  # the same photo from the same sender
    assert resumed.offset == 6000
    write(resumed, data[6000:])
    assert resumed.finish(sha256(data)).path.read_bytes() == data  # the hash covered the kept bytes
    assert not partial.exists()
    other = store.begin("+5511999990077", offer_for(data))
    assert other.offset == 0  # another sender's copy starts afresh
    other.discard()


def test_partial_transfers_expire(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    incoming = store.begin(SENDER, offer_for(b"abcdef"))
    write(incoming, b"abc")
    incoming.interrupted()
    store.open(time.time(), KEEP)
    assert len(list((tmp_path / "partial").iterdir())) == 1  # still fresh: kept
    store.open(time.time() + KEEP + 1, KEEP)
    assert list((tmp_path / "partial").iterdir()) == []


def test_a_photo_that_arrives_whole_leaves_no_partial_copy_behind(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    data = image_bytes(marker=bytes(10_000))
    stalled = store.begin(SENDER, offer_for(data))  # a transfer that will stop half-way
    write(stalled, data[:4000])
    second = store.begin(SENDER, offer_for(data))  # the same photo again, meanwhile
    assert second.offset == 0  # the first still holds its file: no resume from it
    write(second, data)
    assert second.finish(sha256(data)).path.read_bytes() == data
    stalled.interrupted()  # its connection ends after the photo arrived whole
    assert list((tmp_path / "partial").iterdir()) == []


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "page-cache"])
def test_a_large_photo_arrives_byte_exact_across_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """Bytes gather in a buffer of whole disk blocks: chunks of any size, a photo larger
    than the buffer, an interruption in the middle of a block all keep every byte."""
    if not direct:  # where O_DIRECT does not exist the same buffer goes through the cache
        monkeypatch.setattr(photos, "_DIRECT", 0)
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    data = image_bytes(marker=os.urandom(photos._STAGE * 2 + photos._BLOCK + 123))
    cut = photos._STAGE + 5000  # neither a block nor a chunk boundary
    first = store.begin(SENDER, offer_for(data))
    for chunk in chunks(data[:cut], 77_777):
        write(first, chunk)
    first.interrupted()
    (partial,) = (tmp_path / "partial").iterdir()
    assert partial.read_bytes() == data[:cut]  # all of it kept, nothing padded
    resumed = store.begin(SENDER, offer_for(data))
    assert resumed.offset == cut
    for chunk in chunks(data[cut:], 300_001):
        write(resumed, chunk)
    stored = resumed.finish(sha256(data)).path
    assert stored.read_bytes() == data
    assert stored.stat().st_size == len(data)


def test_a_file_system_refusing_direct_writes_still_stores_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One refuses O_DIRECT when the file is opened, another at the first write (both say
    EINVAL): the photo is written through the page cache instead."""
    if not photos._DIRECT:
        pytest.skip("no O_DIRECT on this platform: nothing to refuse")
    real_open, real_pwrite = os.open, os.pwrite
    refused: list[str] = []

    def refuse_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & photos._DIRECT and "open" not in refused:
            refused.append("open")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    def refuse_write(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & photos._DIRECT:
            refused.append("write")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse_write)
    store = PhotoStore(tmp_path / "photos", LIMITS)
    store.open(time.time(), KEEP)
    for attempt in ("open", "write"):
        if attempt == "open":
            monkeypatch.setattr(os, "open", refuse_open)
        else:
            monkeypatch.setattr(os, "open", real_open)
        data = image_bytes(marker=os.urandom(photos._STAGE + 10) + attempt.encode())
        incoming = store.begin(SENDER, offer_for(data))
        write(incoming, data)
        assert incoming.finish(sha256(data)).path.read_bytes() == data
    assert refused == ["open", "write"]


class _PeakStages(photos._Stages):
    """Stages that remember the most buffers out at once."""

    peak = 0

    async def take(self) -> None:
        await super().take()
        self.peak = max(self.peak, self.taken)


async def test_photos_arriving_together_share_a_bounded_number_of_buffers(
    tmp_path: Path,
) -> None:
    """Five photos larger than a buffer stream in at once, each from its own connection
    (task), with buffers for two: the others wait for their turn (holding no memory),
    and every photo arrives whole."""
    store = PhotoStore(tmp_path / "photos", Limits(max_photos_writing=2))
    store.stages = stages = _PeakStages(2)
    store.open(time.time(), KEEP)
    data = [image_bytes(marker=os.urandom(photos._STAGE + 1000 * i)) for i in range(5)]
    arriving = [
        store.begin(f"+55119999900{i:02d}", offer_for(d, filename=f"p{i}.png"))
        for i, d in enumerate(data)
    ]

    async def arrive(photo: IncomingPhoto, data: bytes) -> Path:
        for chunk in chunks(data, 65_519):  # a Noise segment's worth at a time
            await photo.write(chunk)
        return (await asyncio.to_thread(photo.finish, sha256(data))).path

    stored = await asyncio.gather(*map(arrive, arriving, data))
    assert [path.read_bytes() for path in stored] == data
    assert stages.peak == 2  # all five wanted one at once
    assert stages.taken == 0  # every turn given back


async def test_a_photo_waiting_for_its_turn_holds_nothing_when_its_transfer_ends(
    tmp_path: Path,
) -> None:
    store = PhotoStore(tmp_path / "photos", Limits(max_photos_writing=1))
    store.open(time.time(), KEEP)
    first_data, waiting_data = image_bytes(marker=bytes(20_000)), image_bytes(marker=b"w" * 9000)
    first = store.begin(SENDER, offer_for(first_data))
    await first.write(first_data[:5000])  # first's turn
    waiting = store.begin("+5511999990077", offer_for(waiting_data))
    reading = asyncio.create_task(waiting.write(waiting_data[:5000]))  # its connection's task
    await asyncio.sleep(0)  # one turn of the loop: the task's first step runs...
    assert store.stages.waiting == 1  # ...and waits for its turn
    reading.cancel()  # its connection dropped...
    with pytest.raises(asyncio.CancelledError):
        await reading
    waiting.interrupted()  # ...and the transfer ended
    assert store.stages.taken == 1  # first's, still
    assert [p.name for p in (tmp_path / "partial").iterdir()] == [first.path.name]
    await first.write(first_data[5000:])
    stored = await asyncio.to_thread(first.finish, sha256(first_data))
    assert stored.path.read_bytes() == first_data
    assert store.stages.taken == 0
    again = store.begin("+5511999990077", offer_for(waiting_data))  # it comes back: its turn
    await again.write(waiting_data)
    assert (await asyncio.to_thread(again.finish, sha256(waiting_data))).path.exists()
