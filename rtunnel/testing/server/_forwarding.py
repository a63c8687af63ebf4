"""
The test server's side of remote forwarding (RFC 4254 section 7; OpenSSH's
``streamlocal-forward@openssh.com``): the ``ssh-connection`` service with its global
requests, a listener per forward, and the ``forwarded-tcpip`` channel of each inbound
connection, with flow control both ways and half-close.

Unlike Conch's stock forwarding channels (``twisted.conch.ssh.forwarding``), the channel
here has flow control both ways and half-close, so memory per channel stays bounded.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import cast

from twisted.conch.ssh import common, connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel.testing.server._context import _pack_string, server_of
from rtunnel.testing.server._ports import _Forward, _ListenerFactory, listen_addresses
from rtunnel.testing.server._transport import _ServerTransport

# OpenSSH's defaults for TCP forwarding channels (channels.h: CHAN_TCP_PACKET_DEFAULT and
# CHAN_TCP_WINDOW_DEFAULT = 64 packets); Conch's 128 KiB default window is slow on loopback.
_MAX_PACKET = 32 * 1024
_WINDOW = 64 * _MAX_PACKET

_STREAMLOCAL_FORWARD = b"streamlocal-forward@openssh.com"
_CANCEL_STREAMLOCAL_FORWARD = b"cancel-streamlocal-forward@openssh.com"
_FORWARDED_STREAMLOCAL = b"forwarded-streamlocal@openssh.com"


class _ForwardingConnection(connection.SSHConnection):
    """
    The ``ssh-connection`` service: global requests for remote forwarding (RFC 4254
    section 7.1), window accounting by consumption, and no client-opened channels.
    """

    @override
    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.server = server_of(self.transport)
        self.forwards: dict[tuple[str, int], _Forward] = {}
        self.socket_forwards: dict[str, _Forward] = {}
        # SSHTestServer.delay_replies(): global requests waiting, as (due, packet), and
        # the timers of delayed replies.
        self._delayed_requests: list[tuple[float, bytes]] = []
        self._delayed_calls: set[IDelayedCall] = set()

    @override
    def serviceStopped(self) -> None:
        # Listeners go away with the connection, as in sshd (unless a test holds the port
        # as a stale session would: SSHTestServer.hold_port).
        super().serviceStopped()
        for call in self._delayed_calls:
            if call.active():
                call.cancel()
        self._delayed_calls.clear()
        self._delayed_requests.clear()
        for forward in self.forwards.values():
            self.server._forward_gone(forward)
        self.forwards.clear()
        for forward in self.socket_forwards.values():
            self.server._track(forward.stop())
        self.socket_forwards.clear()
        self.server._changed()

    @override
    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        delay = self.server._global_request_delay
        if not delay and not self._delayed_requests:
            super().ssh_GLOBAL_REQUEST(packet)
            return
        # Delayed as a whole, one after the other, so replies stay in order (RFC 4254
        # section 4).
        self._delayed_requests.append((self.server._clock.seconds() + delay, packet))
        if len(self._delayed_requests) == 1:
            self._later(delay, self._run_delayed_requests)

    def _run_delayed_requests(self) -> None:
        now = self.server._clock.seconds()
        while self._delayed_requests and self._delayed_requests[0][0] <= now:
            super().ssh_GLOBAL_REQUEST(self._delayed_requests.pop(0)[1])
        if self._delayed_requests:
            self._later(self._delayed_requests[0][0] - now, self._run_delayed_requests)

    def _later(self, delay: float, function: Callable[[], None]) -> None:
        def run() -> None:
            self._delayed_calls.discard(call)
            function()

        call = self.server._clock.callLater(max(0.0, delay), run)
        self._delayed_calls.add(call)

    @override
    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int | tuple[int, bytes]:
        # Anything else (keepalive@openssh.com, no-more-sessions@openssh.com, ...) gets
        # REQUEST_FAILURE when the client wants a reply (RFC 4254 section 4).
        if requestType in (_STREAMLOCAL_FORWARD, _CANCEL_STREAMLOCAL_FORWARD):
            # OpenSSH's PROTOCOL §2.4: a Unix-domain socket path instead of address and port.
            try:
                raw, _ = common.getNS(data)
                path = raw.decode("utf-8")
            except (struct.error, UnicodeDecodeError):
                return 0
            if requestType == _STREAMLOCAL_FORWARD:
                return self._socket_forward(path)
            return self._socket_cancel(path)
        try:
            address, rest = common.getNS(data)
            (port,) = struct.unpack(">L", rest)
            bind_address = address.decode("utf-8")
        except (struct.error, UnicodeDecodeError):
            return 0
        if requestType == b"tcpip-forward":
            return self._forward(bind_address, port)
        if requestType == b"cancel-tcpip-forward":
            return self._cancel(bind_address, port)
        return 0

    def _forward(self, bind_address: str, port: int) -> int | tuple[int, bytes]:
        addresses = listen_addresses(bind_address)
        if addresses is None or port > 0xFFFF or self.server._forward_refused(port):
            return 0
        cert = cast(_ServerTransport, self.transport).user_certificate
        if cert is not None and "permit-port-forwarding" not in dict(cert.extensions):
            # sshd (auth-options.c): a certificate grants port forwarding only with this
            # extension, which ssh-keygen adds by default.
            return 0
        inbound = _InboundFactory(self, bind_address)
        reactor = self.server._reactor
        try:
            first = reactor.listenTCP(port, inbound, interface=addresses[0])
        except CannotListenError:
            return 0
        ports = [first]
        inbound.port = first.getHost().port  # type: ignore[attr-defined]
        for address in addresses[1:]:
            with contextlib.suppress(CannotListenError):
                ports.append(reactor.listenTCP(inbound.port, inbound, interface=address))
        self.forwards[bind_address, inbound.port] = _Forward(
            bind_address, inbound.port, ports, inbound
        )
        self.server._changed()
        if port == 0:
            # RFC 4254 section 7.1: the allocated port, as uint32, only when 0 was asked
            # for (sshd sends no payload for a fixed port).
            return 1, struct.pack(">L", inbound.port)
        return 1

    def _socket_forward(self, path: str) -> int:
        cert = cast(_ServerTransport, self.transport).user_certificate
        if not path or (cert is not None and "permit-port-forwarding" not in dict(cert.extensions)):
            return 0
        inbound = _InboundFactory(self, path, unix=True)
        try:
            # As sshd without StreamLocalBindUnlink: an existing socket file is refused.
            listening = self.server._reactor.listenUNIX(path, inbound)  # type: ignore[attr-defined]
        except CannotListenError:
            return 0
        self.socket_forwards[path] = _Forward(path, 0, [listening], inbound)
        self.server._changed()
        return 1

    def _socket_cancel(self, path: str) -> int:
        forward = self.socket_forwards.pop(path, None)
        if forward is None:
            return 0
        self.server._track(forward.stop())
        self.server._changed()
        return 1

    def _cancel(self, bind_address: str, port: int) -> int:
        # Matched on the address string and the actual port, as sshd does
        # (channels.c, channel_cancel_rport_listener_tcpip).
        forward = self.forwards.pop((bind_address, port), None)
        if forward is None:
            return 0
        # The ports close on the next reactor turn (tcp.Port.loseConnection), before the
        # reply below is written to the socket.
        self.server._forward_gone(forward)
        self.server._changed()
        return 1

    @override
    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        # RFC 4254 section 5.1: this server is only the far end of remote forwards; it
        # refuses sessions, direct-tcpip and everything else a client may open.
        (sender,) = struct.unpack(">L", common.getNS(packet)[1][:4])

        def refuse() -> None:
            assert self.transport is not None
            self.transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
                + common.NS(b"rtunnel test server: only remote forwarding")
                + common.NS(b""),
            )

        delay = self.server._channel_open_delay
        if delay:
            self._later(delay, refuse)
        else:
            refuse()

    @override
    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        # Conch grants window back as soon as data arrives, however slowly the data is
        # consumed. Here the channel grants it as its socket takes the data
        # (_ForwardedChannel.dataReceived); everything else is as in Conch.
        local_id, length = struct.unpack(">2L", packet[:8])
        channel = self.channels[local_id]
        if length > channel.localWindowLeft or length > channel.localMaxPacket:
            # RFC 4254 section 5.2: the client must not exceed the window.
            self.sendClose(channel)
            return
        channel.localWindowLeft -= length
        channel.dataReceived(packet[8 : 8 + length])


class _InboundFactory(_ListenerFactory):
    """Builds the protocol for each connection accepted on one forward's listeners."""

    def __init__(self, conn: _ForwardingConnection, bind_address: str, unix: bool = False) -> None:
        self.conn = conn
        #: The address string of the tcpip-forward, or the socket path of a streamlocal one.
        self.bind_address = bind_address
        self.unix = unix
        self.port = 0

    @override
    def live_protocol(self, addr: IAddress | None) -> Protocol:
        return _InboundProtocol(self.conn, self.bind_address, self.port, unix=self.unix)


