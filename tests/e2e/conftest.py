from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.procs import ServerProcess, UserProcess


class Cluster:
    """A real server and the user modules a test starts; all stopped at the end."""

    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server = server
        self.root = root
        self.users: list[UserProcess] = []

    async def user(self, phone: str, *args: str, data_dir: Path | None = None) -> UserProcess:
        user = await UserProcess.start(
            self.server.address, phone, data_dir or self.root / phone, *args
        )
        self.users.append(user)
        return user


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    server = await ServerProcess.start(tmp_path / "server" / "bindings.sqlite3")
    cluster = Cluster(server, tmp_path)
    try:
        yield cluster
    finally:
        for user in cluster.users:
            await user.close()
        assert await server.stop() == 0
