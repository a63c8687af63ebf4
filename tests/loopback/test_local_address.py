"""
Where rtunnel's connections come from: ``local_host`` / ``local_port`` (the reference's
LocalHost and LocalPort, OpenSSH's ``BindAddress``) for the connection to the server, and
``forwarding_local_host`` (ForwardingLocalHost) for the connections to targets, against
the bundled server and a real sshd. Linux routes all of 127.0.0.0/8 to loopback, so
127.0.0.2 and 127.0.0.3 are addresses of this machine a test can bind to.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from e2e_support import Server
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from rtunnel import ConnectError, ReverseTunnel, SpecError, TunnelOptions


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _PeerRecorder(Protocol):
    """A target that says which address the connection came from, and closes."""

    def connectionMade(self) -> None:  # noqa: N802 (Protocol)
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.transport.write(f"{peer.host}\n".encode())  # type: ignore[attr-defined]
        self.transport.loseConnection()


@pytest.fixture
def peer_target() -> Iterator[int]:
    from twisted.internet import reactor

    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(_PeerRecorder), interface="127.0.0.1"
    )
    yield port.getHost().port
    port.stopListening()


def _read_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(100)
            if not chunk:
                break
            data += chunk
        return data


@pytest_twisted.ensureDeferred
async def test_the_connection_and_targets_come_from_the_addresses_given(
    server: Server, peer_target: int
) -> None:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    local_port = _free_port("127.0.0.2")
    tunnel = server.tunnel(
        local_host="127.0.0.2", local_port=local_port, forwarding_local_host="127.0.0.3"
    )
    assert tunnel.local_address is None
    await tunnel.logon()
    try:
        assert tunnel.local_address == ("127.0.0.2", local_port)
        if server.kind == "openssh":
            # sshd's own record of where the connection came from (its log, sshd.c).
            log = server.extra["server"].log_text()
            assert f"Connection from 127.0.0.2 port {local_port}" in log
        forward = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", peer_target)
        line = await deferToThread(_read_line, forward.port)
        assert line == b"127.0.0.3\n"
    finally:
        await tunnel.logoff()
    await deferLater(reactor, 0, lambda: None)
    assert tunnel.local_address is None


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_local_address_not_of_this_machine_is_a_clear_connect_error(
    server: Server,
) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no machine has it.
    tunnel = server.tunnel(local_host="192.0.2.1")
    with pytest.raises(ConnectError) as info:
        await tunnel.logon()
    message = str(info.value)
    assert f"connect to host {server.host} port {server.port}" in message
    assert "cannot use local address 192.0.2.1" in message
    assert "Cannot assign requested address" in message


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_local_port_in_use_is_a_clear_connect_error(server: Server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        tunnel = server.tunnel(local_host="127.0.0.1", local_port=port)
        with pytest.raises(ConnectError) as info:
            await tunnel.logon()
    assert f"cannot use local address 127.0.0.1 port {port}" in str(info.value)
    assert "Address already in use" in str(info.value)


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_bad_local_port_is_a_spec_error(port: int) -> None:
    from twisted.internet import reactor

    with pytest.raises(SpecError, match="local_port"):
        ReverseTunnel(reactor, "h", options=TunnelOptions.create(local_port=port))
