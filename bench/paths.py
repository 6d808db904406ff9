"""The ways one module reaches another through home routers, measured in a small
internet of network namespaces (tests/e2e/internet.py: a bridge for the internet, NAT
routers that drop what nobody inside asked for): the first text of a pair (lookup,
connect, handshake, ack: cold), the next one (warm), and a photo, per path, next to the
same over the plain LAN path (two users behind one router) in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.internet import Host, cannot_make_internet, internet  # the test bed
from tests.e2e.procs import ServerProcess, UserProcess, relay_process

__all__ = ["paths"]


async def _call(user: UserProcess, **params: Any) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    result = await user.call("send", **params)
    return time.perf_counter() - start, result


async def _measure(
    server: ServerProcess, work: Path, number: int, ends: tuple[Host, Host], photo: Path
) -> tuple[float, float, float, str]:
    """Cold text, warm text, photo (seconds) from the first end to the second, and the
    route they took."""
    users: list[UserProcess] = []
    try:
        for end, host in enumerate(ends):
            phone = f"+55119777{number:03d}{end}0"
            options = ("--listen", "0.0.0.0:0", "--server-key", server.fingerprint)
            starting = UserProcess.start(
                server.address, phone, work / phone, *options, inside=host.inside
            )
            users.append(await starting)
        sender, receiver = users
        cold, first = await _call(sender, to=receiver.phone, text="first")
        warm, _ = await _call(sender, to=receiver.phone, text="second")
        took, sent = await _call(sender, to=receiver.phone, photo=str(photo))
        for result in (first, sent):
            assert result["delivered"] == [receiver.phone], result
        route: str = first["routes"][receiver.phone]
        return cold, warm, took, route
    finally:
        for user in users:
            await user.close()


async def paths(work: Path, photo: Path) -> list[str]:
    """The report's section on paths (or why they were not measured)."""
    title = ["", "## Paths through home routers (network namespaces)", ""]
    why = cannot_make_internet()
    if why is not None:
        return [*title, f"Not measured: {why}."]
    size = photo.stat().st_size
    rows: list[tuple[str, float, float, float, str]] = []
    secret = str(work / "paths" / "relay.secret")
    with internet() as net:
        relay_host = net.public_host("203.0.113.20")
        async with relay_process(
            "--secret", secret, inside=relay_host.inside, host=relay_host.address, port=5560
        ) as relay:  # fmt: skip
            directory = net.public_host("203.0.113.10")
            server = await ServerProcess.start(
                work / "paths" / "bindings.sqlite3", "--relay", relay.address,
                "--relay-secret", secret, inside=directory.inside, host=directory.address,
            )  # fmt: skip
            try:
                home = net.router()
                ways = {
                    "LAN: two users behind one router": (home.host(), home.host()),
                    "out: behind a router, to a public user": (
                        net.router().host(),
                        net.public_host(),
                    ),
                    "in: a public user, to one behind a router": (
                        net.public_host(),
                        net.router().host(),
                    ),
                    "across: behind a router, to one behind another": (
                        net.router().host(),
                        net.router().host(),
                    ),
                    "relayed: behind symmetric routers, both": (
                        net.router(symmetric=True).host(),
                        net.router(symmetric=True).host(),
                    ),
                }
                for number, (name, ends) in enumerate(ways.items()):
                    measured = await _measure(server, work / "paths", number, ends, photo)
                    rows.append((name, *measured))
            finally:
                await server.stop()
    lan = rows[0]
    lines = [
        *title,
        f"Each row: a fresh pair of modules; the photo is {size / 1e6:.0f} MB. The ratio is"
        " to the LAN path measured in the same run.",
        "",
        "| path | route | first text (cold) | next text | photo | photo MB/s | ratio to LAN |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cold, warm, took, route in rows:
        lines.append(
            f"| {name} | {route} | {cold * 1e3:.0f} ms | {warm * 1e3:.1f} ms | "
            f"{took:.2f} s | {size / took / 1e6:.0f} | cold {cold / lan[1]:.1f}x, "
            f"photo {took / lan[3]:.2f}x |"
        )
    lines += [
        "",
        "A cold text to a user behind a router asks it at once, through the directory, to"
        " connect back (`reverse`: the directory says it is behind a router) while"
        " punching a hole (`punched`): whichever comes first. Between two symmetric"
        " routers nothing gets through directly: the first text waits for every direct"
        " way to fail (`Timeouts.connect`, 5 s) and then meets at the relay (`relay`, in"
        " a namespace of its own); later links go to the relay at once.",
    ]
    return lines
