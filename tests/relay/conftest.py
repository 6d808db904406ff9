from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.relay.client import RelayClient


@pytest.fixture(autouse=True)
async def _clients_closed() -> AsyncIterator[None]:
    """Every client connection a test opened is closed before its loop is (a test that
    failed half-way leaves them open)."""
    RelayClient.opened.clear()
    yield
    for client in RelayClient.opened:
        if client.transport is not None and not client.lost:
            client.transport.abort()
    for client in RelayClient.opened:
        if client.transport is not None:
            await client.closed()
    RelayClient.opened.clear()
