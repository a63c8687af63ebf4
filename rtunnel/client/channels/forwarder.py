"""
Forwarding mode: splice a channel to a local TCP target.

Two protocols meet here: :class:`TargetProtocol` on the TCP connection to the target, and
:class:`Splice` on the channel. Each registers the other's transport as its producer, so a
full target socket stops the channel's window grants and a shut server window pauses
reading from the target.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel._core.text import printable
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.transport._writes import write_now

__all__ = [
    "Splice",
    "TargetProtocol",
    "abort_with_reset",
    "connect_failure_text",
    "tcp_endpoint",
]

#: Bytes read from a target at a time (Twisted's default: 64 KiB), which is also how much
#: may wait to be written to it before the channel stops granting window.
TARGET_SOCKET_BUFFER = 128 * 1024


def tcp_endpoint(
    reactor: IReactorTCP,
    host: str,
    port: int,
    timeout: float,
    bind_address: tuple[str, int] | None = None,
) -> IStreamClientEndpoint:
    """
    A client endpoint for ``host:port``, connecting from ``bind_address`` (local host and
    port) when given. An IP literal is connected directly: Twisted's HostnameEndpoint would
    still resolve it through the reactor's thread pool, so a program whose pool threads are
    all busy (blocking calls in ``deferToThread``) would see every connect wait behind them.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _NameEndpoint(
            HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind_address)
        )
    if address.version == 4:
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind_address)
    return TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind_address)


@implementer(IStreamClientEndpoint)
class _NameEndpoint:
    """
    A HostnameEndpoint whose "invalid hostname" (a label over 63 bytes, a name that is
    not IDNA: user input, or a SOCKS client's) is a failed lookup, as for ``ssh``
    ("Could not resolve hostname"), instead of a ValueError nobody expects.
    """

    def __init__(self, endpoint: HostnameEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        def invalid(failure: Failure) -> Failure:
            if failure.check(ValueError):
                return Failure(error.DNSLookupError("not a valid host name"))
            return failure

        return self._endpoint.connect(protocolFactory).addErrback(invalid)


def connect_failure_text(e: BaseException) -> str:
    """
    Why a connect failed, in OpenSSH's words where it has some (ssh.c, sshconnect.c):
    "Connection refused", "Connection timed out", "Could not resolve hostname"; else the
    system's reason, made printable.
    """
    if isinstance(e, error.ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, error.TimeoutError):
        return "Connection timed out"
    if isinstance(e, error.DNSLookupError):
        return "Could not resolve hostname"
    if isinstance(e, error.ConnectBindError) and isinstance(e.osError, tuple):
        # Twisted's text is "Couldn't bind: 99: Cannot assign requested address."
        return printable(str(e.osError[-1]), 200)
    text = printable(str(e).strip(), 200)
    return text or type(e).__name__


def abort_with_reset(transport: object) -> None:
    """
    Drop a TCP connection with RST (SO_LINGER 0), so the peer sees a truncation rather
    than a clean end of stream.
    """
    try:
        handle = transport.getHandle()  # type: ignore[attr-defined]
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (AttributeError, OSError):
        pass
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()


def _stop_pacing(transport: object) -> None:
    # No more server data follows an EOF or CLOSE, so the channel no longer needs to be
    # paced by the target. It must stop being the target's producer before the target is
    # half-closed or closed: Twisted 26.10's FileDescriptor.doWrite, on draining its buffer
    # with a paused streaming producer, resumes the producer and skips the pending
    # shutdown, which then never happens.
    unregister = getattr(transport, "unregisterProducer", None)
    if unregister is not None:
        unregister()


@implementer(IHalfCloseableProtocol)
class TargetProtocol(Protocol):
    """The TCP connection to the local target."""

    def __init__(self) -> None:
        self.channel: ForwardedChannel | None = None

    @override
    def connectionMade(self) -> None:
        # Read nothing until the channel is confirmed: a target that talks first (SMTP,
        # SSH) must not have its greeting dropped or buffered here.
        assert self.transport is not None
        if ITCPTransport.providedBy(self.transport):
            # As OpenSSH 9.2's ssh (strace: TCP_NODELAY once the connect completes) and
            # asyncio do: bytes are written as SSH packets bring them, and Nagle would
            # hold the second of two small writes for the target's delayed ACK (up to
            # 40 ms when the target waits for the whole request before answering).
            self.transport.setTcpNoDelay(True)
        if isinstance(getattr(self.transport, "bufferSize", None), int):
            # Larger reads (fewer packets cut short, fewer reactor turns per GiB), and the
            # channel paused once this much waits for the target instead of 64 KiB.
            self.transport.bufferSize = TARGET_SOCKET_BUFFER  # type: ignore[attr-defined]
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.write(data)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        """The target half-closed: send EOF on the channel."""
        if self.channel is not None:
            self.channel.loseWriteConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        """Our write side to the target is shut down; the read side may go on."""

    @override
    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self.channel is not None:
            self.channel.loseConnection()


class TargetFactory(Factory):
    """Builds the one :class:`TargetProtocol` a connect attempt is for."""

    # Not a "Starting factory <...>" log line for every forwarded connection.
    noisy = False

    def __init__(self, target: TargetProtocol) -> None:
        self.target = target

    @override
    def buildProtocol(self, addr: object) -> TargetProtocol:  # type: ignore[override]
        return self.target


@implementer(IHalfCloseableProtocol)
class Splice(Protocol):
    """The channel side of a forwarding-mode connection."""

    def __init__(self, target: TargetProtocol) -> None:
        self.target = target

    @override
    def connectionMade(self) -> None:
        channel = self.transport
        assert isinstance(channel, ForwardedChannel)
        target_transport = self.target.transport
        assert target_transport is not None
        self.target.channel = channel
        target_transport.registerProducer(channel, True)  # type: ignore[attr-defined]
        channel.registerProducer(target_transport, True)  # type: ignore[arg-type]
        target_transport.resumeProducing()  # type: ignore[attr-defined]

    @override
    def dataReceived(self, data: bytes) -> None:
        transport = self.target.transport
        if transport is not None:
            write_now(transport, data)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        """The remote client half-closed: shut down our write side to the target."""
        transport = self.target.transport
        if transport is not None and ITCPTransport.providedBy(transport):
            _stop_pacing(transport)
            transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        """Nothing to do: the channel's EOF is sent by the channel itself."""

    @override
    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        transport = self.target.transport
        self.target.channel = None
        if transport is None:
            return
        if reason.check(ConnectionDone):
            _stop_pacing(transport)
            transport.loseConnection()
        else:
            # The SSH connection died: make the truncation visible to the target.
            abort_with_reset(transport)
