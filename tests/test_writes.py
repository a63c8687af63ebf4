"""
``rtunnel.client._writes.write_small_now`` on real TCP connections (the reactor, 127.0.0.1):
a small write to an idle connection leaves at once, a large one is queued for the
reactor's next turn, and order is kept when something is already queued.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from rtunnel.client._writes import SMALL_WRITE, write_small_now


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.waiting: tuple[int, defer.Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        if self.waiting is not None and len(self.data) >= self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(self.data)

    def wait_for(self, n: int) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting = (n, d)
        self.dataReceived(b"")
        return d


async def _connected_pair() -> tuple[Any, Collect, Any]:
    server_side = Collect()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: server_side)
    )
    client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        Factory.forProtocol(Protocol)
    )
    return client.transport, server_side, port


def _queued(transport: Any) -> int:
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_a_small_write_leaves_at_once_a_large_one_is_queued() -> None:
    transport, server_side, port = await _connected_pair()
    try:
        write_small_now(transport, b"hello")
        assert _queued(transport) == 0
        assert transport not in reactor.getWriters()  # type: ignore[attr-defined]
        big = bytes(SMALL_WRITE + 1)
        write_small_now(transport, big)
        assert _queued(transport) == len(big)  # Twisted's queue: sent on the next turn
        assert await server_side.wait_for(5 + len(big)) == b"hello" + big
    finally:
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_small_write_queues_behind_queued_bytes() -> None:
    transport, server_side, port = await _connected_pair()
    try:
        transport.write(b"first ")  # queued by Twisted, not yet sent
        write_small_now(transport, b"second")
        assert _queued(transport) == 12
        assert await server_side.wait_for(12) == b"first second"
    finally:
        transport.loseConnection()
        await port.stopListening()


def test_other_transports_just_write() -> None:
    from twisted.internet.testing import StringTransport

    wire = StringTransport()
    write_small_now(wire, b"abc")
    assert wire.value() == b"abc"
