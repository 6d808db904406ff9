"""TCP as the modules use it (net/network.py): a listening port that connections leave
from too (SO_REUSEPORT), never shared with another socket."""

from __future__ import annotations

import asyncio
import socket

import pytest

from whatsap2p.net.network import TcpNetwork


class End(asyncio.Protocol):
    """One end of a connection: its transport, and where the other end is."""

    def __init__(self) -> None:
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.made.set_result(transport.get_extra_info("peername")[:2])


async def test_connections_leave_from_the_port_we_listen_on() -> None:
    network = TcpNetwork()
    ours = await network.listen("127.0.0.1", 0, asyncio.Protocol, reuse_port=True)
    accepted: list[End] = []

    def accept() -> End:
        accepted.append(End())
        return accepted[-1]

    theirs = await network.listen("127.0.0.1", 0, accept)
    mine = await network.connect("localhost", theirs.address[1], End, 5, local_port=ours.address[1])
    await mine.made
    (end,) = accepted
    assert (await end.made)[1] == ours.address[1]  # it came from the port we listen on
    for each in (mine, end):
        each.transport.close()
    for listening in (ours, theirs):
        listening.close()
        await listening.wait_closed()


async def test_a_port_another_socket_holds_is_not_shared() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await TcpNetwork().listen("127.0.0.1", port, asyncio.Protocol, reuse_port=True)


async def test_a_fixed_port_on_ipv6_listens() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        port = probe.getsockname()[1]
    listening = await TcpNetwork().listen("::1", port, asyncio.Protocol, reuse_port=True)
    assert listening.address[1] == port
    listening.close()
    await listening.wait_closed()
