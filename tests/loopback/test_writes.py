"""
``rtunnel.client.transport._writes.write_now`` on real TCP connections (the reactor, 127.0.0.1): a
write to an idle connection leaves at once, small or large, what the socket does not take
is queued, and order is kept when something is already queued.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from rtunnel.client.transport._writes import write_now


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.waiting: tuple[int, defer.Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data
        if self.waiting is not None and len(self.data) >= self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(self.data)

    def wait_for(self, n: int, timeout: float = 10) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting = (n, d)
        self.dataReceived(b"")

        # Lost or reordered bytes make the count never match: fail instead of hanging.
        def explain(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                raise AssertionError(f"{len(self.data)} bytes after {timeout:g} s, not {n}")
            return failure

        return d.addTimeout(timeout, reactor).addErrback(explain)


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
async def test_a_write_to_an_idle_connection_leaves_at_once() -> None:
    transport, server_side, port = await _connected_pair()
    try:
        write_now(transport, b"hello")
        assert _queued(transport) == 0
        assert transport not in reactor.getWriters()  # type: ignore[attr-defined]
        packet = bytes(range(256)) * 128  # a 32 KiB SSH packet
        write_now(transport, packet)
        assert _queued(transport) == 0
        assert transport not in reactor.getWriters()  # type: ignore[attr-defined]
        assert await server_side.wait_for(5 + len(packet)) == b"hello" + packet
    finally:
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_is_queued_in_order() -> None:
    transport, server_side, port = await _connected_pair()
    try:
        # More than one send takes (Twisted's SEND_LIMIT, 128 KiB) and than the socket
        # buffers of a reader that is not reading yet.
        big = bytes(range(251)) * (16 * 1024)
        write_now(transport, big)
        assert 0 < _queued(transport) < len(big)
        write_now(transport, b"tail")
        assert await server_side.wait_for(len(big) + 4) == big + b"tail"
    finally:
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_small_write_queues_behind_queued_bytes() -> None:
    transport, server_side, port = await _connected_pair()
    try:
        transport.write(b"first ")  # queued by Twisted, not yet sent
        write_now(transport, b"second")
        assert _queued(transport) == 12
        assert await server_side.wait_for(12) == b"first second"
    finally:
        transport.loseConnection()
        await port.stopListening()


def test_other_transports_just_write() -> None:
    from twisted.internet.testing import StringTransport

    wire = StringTransport()
    write_now(wire, b"abc")
    assert wire.value() == b"abc"


@pytest_twisted.ensureDeferred
async def test_the_connection_to_a_target_has_nagle_off() -> None:
    # As OpenSSH's ssh and asyncio: the second of two small writes must not wait for the
    # target's delayed ACK.
    import socket

    from rtunnel.client.channels.forwarder import TargetFactory, TargetProtocol

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    target = TargetProtocol()
    try:
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            TargetFactory(target)
        )
        assert target.transport is not None
        handle = target.transport.getHandle()  # type: ignore[attr-defined]
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        if target.transport is not None:
            target.transport.loseConnection()
        await port.stopListening()
