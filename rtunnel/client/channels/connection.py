"""
The ``ssh-connection`` service (RFC 4254) as a reverse-tunnel client needs it.

It replaces Conch's ``SSHConnection`` rather than subclassing it, because the parts a reverse
tunnel lives on behave differently there: Conch confirms a channel before anything is
connected, grants window on receipt instead of on consumption, raises ``KeyError`` on an
unknown channel number, and accepts any channel type a factory knows. Here:

* only ``forwarded-tcpip`` opens for a forward we requested are considered; everything else
  is refused without side effects (RELIABILITY.md D1-D4);
* the one channel we open ourselves is ``direct-tcpip`` (RFC 4254 §7.2, for a jump host);
  a confirmation or failure for a channel we did not open is a protocol error;
* a channel is confirmed only after its target is connected or its protocol accepted;
* global requests we send are answered in order (RFC 4254 §4); an unsolicited reply, a
  message for an unknown or closed channel, data beyond the window or a malformed payload
  ends the connection with a protocol error instead of an exception.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.conch.ssh.service import SSHService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel._core import wire
from rtunnel._core.forward_policy import ForwardGate, Refusal
from rtunnel._core.policy import TokenBucket
from rtunnel._core.ratelimit import RepeatLimiter
from rtunnel._core.text import printable
from rtunnel._model import ChannelInfo, ChannelOpenRequest, Forward
from rtunnel.client.channels.channel import CappedChannel, ForwardedChannel
from rtunnel.client.channels.idle import IdleChannelReaper
from rtunnel.client.transport._sockopts import acknowledge_now
from rtunnel.errors import ConnectionLostError, ForwardingError, ProtocolError

if TYPE_CHECKING:
    from twisted.conch.ssh.transport import SSHTransportBase

__all__ = ["ChannelRefused", "ForwardingConnection"]

_log = Logger()

MSG_GLOBAL_REQUEST = 80
MSG_REQUEST_SUCCESS = 81
MSG_REQUEST_FAILURE = 82
MSG_CHANNEL_OPEN = 90
MSG_CHANNEL_OPEN_CONFIRMATION = 91
MSG_CHANNEL_OPEN_FAILURE = 92
MSG_CHANNEL_WINDOW_ADJUST = 93
MSG_CHANNEL_DATA = 94
MSG_CHANNEL_EXTENDED_DATA = 95
MSG_CHANNEL_EOF = 96
MSG_CHANNEL_CLOSE = 97
MSG_CHANNEL_REQUEST = 98
MSG_CHANNEL_SUCCESS = 99
MSG_CHANNEL_FAILURE = 100

# RFC 4254 §5.1 reason codes.
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2
OPEN_UNKNOWN_CHANNEL_TYPE = 3
OPEN_RESOURCE_SHORTAGE = 4

DISCONNECT_PROTOCOL_ERROR = 2
DISCONNECT_BY_APPLICATION = 11

#: Bytes read from the server's TCP connection at a time, and queued for it before every
#: channel's source is paused (Twisted's default for both is 64 KiB). Fewer, larger reads
#: and fewer pause/resume cycles per GiB (each is an ``epoll_ctl`` per channel).
SERVER_SOCKET_BUFFER = 256 * 1024

#: RELIABILITY.md D13: bytes of ours the transport may hold during a key exchange (it
#: cannot send channel data until NEWKEYS) before every channel's source is paused.
KEX_QUEUE_LIMIT = 1024 * 1024


_U32 = struct.Struct(">L")
_U32X2 = struct.Struct(">LL")
_U32X3 = struct.Struct(">LLL")
_U32X4 = struct.Struct(">LLLL")
_MAX_U32 = 0xFFFFFFFF

# Channel types a server might try that we know and refuse on purpose (a reverse tunnel
# never asks for them), as opposed to types we do not know at all.
_KNOWN_REFUSED_TYPES = frozenset(
    {
        b"session",
        b"x11",
        b"auth-agent@openssh.com",
        b"direct-tcpip",
        b"direct-streamlocal@openssh.com",
    }
)
_FORWARDED_STREAMLOCAL = b"forwarded-streamlocal@openssh.com"


class ChannelRefused(Exception):
    """Raised (or failed with) by a channel opener to refuse an open with a reason code."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class ChannelHost(Protocol):
    """What the connection needs from its owner (the tunnel session)."""

    def find_forward(self, address: str, port: int) -> Forward | None:
        """The forward a ``forwarded-tcpip`` open names, if we requested it."""

    def find_socket_forward(self, path: str) -> Forward | None:
        """The forward a ``forwarded-streamlocal@openssh.com`` open names, if ours."""

    def open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> Deferred[IProtocol]:
        """Run the accept hook and connect the target; fire with the protocol to attach."""

    def channel_event(self, name: str, info: ChannelInfo, data: bytes = b"") -> None:
        """Tell observers ``opened``, ``data``, ``eof``, ``closed`` or ``ready``."""


