"""
Tests for rtunnel.testing.SSHTestServer, driven by a bare Conch client over real sockets
on the loopback interface, so every assertion is about what went over the wire.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sockets import describe
from twisted.conch.error import ConchError
from twisted.conch.ssh import common, connection, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from typing_extensions import override
from zope.interface import implementer
from zope.interface.verify import verifyObject

import rtunnel.testing
from rtunnel.testing import MemoryPair, SSHTestServer, client_key
from rtunnel.testing.server import listen_addresses
from rtunnel.testing.server._auth import _PasswordChecker, _PublicKeyChecker, _Realm
from rtunnel.testing.server._forwarding import _MAX_PACKET, _WINDOW, _InboundProtocol

TIMEOUT = 20


# A bare Conch client ------------------------------------------------------------------


class ClientChannel(SSHChannel):
    """The client end of one forwarded-tcpip channel: records, and echoes if asked."""

    name = b"forwarded-tcpip"

    def __init__(self, fields: tuple[str, int, str, int], echo: bool, **kw: Any) -> None:
        super().__init__(**kw)
        self.fields = fields
        self.echo = echo
        self.received: list[bytes] = []
        self.eof: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self._eof_after_flush = False

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.echo:
            self.write(data)

    @override
    def eofReceived(self) -> None:
        self.eof.callback(None)
        if self.echo:
            self.send_eof()

    def send_eof(self) -> None:
        # Conch's write() may still hold data for lack of window; EOF must follow it.
        if self.buf:
            self._eof_after_flush = True
        else:
            self.conn.sendEOF(self)

    @override
    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        if self._eof_after_flush and not self.buf:
            self._eof_after_flush = False
            self.conn.sendEOF(self)

    @override
    def closed(self) -> None:
        self.done.callback(None)


class ClientConnection(connection.SSHConnection):
    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[None] = Deferred()
        self.opens: DeferredQueue[ClientChannel] = DeferredQueue()
        self.refuse = False
        self.echo = False
        self.local_window = 0
        self.hold_window = False

    @override
    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.ready.callback(None)

    def channel_forwarded_tcpip(self, window: int, max_packet: int, data: bytes) -> SSHChannel:
        address, rest = common.getNS(data)
        (port,) = struct.unpack(">L", rest[:4])
        origin, rest = common.getNS(rest[4:])
        (origin_port,) = struct.unpack(">L", rest)
        if self.refuse:
            raise ConchError("refused by test", connection.OPEN_CONNECT_FAILED)
        channel = ClientChannel(
            (address.decode(), port, origin.decode(), origin_port),
            self.echo,
            remoteWindow=window,
            remoteMaxPacket=max_packet,
            localWindow=self.local_window,
        )
        reactor.callLater(0, self.opens.put, channel)
        return channel

    @override
    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        if not self.hold_window:
            return super().ssh_CHANNEL_DATA(packet)
        # A client that does not consume: take the data, never grant window back.
        local_id, length = struct.unpack(">2L", packet[:8])
        channel = self.channels[local_id]
        channel.localWindowLeft -= length
        channel.dataReceived(packet[8 : 8 + length])

    def global_request(self, name: bytes, data: bytes) -> Deferred[bytes]:
        return self.sendGlobalRequest(name, data, wantReply=1)

    def forward(self, address: str, port: int) -> Deferred[bytes]:
        return self.global_request(
            b"tcpip-forward", common.NS(address.encode()) + struct.pack(">L", port)
        )

    def cancel(self, address: str, port: int) -> Deferred[bytes]:
        return self.global_request(
            b"cancel-tcpip-forward", common.NS(address.encode()) + struct.pack(">L", port)
        )


class ClientAuth(userauth.SSHUserAuthClient):
    def __init__(
        self,
        user: bytes,
        conn: ClientConnection,
        password: str | None,
        key: Key | None,
        alg: bytes | None,
    ) -> None:
        super().__init__(user, conn)
        self.password = password
        self.key = key
        self.alg = alg
        self.failures = 0

    @override
    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        if self.lastAuth != b"none":
            self.failures += 1
        return super().ssh_USERAUTH_FAILURE(packet)

    @override
    def getPassword(self, prompt: bytes | None = None) -> Deferred[bytes] | None:
        password, self.password = self.password, None
        return None if password is None else defer.succeed(password.encode())

    @override
    def auth_publickey(self) -> bool:  # type: ignore[override]
        # Conch's client signs RSA with ssh-rsa (SHA-1) only; sign with the algorithm the
        # test names, straight away (no query first).
        key, self.key = self.key, None
        if key is None:
            return False
        alg = self.alg or key.sshType()
        blob = key.public().blob()
        signed = (
            common.NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(alg)
            + common.NS(blob)
        )
        signature = key.sign(signed, signatureType=alg)
        self.askForAuth(
            b"publickey", b"\x01" + common.NS(alg) + common.NS(blob) + common.NS(signature)
        )
        return True


class ClientTransport(SSHClientTransport):
    def __init__(self, host_key: Key, auth: ClientAuth) -> None:
        self.host_key = host_key
        self.auth = auth
        self.lost: Deferred[None] = Deferred()

    @override
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        if Key.fromString(hostKey) == self.host_key:
            return defer.succeed(True)
        return defer.fail(ConchError("unexpected host key"))

    @override
    def connectionSecure(self) -> None:
        self.requestService(self.auth)

    @override
    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


async def connect(
    server: SSHTestServer,
    user: str = "alice",
    password: str | None = None,
    key: Key | None = None,
    alg: bytes | None = None,
    authenticate: bool = True,
) -> ClientTransport:
    """Connect a Conch client; wait until authenticated unless ``authenticate`` is false."""
    conn = ClientConnection()
    auth = ClientAuth(user.encode(), conn, password, key, alg)
    client = ClientTransport(server.host_key, auth)
    await connectProtocol(TCP4ClientEndpoint(reactor, server.host, server.port), client)
    if authenticate:
        await conn.ready.addTimeout(TIMEOUT, reactor)
    return client


def conn_of(client: ClientTransport) -> ClientConnection:
    conn = client.auth.instance
    assert isinstance(conn, ClientConnection)
    return conn


async def close(client: ClientTransport) -> None:
    client.transport.loseConnection()
    await client.lost.addTimeout(TIMEOUT, reactor)


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """A TCP client of a forward's listener."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.write_closed = False

    @override
    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.eof.callback(None)
        if self.write_closed:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.write_closed = True
        if self.eof.called:
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Any = None) -> None:
        if not self.eof.called:
            self.eof.callback(None)
        self.lost.callback(None)


