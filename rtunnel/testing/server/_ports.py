"""
The listening side of the test server's forwards: what a ``tcpip-forward`` bind address
listens on, one forward's listeners, and ports held as a stale session holds them
(:meth:`SSHTestServer.hold_port <rtunnel.testing.SSHTestServer.hold_port>`).
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IListeningPort, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override

__all__ = ["ForwardListener", "listen_addresses"]


class ForwardListener(NamedTuple):
    """
    One active remote forward on the server, as :attr:`SSHTestServer.forwards` lists it.

    :ivar bind_address: the address string exactly as the client sent it in
        ``tcpip-forward``.
    :ivar port: the port listened on (the allocated one when the client asked for 0).
    """

    bind_address: str
    port: int


def listen_addresses(bind_address: str) -> list[str] | None:
    """
    The interfaces to listen on for a ``tcpip-forward`` bind address, following sshd with
    ``GatewayPorts clientspecified`` (OpenSSH channels.c, ``channel_fwd_bind_addr``).

    The first address must be bound; the others are best effort, as in sshd, which
    succeeds when at least one address of a forward could be bound.

    :param bind_address: the address string from the request.
    :return: interface addresses, or ``None`` for a host name other than ``localhost``
        (the test server does no DNS look-ups).
    """
    if bind_address in ("", "*", "0.0.0.0"):
        return ["0.0.0.0"]
    if bind_address == "localhost":
        return ["127.0.0.1", "::1"]
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        return None
    return [bind_address]


class _ListenerFactory(ServerFactory):
    """
    The factory on a forward's listeners. Once the listener outlives its connection (a
    held port, :class:`_Hold`), what it accepts is left hanging instead.
    """

    #: Set once the listener outlived its connection (SSHTestServer.hold_port).
    stale: _Hold | None = None

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        if self.stale is not None:
            return _StaleProtocol(self.stale)
        return self.live_protocol(addr)

    def live_protocol(self, addr: IAddress | None) -> Protocol:
        """The protocol for a connection accepted while the forward is live."""
        raise NotImplementedError


class _Forward:
    """One ``tcpip-forward`` (or streamlocal forward) on one connection: its listeners."""

    def __init__(
        self,
        bind_address: str,
        port: int,
        ports: list[IListeningPort],
        factory: _ListenerFactory | None = None,
    ) -> None:
        self.bind_address = bind_address
        self.port = port
        self.ports = ports
        self.factory = factory

    def stop(self) -> Deferred[None]:
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in self.ports]
        ).addCallback(lambda _: None)


class _Hold:
    """
    A port held as a stale session holds it (SSHTestServer.hold_port): its listeners, and
    the connections they accepted, which are never answered.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.ports: list[IListeningPort] = []
        self.accepted: set[_StaleProtocol] = set()
        #: The live forward whose listeners the hold takes over when its connection goes.
        self.forward: _Forward | None = None

    def take_over(self, forward: _Forward) -> bool:
        """
        The connection of ``forward`` went away: keep its listeners, as sshd keeps a dead
        session's until it notices.

        :return: whether the hold took them (it was waiting for this forward).
        """
        if self.forward is not forward or forward.factory is None:
            return False
        forward.factory.stale = self
        self.ports.extend(forward.ports)
        self.forward = None
        return True

    def release(self) -> Deferred[None]:
        for protocol in list(self.accepted):
            protocol.transport.abortConnection()
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports]
        ).addCallback(lambda _: None)


class _StaleFactory(ServerFactory):
    def __init__(self, hold: _Hold) -> None:
        self.hold = hold

    @override
    def buildProtocol(self, addr: IAddress | None) -> _StaleProtocol:
        return _StaleProtocol(self.hold)


class _StaleProtocol(Protocol):
    """Accepted on a held port and left hanging, as by a session that no longer runs."""

    transport: ITCPTransport

    def __init__(self, hold: _Hold) -> None:
        self.hold = hold

    @override
    def connectionMade(self) -> None:
        self.hold.accepted.add(self)

    @override
    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        self.hold.accepted.discard(self)
