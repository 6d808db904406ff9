"""The terminal UI stays live while a 50 MB photo is in flight: the receiving module (a
real process) is stopped with SIGSTOP mid-transfer, so the transfer stalls for as long
as the test wants, and the UI must keep answering meanwhile."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import image_bytes
from tests.e2e.conftest import Cluster
from tests.servers import session_config
from tests.ui.test_tui import messages, type_line, until
from whatsap2p.app.session import Session
from whatsap2p.ui.tui import ChatApp

ALICE, BOB = "+5511999990001", "+5511999990002"


async def test_the_ui_answers_while_a_big_photo_is_stalled(
    cluster: Cluster, tmp_path: Path
) -> None:
    bob = await cluster.user(BOB)
    photo = tmp_path / "big.png"
    photo.write_bytes(image_bytes() + os.urandom(50_000_000))
    config = session_config(cluster.server.port, ALICE, tmp_path / "alice", peer_ack=60)
    async with Session(config) as alice:
        alice.book.add_contact("bob", BOB)
        app = ChatApp(alice)
        async with app.run_test(size=(100, 30)) as pilot:
            await app.ready.wait()
            # as Enter would, without the pilot's waiting for the app to be idle (it is
            # not, until the photo is through)
            app.run_worker(app.handle_line(f"/photo bob {photo}"))
            await until(app, lambda: app.current is not None and app.current.rows)
            assert app.current is not None
            row = app.current.rows[-1]
            # the first bytes went out; 50 MB is far more than the sockets hold, so once
            # bob stops reading the transfer stalls part way
            await until(app, lambda: row.progress is not None and row.progress[0] > 0)
            bob.proc.send_signal(signal.SIGSTOP)
            try:
                await type_line(pilot, "/identity")
                await until(app, lambda: f"{ALICE} key {alice.fingerprint}" in messages(app))
                assert row.progress is not None
                assert 0 < row.progress[0] < row.progress[1]  # still in flight
                assert row.states == {BOB: "sending"}
            finally:
                bob.proc.send_signal(signal.SIGCONT)
            await until(app, lambda: row.states == {BOB: "delivered"}, timeout=60)
    received = await bob.notification("receive", timeout=30)
    assert received["photo"]["bytes"] == photo.stat().st_size