async def dial(port: int, host: str = "127.0.0.1") -> Peer:
    endpoint = (TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint)(reactor, host, port)
    return await connectProtocol(endpoint, Peer())


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError(f"not true after {timeout:g} s: {describe(condition)}")


@pytest.fixture
def server() -> SSHTestServer:
    server = SSHTestServer(reactor)
    server.add_user("alice", password="s3cret", authorized_keys=[client_key("ed25519")])
    pytest_twisted.blockon(server.start())
    yield server
    pytest_twisted.blockon(server.stop())


@pytest.fixture
def client(server: SSHTestServer) -> ClientTransport:
    client = pytest_twisted.blockon(defer.ensureDeferred(connect(server, password="s3cret")))
    yield client
    if not client.lost.called:
        pytest_twisted.blockon(defer.ensureDeferred(close(client)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The package and its pure parts --------------------------------------------------------


def test_public_names() -> None:
    assert sorted(rtunnel.testing.__all__) == [
        "FaultProxy",
        "ForwardListener",
        "InboundConnection",
        "KbdIntPrompt",
        "KeyKind",
        "MemoryPair",
        "OpenSSHServer",
        "SSHTestServer",
        "WaitTimeoutError",
        "certificate_line",
        "client_key",
        "generate_client_key",
        "host_key",
        "make_certificate",
    ]
    for name in rtunnel.testing.__all__:
        assert getattr(rtunnel.testing, name) is not None


def test_interfaces() -> None:
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.cred.portal import IRealm

    assert verifyObject(ICredentialsChecker, _PasswordChecker({}))
    assert verifyObject(ICredentialsChecker, _PublicKeyChecker({}, set()))
    assert verifyObject(IRealm, _Realm())
    inbound = _InboundProtocol(None, "", 0)  # type: ignore[arg-type]
    assert verifyObject(IHalfCloseableProtocol, inbound)
    assert verifyObject(IPushProducer, inbound.channel)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("", ["0.0.0.0"]),
        ("*", ["0.0.0.0"]),
        ("0.0.0.0", ["0.0.0.0"]),
        ("::", ["::"]),
        ("localhost", ["127.0.0.1", "::1"]),
        ("127.0.0.2", ["127.0.0.2"]),
        ("::1", ["::1"]),
        ("example.com", None),
    ],
)
def test_listen_addresses(bind: str, expected: list[str] | None) -> None:
    assert listen_addresses(bind) == expected


