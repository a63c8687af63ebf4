"""
The whole SSH stack in memory, for tests: a ReverseTunnel and the bundled server joined
by ``twisted.test.iosim`` on a ``MemoryReactorClock`` (no sockets, no real time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from rtunnel import PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.testing import SSHTestServer, client_key, generate_client_key


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
    """A ReverseTunnel and the bundled server joined by an in-memory pump."""

    def __init__(self, tmp_path: Path, **tunnel_kw: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.server = SSHTestServer(self.reactor, port=2222)
        key_path = generate_client_key("ed25519", tmp_path)
        self.server.add_user("alice", authorized_keys=[client_key("ed25519").public()])
        result_of(self.server.start())
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(
            f"[127.0.0.1]:2222 {self.server.known_hosts_line.split(' ', 1)[1]}\n"
        )
        self.tunnel = ReverseTunnel(
            self.reactor,
            "127.0.0.1",
            2222,
            options=TunnelOptions.create(
                user="alice", auth=[PrivateKeyFile(key_path)], known_hosts=known_hosts, **tunnel_kw
            ),
        )
        self.server_factory: Any = None

    def connect(self) -> Deferred[None]:
        logon = self.tunnel.logon()
        host, port, client_factory, _timeout, _bind = self.reactor.tcpClients[-1]
        assert (host, port) == ("127.0.0.1", 2222)
        self.server_factory = self.reactor.tcpServers[0][1]
        client_address = IPv4Address("TCP", "127.0.0.1", 50000)
        server_address = IPv4Address("TCP", "127.0.0.1", 2222)
        client = client_factory.buildProtocol(server_address)
        self.server_transport = self.server_factory.buildProtocol(client_address)
        self.pump = iosim.connect(
            self.server_transport,
            iosim.FakeTransport(
                self.server_transport,
                isServer=True,
                hostAddress=server_address,
                peerAddress=client_address,
            ),
            client,
            iosim.FakeTransport(
                client, isServer=False, hostAddress=client_address, peerAddress=server_address
            ),
            clock=self.reactor,
        )
        self.pump.flush()
        return logon

    @property
    def client(self) -> Any:
        return self.tunnel._transport

    def forward_upper(self) -> None:
        d = self.tunnel.request_forwarding("127.0.0.1", 8080, factory=Factory.forProtocol(Upper))
        self.pump.flush()
        result_of(d)

    def round_trip(self, data: bytes) -> bytes:
        listener_factory = self.reactor.tcpServers[-1][1]
        origin = IPv4Address("TCP", "203.0.113.5", 40000)
        remote = listener_factory.buildProtocol(origin)
        wire = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=origin
        )
        remote.makeConnection(wire)
        self.pump.flush()
        remote.dataReceived(data)
        self.pump.flush()
        out: bytes = wire.value()
        remote.connectionLost(Failure(Exception("done")))
        self.pump.flush()
        return out

    def inbound(self, origin_port: int = 40000) -> tuple[Protocol, StringTransport]:
        """A remote client connecting to the server's newest forward listener."""
        listener_factory = self.reactor.tcpServers[-1][1]
        origin = IPv4Address("TCP", "203.0.113.5", origin_port)
        protocol = listener_factory.buildProtocol(origin)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=origin
        )
        protocol.makeConnection(transport)
        self.pump.flush()
        return protocol, transport
