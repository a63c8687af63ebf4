"""
:func:`rtunnel.client.reach.proxy.proxy_endpoint`:

- in memory (``MemoryReactorClock`` + ``StringTransport``): the order in which the caller's
  protocol is connected, bytes that share a read with the proxy's reply, the timeout in
  each phase, cancelling, SOCKS4 name resolution, a proxy that sends garbage;
- through REAL proxy servers on 127.0.0.1 (``rtunnel.testing._proxyservers``): Dante
  (SOCKS4, SOCKS5, SOCKS5 username/password against a throwaway local account),
  OpenSSH's ``ssh -D`` (SOCKS4A), microsocks (SOCKS5 username/password) and tinyproxy
  (HTTP CONNECT, Basic authentication), to a real OpenSSH ``sshd`` whose version line is
  read through the tunnel; their refusals, a closed proxy port, a silent proxy;
- a few details no real proxy here can show, against small in-test fakes (labelled FAKE):
  the extra headers arriving, a proxy that closes mid-handshake, ``bind_address``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import HostnameAddress, IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, NoProtocol
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface.verify import verifyObject

from rtunnel.client.reach.proxy import Proxy, proxy_endpoint
from rtunnel.errors import ProxyAuthenticationError, ProxyError, SpecError
from rtunnel.testing._openssh import OpenSSHServer
from rtunnel.testing._proxyservers import (
    DanteServer,
    LocalAccount,
    MicroSocks,
    ProxyServerError,
    SSHDynamicForward,
    TinyProxy,
    find_program,
    throwaway_account,
)

_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"


class _Recorder(Protocol):
    """The caller's protocol: records what happens to it, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.data = b""
        self.line: Deferred[bytes] = Deferred()

    @override
    def connectionMade(self) -> None:
        self.events.append(("connectionMade", self.transport))

    @override
    def dataReceived(self, data: bytes) -> None:
        self.events.append(("dataReceived", data))
        self.data += data
        if b"\n" in self.data and not self.line.called:
            self.line.callback(self.data.split(b"\n")[0])

    @override
    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.events.append(("connectionLost", reason))


class _RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[_Recorder] = []
        self.addresses: list[object] = []

    @override
    def buildProtocol(self, addr: Any) -> _Recorder:
        self.addresses.append(addr)
        self.built.append(_Recorder())
        return self.built[-1]


# -- in memory -------------------------------------------------------------------------------


class _Reactor(MemoryReactorClock):
    """A memory reactor whose ``resolve`` answers from a Deferred the test controls."""

    def __init__(self) -> None:
        super().__init__()
        self.resolving: list[tuple[str, Deferred[str]]] = []

    def resolve(self, name: str, timeout: object = None) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.resolving.append((name, d))
        return d


def _connect(
    proxy: Proxy, host: str = "ssh.example", port: int = 22, timeout: float = 5.0
) -> tuple[_Reactor, _RecorderFactory, Deferred[Any]]:
    memory = _Reactor()
    factory = _RecorderFactory()
    endpoint = proxy_endpoint(memory, proxy, host, port, timeout)
    return memory, factory, endpoint.connect(factory)


def _accept(memory: _Reactor, index: int = 0) -> tuple[Protocol, StringTransport]:
    """Complete the ``index``-th TCP connect: the proxy accepted."""
    host, port, factory, _, _ = memory.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def _error(d: Deferred[Any], kind: type[BaseException]) -> BaseException:
    result = _result(d)
    assert isinstance(result, Failure), result
    assert result.check(kind), result
    return result.value


def test_endpoint_interface() -> None:
    endpoint = proxy_endpoint(MemoryReactorClock(), Proxy("socks5", "p"), "h", 22, 1.0)
    assert verifyObject(IStreamClientEndpoint, endpoint)