@implementer(IHalfCloseableProtocol)
class _InboundProtocol(Protocol):
    """
    A connection accepted on a forward's listener, spliced to its ``forwarded-tcpip``
    channel. Reading is paused until the client confirms the channel and whenever the
    client's window is exhausted.
    """

    transport: ITCPTransport

    def __init__(
        self, conn: _ForwardingConnection, bind_address: str, port: int, unix: bool = False
    ) -> None:
        self.conn = conn
        self.bind_address = bind_address
        self.port = port
        self.unix = unix
        self._pauses: set[str] = set()
        self.write_closed = False
        self.lost = False
        self.channel = _ForwardedChannel(self, conn)

    def pause(self, reason: str) -> None:
        if not self._pauses:
            IPushProducer(self.transport).pauseProducing()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._pauses:
            self._pauses.discard(reason)
            if not self._pauses:
                IPushProducer(self.transport).resumeProducing()

    @override
    def connectionMade(self) -> None:
        self.conn.server._inbound.add(self)
        self.pause("opening")
        IConsumer(self.transport).registerProducer(self.channel, True)
        if self.unix:
            # OpenSSH's PROTOCOL §2.4: the socket path, then a reserved string.
            self.channel.name = _FORWARDED_STREAMLOCAL
            self.conn.openChannel(self.channel, _pack_string(self.bind_address) + _pack_string(""))
            return
        peer = self.transport.getPeer()
        assert isinstance(peer, IPv4Address | IPv6Address)
        # RFC 4254 section 7.2: address that was connected (as requested), port that was
        # connected (the actual one), originator address and port.
        self.conn.openChannel(
            self.channel,
            _pack_string(self.bind_address)
            + struct.pack(">L", self.port)
            + _pack_string(peer.host)
            + struct.pack(">L", peer.port),
        )

    @override
    def dataReceived(self, data: bytes) -> None:
        self.channel.write(data)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.channel.inbound_eof()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.write_closed = True
        self.close_if_done()

    def close_if_done(self) -> None:
        if self.channel.eof_sent and self.write_closed:
            self.close()

    def shutdown_write(self) -> None:
        # Not once the socket is gone: loseWriteConnection would register its closed file
        # descriptor with the reactor again, which breaks epoll when the number is reused.
        if not self.lost:
            IConsumer(self.transport).unregisterProducer()
            self.transport.loseWriteConnection()

    def close(self) -> None:
        # Unregister first: Twisted's FileDescriptor does not close, or half-close, while
        # a registered producer is paused; it resumes it and waits for more data instead.
        if not self.lost:
            IConsumer(self.transport).unregisterProducer()
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        self.lost = True
        self.conn.server._inbound.discard(self)
        self.conn.server._changed()
        self.channel.inbound_closed()


