"""A crowd of senders, each with a photo at once, costs the receiving module a bounded
amount of memory: its photos wait their turn in TCP, not in its buffers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path

from tests.app.test_session import offer_of
from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from whatsap2p.app.contacts import FILE_NAME as CONTACTS_FILE
from whatsap2p.app.contacts import AddressBook
from whatsap2p.config import Limits, MiB, Timeouts
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.directory_client import DirectoryClient
from whatsap2p.net.link import PeerLink
from whatsap2p.net.network import TcpNetwork
from whatsap2p.protocol.keys import StaticKey

BOB = "+5511999990002"
#: Senders at once: as many as a receiver takes from one IP (all come from 127.0.0.1).
SENDERS = Limits().max_peer_connections_per_ip
PHOTO = 2_000_000
#: What the crowd may add to the receiver's peak memory, whatever its size: the photos
#: being written (at most `max_photos_writing`, 32) hold about 3.5 MiB each (their 1 MiB
#: buffer, up to two chunks queued for the disk, one being read, 256 KiB unread); the
#: others' senders wait for the answer to their offer, and hold nothing here.
BOUND = 112 * MiB


class Chunks:
    """A photo's bytes from memory, from `offset` on, in the chunks a module sends."""

    def __init__(self, data: bytes, offset: int) -> None:
        self._rest = memoryview(data)[offset:]
        self.sha256: str | None = hashlib.sha256(data).hexdigest()

    async def __aiter__(self) -> AsyncGenerator[bytes]:
        step = Limits().photo_chunk
        for at in range(0, len(self._rest), step):
            yield bytes(self._rest[at : at + step])


def memory_kib(pid: int, field: str) -> int:
    """A process's memory figure from /proc (VmRSS: now; VmHWM: its peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


async def test_a_crowd_of_senders_fits_the_receivers_memory(cluster: Cluster) -> None:
    # Friends (a crowd of strangers is cut short sooner: 8 photos at once in all)
    phones = [f"+55119888{i:05d}" for i in range(SENDERS)]
    (cluster.root / BOB).mkdir()
    book = AddressBook.load(cluster.root / BOB / CONTACTS_FILE)
    for i, phone in enumerate(phones):
        book.add_contact(f"friend {i}", phone)
    bob = await cluster.user(BOB)
    data = image_bytes(size=(100, 100), marker=os.urandom(PHOTO))
    network, timeouts = TcpNetwork(), Timeouts()
    links: list[PeerLink] = []
    clients: list[DirectoryClient] = []
    try:
        for phone in phones:
            key = StaticKey.generate()
            client = await DirectoryClient.connect("127.0.0.1", cluster.server.port, key)
            clients.append(client)
            await client.register(phone, 9)  # (a sender that takes no messages itself)
            address = (await client.lookup([BOB]))[BOB]
            deadlines = Deadlines()
            links.append(
                await PeerLink.open(network, address, phone, key, Limits(), timeouts, deadlines)
            )
        before = memory_kib(bob.proc.pid, "VmRSS")
        sends = [
            link.send_photo(offer_of(data, f"p{i}", "crowd.png"), lambda at: Chunks(data, at))
            for i, link in enumerate(links)
        ]
        sent = await asyncio.gather(*sends)
        assert sent == [len(data)] * SENDERS  # each whole, verified and stored
        peak = memory_kib(bob.proc.pid, "VmHWM")
    finally:
        for link in links:
            await link.close()
        for client in clients:
            await client.close()
    photos = list((bob.data_dir / "photos").iterdir())
    assert len(photos) == SENDERS
    grew = (peak - before) * 1024
    print(f"{SENDERS} photos of {len(data):,} bytes at once: peak {peak / 1024:.0f} MiB,"
          f" {grew / MiB:.0f} MiB over the {before / 1024:.0f} MiB before")  # fmt: skip
    assert grew < BOUND, f"the crowd took {grew / MiB:.0f} MiB"