def test_reply_and_server_bytes_in_one_read_are_not_lost() -> None:
    memory, factory, d = _connect(Proxy("socks5", "127.0.0.1", 1080))
    assert memory.tcpClients[0][:2] == ("127.0.0.1", 1080)
    protocol, transport = _accept(memory)
    assert transport.value() == b"\x05\x01\x00"
    transport.clear()
    protocol.dataReceived(b"\x05\x00")
    assert transport.value() == b"\x05\x01\x00\x03\x0bssh.example\x00\x16"
    assert not d.called and not factory.built
    # The CONNECT reply and the SSH server's version line in the same read.
    protocol.dataReceived(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x16" + _BANNER[:10])
    wrapped = _result(d)
    assert factory.built == [wrapped]
    assert factory.addresses == [HostnameAddress(b"ssh.example", 22)]
    # makeConnection on the same TCP transport, then the leftover, before anything else.
    assert wrapped.events == [("connectionMade", transport), ("dataReceived", _BANNER[:10])]
    protocol.dataReceived(_BANNER[10:])
    assert wrapped.data == _BANNER
    # Writes go straight to the TCP connection.
    wrapped.transport.write(b"SSH-2.0-rtunnel\r\n")
    assert transport.value().endswith(b"SSH-2.0-rtunnel\r\n")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert wrapped.events[-1][0] == "connectionLost"
    assert memory.getDelayedCalls() == []


def test_no_leftover_no_data_call() -> None:
    memory, _, d = _connect(Proxy("http", "127.0.0.1", 3128))
    protocol, transport = _accept(memory)
    assert transport.value() == b"CONNECT ssh.example:22 HTTP/1.1\r\nHost: ssh.example:22\r\n\r\n"
    protocol.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n")
    wrapped = _result(d)
    assert [name for name, _ in wrapped.events] == ["connectionMade"]


def test_timeout_during_the_handshake_aborts_and_names_the_proxy() -> None:
    memory, factory, d = _connect(Proxy("socks5", "127.0.0.1", 1080), timeout=5)
    protocol, transport = _accept(memory)
    memory.advance(4.9)
    assert not d.called
    memory.advance(0.1)
    e = _error(d, ProxyError)
    assert str(e) == "socks5 proxy 127.0.0.1:1080: the proxy did not answer in 5 s"
    assert transport.disconnecting
    assert not factory.built
    assert memory.getDelayedCalls() == []
    # The abort's connectionLost, and anything late, change nothing.
    protocol.dataReceived(b"\x05\x00")
    protocol.connectionLost(Failure(ConnectionLost()))


def test_timeout_during_the_tcp_connect() -> None:
    memory, _, d = _connect(Proxy("http", "127.0.0.1", 8080), timeout=2.5)
    memory.advance(2.5)
    e = _error(d, ProxyError)
    assert str(e) == (
        "connect to http proxy 127.0.0.1 port 8080: Connection timed out (no connection in 2.5 s)"
    )
    assert memory.connectors[0].stoppedConnecting
    assert memory.getDelayedCalls() == []


def test_timeout_while_resolving_for_socks4() -> None:
    memory, _, d = _connect(Proxy("socks4", "127.0.0.1"), host="slow.example", timeout=3)
    assert [name for name, _ in memory.resolving] == ["slow.example"]
    memory.advance(3)
    e = _error(d, ProxyError)
    assert str(e) == "socks4 proxy 127.0.0.1:1080: could not resolve slow.example in 3 s"
    # The resolver answering late does no harm.
    memory.resolving[0][1].callback("10.0.0.1")
    assert memory.tcpClients == []


def test_cancel_during_the_handshake_aborts() -> None:
    memory, factory, d = _connect(Proxy("socks4a", "127.0.0.1"))
    protocol, transport = _accept(memory)
    d.cancel()
    _error(d, CancelledError)
    assert transport.disconnecting
    assert memory.getDelayedCalls() == []
    protocol.connectionLost(Failure(ConnectionLost()))
    assert not factory.built


def test_cancel_during_the_tcp_connect_and_while_resolving() -> None:
    memory, _, d = _connect(Proxy("socks5", "127.0.0.1"))
    d.cancel()
    _error(d, CancelledError)
    assert memory.connectors[0].stoppedConnecting
    assert memory.getDelayedCalls() == []
    memory, _, d = _connect(Proxy("socks4", "127.0.0.1"), host="name.example")
    d.cancel()
    _error(d, CancelledError)
    memory.resolving[0][1].callback("10.0.0.1")
    assert memory.tcpClients == [] and memory.getDelayedCalls() == []


def test_socks4_resolves_a_name_itself() -> None:
    memory, _, d = _connect(Proxy("socks4", "127.0.0.1", 1080, "me"), host="name.example")
    assert memory.tcpClients == []
    memory.resolving[0][1].callback("192.0.2.9")
    protocol, transport = _accept(memory)
    assert transport.value() == b"\x04\x01\x00\x16\xc0\x00\x02\x09me\x00"
    protocol.dataReceived(b"\x00\x5a" + bytes(6))
    assert isinstance(_result(d), _Recorder)


def test_socks4_resolution_failures() -> None:
    memory, _, d = _connect(Proxy("socks4", "127.0.0.1"), host="nowhere.example")
    memory.resolving[0][1].errback(Failure(OSError("Name or service not known")))
    e = _error(d, ProxyError)
    assert str(e) == (
        "socks4 proxy 127.0.0.1:1080: could not resolve nowhere.example to an IPv4 address, "
        "which SOCKS4 needs (Name or service not known); socks4a and socks5 let the proxy "
        "resolve it"
    )
    assert memory.tcpClients == []
    memory, _, d = _connect(Proxy("socks4", "127.0.0.1"), host="::1")
    e = _error(d, ProxyError)
    assert str(e) == (
        "socks4 proxy 127.0.0.1:1080: SOCKS4 cannot reach the IPv6 address ::1; use a socks5 "
        "(or http) proxy"
    )
    assert memory.resolving == [] and memory.tcpClients == []
    assert memory.getDelayedCalls() == []


def test_socks4_ipv4_literal_is_not_resolved() -> None:
    memory, _, _ = _connect(Proxy("socks4", "127.0.0.1"), host="10.9.8.7")
    assert memory.resolving == []
    _, transport = _accept(memory)
    assert transport.value() == b"\x04\x01\x00\x16\x0a\x09\x08\x07\x00"


@pytest.mark.parametrize(
    ("proxy", "replies", "kind", "message"),
    [
        (
            Proxy("socks5", "127.0.0.1"),
            [b"HTTP/1.1 400 Bad Request\r\n\r\n"],
            ProxyError,
            'socks5 proxy 127.0.0.1:1080: not a SOCKS5 reply: it starts "HTTP/1.1 400 Bad"',
        ),
        (
            Proxy("socks5", "127.0.0.1"),
            [b"\x05\x00", b"\x05\x04"],
            ProxyError,
            "socks5 proxy 127.0.0.1:1080 would not connect to ssh.example port 22: Host "
            "unreachable (SOCKS5 reply 4)",
        ),
        (
            Proxy("socks5", "127.0.0.1", 0, "u", "p"),
            [b"\x05\x02", b"\x01\x01"],
            ProxyAuthenticationError,
            "socks5 proxy 127.0.0.1:1080: the proxy refused the user name and password "
            "(RFC 1929 status 1)",
        ),
        (
            Proxy("socks4a", "127.0.0.1"),
            [b"\x00\x5d" + bytes(6)],
            ProxyError,
            "socks4a proxy 127.0.0.1:1080 would not connect to ssh.example port 22: request "
            "rejected because the client program and identd report different user-ids "
            "(SOCKS4 reply 93)",
        ),
        (
            Proxy("http", "127.0.0.1"),
            [b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"],
            ProxyAuthenticationError,
            "http proxy 127.0.0.1:80: the proxy requires authentication: give a user name and "
            'password (answer "HTTP/1.1 407 Proxy Authentication Required")',
        ),
        (
            Proxy("http", "127.0.0.1"),
            [b"HTTP/1.1 502 Bad \x1b[1mGateway\r\n\r\n"],
            ProxyError,
            "http proxy 127.0.0.1:80 would not connect to ssh.example port 22: the proxy "
            'answered "HTTP/1.1 502 Bad \\x1b[1mGateway"',
        ),
    ],
)
def test_refusals_and_garbage_fail_without_raising(
    proxy: Proxy, replies: list[bytes], kind: type[ProxyError], message: str
) -> None:
    memory, factory, d = _connect(proxy)
    protocol, transport = _accept(memory)
    for reply in replies:
        protocol.dataReceived(reply)  # never raises
    e = _error(d, kind)
    assert type(e) is kind
    assert str(e) == message
    assert e.code == 1036
    assert transport.disconnecting
    protocol.dataReceived(b"more")  # ignored after the failure
    assert not factory.built and memory.getDelayedCalls() == []


class _Broken:
    """A handshake that fails in a way it should not (a bug), to check the guard."""

    def receive(self, data: bytes) -> None:
        raise RuntimeError("bug")


def test_a_bug_in_the_parser_does_not_raise_out_of_data_received() -> None:
    memory, factory, d = _connect(Proxy("socks5", "127.0.0.1"))
    protocol, transport = _accept(memory)
    # Under the endpoint's wrapper (Twisted's _WrappingProtocol) is the handshake protocol.
    protocol._wrappedProtocol._handshake = _Broken()  # type: ignore[attr-defined]
    protocol.dataReceived(b"\x05\x00")
    e = _error(d, ProxyError)
    assert str(e) == ("socks5 proxy 127.0.0.1:1080: could not read its reply (RuntimeError('bug'))")
    assert transport.disconnecting and not factory.built


def test_proxy_closing_or_resetting_during_the_handshake() -> None:
    memory, _, d = _connect(Proxy("socks5", "127.0.0.1"))
    protocol, _ = _accept(memory)
    protocol.dataReceived(b"\x05")
    protocol.connectionLost(Failure(ConnectionDone()))
    e = _error(d, ProxyError)
    assert str(e) == (
        "socks5 proxy 127.0.0.1:1080: the proxy closed the connection during the handshake"
    )
    memory, _, d = _connect(Proxy("http", "127.0.0.1"))
    protocol, _ = _accept(memory)
    protocol.connectionLost(Failure(ConnectionLost("Connection reset by peer")))
    e = _error(d, ProxyError)
    assert str(e).startswith(
        "http proxy 127.0.0.1:80: the connection to the proxy was lost during the handshake: "
    )
    assert "Connection reset by peer" in str(e)


class _NoProtocolFactory(Factory):
    @override
    def buildProtocol(self, addr: Any) -> None:
        return None


def test_factory_refusing_a_protocol_aborts() -> None:
    memory = _Reactor()
    endpoint = proxy_endpoint(memory, Proxy("socks4", "127.0.0.1"), "10.0.0.1", 22, 5)
    d = endpoint.connect(_NoProtocolFactory())
    protocol, transport = _accept(memory)
    protocol.dataReceived(b"\x00\x5a" + bytes(6))
    _error(d, NoProtocol)
    assert transport.disconnecting


def test_clock_parameter_drives_the_timeout() -> None:
    memory = _Reactor()
    clock = MemoryReactorClock()
    endpoint = proxy_endpoint(memory, Proxy("socks5", "127.0.0.1"), "h", 22, 1, clock=clock)
    d = endpoint.connect(_RecorderFactory())
    memory.advance(10)
    assert not d.called
    clock.advance(1)
    _error(d, ProxyError)


@pytest.mark.parametrize(
    ("host", "port", "timeout", "message"),
    [
        ("a" * 256, 22, 5.0, "must be 1 to 255 bytes"),
        ("h", 0, 5.0, "destination port must be 1 to 65535"),
        ("h", 65536, 5.0, "destination port must be 1 to 65535"),
        ("h", 22, 0.0, "timeout must be more than 0"),
    ],
)
def test_endpoint_argument_errors(host: str, port: int, timeout: float, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        proxy_endpoint(MemoryReactorClock(), Proxy("socks5", "p"), host, port, timeout)


# -- real proxy servers ----------------------------------------------------------------------


def _need(program: str, package: str) -> None:
    if find_program(program) is not None:
        return
    message = f"{program} not found: install it with `apt-get install -y {package}`"
    if os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}:
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def sshd(
    tmp_path_factory: pytest.TempPathFactory, openssh_sshd: str, openssh_client_key: Path
) -> Iterator[OpenSSHServer]:
    """The real destination (and the server ``ssh -D`` logs in to)."""
    public = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text()
    server = OpenSSHServer(
        tmp_path_factory.mktemp("proxy-sshd"), authorized_keys=[public], sshd_path=openssh_sshd
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A port nothing listens on (and Dante's block rule names)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def account() -> Iterator[LocalAccount]:
    try:
        with throwaway_account() as made:
            yield made
    except ProxyServerError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory, closed_port: int) -> Iterator[DanteServer]:
    _need("danted", "dante-server")
    # "username none": SOCKS5 clients offering username/password must authenticate;
    # SOCKS4 and SOCKS5 clients without credentials take "none".
    methods = ("username", "none") if os.geteuid() == 0 else ("none",)
    with DanteServer(
        tmp_path_factory.mktemp("dante"), socks_methods=methods, blocked_ports=[closed_port]
    ) as server:
        yield server


@pytest.fixture(scope="module")
def ssh_socks(
    tmp_path_factory: pytest.TempPathFactory, sshd: OpenSSHServer, openssh_client_key: Path
) -> Iterator[SSHDynamicForward]:
    with SSHDynamicForward(tmp_path_factory.mktemp("ssh-d"), sshd, openssh_client_key) as server:
        yield server


@pytest.fixture(scope="module")
def microsocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MicroSocks]:
    _need("microsocks", "microsocks")
    with MicroSocks(tmp_path_factory.mktemp("microsocks"), user="alice", password="s3cr:t") as s:
        yield s


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory, sshd: OpenSSHServer) -> Iterator[TinyProxy]:
    _need("tinyproxy", "tinyproxy")
    # Only the SSH port may be reached: any other CONNECT is refused with 403.
    with TinyProxy(tmp_path_factory.mktemp("tinyproxy"), connect_ports=[sshd.port]) as server:
        yield server


@pytest.fixture(scope="module")
def tinyproxy_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    _need("tinyproxy", "tinyproxy")
    with TinyProxy(
        tmp_path_factory.mktemp("tinyproxy-auth"), basic_auth=("alice", "0pen-sesame")
    ) as server:
        yield server


async def _banner(proxy: Proxy, host: str, port: int, timeout: float = 10.0) -> bytes:
    factory = _RecorderFactory()
    protocol = await proxy_endpoint(reactor, proxy, host, port, timeout).connect(factory)
    assert factory.built == [protocol]
    try:
        return await protocol.line.addTimeout(timeout, reactor)
    finally:
        protocol.transport.loseConnection()


def _wait_for(read: Any, text: str, timeout: float = 5.0) -> str:
    # A daemon may log a line just after the client saw the result.
    deadline = time.monotonic() + timeout
    while True:
        log: str = read()
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("kind", "host"),
    [
        ("socks4", "127.0.0.1"),
        ("socks4", "localhost"),
        ("socks5", "127.0.0.1"),
        ("socks5", "localhost"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_dante(dante: DanteServer, sshd: OpenSSHServer, kind: str, host: str) -> None:
    line = await _banner(Proxy(kind, dante.host, dante.port), host, sshd.port)
    assert line.startswith(b"SSH-2.0-OpenSSH")
    # Dante logs each connection it passed (after resolving a name it was sent).
    passed = f"127.0.0.1.{sshd.port}"
    assert passed in _wait_for(dante.log_text, passed)


@pytest.mark.parametrize(
    ("kind", "host"),
    [
        ("socks4a", "localhost"),
        ("socks4a", "127.0.0.1"),
        ("socks5", "localhost"),
        ("socks4", "localhost"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_openssh_dynamic_forward(
    ssh_socks: SSHDynamicForward, sshd: OpenSSHServer, kind: str, host: str
) -> None:
    # OpenSSH's ssh -D (channels.c) implements SOCKS4A, which Dante 1.4.2 does not.
    line = await _banner(Proxy(kind, ssh_socks.host, ssh_socks.port), host, sshd.port)
    assert line.startswith(b"SSH-2.0-OpenSSH")
    # sshd logs the direct-tcpip target ssh asked for: the name itself for SOCKS4A.
    target = "127.0.0.1" if kind == "socks4" else host
    expected = f"target {target} port {sshd.port}"
    assert expected in _wait_for(sshd.log_text, expected)


@pytest_twisted.ensureDeferred
async def test_socks5_username_password_microsocks(
    microsocks: MicroSocks, sshd: OpenSSHServer
) -> None:
    good = Proxy("socks5", microsocks.host, microsocks.port, "alice", "s3cr:t")
    assert (await _banner(good, "localhost", sshd.port)).startswith(b"SSH-2.0-OpenSSH")
    bad = Proxy("socks5", microsocks.host, microsocks.port, "alice", "wrong")
    with pytest.raises(ProxyAuthenticationError) as e:
        await _banner(bad, "localhost", sshd.port)
    assert str(e.value) == (
        f"socks5 proxy 127.0.0.1:{microsocks.port}: the proxy refused the user name and "
        f"password (RFC 1929 status 2)"
    )
    none = Proxy("socks5", microsocks.host, microsocks.port)
    with pytest.raises(ProxyAuthenticationError) as e:
        await _banner(none, "localhost", sshd.port)
    assert str(e.value) == (
        f"socks5 proxy 127.0.0.1:{microsocks.port}: the proxy accepts none of the offered "
        f"authentication methods (offered only no authentication: give a user name and "
        f"password)"
    )


@pytest_twisted.ensureDeferred
async def test_socks5_username_password_dante(
    dante: DanteServer, account: LocalAccount, sshd: OpenSSHServer
) -> None:
    good = Proxy("socks5", dante.host, dante.port, account.name, account.password)
    assert (await _banner(good, "127.0.0.1", sshd.port)).startswith(b"SSH-2.0-OpenSSH")
    bad = Proxy("socks5", dante.host, dante.port, account.name, "not-" + account.password)
    with pytest.raises(
        ProxyAuthenticationError, match=r"refused the user name and password \(RFC 1929 status 1\)"
    ):
        await _banner(bad, "127.0.0.1", sshd.port)


@pytest_twisted.ensureDeferred
async def test_http_connect_tinyproxy(tinyproxy: TinyProxy, sshd: OpenSSHServer) -> None:
    for host in ("127.0.0.1", "localhost"):
        line = await _banner(Proxy("http", tinyproxy.host, tinyproxy.port), host, sshd.port)
        assert line.startswith(b"SSH-2.0-OpenSSH")
    expected = f"CONNECT localhost:{sshd.port} HTTP/1.1"
    assert expected in _wait_for(tinyproxy.log_text, expected)


@pytest_twisted.ensureDeferred
async def test_http_basic_auth_tinyproxy(tinyproxy_auth: TinyProxy, sshd: OpenSSHServer) -> None:
    where = f"http proxy 127.0.0.1:{tinyproxy_auth.port}"
    good = Proxy("http", tinyproxy_auth.host, tinyproxy_auth.port, "alice", "0pen-sesame")
    assert (await _banner(good, "127.0.0.1", sshd.port)).startswith(b"SSH-2.0-OpenSSH")
    with pytest.raises(ProxyAuthenticationError) as e:
        await _banner(
            Proxy("http", tinyproxy_auth.host, tinyproxy_auth.port), "127.0.0.1", sshd.port
        )
    assert str(e.value) == (
        f"{where}: the proxy requires authentication: give a user name and password (answer "
        f'"HTTP/1.0 407 Proxy Authentication Required")'
    )
    bad = Proxy("http", tinyproxy_auth.host, tinyproxy_auth.port, "alice", "wrong")
    with pytest.raises(ProxyAuthenticationError) as e:
        await _banner(bad, "127.0.0.1", sshd.port)
    # tinyproxy 1.11.1 says 401 to wrong credentials.
    assert str(e.value) == (
        f'{where}: the proxy refused the user name and password (answer "HTTP/1.0 401 '
        f'Unauthorized")'
    )


@pytest_twisted.ensureDeferred
async def test_refusals_from_real_proxies(
    dante: DanteServer, tinyproxy: TinyProxy, closed_port: int, sshd: OpenSSHServer
) -> None:
    # Dante's "socks block" rule for closed_port.
    socks5 = Proxy("socks5", dante.host, dante.port)
    with pytest.raises(ProxyError) as e:
        await _banner(socks5, "127.0.0.1", closed_port)
    assert str(e.value) == (
        f"socks5 proxy 127.0.0.1:{dante.port} would not connect to 127.0.0.1 port "
        f"{closed_port}: connection not allowed by ruleset (SOCKS5 reply 2)"
    )
    socks4 = Proxy("socks4", dante.host, dante.port)
    with pytest.raises(ProxyError) as e:
        await _banner(socks4, "127.0.0.1", closed_port)
    assert str(e.value) == (
        f"socks4 proxy 127.0.0.1:{dante.port} would not connect to 127.0.0.1 port "
        f"{closed_port}: request rejected or failed (SOCKS4 reply 91)"
    )
    # Allowed, but nothing listens there: Dante's own connect is refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    with pytest.raises(ProxyError, match=r"Connection refused \(SOCKS5 reply 5\)$"):
        await _banner(socks5, "127.0.0.1", unused)
    # tinyproxy's ConnectPort allows only the SSH port.
    http = Proxy("http", tinyproxy.host, tinyproxy.port)
    with pytest.raises(ProxyError) as e:
        await _banner(http, "127.0.0.1", closed_port)
    assert type(e.value) is ProxyError
    assert str(e.value) == (
        f"http proxy 127.0.0.1:{tinyproxy.port} would not connect to 127.0.0.1 port "
        f'{closed_port}: the proxy answered "HTTP/1.1 403 Access violation"'
    )


@pytest_twisted.ensureDeferred
async def test_proxy_port_closed(closed_port: int) -> None:
    proxy = Proxy("socks5", "127.0.0.1", closed_port)
    with pytest.raises(ProxyError) as e:
        await _banner(proxy, "ssh.example", 22)
    assert (
        str(e.value) == f"connect to socks5 proxy 127.0.0.1 port {closed_port}: Connection refused"
    )


@pytest_twisted.ensureDeferred
async def test_silent_proxy_times_out() -> None:
    # The kernel completes the TCP handshake for a listening socket nobody accepts on:
    # a proxy that is there and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ProxyError) as e:
            await _banner(Proxy("http", "127.0.0.1", port), "ssh.example", 22, timeout=0.4)
        elapsed = time.monotonic() - started
    assert str(e.value) == f"http proxy 127.0.0.1:{port}: the proxy did not answer in 0.4 s"
    assert 0.35 < elapsed < 5


# -- against small in-test fakes -------------------------------------------------------------


class _FakeProxy(Protocol):
    """FAKE HTTP proxy: records the request head, then does what the test says."""

    def __init__(self, server: _FakeServer) -> None:
        self.server = server
        self.head = b""

    @override
    def connectionMade(self) -> None:
        self.server.connected.append(self)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.server.peers.append((peer.host, peer.port))

    @override
    def dataReceived(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and not self.server.heads.called:
            self.server.heads.callback(self.head)
            if self.server.answer is not None:
                self.transport.write(self.server.answer)  # type: ignore[union-attr]
            if self.server.close:
                self.transport.loseConnection()  # type: ignore[union-attr]

    @override
    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.server.lost_reasons.append(reason)
        self.server.lost.callback(None)


class _FakeServer(Factory):
    def __init__(self, answer: bytes | None, close: bool = False) -> None:
        self.answer = answer
        self.close = close
        self.connected: list[_FakeProxy] = []
        self.peers: list[tuple[str, int]] = []
        self.heads: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.lost_reasons: list[Failure] = []

    @override
    def buildProtocol(self, addr: Any) -> _FakeProxy:
        return _FakeProxy(self)


async def _listen(server: _FakeServer) -> IListeningPort:
    port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        server
    )
    return port


@pytest_twisted.ensureDeferred
async def test_fake_http_proxy_receives_extra_headers_and_leftover_arrives() -> None:
    # FAKE proxy: tinyproxy does not show the headers it received. The 200 and the
    # "server's" version line leave in one write.
    server = _FakeServer(b"HTTP/1.1 200 OK\r\nVia: fake\r\n\r\n" + _BANNER)
    listening = await _listen(server)
    try:
        proxy = Proxy(
            "http",
            "127.0.0.1",
            listening.getHost().port,  # type: ignore[attr-defined]
            "bob",
            "pw",
            (("X-Auth-Token", "t0k3n"), ("User-Agent", "rtunnel-test")),
        )
        line = await _banner(proxy, "ssh.example", 2222)
        assert line + b"\n" == _BANNER
        assert await server.heads == (
            b"CONNECT ssh.example:2222 HTTP/1.1\r\nHost: ssh.example:2222\r\n"
            b"Proxy-Authorization: Basic Ym9iOnB3\r\nX-Auth-Token: t0k3n\r\n"
            b"User-Agent: rtunnel-test\r\n\r\n"
        )
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_fake_proxy_closing_mid_handshake() -> None:
    server = _FakeServer(b"HTTP/1.1 200 Conn", close=True)
    listening = await _listen(server)
    try:
        port = listening.getHost().port  # type: ignore[attr-defined]
        with pytest.raises(ProxyError) as e:
            await _banner(Proxy("http", "127.0.0.1", port), "ssh.example", 22)
        assert str(e.value) == (
            f"http proxy 127.0.0.1:{port}: the proxy closed the connection during the handshake"
        )
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancel_aborts_the_real_connection() -> None:
    server = _FakeServer(None)
    listening = await _listen(server)
    try:
        port = listening.getHost().port  # type: ignore[attr-defined]
        factory = _RecorderFactory()
        connecting = proxy_endpoint(reactor, Proxy("http", "127.0.0.1", port), "h", 22, 10).connect(
            factory
        )
        await server.heads  # connected, request sent, no answer
        connecting.cancel()
        with pytest.raises(CancelledError):
            await connecting
        await server.lost.addTimeout(5, reactor)
        # Aborted, not closed: the proxy sees a reset.
        assert server.lost_reasons[0].check(ConnectionLost)
        assert not factory.built
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_bind_address() -> None:
    server = _FakeServer(b"HTTP/1.1 200 OK\r\n\r\n" + _BANNER)
    listening = await _listen(server)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local_port = s.getsockname()[1]
    try:
        port = listening.getHost().port  # type: ignore[attr-defined]
        endpoint = proxy_endpoint(
            reactor, Proxy("http", "127.0.0.1", port), "h", 22, 5, ("127.0.0.1", local_port)
        )
        protocol = await endpoint.connect(_RecorderFactory())
        await protocol.line
        protocol.transport.loseConnection()
        assert server.peers == [("127.0.0.1", local_port)]
    finally:
        await listening.stopListening()
