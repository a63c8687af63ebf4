"""
How to test your own code that opens SSH reverse tunnels, with the pytest fixtures rtunnel
installs (``pip install 'rtunnel[test]'``: pytest and pytest-twisted; the fixtures load
by themselves through rtunnel's pytest plugin)::

    python -m pytest examples/test_with_fixtures.py

``ssh_test_server``
    a real SSH server in the test process (:class:`rtunnel.testing.SSHTestServer`), on
    127.0.0.1 and a free port, that implements the server side of ``ssh -R``;
``ssh_client_key``
    a private key file its user may log on with;
``ssh_known_hosts``
    a known_hosts file that holds its host key;
``ssh_user``
    that user's name.

The code under test here is :func:`publish`, the kind of function an application has.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel import (
    ChannelOpenRequest,
    Forward,
    HostKeyError,
    PrivateKeyFile,
    ReverseTunnel,
    TunnelOptions,
)
from rtunnel.testing import SSHTestServer

TIMEOUT = 20.0

# -- the code under test ---------------------------------------------------------------


async def publish(
    tunnel: ReverseTunnel, local_port: int, allowed_origin: str | None = None
) -> Forward:
    """
    Log ``tunnel`` on and publish the local service on ``local_port`` on the SSH server
    (on a port the server picks). With ``allowed_origin``, only connections from that
    address are let through.
    """

    def accept(request: ChannelOpenRequest) -> bool:
        return allowed_origin is None or request.origin_address == allowed_origin

    await tunnel.logon()
    return await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", local_port, accept=accept)


# -- helpers for the tests -------------------------------------------------------------


class Echo(Protocol):
    """The local service being published."""

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Client(Protocol):
    """A client of the published service, as someone on the SSH server's side would be."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


def start_local_service() -> IListeningPort:
    """Start the :class:`Echo` service on 127.0.0.1, on a free port."""
    factory = cast(ServerFactory, ServerFactory.forProtocol(Echo))  # typed as a Factory
    return cast(IReactorTCP, reactor).listenTCP(0, factory, interface="127.0.0.1")


def make_tunnel(server: SSHTestServer, user: str, key: Path, known_hosts: Path) -> ReverseTunnel:
    """A tunnel to the fixture's server."""
    return ReverseTunnel(
        cast(IReactorTCP, reactor),
        server.host,
        server.port,
        options=TunnelOptions.create(
            user=user, auth=[PrivateKeyFile(key)], known_hosts=known_hosts
        ),
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll a zero-argument callable until it is true (at most :data:`TIMEOUT` s)."""
    from twisted.internet.task import deferLater

    clock = cast(IReactorTime, reactor)
    for _ in range(int(TIMEOUT / 0.01)):
        if condition():
            return
        await deferLater(clock, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


# -- the tests -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_published_service_is_reachable(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, ssh_known_hosts: Path, ssh_user: str
) -> None:
    local = start_local_service()
    tunnel = make_tunnel(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts)
    try:
        forward = await publish(tunnel, local.getHost().port)  # type: ignore[attr-defined]
        # The server really listens where the tunnel says it does.
        assert await ssh_test_server.wait_for_forward("127.0.0.1") == forward.port

        client = Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", forward.port), client)
        assert client.transport is not None
        client.transport.write(b"ping")
        await until(lambda: client.received == b"ping", "the echo")
        # The tunnel's channel table shows the connection and where it came from.
        [channel] = tunnel.channels
        assert channel.origin_address == "127.0.0.1"
        assert channel.forwarding_port == local.getHost().port  # type: ignore[attr-defined]
        client.transport.loseConnection()
        await client.closed
        await until(lambda: not tunnel.channels, "the channel to close")
        assert channel.bytes_received == channel.bytes_sent == 4
    finally:
        await tunnel.logoff()
        await maybeDeferred(local.stopListening)
    # Logging off cancelled the forward on the server.
    await ssh_test_server.wait_for_forward_closed("127.0.0.1", forward.port)


@pytest_twisted.ensureDeferred
async def test_other_origins_are_refused(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, ssh_known_hosts: Path, ssh_user: str
) -> None:
    local = start_local_service()
    tunnel = make_tunnel(ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts)
    try:
        port = local.getHost().port  # type: ignore[attr-defined]
        forward = await publish(tunnel, port, allowed_origin="192.0.2.1")
        client = Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", forward.port), client)
        # Refused by the accept hook: the server hangs up without a byte.
        await client.closed.addTimeout(TIMEOUT, cast(IReactorTime, reactor))
        assert client.received == b""
        assert tunnel.channels == []
        assert ssh_test_server.open_channels == 0
    finally:
        await tunnel.logoff()
        await maybeDeferred(local.stopListening)


@pytest_twisted.ensureDeferred
async def test_unknown_server_is_refused(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, tmp_path: Path, ssh_user: str
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    tunnel = make_tunnel(ssh_test_server, ssh_user, ssh_client_key, empty)
    with pytest.raises(HostKeyError) as caught:
        await tunnel.logon()
    assert caught.value.code == 1030
    assert caught.value.fingerprint.startswith("SHA256:")
    assert not tunnel.connected