# tcpip-forward and cancel-tcpip-forward (RFC 4254 section 7.1) ---------------------------


@pytest_twisted.ensureDeferred
async def test_forward_port_zero_answers_allocated_port(server, client) -> None:
    reply = await conn_of(client).forward("127.0.0.1", 0)
    (port,) = struct.unpack(">L", reply)
    assert len(reply) == 4 and port > 0
    assert server.forwards == [("127.0.0.1", port)]
    assert await server.wait_for_forward("127.0.0.1") == port
    peer = await dial(port)
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_forward_fixed_port_answers_no_payload(server, client) -> None:
    port = free_port()
    reply = await conn_of(client).forward("127.0.0.1", port)
    assert reply == b""
    assert server.forwards == [("127.0.0.1", port)]
    # The same port again cannot be bound: REQUEST_FAILURE.
    with pytest.raises(ConchError):
        await conn_of(client).forward("127.0.0.1", port)


@pytest_twisted.ensureDeferred
async def test_cancel_removes_listener(server, client) -> None:
    conn = conn_of(client)
    (port,) = struct.unpack(">L", await conn.forward("localhost", 0))
    with pytest.raises(ConchError):  # matched on the address string as requested
        await conn.cancel("127.0.0.1", port)
    assert await conn.cancel("localhost", port) == b""
    assert server.forwards == []
    for host in ("127.0.0.1", "::1"):
        with pytest.raises(ConnectionRefusedError):
            await dial(port, host)
    with pytest.raises(ConchError):  # nothing left to cancel
        await conn.cancel("localhost", port)


@pytest_twisted.ensureDeferred
async def test_other_global_requests_fail(client) -> None:
    with pytest.raises(ConchError):
        await conn_of(client).global_request(b"keepalive@openssh.com", b"")
    with pytest.raises(ConchError):  # a host name the server would have to resolve
        await conn_of(client).forward("example.com", 0)


@pytest_twisted.ensureDeferred
async def test_bind_addresses(server, client) -> None:
    conn = conn_of(client)
    (v6_port,) = struct.unpack(">L", await conn.forward("::1", 0))
    # Checked before the other forwards exist: the IPv4 wildcard one may be given the same
    # port number (an AF_INET and an AF_INET6 socket do not conflict), which once made
    # this connect reach it.
    with pytest.raises(ConnectionRefusedError):
        await dial(v6_port, "127.0.0.1")
    (any_port,) = struct.unpack(">L", await conn.forward("", 0))
    (local_port,) = struct.unpack(">L", await conn.forward("localhost", 0))
    assert sorted(server.forwards) == sorted(
        [("", any_port), ("localhost", local_port), ("::1", v6_port)]
    )
    for port, host in [
        (any_port, "127.0.0.1"),
        (local_port, "127.0.0.1"),
        (local_port, "::1"),
        (v6_port, "::1"),
    ]:
        conn.refuse = True  # only the listening matters here
        peer = await dial(port, host)
        await peer.eof.addTimeout(TIMEOUT, reactor)
        peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_listener_goes_away_on_disconnect(server, client) -> None:
    (port,) = struct.unpack(">L", await conn_of(client).forward("127.0.0.1", 0))
    await close(client)
    await server.wait_for_forward_closed("127.0.0.1", port).addTimeout(TIMEOUT, reactor)
    await server.wait_for_connections(0).addTimeout(TIMEOUT, reactor)
    assert server.forwards == []
    with pytest.raises(ConnectionRefusedError):
        await dial(port)