@implementer(IPushProducer)
class _ForwardedChannel(SSHChannel):
    """
    The ``forwarded-tcpip`` channel for one inbound connection (RFC 4254 section 7.2).

    Flow control, client to socket: the channel is the producer registered on the
    socket; window is granted back only for data the socket took while not asking us to
    pause, so at most one window plus the socket's buffer is held. Socket to client:
    Conch calls ``stopWriting``/``startWriting`` as the client's window runs out and
    comes back, and those pause and resume reading the socket.
    """

    name = b"forwarded-tcpip"

    def __init__(self, inbound: _InboundProtocol, conn: _ForwardingConnection) -> None:
        super().__init__(localWindow=_WINDOW, localMaxPacket=_MAX_PACKET, conn=conn)
        self.connection = conn
        self.inbound = inbound
        self.eof_sent = False
        self._eof_pending = False
        self._ungranted = 0
        self._socket_full = False
        self._confirmed = False

    # Conch hooks -------------------------------------------------------------------

    @override
    def channelOpen(self, specificData: bytes) -> None:
        self._confirmed = True
        self.connection.server._changed()
        if self.inbound.lost:
            # Closed while the open was in flight: a channel open cannot be withdrawn.
            self.loseConnection()
            return
        self.inbound.resume("opening")

    @override
    def openFailed(self, reason: Failure) -> None:
        # OPEN_FAILURE (or the connection went away first): drop the inbound socket now.
        self.inbound.close()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.inbound.transport.write(data)
        self._ungranted += len(data)
        self._grant()

    @override
    def eofReceived(self) -> None:
        # RFC 4254 section 5.3: the client sends no more; shut down our write side once
        # the socket's buffer is flushed.
        self.inbound.shutdown_write()

    @override
    def closeReceived(self) -> None:
        # RFC 4254 section 5.3: answer CLOSE at once; anything still waiting for window
        # can no longer be sent.
        self.buf = b""
        self.loseConnection()

    @override
    def closed(self) -> None:
        self.connection.server._changed()
        self.inbound.close()

    @override
    def stopWriting(self) -> None:
        self.inbound.pause("window")

    @override
    def startWriting(self) -> None:
        self.inbound.resume("window")

    @override
    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        if self._eof_pending and not self.buf:
            self._send_eof()

    # IPushProducer, seen by the inbound socket ---------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self._socket_full = True

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self._socket_full = False
        self._grant()

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        # The socket is gone; connectionLost closes the channel.
        pass

    # Called by _InboundProtocol -----------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._confirmed and not self.localClosed

    def inbound_eof(self) -> None:
        if self.buf:
            self._eof_pending = True
        else:
            self._send_eof()

    def inbound_closed(self) -> None:
        if self._confirmed:
            self.loseConnection()

    def _send_eof(self) -> None:
        self._eof_pending = False
        if not self.eof_sent:
            self.eof_sent = True
            self.connection.sendEOF(self)
            self.inbound.close_if_done()

    def _grant(self) -> None:
        # As OpenSSH does (channels.c, channel_check_window): adjust once three packets'
        # worth or half the window has been consumed, not for every packet.
        threshold = min(3 * self.localMaxPacket, self.localWindowSize // 2)
        if not self._socket_full and self._ungranted >= threshold:
            self.connection.adjustWindow(self, self._ungranted)
            self._ungranted = 0
