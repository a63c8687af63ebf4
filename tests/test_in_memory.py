"""
The whole SSH stack in memory: key exchange, authentication, tcpip-forward, a forwarded
channel, cancel and logoff between ReverseTunnel and the bundled server, over
``twisted.test.iosim`` with a ``MemoryReactorClock``: no sockets, no real time.
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

from rtunnel import ChannelOpenRequest, ForwardState, PrivateKeyFile, ReverseTunnel
from rtunnel.testing import SSHTestServer, client_key, generate_client_key


class Upper(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        assert self.transport is not None
        self.transport.write(data.upper())


def result_of(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


class Stack:
    """A ReverseTunnel and an SSHTestServer joined by an in-memory pump."""

    def __init__(self, tmp_path: Path) -> None:
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
            user="alice",
            auth=[PrivateKeyFile(key_path)],
            known_hosts=known_hosts,
        )

    def connect(self) -> Deferred[None]:
        logon = self.tunnel.logon()
        host, port, client_factory, _timeout, _bind = self.reactor.tcpClients[-1]
        assert (host, port) == ("127.0.0.1", 2222)
        server_factory = self.reactor.tcpServers[0][1]
        client_address = IPv4Address("TCP", "127.0.0.1", 50000)
        server_address = IPv4Address("TCP", "127.0.0.1", 2222)
        client = client_factory.buildProtocol(server_address)
        server = server_factory.buildProtocol(client_address)
        self.pump = iosim.connect(
            server,
            iosim.FakeTransport(
                server, isServer=True, hostAddress=server_address, peerAddress=client_address
            ),
            client,
            iosim.FakeTransport(
                client, isServer=False, hostAddress=client_address, peerAddress=server_address
            ),
            clock=self.reactor,
        )
        self.pump.flush()
        return logon

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


def test_forward_and_channel_in_memory(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    assert stack.tunnel.connected

    seen: list[ChannelOpenRequest] = []

    def accept(request: ChannelOpenRequest) -> bool:
        seen.append(request)
        return True

    d = stack.tunnel.request_forwarding(
        "127.0.0.1", 8080, factory=Factory.forProtocol(Upper), accept=accept
    )
    stack.pump.flush()
    forward = result_of(d)
    assert forward.port == 8080 and forward.state is ForwardState.ACTIVE
    assert [tuple(f) for f in stack.server.forwards] == [("127.0.0.1", 8080)]

    remote, wire = stack.inbound()
    assert [(r.origin_address, r.origin_port, r.connected_port) for r in seen] == [
        ("203.0.113.5", 40000, 8080)
    ]
    remote.dataReceived(b"hello, tunnel")
    stack.pump.flush()
    assert wire.value() == b"HELLO, TUNNEL"
    (info,) = stack.tunnel.channels
    assert (info.bytes_received, info.bytes_sent) == (13, 13)

    # The remote client goes away: the channel closes on both sides.
    remote.connectionLost(Failure(Exception("gone")))
    stack.pump.flush()
    assert stack.tunnel.channels == []

    result = stack.tunnel.cancel_forwarding("127.0.0.1", 8080)
    stack.pump.flush()
    result_of(result)
    stack.reactor.advance(0)
    assert stack.server.forwards == []

    done = stack.tunnel.logoff()
    stack.pump.flush()
    result_of(done)
    assert not stack.tunnel.connected
    assert [call for call in stack.reactor.getDelayedCalls() if call.active()] == []