# forwarded-tcpip channels (RFC 4254 section 7.2) ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_forwarded_channel_fields_data_and_half_close(server, client) -> None:
    conn = conn_of(client)
    (port,) = struct.unpack(">L", await conn.forward("localhost", 0))
    peer = await dial(port)
    channel = await conn.opens.get().addTimeout(TIMEOUT, reactor)
    assert channel.fields == ("localhost", port, "127.0.0.1", peer.transport.getHost().port)
    await server.wait_for_open_channels(1).addTimeout(TIMEOUT, reactor)

    # Inbound socket to client, then the socket's EOF becomes CHANNEL_EOF.
    peer.transport.write(b"hello ")
    peer.transport.write(b"server")
    peer.transport.loseWriteConnection()
    await channel.eof.addTimeout(TIMEOUT, reactor)
    assert b"".join(channel.received) == b"hello server"

    # The other way still works after the half-close; CHANNEL_EOF shuts the socket's
    # write side, then both sides are done and everything closes.
    channel.write(b"and back")
    channel.send_eof()
    await peer.eof.addTimeout(TIMEOUT, reactor)
    assert bytes(peer.data) == b"and back"
    await channel.done.addTimeout(TIMEOUT, reactor)
    await peer.lost.addTimeout(TIMEOUT, reactor)
    await server.wait_for_open_channels(0).addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_open_failure_closes_inbound_socket(server, client) -> None:
    conn = conn_of(client)
    conn.refuse = True
    (port,) = struct.unpack(">L", await conn.forward("127.0.0.1", 0))
    peer = await dial(port)
    await peer.eof.addTimeout(TIMEOUT, reactor)
    assert bytes(peer.data) == b""
    assert server.open_channels == 0
    await until(lambda: not server._inbound)
    peer.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_64_mib_each_way(server, client) -> None:
    conn = conn_of(client)
    conn.echo = True
    (port,) = struct.unpack(">L", await conn.forward("127.0.0.1", 0))
    payload = hashlib.shake_256(b"rtunnel").digest(1 << 20) * 64
    peer = await dial(port)
    peer.transport.write(payload)
    peer.transport.loseWriteConnection()
    await peer.eof.addTimeout(120, reactor)
    assert len(peer.data) == len(payload)
    assert hashlib.sha256(peer.data).digest() == hashlib.sha256(payload).digest()


def _buffered(transport: Any) -> int:
    # Twisted's FileDescriptor keeps unsent bytes in these two (private) attributes.
    return len(transport.dataBuffer) + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_window_granted_only_as_socket_consumes(server, client) -> None:
    """Client to socket: a socket that does not read stops the client's window."""
    conn = conn_of(client)
    (port,) = struct.unpack(">L", await conn.forward("127.0.0.1", 0))
    peer = await dial(port)
    peer.transport.pauseProducing()  # the inbound side reads nothing for now
    channel = await conn.opens.get().addTimeout(TIMEOUT, reactor)
    payload = hashlib.shake_256(b"down").digest(32 << 20)
    channel.write(payload)
    channel.send_eof()  # queued behind the data
    # The kernel's socket buffers take some megabytes; then the server must stop
    # granting window and the client holds the rest.
    await until(lambda: channel.remoteWindowLeft == 0 and len(channel.buf) > 0)
    await deferLater(reactor, 0.2)
    (inbound,) = server._inbound
    assert len(channel.buf) > 0
    assert _buffered(inbound.transport) <= _WINDOW + 2 * _MAX_PACKET
    peer.transport.resumeProducing()
    # The EOF half-closes the socket although the channel was paused as its producer.
    await peer.eof.addTimeout(TIMEOUT, reactor)
    assert bytes(peer.data) == payload


@pytest_twisted.ensureDeferred
async def test_inbound_paused_while_client_window_exhausted(server, client) -> None:
    """Socket to client: a client that grants no window pauses reading the socket."""
    conn = conn_of(client)
    conn.hold_window = True
    conn.local_window = 64 * 1024
    (port,) = struct.unpack(">L", await conn.forward("127.0.0.1", 0))
    peer = await dial(port)
    channel = await conn.opens.get().addTimeout(TIMEOUT, reactor)
    payload = hashlib.shake_256(b"up").digest(16 << 20)
    peer.transport.write(payload)
    await until(lambda: sum(map(len, channel.received)) == 64 * 1024)
    (inbound,) = server._inbound
    await until(lambda: "window" in inbound._pauses)
    await deferLater(reactor, 0.2)
    # One socket read (at most 64 KiB) beyond the window is all the server holds.
    assert len(inbound.channel.buf) <= 64 * 1024
    assert sum(map(len, channel.received)) == 64 * 1024
    conn.hold_window = False
    conn.adjustWindow(channel, 64 * 1024)
    await until(lambda: sum(map(len, channel.received)) == len(payload))
    assert b"".join(channel.received) == payload


# Authentication ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_password(server) -> None:
    client = await connect(server, password="s3cret")
    assert client.auth.failures == 0
    assert server.connections == 1
    await close(client)


@pytest_twisted.ensureDeferred
async def test_wrong_password_fails(server) -> None:
    client = await connect(server, password="wrong", authenticate=False)
    await client.lost.addTimeout(TIMEOUT, reactor)
    assert client.auth.failures == 1
    assert not conn_of(client).ready.called


