"""A receiver whose disk is full, or fills mid-photo: the photo is refused (`no-room`),
its bytes do not stay behind, and texts still arrive. The data dir is a small tmpfs the
test mounts and removes (as root; skipped with the reason elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.servers import World, next_message, world_at
from whatsap2p.app.events import SessionEvent, TextReceived
from whatsap2p.app.session import Session
from whatsap2p.config import IncomingLimits, MiB

ALICE, BOB = "+5511999990001", "+5511999990002"
DISK = 24 * MiB
#: Room kept free on bob's small disk (the default, 64 MiB, is more than the whole disk).
RESERVE = 1 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root (and mount) to make a small tmpfs for the data dir")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


async def next_event(session: Session) -> SessionEvent:
    return await next_message(session, 10)


def photo_file(folder: Path, size: int) -> Path:
    path = folder / f"photo-{size}.png"
    path.write_bytes(image_bytes(size=(100, 100), marker=os.urandom(size)))
    return path


async def friends(world: World, small_disk: Path) -> tuple[Session, Session]:
    """Alice, and Bob (her contact) with his data dir on the small disk."""
    alice = await world.user(ALICE)
    room = IncomingLimits(disk_reserve=RESERVE)
    bob = await world.user(BOB, data_dir=str(small_disk), incoming=room)
    bob.book.add_contact("alice", ALICE)
    return alice, bob


async def texts_still_arrive(alice: Session, bob: Session) -> None:
    assert (await alice.send_text(BOB, "still there?")).delivered == [BOB]
    got = await next_event(bob)
    assert isinstance(got, TextReceived)
    assert got.text == "still there?"


async def test_a_photo_with_no_room_is_refused_before_its_bytes_flow(
    tmp_path: Path, small_disk: Path
) -> None:
    async with world_at(tmp_path) as world:
        alice, bob = await friends(world, small_disk)
        free = shutil.disk_usage(small_disk).free
        # Fits on the disk, but not with the reserve left free for the history:
        photo = photo_file(tmp_path, free - RESERVE // 2)
        report = await alice.send_photo(BOB, photo)
        (failed,) = report.failed
        assert (failed.phone, failed.code) == (BOB, "no-room")
        assert failed.error.startswith("refused by the peer: not enough room on the receiver's")
        await bob.settled()
        assert list((small_disk / "partial").iterdir()) == []
        assert shutil.disk_usage(small_disk).free >= free - 64 * 1024  # not a byte of it
        await texts_still_arrive(alice, bob)


async def test_a_disk_that_fills_mid_photo_fails_it_and_keeps_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    async with world_at(tmp_path) as world:
        alice, bob = await friends(world, small_disk)
        photo = photo_file(tmp_path, 12 * MiB)
        filler = small_disk / "another program's file"

        def fill_the_disk(sent: int, total: int) -> None:
            # Once the first chunk went out (both modules share this thread: the receiver
            # has at most that much), another program takes all but 64 KiB of the disk.
            if sent and not filler.exists():
                with filler.open("wb") as out:
                    out.truncate(0)
                    left = shutil.disk_usage(small_disk).free - 64 * 1024
                    out.write(b"\0" * left)

        report = await alice.send_photo(BOB, photo, progress=fill_the_disk)
        assert filler.exists()
        (failed,) = report.failed
        assert (failed.phone, failed.code) == (BOB, "no-room")
        assert failed.error == (
            "refused by the peer: receiver cannot store the photo: its disk is full"
        )
        await bob.settled()
        assert list((small_disk / "partial").iterdir()) == []  # its bytes are gone
        assert list((small_disk / "photos").iterdir()) == []
        await texts_still_arrive(alice, bob)