class _Opening:
    # A direct-tcpip open we sent, waiting for CONFIRMATION or FAILURE.
    __slots__ = ("cancelled", "deferred", "info", "protocol")

    def __init__(self, info: ChannelInfo, protocol: IProtocol) -> None:
        self.info = info
        self.protocol = protocol
        self.cancelled = False
        self.deferred: Deferred[ForwardedChannel] = Deferred(self._cancel)

    def _cancel(self, _d: Deferred[ForwardedChannel]) -> None:
        # The answer still comes; a confirmation is then closed at once.
        self.cancelled = True


class _PendingOpen:
    __slots__ = ("channel", "deferred")

    def __init__(self, channel: ForwardedChannel, deferred: Deferred[IProtocol]) -> None:
        self.channel = channel
        self.deferred = deferred


class _Pacer:
    # Channels holding bytes one token bucket did not allow yet, and the one timer that
    # lets them flush again once enough has been earned: the tunnel-wide MaxTransferRate
    # and each forward's bandwidth cap (issue #15) work the same way.
    __slots__ = ("bucket", "timer", "waiting")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.waiting: deque[ForwardedChannel] = deque()
        self.timer: IDelayedCall | None = None

    def hold(self, channel: ForwardedChannel, nbytes: int, now: float, clock: IReactorTime) -> None:
        if channel not in self.waiting:
            self.waiting.append(channel)
        if self.timer is None or not self.timer.active():
            delay = self.bucket.wait(now, nbytes)
            # At least a millisecond: a timer per packet would cost more than it paces.
            self.timer = clock.callLater(max(delay, 0.001), self.resume)

    def resume(self) -> None:
        self.timer = None
        waiting = list(self.waiting)
        self.waiting.clear()
        if len(waiting) > 1:
            # Take turns: whoever went first this time goes last next time.
            waiting = waiting[1:] + waiting[:1]
        for channel in waiting:
            if not channel.finished:
                channel.flush_held()

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.waiting.clear()