@pytest.mark.parametrize(
    ("kind", "alg"),
    [
        ("ed25519", None),
        ("ecdsa", None),
        ("rsa", b"rsa-sha2-256"),
        ("rsa", b"rsa-sha2-512"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_publickey(kind: str, alg: bytes | None) -> None:
    server = SSHTestServer(reactor, host_key_type=kind)
    server.add_user("bob", authorized_keys=[client_key(kind).public()])
    await server.start()
    try:
        client = await connect(server, user="bob", key=client_key(kind), alg=alg)
        assert client.auth.failures == 0
        assert server.host_key.sshType() == client_key(kind).sshType()
        await close(client)
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("allow", "accepted"),
    [(False, False), (True, True)],
)
@pytest_twisted.ensureDeferred
async def test_rsa_sha1_refused_unless_allowed(allow: bool, accepted: bool) -> None:
    server = SSHTestServer(reactor, allow_rsa_sha1=allow)
    server.add_user("bob", authorized_keys=[client_key("rsa")])
    await server.start()
    try:
        client = await connect(
            server, user="bob", key=client_key("rsa"), alg=b"ssh-rsa", authenticate=False
        )
        await defer.DeferredList(
            [conn_of(client).ready, client.lost], fireOnOneCallback=True
        ).addTimeout(TIMEOUT, reactor)
        assert conn_of(client).ready.called is accepted
        if accepted:
            await close(client)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_unauthorized_key_fails(server) -> None:
    client = await connect(server, key=client_key("ecdsa"), authenticate=False)
    await client.lost.addTimeout(TIMEOUT, reactor)
    assert client.auth.failures == 1


@pytest_twisted.ensureDeferred
async def test_server_sig_algs_lists_user_algorithms(client) -> None:
    algorithms = client.peerExtensions[b"server-sig-algs"].split(b",")
    assert {b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"rsa-sha2-256", b"rsa-sha2-512"} <= set(
        algorithms
    )
    assert b"ssh-rsa" not in algorithms


# Server life cycle ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_closes_everything(server, client) -> None:
    (port,) = struct.unpack(">L", await conn_of(client).forward("127.0.0.1", 0))
    peer = await dial(port)
    await conn_of(client).opens.get().addTimeout(TIMEOUT, reactor)
    ssh_port = server.port
    await server.stop()
    await client.lost.addTimeout(TIMEOUT, reactor)
    await peer.lost.addTimeout(TIMEOUT, reactor)
    assert server.connections == 0 and server.forwards == []
    for p in (port, ssh_port):
        with pytest.raises(ConnectionRefusedError):
            await dial(p)


@pytest_twisted.ensureDeferred
async def test_drop_connections_keeps_listening(server, client) -> None:
    await conn_of(client).forward("127.0.0.1", 0)
    await server.drop_connections().addTimeout(TIMEOUT, reactor)
    await client.lost.addTimeout(TIMEOUT, reactor)
    assert server.forwards == []
    again = await connect(server, password="s3cret")
    assert server.connections == 1
    await close(again)


def test_known_hosts(server, tmp_path) -> None:
    line = server.known_hosts_line
    assert line == f"[127.0.0.1]:{server.port} " + server.host_key.toString("openssh").decode()
    assert line.split()[1] == "ssh-ed25519"
    path = server.write_known_hosts(tmp_path / "known_hosts")
    assert path.read_text() == line + "\n"


@pytest_twisted.ensureDeferred
async def test_wait_for_forward_with_timeout_is_forgotten(server) -> None:
    with pytest.raises(defer.TimeoutError):
        await server.wait_for_forward("127.0.0.1").addTimeout(0.01, reactor)
    assert len(server._waiters) == 0


# The pytest plugin's fixtures -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_plugin_fixtures(ssh_test_server, ssh_client_key, ssh_known_hosts, ssh_user) -> None:
    assert ssh_known_hosts.read_text() == ssh_test_server.known_hosts_line + "\n"
    assert oct(ssh_client_key.stat().st_mode & 0o777) == "0o600"
    key = Key.fromFile(str(ssh_client_key))
    assert Key.fromFile(str(ssh_client_key) + ".pub") == key.public()
    by_key = await connect(ssh_test_server, user=ssh_user, key=key)
    by_password = await connect(ssh_test_server, user=ssh_user, password="password")
    assert ssh_test_server.connections == 2
    await close(by_key)
    await close(by_password)


# Fault controls, driven by the real rtunnel client ----------------------------------------


def tunnel_to(server: SSHTestServer, tmp_path: Any, **kw: Any) -> Any:
    """A ReverseTunnel for alice on ``server`` (reconnect off unless given)."""
    from rtunnel import PrivateKeyFile, ReconnectPolicy, ReverseTunnel, TunnelOptions
    from rtunnel.testing import generate_client_key

    kw.setdefault("reconnect", ReconnectPolicy.off())
    kw.setdefault("known_hosts", server.write_known_hosts(tmp_path / "known_hosts"))
    if "auth" not in kw:
        kw["auth"] = [PrivateKeyFile(generate_client_key("ed25519", tmp_path / "keys"))]
    return ReverseTunnel(
        reactor, server.host, server.port, options=TunnelOptions.create(user="alice", **kw)
    )


def fast_reconnect() -> Any:
    from rtunnel import ReconnectPolicy

    return ReconnectPolicy(initial_delay=0.2, max_delay=0.5, jitter=0)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    """The ``server`` fixture's server (alice: a key, or the password s3cret), in memory."""
    pair = MemoryPair(tmp_path / "pair", user="alice")
    pair.server.add_user("alice", password="s3cret")
    yield pair
    pair.close()


def memory_tunnel(pair: MemoryPair, **kw: Any) -> Any:
    """A ReverseTunnel for alice on the pair's server (reconnect off unless given)."""
    from rtunnel import ReconnectPolicy

    kw.setdefault("reconnect", ReconnectPolicy.off())
    return pair.make_tunnel(**kw)


@pytest_twisted.ensureDeferred
async def test_freeze_holds_every_reply_until_thaw(server, tmp_path) -> None:
    from sockets import TargetServer, echo

    target = TargetServer(echo)
    t = tunnel_to(server, tmp_path)
    await t.logon()
    try:
        first = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        server.freeze()
        pending = t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9)
        # An inbound connection: the channel open the server would send is held too.
        peer = await dial(first.port)
        peer.transport.write(b"held")
        await sleep(0.5)
        # Not answered, not listening, no channel, and the TCP connection is still up.
        assert not pending.called and len(server.forwards) == 1
        assert t.channels == [] and target.connections == []
        assert t.connected and server.connections == 1
        server.thaw()
        forward = await pending.addTimeout(TIMEOUT, reactor)
        assert forward.port == await server.wait_for_forward("127.0.0.1", forward.port)
        await until(lambda: bytes(peer.data) == b"held")
        peer.transport.loseConnection()
    finally:
        await t.logoff()
        target.close()


def test_freeze_is_noticed_by_keepalive_then_reconnected(pair: MemoryPair) -> None:
    from e2e_support import Recorder

    from rtunnel import KeepaliveError

    k, n = 0.5, 1
    watcher = Recorder()
    t = memory_tunnel(pair, keepalive_interval=k, keepalive_count_max=n, reconnect=fast_reconnect())
    t.add_observer(watcher)
    pair.run(t.logon())
    pair.server.freeze()
    # Gone after k * (n + 1) seconds without an answer, not before.
    pair.advance(k * (n + 1) - 0.01)
    assert watcher.losses == []
    pair.advance(0.02)
    assert len(watcher.losses) == 1 and isinstance(watcher.losses[0], KeepaliveError)
    # Connections made after the freeze are not frozen.
    pair.advance(0.2)
    assert watcher.connects == 2 and pair.server.accepted_connections == 2
    # Thawed, the old connection reads the client's close and goes.
    assert pair.server.connections == 2
    pair.server.thaw()
    pair.flush()
    assert pair.server.connections == 1
    pair.run(t.logoff())


def test_refuse_forwards_for_all_or_one_port(pair: MemoryPair) -> None:
    from rtunnel import ForwardingError

    server = pair.server
    t = memory_tunnel(pair)
    pair.run(t.logon())
    port = 4242
    server.refuse_forwards(port)
    with pytest.raises(ForwardingError):
        pair.run(t.request_forwarding("127.0.0.1", port, "127.0.0.1", 9))
    dynamic = pair.run(t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9))
    server.refuse_forwards()
    with pytest.raises(ForwardingError):
        pair.run(t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9))
    # Forwards already listening are not touched.
    assert server.forwards == [rtunnel.testing.ForwardListener("127.0.0.1", dynamic.port)]
    server.allow_forwards()
    fixed = pair.run(t.request_forwarding("127.0.0.1", port, "127.0.0.1", 9))
    assert fixed.port == port
    pair.run(t.logoff())


