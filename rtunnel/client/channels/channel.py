"""
One ``forwarded-tcpip`` channel, seen from the protocol it carries: it is that protocol's
transport (write, half-close, close, flow control), and it speaks the channel's wire rules
to the connection.

Flow control, both ways:

* Inbound (server -> protocol): we grant the server window only as the protocol consumes.
  A consumer that cannot keep up (a TCP target whose send buffer is full, or an application
  that calls ``pauseProducing``) pauses us, and we stop granting until it resumes, so at
  most one window is in flight per channel.
* Outbound (protocol -> server): we send while the server's window lasts; beyond that the
  bytes wait here and the producer feeding us (the target socket) is paused until the
  server adjusts the window. Data is cut to the server's maximum packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel._core.forward_policy import ForwardGate
from rtunnel._core.policy import TokenBucket
from rtunnel._model import ChannelInfo

__all__ = ["CappedChannel", "ChannelConnection", "ForwardedChannel"]

# Our own ceiling on outgoing packet size, whatever the server advertises (RELIABILITY C15):
# huge packets only cost the server memory and delay other channels.
MAX_OUTGOING_PACKET = 256 * 1024

_log = Logger()


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ChannelConnection(Protocol):
    """
    What a channel needs of the connection that carries it: a
    :class:`~rtunnel.client.channels.connection.ForwardingConnection`. Said here as a
    protocol so that this module does not import the connection's, which imports this one
    to make its channels.
    """

    @property
    def rate_limit(self) -> TokenBucket | None: ...

    @property
    def write_blocked(self) -> bool: ...

    @property
    def kex_blocked(self) -> bool: ...

    def _seconds(self) -> float: ...

    def rate_held(self, channel: ForwardedChannel, nbytes: int) -> None: ...

    def bucket_held(self, channel: ForwardedChannel, bucket: TokenBucket, nbytes: int) -> None: ...

    def send_channel_data(self, channel: ForwardedChannel, data: bytes | memoryview) -> None: ...

    def send_window_adjust(self, channel: ForwardedChannel, amount: int) -> None: ...

    def send_channel_eof(self, channel: ForwardedChannel) -> None: ...

    def send_channel_close(self, channel: ForwardedChannel) -> None: ...

    def channel_finished(self, channel: ForwardedChannel) -> None: ...

    def observe_data(self, channel: ForwardedChannel, data: bytes) -> None: ...

    def observe_eof(self, channel: ForwardedChannel) -> None: ...

    def observe_ready_to_send(self, channel: ForwardedChannel) -> None: ...


@implementer(ITransport, IPushProducer, IConsumer)
class ForwardedChannel:
    """
    A confirmed (or about to be confirmed) ``forwarded-tcpip`` channel.

    :ivar info: the channel's row in the tunnel's channel table.
    :ivar protocol: the protocol carried, once attached.
    :ivar gate: its forward's policy at work (issue #15), released when the channel ends;
        None for a forward without a policy.
    """

    gate: ForwardGate | None = None

    def __init__(
        self,
        conn: ChannelConnection,
        local_id: int,
        remote_id: int,
        remote_window: int,
        remote_max_packet: int,
        window_size: int,
        max_packet: int,
        info: ChannelInfo,
        *,
        outbound: bool = False,
    ) -> None:
        self.conn = conn
        # A direct-tcpip channel we opened: the peer is what the server connected to.
        self._outbound = outbound
        self.local_id = local_id
        self.remote_id = remote_id
        self.info = info
        self.protocol: IProtocol | None = None
        # Inbound accounting.
        self.window_size = window_size
        self.max_packet = max_packet
        self.local_window_left = window_size
        self._consumer_paused = False
        # Outbound accounting.
        self.remote_window = remote_window
        self._chunk = max(1, min(remote_max_packet, MAX_OUTGOING_PACKET))
        self._out: deque[bytes] = deque()
        self._out_len = 0
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._blocked = False  # writes held back for lack of window (for ReadyToSend)
        # Lifecycle.
        self.confirmed = False
        self.eof_received = False
        self.eof_sent = False
        self._eof_wanted = False
        self.close_received = False
        self.close_sent = False
        self._closing = False
        self.finished = False

    # -- ITransport, for the carried protocol

    def write(self, data: bytes) -> None:
        """Send bytes to the remote client (held here while the server's window is shut)."""
        if not data or self.eof_sent or self.close_sent or self.finished:
            return
        if self._out:
            self._out.append(data)
            self._out_len += len(data)
            return
        sent = self._send_now(data)
        if sent < len(data):
            rest = data[sent:]
            self._out.append(rest)
            self._out_len += len(rest)
            self._blocked = True
            self.sync_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:  # noqa: N802 (ITransport)
        """Write several byte strings."""
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:  # noqa: N802 (ITransport, half-close)
        """Send EOF once everything written so far has gone out."""
        self._eof_wanted = True
        self._flush_tail()

    def loseConnection(self) -> None:  # noqa: N802 (ITransport)
        """Send what is pending, then EOF and CLOSE."""
        self._eof_wanted = True
        self._closing = True
        self._flush_tail()

    def abortConnection(self) -> None:  # noqa: N802 (ITCPTransport)
        """Close at once, dropping anything not yet sent."""
        self._out.clear()
        self._out_len = 0
        self._closing = True
        self._send_close()

    def getPeer(self) -> IPv4Address | IPv6Address:  # noqa: N802 (ITransport)
        """The remote client that connected to the server's listener (for a channel we
        opened: the host and port the server connected to)."""
        if self._outbound:
            return _address(self.info.connected_address, self.info.connected_port)
        return _address(self.info.origin_address, self.info.origin_port)

    def getHost(self) -> IPv4Address | IPv6Address:  # noqa: N802 (ITransport)
        """The server-side address the client connected to (for a channel we opened: the
        originator address we gave)."""
        if self._outbound:
            return _address(self.info.origin_address, self.info.origin_port)
        return _address(self.info.connected_address, self.info.connected_port)

    @property
    def connected(self) -> bool:
        """True until the channel has finished (as a TCP transport's ``connected``)."""
        return not self.finished

    # -- IPushProducer: the consumer of inbound data (a target socket or the app) paces us

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """Stop granting window: the consumer is full."""
        self._consumer_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """Grant window again."""
        self._consumer_paused = False
        self.maybe_grant()

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        # Twisted calls this when the consumer's connection is gone; the protocol's
        # connectionLost decides how the channel ends, so nothing to do here.
        self._consumer_paused = True

    # -- IConsumer: whatever feeds us outbound data (the target socket) is paced by us

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:  # noqa: N802
        """Let ``producer`` be paused while the server's window is shut."""
        if not streaming:
            raise ValueError("forwarded channels accept only streaming (push) producers")
        self._producer = IPushProducer(producer)
        self._producer_paused = False
        self.sync_producer()

    def unregisterProducer(self) -> None:  # noqa: N802 (IConsumer)
        """Forget the producer."""
        self._producer = None

    # -- called by the connection

    def attach(self, protocol: IProtocol) -> None:
        """The channel is confirmed: start the protocol on it."""
        self.confirmed = True
        self.protocol = protocol
        protocol.makeConnection(self)

    def data_received(self, data: bytes) -> None:
        """Bytes from the server (the connection has checked them against our window)."""
        self.local_window_left -= len(data)
        self.info.bytes_received += len(data)
        self.conn.observe_data(self, data)
        if self.protocol is not None and not self.finished:
            try:
                self.protocol.dataReceived(data)
            except Exception:
                _log.failure("protocol on channel {id} failed on data", id=self.local_id)
                self.abortConnection()
                return
        self.maybe_grant()

    def eof_from_server(self) -> None:
        """The remote client will send nothing more."""
        self.eof_received = True
        self.conn.observe_eof(self)
        protocol = self.protocol
        if protocol is None:
            return
        half_closeable = IHalfCloseableProtocol(protocol, None)
        if half_closeable is not None:
            half_closeable.readConnectionLost()
        else:
            # As a TCP transport does for a protocol that cannot half-close.
            self.loseConnection()

    def close_from_server(self) -> None:
        """The server closed the channel; answer CLOSE (RFC 4254 §5.3) and finish."""
        self.close_received = True
        self._out.clear()
        self._out_len = 0
        self._send_close()
        self._finish(Failure(ConnectionDone("channel closed by the server")))

    def window_adjusted(self, amount: int) -> None:
        """The server widened its window (the connection has checked for overflow)."""
        self.remote_window += amount
        self._flush()

    def connection_lost(self, reason: Failure) -> None:
        """The SSH connection is gone."""
        self._out.clear()
        self._out_len = 0
        self._finish(reason if reason.check(ConnectionLost) else Failure(ConnectionLost()))

    # -- internals

    def _send_now(self, data: bytes) -> int:
        n = min(len(data), self.remote_window)
        limit = self.conn.rate_limit
        if limit is not None and n > 0:
            allowed = limit.allowance(self.conn._seconds())
            if allowed < n:
                self.conn.rate_held(self, n - max(allowed, 0))
                n = allowed
        if n <= 0:
            return 0
        view = memoryview(data)
        chunk = self._chunk
        send = self.conn.send_channel_data
        for offset in range(0, n, chunk):
            send(self, view[offset : min(offset + chunk, n)])
        self.remote_window -= n
        self.info.bytes_sent += n
        if limit is not None:
            limit.spend(n)
        return n

    def flush_held(self) -> None:
        """Send what waits here as far as window and rate allow (the rate timer's call)."""
        self._flush()

    def _flush(self) -> None:
        while self._out and self.remote_window > 0:
            head = self._out.popleft()
            sent = self._send_now(head)
            self._out_len -= sent
            if sent < len(head):
                self._out.appendleft(head[sent:])
                break
        if not self._out and self._blocked:
            self._blocked = False
            self.sync_producer()
            self.conn.observe_ready_to_send(self)
        self._flush_tail()

    def _flush_tail(self) -> None:
        if self._out or self.finished:
            return
        if self._eof_wanted and not self.eof_sent and not self.close_sent:
            self.eof_sent = True
            self.conn.send_channel_eof(self)
        if self._closing:
            self._send_close()

    def _send_close(self) -> None:
        if not self.close_sent and not self.finished:
            self.close_sent = True
            self.conn.send_channel_close(self)
        if self.close_received:
            self._finish(Failure(ConnectionDone("channel closed")))

    def sync_producer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        conn = self.conn
        want_paused = bool(self._out) or conn.write_blocked or conn.kex_blocked
        if want_paused and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
        elif not want_paused and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()

    def maybe_grant(self) -> None:
        # Grant once half the window is used, so a stream needs few adjust messages, but
        # only while the consumer keeps up: this is what bounds memory per channel.
        if self._consumer_paused or self.eof_received or self.finished:
            return
        used = self.window_size - self.local_window_left
        if used >= self.window_size // 2:
            self.local_window_left = self.window_size
            self.conn.send_window_adjust(self, used)

    def _finish(self, reason: Failure) -> None:
        if self.finished:
            return
        self.finished = True
        self.conn.channel_finished(self)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            try:
                protocol.connectionLost(reason)
            except Exception:
                _log.failure("protocol on channel {id} failed on close", id=self.local_id)


class CappedChannel(ForwardedChannel):
    """
    A channel of a forward with a bandwidth cap (issue #15): what it sends to the server
    also spends from ``cap``, the token bucket all the forward's channels share, and
    waits as MaxTransferRate's held bytes do. A subclass, so that channels of forwards
    without a cap do no work for it at all.
    """

    def __init__(self, *args: Any, cap: TokenBucket, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cap = cap

    @override
    def _send_now(self, data: bytes) -> int:
        n = min(len(data), self.remote_window)
        if n <= 0:
            return 0
        cap = self.cap
        allowed = cap.allowance(self.conn._seconds())
        if allowed < n:
            self.conn.bucket_held(self, cap, n - max(allowed, 0))
            if allowed <= 0:
                return 0
            data = data[:allowed]
        sent = super()._send_now(data)
        cap.spend(sent)
        return sent
