"""A slow link (a namespace whose loopback is shaped to 8 Mbit/s, 1 MB/s): a photo that
takes longer than every deadline still arrives whole, as long as it keeps moving."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import image_bytes
from tests.e2e.netns import cannot_make_namespaces, namespace
from tests.e2e.procs import ServerProcess, UserProcess

ALICE, BOB = "+5511999990001", "+5511999990002"
REASON = cannot_make_namespaces()


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.timeout(180)
async def test_a_30_mb_photo_over_a_1_mb_s_link_arrives_whole(tmp_path: Path) -> None:
    # (it failed after 22 s: the acknowledgement deadline covered the whole transfer)
    photo = tmp_path / "big.png"
    photo.write_bytes(image_bytes(marker=os.urandom(30 * 1024 * 1024)))
    with namespace(rate="8mbit") as inside:
        server = await ServerProcess.start(tmp_path / "server.sqlite3", inside=inside)
        alice = await UserProcess.start(server.address, ALICE, tmp_path / "alice", inside=inside)
        bob = await UserProcess.start(server.address, BOB, tmp_path / "bob", inside=inside)
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            answer = alice.expect(1)
            alice.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "send",
                                    "params": {"to": BOB, "photo": str(photo)}}))  # fmt: skip
            sent = (await asyncio.wait_for(answer, 150))["result"]
            took = loop.time() - began
            assert (sent["delivered"], sent["failed"]) == ([BOB], []), sent
            assert took > 25  # longer than any deadline (20 s): it moved all along
            got = (await bob.notification("receive"))["photo"]
            assert got["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
        finally:
            for user in (alice, bob):
                await user.close()
            await server.stop()
