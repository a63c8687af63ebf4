"""
The whole SSH stack in memory for rtunnel's own tests: the names these tests grew up with
(``Stack``, ``ReconnectingStack``), now thin views of the public
:class:`rtunnel.testing.MemoryPair`, with the raw pieces the transport tests poke at (the
pump of the SSH connection, the server's transport, the tunnel's client transport).
New tests use ``MemoryPair`` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from rtunnel import ForwardState, ReconnectAttempt, TunnelObserver
from rtunnel.testing import MemoryPair


def result_of(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


class Upper(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        assert self.transport is not None
        self.transport.write(data.upper())


class Stack:
    """A ReverseTunnel and the bundled server joined in memory (a MemoryPair on port 2222)."""

    def __init__(self, tmp_path: Path, **tunnel_kw: Any) -> None:
        self.pair = MemoryPair(tmp_path, user="alice", port=2222, **tunnel_kw)
        self.reactor = self.pair.reactor
        self.server = self.pair.server
        self.tunnel = self.pair.tunnel
        self.server_factory: Any = None
        self.pump: iosim.IOPump | None = None
        self.server_transport: Any = None

    def _newest(self) -> None:
        """Point ``pump`` and ``server_transport`` at the newest SSH connection."""
        links = [link for link in self.reactor.links if link.listener.key[1] == self.server.port]
        if links:
            self.pump = links[-1]
            self.server_transport = links[-1].server_io.protocol
            self.server_factory = links[-1].listener.factory

    def connect(self) -> Deferred[None]:
        logon = self.tunnel.logon()
        self.pair.flush()
        self._newest()
        return logon

    @property
    def client(self) -> Any:
        return self.tunnel._transport

    def forward_upper(self) -> None:
        d = self.tunnel.request_forwarding("127.0.0.1", 8080, factory=Factory.forProtocol(Upper))
        self.pair.flush()
        result_of(d)

    def round_trip(self, data: bytes) -> bytes:
        """A client of the server's newest forward listener sends ``data``; what comes back."""
        remote, wire = self.inbound()
        remote.dataReceived(data)
        self.pair.flush()
        out: bytes = wire.value()
        remote.connectionLost(Failure(Exception("done")))
        self.pair.flush()
        return out

    def inbound(
        self, origin_port: int = 40000, origin_address: str = "203.0.113.5"
    ) -> tuple[Protocol, StringTransport]:
        """A remote client connecting to the server's newest forward listener."""
        listener_factory = self.reactor.tcpServers[-1][1]
        kind = IPv6Address if ":" in origin_address else IPv4Address
        origin = kind("TCP", origin_address, origin_port)
        protocol = listener_factory.buildProtocol(origin)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=origin
        )
        protocol.makeConnection(transport)
        self.pair.flush()
        return protocol, transport


class Attempts(TunnelObserver):
    def __init__(self) -> None:
        self.attempts: list[ReconnectAttempt] = []

    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self.attempts.append(attempt)


class ReconnectingStack(Stack):
    """
    A Stack that follows the tunnel's reconnects: :meth:`join` tells whether the tunnel
    made a new connect (joined to the server, or refused while ``down``).
    """

    def __init__(self, tmp_path: Path, **tunnel_kw: Any) -> None:
        super().__init__(tmp_path, **tunnel_kw)
        self.watcher = Attempts()
        self.tunnel.add_observer(self.watcher)
        self.joined = 0

    @property
    def down(self) -> bool:
        """Whether connects to the server are refused."""
        return (self.server.host, self.server.port) in self.reactor.refusing

    @down.setter
    def down(self, value: bool) -> None:
        self.pair.refuse_connections(value)

    def join(self) -> bool:
        """Whether the tunnel made a connect since the last call (now flushed)."""
        if self.joined == self.pair.connection_attempts:
            return False
        self.joined = self.pair.connection_attempts
        self.pair.flush()
        self._newest()
        return True

    def logon_with_forward(self) -> None:
        d = self.tunnel.logon()
        assert self.join()
        result_of(d)
        self.forward_upper()

    def kill(self) -> None:
        """The server's side of the session goes away (sshd killed)."""
        assert self.pump is not None
        self.pump.serverIO.abortConnection()
        self.pump.flush()

    def next_attempt(self) -> ReconnectAttempt:
        """Wait out the reconnect the tunnel scheduled; return its announcement."""
        attempt = self.watcher.attempts[-1]
        self.reactor.advance(attempt.retry_interval - 1e-6)
        assert not self.join(), "a connect before the announced wait was over"
        self.reactor.advance(2e-6)
        assert self.join(), "no connect after the announced wait"
        return attempt

    def logoff(self) -> None:
        d = self.tunnel.logoff()
        self.pair.flush()
        result_of(d)
        assert self.reactor.getDelayedCalls() == []

    def forward_active(self) -> bool:
        return [f.state for f in self.tunnel.forwards] == [ForwardState.ACTIVE]
