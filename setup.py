"""Builds whatsap2p: the package as written, with its hot path compiled by mypyc.

The modules in COMPILED (framing, the Noise channel, the directory and peer state
machines, the server's connections, the loadgen's simulated users) are compiled to C
extensions from the same typed source by mypyc (part of mypy, pinned in the dev extras):
every lookup and text crosses them, on both sides (docs/performance.md has what it saves,
as measured). Everything else
stays Python, and so does the whole package where mypyc is not installed (pip's isolated
build of a plain `pip install .`) or WHATSAP2P_PURE is set: the same code, slower. `make`
compiles them in place, into src/, once the package and its dependencies are installed
(mypyc reads their types).
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

COMPILED = [
    "src/whatsap2p/protocol/channel.py",
    "src/whatsap2p/protocol/directory.py",
    "src/whatsap2p/protocol/framing.py",
    "src/whatsap2p/protocol/noise.py",
    "src/whatsap2p/protocol/peer.py",
    "src/whatsap2p/server/directory.py",
    "src/whatsap2p/ratelimit.py",
    "src/whatsap2p/server/service.py",
    "src/whatsap2p/net/deadlines.py",
    "src/whatsap2p/net/directory_connection.py",
    "src/whatsap2p/net/simulated.py",
]


def extensions() -> list[Extension]:
    if os.environ.get("WHATSAP2P_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # pip's isolated build has no mypy: the package as written
        return []
    return mypycify(COMPILED, opt_level="3")


setup(ext_modules=extensions())
