"""The load generator's simulated users against an in-process server on an in-memory
network, in virtual time: they register, look up, count what is not found, heartbeat
once an interval, and give up on a server that stops answering (as a user module would)
instead of waiting for it forever."""

from __future__ import annotations

import array
import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import replace

from tests.memory import MemoryConnection, MemoryNetwork, run_in_virtual_time
from tests.servers import FAST, SERVER_KEY, running_server
from whatsap2p.config import Limits
from whatsap2p.net.deadlines import Deadlines
from whatsap2p.net.simulated import HEARTBEAT_SLACK, SimulatedUser, connect_simulated
from whatsap2p.protocol.keys import StaticKey, fingerprint
from whatsap2p.server.directory import MemoryDirectory
from whatsap2p.server.service import DirectoryServer
from whatsap2p.ui.loadgen import phone_of

QUICK = replace(FAST, server_reply=0.5, heartbeat_interval=0.3)

Scenario = Callable[[DirectoryServer, "Users"], Coroutine[object, object, None]]


class Users:
    """Simulated users of one process (sharing one Deadlines), on the memory network."""

    def __init__(self, network: MemoryNetwork, port: int) -> None:
        self.network, self.port = network, port
        self.deadlines = Deadlines(HEARTBEAT_SLACK)
        self.made: list[SimulatedUser] = []

    async def user(self, index: int) -> SimulatedUser:
        user = await connect_simulated(
            self.network.at(f"10.0.1.{index + 1}"),
            "127.0.0.1",
            self.port,
            StaticKey.generate(),
            phone_of(index),
            4000 + index,
            server_fingerprint=fingerprint(SERVER_KEY.public),
            limits=Limits(),
            timeouts=QUICK,
            deadlines=self.deadlines,
        )
        self.made.append(user)
        return user

    def connection_of(self, index: int) -> MemoryConnection:
        (connection,) = [
            c for c in self.network.open_to(("127.0.0.1", self.port))
            if c.client[0] == f"10.0.1.{index + 1}"
        ]  # fmt: skip
        return connection


def run(scenario: Scenario, directory: MemoryDirectory | None = None) -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with running_server(QUICK, directory, network=network) as (server, port):
            users = Users(network, port)
            try:
                await scenario(server, users)
            finally:
                for user in users.made:
                    user.close()
                users.deadlines.close()

    run_in_virtual_time(main)


def now() -> float:
    return asyncio.get_running_loop().time()


async def lost(user: SimulatedUser) -> asyncio.Future[None]:
    said: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def tell() -> None:
        if not said.done():
            said.set_result(None)

    user.on_lost = tell
    return said


def test_simulated_users_register_and_look_up() -> None:
    directory = MemoryDirectory()

    async def scenario(server: DirectoryServer, users: Users) -> None:
        made = [await users.user(i) for i in range(3)]
        online = await directory.lookup([phone_of(i) for i in range(3)])
        assert sorted(a.phone for a in online) == [phone_of(i) for i in range(3)]
        latencies: array.array[float] = array.array("d")
        errors: Counter[str] = Counter()
        asks = iter([phone_of(1), phone_of(2), phone_of(77), phone_of(0), phone_of(78)])
        await made[0].look_up(5, lambda: next(asks), latencies, errors)
        assert len(latencies) == 5
        assert errors == {"not-found": 2}  # 77 and 78 are not online

    run(scenario, directory)


def test_lookups_to_a_server_that_stops_answering_fail_on_the_reply_deadline() -> None:
    async def scenario(server: DirectoryServer, users: Users) -> None:
        user = await users.user(0)
        gone = await lost(user)
        users.connection_of(0).freeze()  # the server answers nothing any more
        errors: Counter[str] = Counter()
        began = now()
        await user.look_up(4, lambda: phone_of(0), array.array("d"), errors)
        await gone  # the connection is dropped (the worker then registers again)
        # the one out and the three not sent yet; at the answer deadline, not before
        assert errors == {"ServerUnreachable": 4}
        reply = QUICK.server_reply
        assert reply <= now() - began <= reply + HEARTBEAT_SLACK  # (the users' timer's slack)

    run(scenario)


def test_users_ping_once_an_interval_and_a_silent_server_loses_them() -> None:
    async def scenario(server: DirectoryServer, users: Users) -> None:
        interval = QUICK.heartbeat_interval
        first = await users.user(0)
        await asyncio.sleep(interval / 2)  # (the scenario: one registers half an interval later)
        second = await users.user(1)
        times: list[float] = []
        answered = server.metrics.answered
        enough: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def count(kind: str, seconds: float) -> None:  # the server's metrics see each ping
            answered(kind, seconds)
            if kind == "ping":
                times.append(now())
                if len(times) >= 8 and not enough.done():
                    enough.set_result(None)

        server.metrics.answered = count  # type: ignore[method-assign]
        await enough
        gaps = {round(b - a, 3) for a, b in itertools.pairwise(times)}
        # each pings once an interval, and the second keeps its own phase, half an interval
        # off the first's (the slack lets a ping go up to 10 ms late, never early)
        assert all(interval / 2 - 0.011 <= gap <= interval / 2 + 0.011 for gap in gaps), gaps
        gone = [await lost(first), await lost(second)]
        users.connection_of(0).freeze()
        users.connection_of(1).freeze()
        began = now()
        await asyncio.gather(*gone)  # a ping unanswered for one interval drops each
        assert now() - began <= 2 * interval + HEARTBEAT_SLACK

    run(scenario)


def test_lookups_on_a_connection_already_gone_fail_at_once() -> None:
    async def scenario(server: DirectoryServer, users: Users) -> None:
        user = await users.user(0)
        user.give_up(ConnectionResetError("gone"))
        errors: Counter[str] = Counter()
        await user.look_up(3, lambda: phone_of(0), array.array("d"), errors)
        assert errors == {"ServerUnreachable": 3}

    run(scenario)