def test_allow_forwards_for_one_port(pair: MemoryPair) -> None:
    from rtunnel import ForwardingError

    t = memory_tunnel(pair)
    pair.run(t.logon())
    ports = [4242, 4243]
    for port in ports:
        pair.server.refuse_forwards(port)
    pair.server.allow_forwards(ports[0])
    assert pair.run(t.request_forwarding("127.0.0.1", ports[0], "127.0.0.1", 9)).port == ports[0]
    with pytest.raises(ForwardingError):
        pair.run(t.request_forwarding("127.0.0.1", ports[1], "127.0.0.1", 9))
    pair.run(t.logoff())


def stale(port: int) -> bool:
    """A connection to ``port`` is accepted and then nothing happens: no data, no close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.settimeout(0.3)
        try:
            c.recv(10)
        except TimeoutError:
            return True
    return False


@pytest_twisted.ensureDeferred
async def test_hold_port_as_a_stale_session_until_released(server, tmp_path) -> None:
    # RELIABILITY.md A9 on the bundled server: the dropped session's listener stays, so
    # the new session's forward is refused and retried until the port is released.
    from e2e_support import Recorder
    from sockets import TargetServer, echo, exchange, in_thread

    from rtunnel import ForwardState

    target = TargetServer(echo)
    watcher = Recorder()
    t = tunnel_to(server, tmp_path, reconnect=fast_reconnect())
    t.add_observer(watcher)
    await t.logon()
    try:
        port = free_port()
        forward = await t.request_forwarding("127.0.0.1", port, "127.0.0.1", target.port)
        server.hold_port(port)
        assert server.held_ports == [port]
        await server.drop_connections()
        await until(lambda: watcher.connects == 2)
        await until(lambda: forward.state is ForwardState.RETRYING)
        assert server.forwards == []
        # The held listener accepts and never answers, as a dead session's would.
        assert await in_thread(stale, port)
        waiting = await dial(port)
        await server.release_port(port)
        await waiting.lost.addTimeout(TIMEOUT, reactor)
        assert server.held_ports == []
        await until(lambda: forward.state is ForwardState.ACTIVE)
        assert await in_thread(exchange, port, b"released") == b"released"
    finally:
        await t.logoff()
        target.close()


def test_hold_a_port_nobody_uses(pair: MemoryPair) -> None:
    from rtunnel import ForwardingError

    t = memory_tunnel(pair)
    pair.run(t.logon())
    port = 4242
    pair.server.hold_port(port)
    with pytest.raises(ForwardingError):
        pair.run(t.request_forwarding("127.0.0.1", port, "127.0.0.1", 9))
    # The held port accepts, and says nothing.
    waiting = pair.connect(port)
    pair.advance(60)
    assert waiting.received == b"" and not waiting.closed
    pair.run(pair.server.release_port(port))
    assert waiting.closed
    assert pair.run(t.request_forwarding("127.0.0.1", port, "127.0.0.1", 9)).port == port
    pair.run(t.logoff())


@pytest_twisted.ensureDeferred
async def test_stop_releases_held_ports(server) -> None:
    port = free_port()
    server.hold_port(port)
    await server.stop()
    assert server.held_ports == []
    with pytest.raises(ConnectionRefusedError):
        await dial(port)
    await server.start()  # for the fixture's stop()


def test_refuse_authentication(pair: MemoryPair) -> None:
    from rtunnel import AuthenticationError, Password

    server = pair.server
    server.refuse_authentication()
    t = memory_tunnel(pair)
    with pytest.raises(AuthenticationError):
        pair.run(t.logon())
    assert ("alice", "publickey") in server.auth_attempts
    # The right password is refused too.
    with pytest.raises(AuthenticationError):
        pair.run(memory_tunnel(pair, auth=[Password("s3cret")]).logon())
    assert ("alice", "password") in server.auth_attempts
    server.refuse_authentication(False)
    pair.run(t.logon())
    pair.run(t.logoff())


def test_restart_keeps_the_port_and_by_default_the_key(pair: MemoryPair) -> None:
    from e2e_support import Recorder

    server = pair.server
    watcher = Recorder()
    t = memory_tunnel(pair, reconnect=fast_reconnect())
    t.add_observer(watcher)
    pair.run(t.logon())
    port, key = server.port, server.host_key
    pair.run(server.restart())
    assert server.port == port and server.host_key == key
    pair.advance(0.2)
    assert watcher.connects == 2
    pair.run(t.logoff())


def test_restart_with_another_host_key_is_refused_for_good(pair: MemoryPair) -> None:
    # RELIABILITY.md A14 on the bundled server.
    from e2e_support import Recorder

    from rtunnel import HostKeyError

    server = pair.server
    watcher = Recorder()
    t = memory_tunnel(pair, reconnect=fast_reconnect())
    t.add_observer(watcher)
    pair.run(t.logon())
    ended: list[Any] = []
    t.when_disconnected().addErrback(ended.append)
    old_key = server.host_key
    pair.run(t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9))
    pair.run(server.restart("ed25519"))
    assert server.host_key != old_key and server.host_key.sshType() == b"ssh-ed25519"
    pair.advance(0.2)
    assert len(ended) == 1 and ended[0].check(HostKeyError)
    assert "CHANGED" in str(ended[0].value)
    # Refused at key exchange: nothing more, and no retry loop, however long we wait.
    pair.advance(600)
    assert server.accepted_connections == 2 and len(watcher.attempts) == 1
    assert server.auth_attempts.count(("alice", "publickey")) == 1
    assert server.forwards == [] and not t.connected


@pytest_twisted.ensureDeferred
async def test_restart_with_a_given_key(server) -> None:
    from rtunnel.testing import host_key

    await server.restart(host_key("ecdsa"))
    assert server.host_key == host_key("ecdsa").public()
    with pytest.raises(ValueError, match="private"):
        await server.restart(host_key("rsa").public())
    assert server.host_key == host_key("ecdsa").public()  # still running, unchanged
    client = await connect(server, password="s3cret")
    await close(client)


def test_delay_replies_to_global_requests_keeps_them_in_order(pair: MemoryPair) -> None:
    from rtunnel import ForwardingError

    server = pair.server
    t = memory_tunnel(pair, keepalive_interval=0)
    pair.run(t.logon())
    server.delay_replies(global_requests=0.5)
    refused, fixed_port = 4242, 4243
    server.refuse_forwards(refused)
    started = pair.reactor.seconds()
    requests = [
        t.request_forwarding("127.0.0.1", refused, "127.0.0.1", 9),
        t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9),
        t.request_forwarding("127.0.0.1", fixed_port, "127.0.0.1", 9),
    ]
    pair.advance(0.499)
    assert server.forwards == [] and not any(d.called for d in requests)  # not handled yet
    with pytest.raises(ForwardingError):
        pair.run(requests[0])
    dynamic, fixed = pair.run(requests[1]), pair.run(requests[2])
    assert pair.reactor.seconds() - started == pytest.approx(0.5)
    assert fixed.port == fixed_port
    assert sorted(f.port for f in server.forwards) == sorted([dynamic.port, fixed_port])
    server.delay_replies()
    started = pair.reactor.seconds()
    pair.run(t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9))
    assert pair.reactor.seconds() == started
    pair.run(t.logoff())


class OpenedChannel(SSHChannel):
    name = b"session"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.failed: Deferred[float] = Deferred()

    @override
    def openFailed(self, reason: Any) -> None:
        import time

        self.failed.callback(time.monotonic())


@pytest_twisted.ensureDeferred
async def test_delay_replies_to_channel_opens(server, client) -> None:
    import time

    server.delay_replies(channel_opens=0.4)
    channel = OpenedChannel(conn=conn_of(client))
    started = time.monotonic()
    conn_of(client).openChannel(channel)
    refused_at = await channel.failed.addTimeout(TIMEOUT, reactor)
    assert refused_at - started >= 0.4
    with pytest.raises(ValueError):
        server.delay_replies(-1)


@pytest_twisted.ensureDeferred
async def test_plugin_fault_proxy_fixture(
    ssh_test_server, ssh_fault_proxy, ssh_client_key, ssh_user, tmp_path
) -> None:
    from rtunnel import (
        ConnectionLostError,
        PrivateKeyFile,
        ReconnectPolicy,
        ReverseTunnel,
        TunnelOptions,
    )

    known_hosts = ssh_test_server.write_known_hosts(
        tmp_path / "known_hosts", port=ssh_fault_proxy.port
    )
    assert known_hosts.read_text().startswith(f"[127.0.0.1]:{ssh_fault_proxy.port} ssh-ed25519 ")
    t = ReverseTunnel(
        reactor,
        ssh_fault_proxy.host,
        ssh_fault_proxy.port,
        options=TunnelOptions.create(
            user=ssh_user,
            auth=[PrivateKeyFile(ssh_client_key)],
            known_hosts=known_hosts,
            reconnect=ReconnectPolicy.off(),
        ),
    )
    await t.logon()
    ended: list[Any] = []
    t.when_disconnected().addErrback(ended.append)
    assert ssh_fault_proxy.connections == 1 and ssh_test_server.connections == 1
    ssh_fault_proxy.reset()
    await until(lambda: bool(ended))
    assert ended[0].check(ConnectionLostError)
    await ssh_test_server.wait_for_connections(0).addTimeout(TIMEOUT, reactor)