@implementer(IPushProducer)
class ForwardingConnection(SSHService):
    """
    The connection service.

    :ivar channels: live channels by our channel number (pending ones included).
    :ivar write_blocked: True while the TCP connection to the server cannot take more
        (its send buffer is full); every channel's producer is paused meanwhile.
    :ivar kex_blocked: True while a key exchange holds more than ``kex_queue_limit`` bytes
        of ours; every channel's producer is paused until it finishes (D13).
    :ivar rate_limit: the reference's MaxTransferRate for channel data sent to the server
        (None: no limit). Channels hold what it does not allow yet, which pauses their
        sources, and are resumed by one timer for the connection.
    """

    kex_queue_limit = KEX_QUEUE_LIMIT

    name = b"ssh-connection"

    def __init__(
        self,
        host: ChannelHost,
        *,
        window_size: int,
        max_packet: int,
        max_channels: int,
        on_started: Callable[[ForwardingConnection], None],
        on_stopped: Callable[[ForwardingConnection], None],
        clock: IReactorTime | None = None,
    ) -> None:
        self.host = host
        self.window_size = window_size
        self.max_packet = max_packet
        self.max_channels = max_channels
        self._on_started = on_started
        self._on_stopped = on_stopped
        self.channels: dict[int, ForwardedChannel] = {}
        self._pending: dict[int, _PendingOpen] = {}
        self._opening: dict[int, _Opening] = {}
        self._next_id = 0
        self._global_replies: deque[Deferred[bytes]] = deque()
        self._idle_waiters: list[Deferred[None]] = []
        self.write_blocked = False
        self.kex_blocked = False
        self._held_bytes = 0
        self._packets_sent = 0
        self.stopped = False
        self.protocol_error: ProtocolError | None = None
        self._seconds = clock.seconds if clock is not None else time.time
        self._clock = clock
        self.rate_limit: TokenBucket | None = None
        # One pacer per token bucket in use (by id): MaxTransferRate's and each capped
        # forward's.
        self._pacers: dict[int, _Pacer] = {}
        # Issue #15: a reaper for each forward with its own idle timeout, made at its
        # first channel on this connection (by id of the forward).
        self._forward_reapers: dict[int, IdleChannelReaper] = {}
        #: D18: warnings a server can make us repeat at will, rate-limited.
        self.warnings = RepeatLimiter()
        self._levels: dict[str, LogLevel] = {}
        self._summary_timer: IDelayedCall | None = None
        self._dispatch: dict[int, Callable[[bytes], None]] = {
            MSG_GLOBAL_REQUEST: self._global_request,
            MSG_REQUEST_SUCCESS: self._request_success,
            MSG_REQUEST_FAILURE: self._request_failure,
            MSG_CHANNEL_OPEN: self._channel_open,
            MSG_CHANNEL_OPEN_CONFIRMATION: self._open_confirmation,
            MSG_CHANNEL_OPEN_FAILURE: self._open_failure,
            MSG_CHANNEL_WINDOW_ADJUST: self._window_adjust,
            MSG_CHANNEL_DATA: self._channel_data,
            MSG_CHANNEL_EXTENDED_DATA: self._extended_data,
            MSG_CHANNEL_EOF: self._channel_eof,
            MSG_CHANNEL_CLOSE: self._channel_close,
            MSG_CHANNEL_REQUEST: self._channel_request,
            MSG_CHANNEL_SUCCESS: self._unexpected("CHANNEL_SUCCESS"),
            MSG_CHANNEL_FAILURE: self._unexpected("CHANNEL_FAILURE"),
        }

    # -- SSHService hooks

    @override
    def serviceStarted(self) -> None:
        tcp = self._tcp_transport()
        if tcp is not None:
            if isinstance(getattr(tcp, "bufferSize", None), int):
                tcp.bufferSize = max(tcp.bufferSize, SERVER_SOCKET_BUFFER)  # type: ignore[attr-defined]
            # Pause every channel's source while the server's TCP connection is backed up.
            tcp.registerProducer(self, True)
        self._on_started(self)

    @override
    def serviceStopped(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for pacer in self._pacers.values():
            pacer.stop()
        self._pacers.clear()
        for reaper in self._forward_reapers.values():
            reaper.stop()
        self._forward_reapers.clear()
        if self._summary_timer is not None and self._summary_timer.active():
            self._summary_timer.cancel()
        self._summary_timer = None
        self._summarise(final=True)
        reason = Failure(ConnectionLost("SSH connection lost"))
        for pending in list(self._pending.values()):
            pending.deferred.cancel()
        self._pending.clear()
        opening, self._opening = self._opening, {}
        for open_ in opening.values():
            if not open_.deferred.called:
                open_.deferred.errback(
                    Failure(
                        ConnectionLostError(
                            "The SSH connection was lost before the server answered the "
                            "channel open."
                        )
                    )
                )
        for channel in list(self.channels.values()):
            channel.connection_lost(reason)
        self.channels.clear()
        idle, self._idle_waiters = self._idle_waiters, []
        for waiter in idle:
            waiter.callback(None)
        replies, self._global_replies = self._global_replies, deque()
        for d in replies:
            d.errback(
                Failure(
                    ConnectionLostError("The SSH connection was lost before the server answered.")
                )
            )
        self._on_stopped(self)

    @override
    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        handler = self._dispatch.get(messageNum)
        if handler is None:
            assert self.transport is not None
            self.transport.sendUnimplemented()
            return
        try:
            handler(packet)
        except (wire.WireError, struct.error, IndexError, ValueError) as e:
            self.protocol_violation(f"malformed message {messageNum}: {e}")

    # -- liveness (keepalives), counted by the transport for every packet it reads

    @property
    def packets_received(self) -> int:
        """
        Packets read from the server so far, of every layer: an IGNORE, a DEBUG or a
        key exchange message shows the server alive as much as a reply does (OpenSSH,
        packet.c), and a count shows "after the keepalive" where a clock reading may not.
        """
        return int(getattr(self.transport, "packets_received", 0))

    @property
    def last_received(self) -> float:
        """When the server last sent something (on the transport's clock)."""
        return float(getattr(self.transport, "last_received", 0.0))

    # -- IPushProducer, for the TCP connection to the server

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """The server's TCP connection is backed up: pause every channel's source."""
        self.write_blocked = True
        for channel in self.channels.values():
            channel.sync_producer()

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        """The server's TCP connection drained: let channel sources flow again."""
        self.write_blocked = False
        for channel in list(self.channels.values()):
            channel.sync_producer()

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        # The TCP connection is going away; serviceStopped does the cleanup.
        pass

    # -- MaxTransferRate

    def rate_held(self, channel: ForwardedChannel, nbytes: int) -> None:
        """
        ``channel`` holds ``nbytes`` the rate limit did not allow yet: flush it again when
        enough has been earned (one timer for all channels, which take turns).
        """
        assert self.rate_limit is not None
        self.bucket_held(channel, self.rate_limit, nbytes)

    def bucket_held(self, channel: ForwardedChannel, bucket: TokenBucket, nbytes: int) -> None:
        """
        ``channel`` holds ``nbytes`` that ``bucket`` (MaxTransferRate's, or its forward's
        bandwidth cap) did not allow yet: flush it again once enough has been earned.
        """
        assert self._clock is not None
        pacer = self._pacers.get(id(bucket))
        if pacer is None:
            pacer = self._pacers[id(bucket)] = _Pacer(bucket)
        pacer.hold(channel, nbytes, self._seconds(), self._clock)

    # -- D13: output held back by a key exchange

    def output_held(self, total: int) -> None:
        """
        Called by the transport whenever what it holds back for a key exchange changes:
        ``total`` bytes of ours that cannot be sent before NEWKEYS (0 once they are sent;
        packets queued again because their flush started the next exchange included).
        Past ``kex_queue_limit`` bytes, every channel's source is paused until the
        transport holds less: a server that starts a rekey and goes silent then holds a
        bounded amount of our data until the key exchange timeout ends the connection.
        """
        self._held_bytes = total
        blocked = total > self.kex_queue_limit
        if blocked is not self.kex_blocked:
            self.kex_blocked = blocked
            for channel in list(self.channels.values()):
                channel.sync_producer()

    # -- requests we make

    def send_global_request(self, name: bytes, data: bytes) -> Deferred[bytes]:
        """
        Send a global request with want-reply; fire with the success payload, or fail
        with :class:`ForwardingError` when the server says no.
        """
        d: Deferred[bytes] = Deferred()
        if self.stopped:
            d.errback(Failure(ConnectionLostError("The SSH connection is closed.")))
            return d
        self._global_replies.append(d)
        self._send(MSG_GLOBAL_REQUEST, wire.encode_string(name) + b"\x01" + data)
        return d

    def open_direct_tcpip(
        self,
        host: str,
        port: int,
        protocol: IProtocol,
        origin: tuple[str, int] = ("127.0.0.1", 65535),
    ) -> Deferred[ForwardedChannel]:
        """
        Open a ``direct-tcpip`` channel (RFC 4254 §7.2): the server connects to
        ``host:port``. On CHANNEL_OPEN_CONFIRMATION ``protocol`` is connected to the channel
        (which is its transport) and the Deferred fires with the channel; on
        CHANNEL_OPEN_FAILURE it fails with :class:`ChannelRefused` carrying the server's
        reason code and text.

        :param origin: the originator address and port; the default is what OpenSSH's
            ``ssh -W`` sends (channels.c, ``channel_connect_stdio_fwd``).
        """
        local_id = self._next_id
        self._next_id += 1
        info = ChannelInfo(
            channel_id=local_id,
            service="direct-tcpip",
            connected_address=host,
            connected_port=port,
            origin_address=origin[0],
            origin_port=origin[1],
        )
        opening = _Opening(info, protocol)
        if self.stopped:
            opening.deferred.errback(Failure(ConnectionLostError("The SSH connection is closed.")))
            return opening.deferred
        self._opening[local_id] = opening
        self._send(
            MSG_CHANNEL_OPEN,
            wire.encode_string(b"direct-tcpip")
            + _U32X3.pack(local_id, self.window_size, self.max_packet)
            + wire.encode_string(host.encode("utf-8"))
            + _U32.pack(port)
            + wire.encode_string(origin[0].encode("utf-8"))
            + _U32.pack(origin[1]),
        )
        return opening.deferred

    def send_channel_data(self, channel: ForwardedChannel, data: bytes | memoryview) -> None:
        """Send one CHANNEL_DATA packet (the channel has done the window accounting)."""
        self._send(MSG_CHANNEL_DATA, _U32X2.pack(channel.remote_id, len(data)) + data)

    def send_window_adjust(self, channel: ForwardedChannel, amount: int) -> None:
        """Widen the server's view of our window."""
        self._send(MSG_CHANNEL_WINDOW_ADJUST, _U32X2.pack(channel.remote_id, amount))

    def grow_window(self, window_size: int) -> None:
        """
        Channels opened from now on get ``window_size``; each open channel is granted the
        growth at once (RFC 4254 §5.2 WINDOW_ADJUST). ``window_size`` is not smaller.
        """
        delta = window_size - self.window_size
        self.window_size = window_size
        if delta == 0:
            return
        for channel in list(self.channels.values()):
            if channel.confirmed and not channel.finished and not channel.close_received:
                channel.window_size += delta
                channel.local_window_left += delta
                self.send_window_adjust(channel, delta)

    def send_channel_eof(self, channel: ForwardedChannel) -> None:
        """Half-close a channel."""
        self._send(MSG_CHANNEL_EOF, _U32.pack(channel.remote_id))

    def send_channel_close(self, channel: ForwardedChannel) -> None:
        """Close a channel."""
        self._send(MSG_CHANNEL_CLOSE, _U32.pack(channel.remote_id))

    def disconnect(self, description: str) -> None:
        """End the connection politely (DISCONNECT_BY_APPLICATION)."""
        if self.transport is not None and not self.stopped:
            self.transport.sendDisconnect(DISCONNECT_BY_APPLICATION, description.encode())

    def protocol_violation(self, description: str) -> None:
        """The server broke the protocol: say so and drop the connection."""
        _log.error("SSH protocol error from server: {description}", description=description)
        if self.protocol_error is None:
            self.protocol_error = ProtocolError(
                f"The SSH server broke the protocol ({description}); connection closed."
            )
        if self.transport is not None and not self.stopped:
            self.transport.sendDisconnect(DISCONNECT_PROTOCOL_ERROR, description.encode())

    # -- called by channels

    def channel_finished(self, channel: ForwardedChannel) -> None:
        """A channel has ended: forget it."""
        if channel.confirmed:
            self.host.channel_event("closed", channel.info)
        self._forget(channel)

    def _forget(self, channel: ForwardedChannel) -> None:
        if self.channels.pop(channel.local_id, None) is not None and channel.gate is not None:
            channel.gate.release()
        if not self.channels:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once no channel is open (at once if none is)."""
        if not self.channels or self.stopped:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def observe_data(self, channel: ForwardedChannel, data: bytes) -> None:
        """Report inbound data to observers."""
        self.host.channel_event("data", channel.info, data)

    def observe_eof(self, channel: ForwardedChannel) -> None:
        """Report an EOF to observers."""
        self.host.channel_event("eof", channel.info)

    def observe_ready_to_send(self, channel: ForwardedChannel) -> None:
        """Report that held-back writes went out."""
        self.host.channel_event("ready", channel.info)

    # -- inbound messages

    def _send(self, message: int, payload: bytes) -> None:
        if self.transport is not None and not self.stopped:
            self._packets_sent += 1
            self.transport.sendPacket(message, payload)

    def _tcp_transport(self) -> IConsumer | None:
        transport: SSHTransportBase | None = self.transport
        tcp = getattr(transport, "transport", None)
        return IConsumer(tcp, None)

    def _unexpected(self, name: str) -> Callable[[bytes], None]:
        def handler(packet: bytes) -> None:
            # We never send channel requests (RELIABILITY.md D9).
            self.protocol_violation(f"unsolicited {name}")

        return handler

    def _global_request(self, packet: bytes) -> None:
        name, offset = wire.decode_string(packet)
        if offset >= len(packet):
            raise wire.WireError("GLOBAL_REQUEST without want-reply flag")
        want_reply = packet[offset] != 0
        # We serve no global requests: keepalive@openssh.com is answered with failure, as
        # OpenSSH's client does (any reply proves liveness); hostkeys-00@openssh.com
        # carries no want-reply; tcpip-forward from a server is refused (RFC 4254 §7.1).
        _log.debug("refusing global request {name}", name=printable(name, 64))
        if want_reply:
            self._send(MSG_REQUEST_FAILURE, b"")
        else:
            # hostkeys-00@openssh.com right after the logon, ahead of the answers to our
            # forward requests (acknowledge_now).
            self._ack_now()

    def _request_success(self, packet: bytes) -> None:
        if not self._global_replies:
            self.protocol_violation("unsolicited REQUEST_SUCCESS")
            return
        self._global_replies.popleft().callback(packet)

    def _request_failure(self, packet: bytes) -> None:
        if not self._global_replies:
            self.protocol_violation("unsolicited REQUEST_FAILURE")
            return
        self._global_replies.popleft().errback(Failure(ForwardingError("request refused")))

    def _channel_open(self, packet: bytes) -> None:
        channel_type, offset = wire.decode_string(packet)
        if offset + 12 > len(packet):
            raise wire.WireError("truncated CHANNEL_OPEN")
        sender, window, max_packet = _U32X3.unpack_from(packet, offset)
        if channel_type != b"forwarded-tcpip" and channel_type != _FORWARDED_STREAMLOCAL:
            if channel_type in _KNOWN_REFUSED_TYPES:
                self._refuse(
                    sender,
                    OPEN_ADMINISTRATIVELY_PROHIBITED,
                    f"{channel_type.decode()} channels are not accepted",
                )
            else:
                self._refuse(sender, OPEN_UNKNOWN_CHANNEL_TYPE, "unknown channel type")
            return
        try:
            if channel_type == _FORWARDED_STREAMLOCAL:
                # OpenSSH's PROTOCOL §2.4: the socket path the server listens on; no
                # originator is given.
                path = wire.decode_forwarded_streamlocal(packet[offset + 12 :])
                fields = wire.ForwardedTcpip(path, 0, "", 0)
            else:
                fields = wire.decode_forwarded_tcpip(packet[offset + 12 :])
        except wire.WireError as e:
            self._refuse(sender, OPEN_ADMINISTRATIVELY_PROHIBITED, f"malformed open: {e}")
            return
        if channel_type == _FORWARDED_STREAMLOCAL:
            forward = self.host.find_socket_forward(fields.connected_address)
        else:
            forward = self.host.find_forward(fields.connected_address, fields.connected_port)
        if forward is None:
            # D1/D2/D3: never ours, or cancelled; no local connect is attempted.
            self._warn_refused(channel_type, fields)
            self._refuse(sender, OPEN_ADMINISTRATIVELY_PROHIBITED, "no such forward")
            return
        if len(self.channels) >= self.max_channels:
            self._refuse(sender, OPEN_RESOURCE_SHORTAGE, "too many channels")
            return
        if max_packet == 0:
            self._refuse(sender, OPEN_RESOURCE_SHORTAGE, "maximum packet size 0")
            return
        gate = forward.gate
        if gate is not None:
            # Issue #15: the forward's policy (ARCHITECTURE.md step 3, before the accept
            # hook and the target). Forwards without one pay nothing here.
            refusal = self._admit(gate, forward, fields)
            if refusal is not None:
                self._refuse(sender, refusal.code, refusal.description)
                return
        local_id = self._next_id
        self._next_id += 1
        # D17: the server's text reaches hooks, events and logs escaped (the wire decoder
        # has capped it already); the target always comes from our own forward.
        request = ChannelOpenRequest(
            channel_id=local_id,
            service=channel_type.decode("ascii"),
            connected_address=printable(fields.connected_address, None),
            connected_port=fields.connected_port,
            origin_address=printable(fields.origin_address, None),
            origin_port=fields.origin_port,
        )
        info = ChannelInfo(
            **dataclasses.asdict(request),
            forwarding_host=forward.host or "",
            forwarding_port=forward.host_port or 0,
            forward=forward,
        )
        if gate is None:
            channel = ForwardedChannel(
                self, local_id, sender, window, max_packet, self.window_size, self.max_packet, info
            )
        else:
            channel = self._policy_channel(gate, local_id, sender, window, max_packet, info)
        self.channels[local_id] = channel
        d = defer.maybeDeferred(self.host.open_target, forward, request, channel)
        self._pending[local_id] = _PendingOpen(channel, d)
        d.addCallbacks(
            lambda protocol: self._confirm(channel, protocol),
            lambda failure: self._open_failed(channel, failure),
        )

    def _admit(
        self, gate: ForwardGate, forward: Forward, fields: wire.ForwardedTcpip
    ) -> Refusal | None:
        refusal = gate.admit(fields.origin_address, self._seconds())
        if refusal is None:
            return None
        listen = forward.listen_path or f"listen port {forward.port or fields.connected_port}"
        # Counted always; logged a few times a minute per forward and reason (D18).
        self.warn_limited(
            f"policy:{id(forward)}:{refusal.reason}",
            f"Refused a connection from {printable(fields.origin_address, 64)} port "
            f"{fields.origin_port} to {printable(listen, 80)}: {refusal.description} "
            f"(forward policy).",
            LogLevel.info,
        )
        return refusal

    def _policy_channel(
        self,
        gate: ForwardGate,
        local_id: int,
        sender: int,
        window: int,
        max_packet: int,
        info: ChannelInfo,
    ) -> ForwardedChannel:
        # A channel of a forward with a policy: capped when the policy caps bandwidth,
        # released from the gate when it ends, reaped by its forward's own idle timeout.
        args = (self, local_id, sender, window, max_packet, self.window_size, self.max_packet)
        channel: ForwardedChannel
        if gate.bandwidth is not None and self._clock is not None:
            channel = CappedChannel(*args, info, cap=gate.bandwidth)
        else:
            channel = ForwardedChannel(*args, info)
        channel.gate = gate
        idle = gate.policy.idle_timeout
        forward = info.forward
        if (
            idle
            and forward is not None
            and self._clock is not None
            and id(forward) not in self._forward_reapers
        ):
            reaper = IdleChannelReaper(
                self, self._clock, idle, False, self._idle_expired, forward=forward
            )
            self._forward_reapers[id(forward)] = reaper
            reaper.start()
        return channel

    def forward_policy_changed(self, forward: Forward) -> None:
        """``forward`` has another policy: its idle timeout holds for its open channels
        at once (a reaper of its own, or the tunnel's when the policy sets none)."""
        reaper = self._forward_reapers.pop(id(forward), None)
        if reaper is not None:
            reaper.stop()
        idle = forward.gate.policy.idle_timeout if forward.gate is not None else None
        if idle and self._clock is not None and not self.stopped:
            reaper = IdleChannelReaper(
                self, self._clock, idle, False, self._idle_expired, forward=forward
            )
            self._forward_reapers[id(forward)] = reaper
            reaper.start()

    def _idle_expired(self, channel: ForwardedChannel) -> None:
        policy = channel.gate.policy if channel.gate is not None else None
        _log.info(
            "Channel {id} ({origin} port {port}) was idle for {timeout} s (forward policy): "
            "closing it.",
            id=channel.local_id,
            origin=channel.info.origin_address,
            port=channel.info.origin_port,
            timeout=policy.idle_timeout if policy is not None else 0,
        )

    def _warn_refused(self, channel_type: bytes, fields: wire.ForwardedTcpip) -> None:
        if channel_type == _FORWARDED_STREAMLOCAL:
            where = printable(fields.connected_address, 80)
        else:
            where = f"{printable(fields.connected_address, 80)}:{fields.connected_port}"
        self.warn_limited(
            "refused-open",
            f"refused {channel_type.decode()} for {where}, which we did not request",
        )

    def warn_limited(self, kind: str, message: str, level: LogLevel = LogLevel.warn) -> None:
        """
        Log ``message`` (a warning, or ``level``) unless too many of ``kind`` came lately
        (RELIABILITY.md D18); those are counted and summarised, at the same level, once
        the period is over.
        """
        self._summarise()
        self._levels[kind] = level
        if self.warnings.allow(kind, message, self._seconds()):
            _log.emit(level, "{message}", message=message)
        elif self._summary_timer is None:
            self._schedule_summary()

    def _schedule_summary(self) -> None:
        due = self.warnings.next_due()
        if self._clock is not None and due is not None and not self.stopped:
            delay = max(0.0, due - self._seconds())
            self._summary_timer = self._clock.callLater(delay, self._summary_due)

    def _summary_due(self) -> None:
        self._summary_timer = None
        self._summarise()
        self._schedule_summary()

    def _summarise(self, *, final: bool = False) -> None:
        for kind, line in self.warnings.summaries(self._seconds(), final=final):
            _log.emit(self._levels.get(kind, LogLevel.warn), "{message}", message=line)

    def _open_confirmation(self, packet: bytes) -> None:
        local_id, sender, window, max_packet = _U32X4.unpack_from(packet)
        opening = self._opening.pop(local_id, None)
        if opening is None:
            self.protocol_violation(f"unsolicited CHANNEL_OPEN_CONFIRMATION for {local_id}")
            return
        channel = ForwardedChannel(
            self,
            local_id,
            sender,
            window,
            max(max_packet, 1),
            self.window_size,
            self.max_packet,
            opening.info,
            outbound=True,
        )
        self.channels[local_id] = channel
        if opening.cancelled:
            # Nobody wants it any more: close it again (RFC 4254 §5.3).
            channel.confirmed = True
            channel.loseConnection()
            return
        channel.attach(opening.protocol)
        if not channel.finished:
            self.host.channel_event("opened", channel.info)
        opening.deferred.callback(channel)

    def _open_failure(self, packet: bytes) -> None:
        local_id, code = _U32X2.unpack_from(packet)
        description, _ = wire.decode_string(packet, 8)
        opening = self._opening.pop(local_id, None)
        if opening is None:
            self.protocol_violation(f"unsolicited CHANNEL_OPEN_FAILURE for {local_id}")
            return
        if not opening.cancelled:
            text = printable(description.decode("utf-8", "replace"))
            opening.deferred.errback(Failure(ChannelRefused(code, text)))

    def _confirm(self, channel: ForwardedChannel, protocol: IProtocol) -> None:
        self._pending.pop(channel.local_id, None)
        if self.stopped or channel.finished:
            protocol.makeConnection(channel)
            protocol.connectionLost(Failure(ConnectionLost("SSH connection lost")))
            return
        self._send(
            MSG_CHANNEL_OPEN_CONFIRMATION,
            _U32X4.pack(channel.remote_id, channel.local_id, self.window_size, self.max_packet),
        )
        channel.attach(protocol)
        if not channel.finished:
            self.host.channel_event("opened", channel.info)

    def _open_failed(self, channel: ForwardedChannel, failure: Failure) -> None:
        self._pending.pop(channel.local_id, None)
        self._forget(channel)
        if failure.check(defer.CancelledError) or self.stopped:
            return
        if failure.check(ChannelRefused):
            refused: ChannelRefused = failure.value  # type: ignore[assignment]
            code, description = refused.code, refused.description
        else:
            _log.failure("opening a forwarded channel failed", failure)
            code, description = OPEN_CONNECT_FAILED, "internal error"
        self._refuse(channel.remote_id, code, description)

    def _refuse(self, sender: int, code: int, description: str) -> None:
        self._send(
            MSG_CHANNEL_OPEN_FAILURE,
            _U32X2.pack(sender, code)
            + wire.encode_string(description.encode("utf-8")[:256])
            + wire.encode_string(b""),
        )

    def _live_channel(self, packet: bytes, what: str) -> ForwardedChannel | None:
        if len(packet) < 4:
            raise wire.WireError(f"truncated {what}")
        (local_id,) = _U32.unpack_from(packet)
        channel = self.channels.get(local_id)
        if channel is None or not channel.confirmed or channel.close_received:
            self.protocol_violation(f"{what} for unknown or closed channel {local_id}")
            return None
        return channel

    def _window_adjust(self, packet: bytes) -> None:
        channel = self._live_channel(packet, "WINDOW_ADJUST")
        if channel is None:
            return
        (amount,) = _U32.unpack_from(packet, 4)
        if channel.remote_window + amount > _MAX_U32:
            # RFC 4254 §5.2: a window may not exceed 2^32 - 1 bytes.
            self.protocol_violation("window adjusted past 2^32-1")
            return
        channel.window_adjusted(amount)

    def _channel_data(self, packet: bytes) -> None:
        channel = self._live_channel(packet, "CHANNEL_DATA")
        if channel is None:
            return
        (length,) = _U32.unpack_from(packet, 4)
        if length != len(packet) - 8:
            raise wire.WireError("CHANNEL_DATA length does not match the packet")
        if channel.eof_received:
            self.protocol_violation(f"data after EOF on channel {channel.local_id}")
            return
        if length > channel.local_window_left or length > self.max_packet:
            # RFC 4254 §5.2: the server must respect our window and packet size.
            self.protocol_violation(f"data beyond the window on channel {channel.local_id}")
            return
        if length:
            channel.data_received(packet[8:])

    def _extended_data(self, packet: bytes) -> None:
        channel = self._live_channel(packet, "CHANNEL_EXTENDED_DATA")
        if channel is None:
            return
        if len(packet) < 12:
            raise wire.WireError("truncated CHANNEL_EXTENDED_DATA")
        (length,) = _U32.unpack_from(packet, 8)
        if length > channel.local_window_left or length > self.max_packet:
            self.protocol_violation("extended data beyond the window")
            return
        # forwarded-tcpip has no stderr; the bytes still count against the window, so
        # give the window back and drop them.
        channel.local_window_left -= length
        channel.maybe_grant()

    def _channel_eof(self, packet: bytes) -> None:
        channel = self._live_channel(packet, "CHANNEL_EOF")
        if channel is None or channel.eof_received:
            return
        sent = self._packets_sent
        channel.eof_from_server()
        if self._packets_sent == sent:
            self._ack_now()

    def _channel_close(self, packet: bytes) -> None:
        if len(packet) < 4:
            raise wire.WireError("truncated CHANNEL_CLOSE")
        (local_id,) = _U32.unpack_from(packet)
        channel = self.channels.get(local_id)
        if channel is None or channel.close_received:
            self.protocol_violation(f"CHANNEL_CLOSE for unknown or closed channel {local_id}")
            return
        sent = self._packets_sent
        channel.close_from_server()
        if self._packets_sent == sent:
            self._ack_now()

    def _ack_now(self) -> None:
        # An EOF or CLOSE from the server that we do not answer at once (the CLOSE that
        # answers ours, an EOF while the target finishes), a global request that wants
        # no reply: no packet of ours carries its ACK, and sshd's Nagle holds its next
        # small packet (often the CHANNEL_OPEN of the next connection) until that ACK
        # arrives: the 43 ms stall ssh -R shows on sequential short connections.
        acknowledge_now(self._tcp_transport())

    def _channel_request(self, packet: bytes) -> None:
        channel = self._live_channel(packet, "CHANNEL_REQUEST")
        if channel is None:
            return
        _name, offset = wire.decode_string(packet, 4)
        if offset >= len(packet):
            raise wire.WireError("CHANNEL_REQUEST without want-reply flag")
        if packet[offset]:
            self._send(MSG_CHANNEL_FAILURE, _U32.pack(channel.remote_id))
