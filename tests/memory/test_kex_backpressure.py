"""
RELIABILITY.md D13: a server starts a key exchange and goes silent while local data keeps
arriving. Until NEWKEYS the transport may not send channel data, so it queues it; the
connection pauses every channel's source once that queue passes ``kex_queue_limit``, the
queue stays bounded, and the key exchange timeout ends the connection. Whole stack in
memory (``tests/memory_stack.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memory_stack import Stack, result_of
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from rtunnel.errors import ConnectionLostError

CHUNK = 16 * 1024


@implementer(IPushProducer)
class Source(Protocol):
    """An app protocol that writes while it is not paused, as a TCP target would."""

    instances: list[Source] = []

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.written = 0
        Source.instances.append(self)

    def connectionMade(self) -> None:  # noqa: N802
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]

    def pump(self, limit: int) -> None:
        """Write until paused (or ``limit`` bytes in all)."""
        assert self.transport is not None
        while not self.paused and self.written < limit:
            self.transport.write(b"x" * CHUNK)
            self.written += CHUNK

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True


def _queued(transport: Any) -> int:
    return sum(len(payload) for _, payload in transport._blockedByKeyExchange or [])


def _open_source_channels(stack: Stack, count: int) -> tuple[list[Source], list[Any]]:
    """``count`` remote clients connected through a forward; their sources and wires."""
    Source.instances = []
    d = stack.tunnel.request_forwarding("127.0.0.1", 8080, factory=Factory.forProtocol(Source))
    stack.pump.flush()
    result_of(d)
    wires = [stack.inbound(origin_port=40000 + i)[1] for i in range(count)]
    assert len(Source.instances) == count
    return Source.instances, wires


def test_a_silent_rekey_pauses_sources_bounds_the_queue_and_times_out(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    sources, _ = _open_source_channels(stack, 4)
    conn, client = stack.tunnel._conn, stack.client
    assert conn is not None
    conn.kex_queue_limit = 100 * 1024

    # The server starts a key exchange, then ignores everything we send.
    stack.server_transport.sendKexInit()
    stack.server_transport.dataReceived = lambda data: None
    stack.pump.flush()
    assert client._keyExchangeState != client._KEY_EXCHANGE_NONE

    # Local data keeps arriving on every channel; the server's window would take it all.
    for source in sources:
        source.pump(limit=4 * 1024 * 1024)
    assert conn.kex_blocked
    assert all(s.paused and s.pauses == 1 for s in sources)
    # Bounded: the limit, plus at most one chunk per source already in flight.
    assert conn.kex_queue_limit < _queued(client) <= conn.kex_queue_limit + 4 * (CHUNK + 64)
    assert sum(s.written for s in sources) < 4 * 1024 * 1024

    # Nothing finishes the exchange: the key exchange timeout ends the connection.
    stack.reactor.advance(client.kex_timeout + 1)
    stack.pump.flush()
    assert type(client.error) is ConnectionLostError  # our timeout, not a protocol error
    assert "key exchange not finished" in str(client.error)
    assert not stack.tunnel.connected


def test_sources_resume_once_the_key_exchange_finishes(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    sources, wires = _open_source_channels(stack, 2)
    conn, client = stack.tunnel._conn, stack.client
    assert conn is not None
    conn.kex_queue_limit = 48 * 1024

    # The server starts a rekey; its answers to ours are held back for a while.
    stack.server_transport.sendKexInit()
    deliver = stack.server_transport.dataReceived
    held: list[bytes] = []
    stack.server_transport.dataReceived = held.append
    stack.pump.flush()
    for source in sources:
        source.pump(limit=1024 * 1024)
    assert conn.kex_blocked and all(s.paused for s in sources)
    exchanges = client.key_exchanges

    # The server wakes up: the exchange completes, the queue is sent, sources resume.
    stack.server_transport.dataReceived = deliver
    for data in held:
        deliver(data)
    stack.pump.flush()
    assert client.key_exchanges == exchanges + 1
    assert not conn.kex_blocked
    assert _queued(client) == 0
    assert all(not s.paused and s.resumes == 1 for s in sources)
    assert stack.tunnel.connected
    # Nothing held was lost: each remote client got every byte its source wrote.
    assert [len(w.value()) for w in wires] == [s.written for s in sources]
