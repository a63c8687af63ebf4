"""
The connection service and forwarded channels, one protocol at a time: a fake SSH transport
records what we send, and tests feed server messages straight into the service.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from connection_fakes import FakeSSHTransport, Recorder
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from rtunnel import (
    ChannelOpenRequest,
    Forward,
    ForwardState,
    ReverseTunnel,
    TunnelObserver,
    TunnelOptions,
)
from rtunnel._core import wire
from rtunnel._core.policy import TokenBucket
from rtunnel._forward_table import ForwardTable
from rtunnel._model import ChannelInfo
from rtunnel.client.channels import connection as c
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.errors import ConnectionLostError, ForwardingError

U32 = struct.Struct(">L")


class Harness:
    def __init__(
        self, *, window: int = 64 * 1024, max_packet: int = 16 * 1024, max_channels: int = 8
    ) -> None:
        self.clock = MemoryReactorClock()
        self.tunnel = ReverseTunnel(
            self.clock,
            "server",
            22,
            options=TunnelOptions.create(
                window_size=window,
                max_packet=max_packet,
                max_channels=max_channels,
                target_connect_timeout=5,
            ),
        )
        self.ssh = FakeSSHTransport()
        self.conn = c.ForwardingConnection(
            self.tunnel._channel_host,
            window_size=window,
            max_packet=max_packet,
            max_channels=max_channels,
            on_started=lambda conn: None,
            on_stopped=lambda conn: None,
        )
        self.conn.transport = self.ssh  # type: ignore[assignment]
        self.tunnel._conn = self.conn
        self.conn.serviceStarted()

    def feed(self, message: int, payload: bytes) -> None:
        self.conn.packetReceived(message, payload)

    def forward(
        self, bind: str = "127.0.0.1", port: int = 0, allocated: int = 40000, **kw: Any
    ) -> Forward:
        kw.setdefault("factory", Factory.forProtocol(Recorder))
        d = self.tunnel.request_forwarding(bind, port, **kw)
        self.feed(c.MSG_REQUEST_SUCCESS, U32.pack(allocated) if port == 0 else b"")
        return _result(d)

    def open(
        self,
        sender: int = 7,
        address: str = "127.0.0.1",
        port: int = 40000,
        window: int = 1 << 20,
        max_packet: int = 32768,
        kind: bytes = b"forwarded-tcpip",
    ) -> None:
        data = wire.encode_forwarded_tcpip(wire.ForwardedTcpip(address, port, "203.0.113.9", 5555))
        self.feed(
            c.MSG_CHANNEL_OPEN,
            wire.encode_string(kind) + struct.pack(">3L", sender, window, max_packet) + data,
        )

    def failures(self) -> list[tuple[int, int, bytes]]:
        out = []
        for p in self.ssh.of(c.MSG_CHANNEL_OPEN_FAILURE):
            sender, code = struct.unpack(">2L", p[:8])
            out.append((sender, code, wire.decode_string(p, 8)[0]))
        return out


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@pytest.fixture(autouse=True)
def _reset_recorder() -> None:
    Recorder.instances = []


def test_port_zero_forward_reports_allocated_port() -> None:
    h = Harness()
    fwd = h.forward(port=0, allocated=40123)
    assert fwd.port == 40123 and fwd.state is ForwardState.ACTIVE
    (req,) = h.ssh.of(c.MSG_GLOBAL_REQUEST)
    assert req == wire.encode_string(b"tcpip-forward") + b"\x01" + wire.encode_tcpip_forward(
        "127.0.0.1", 0
    )


def test_event_mode_open_is_confirmed_and_data_flows() -> None:
    h = Harness()
    h.forward()
    h.open(sender=7)
    (confirm,) = h.ssh.of(c.MSG_CHANNEL_OPEN_CONFIRMATION)
    assert struct.unpack(">4L", confirm) == (7, 0, 64 * 1024, 16 * 1024)
    (proto,) = Recorder.instances
    h.feed(c.MSG_CHANNEL_DATA, U32.pack(0) + wire.encode_string(b"hello"))
    assert proto.data == [b"hello"]
    info = h.tunnel.channel(0)
    assert (info.origin_address, info.origin_port, info.bytes_received) == ("203.0.113.9", 5555, 5)
    assert proto.transport.getPeer().host == "203.0.113.9"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("address", "port"),
    [("127.0.0.1", 40001), ("10.0.0.1", 40000), ("", 0)],
)
def test_open_for_a_forward_we_never_requested_is_refused(address: str, port: int) -> None:
    # D1/D2: nothing is connected, the open is refused.
    h = Harness()
    h.forward()
    h.forward(bind="::1", allocated=40000)  # same port on two binds: address must decide
    h.open(address=address, port=port)
    assert h.failures() == [(7, c.OPEN_ADMINISTRATIVELY_PROHIBITED, b"no such forward")]
    assert Recorder.instances == []


def test_open_after_cancel_is_refused() -> None:
    # D3 / B4: opens that race the cancel are refused.
    h = Harness()
    h.forward()
    d = h.tunnel.cancel_forwarding("127.0.0.1", 40000)
    h.open()
    h.feed(c.MSG_REQUEST_SUCCESS, b"")
    _result(d)
    assert h.failures()[0][1] == c.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert h.tunnel.forwards == []


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (b"session", c.OPEN_ADMINISTRATIVELY_PROHIBITED),
        (b"x11", c.OPEN_ADMINISTRATIVELY_PROHIBITED),
        (b"auth-agent@openssh.com", c.OPEN_ADMINISTRATIVELY_PROHIBITED),
        (b"direct-tcpip", c.OPEN_ADMINISTRATIVELY_PROHIBITED),
        (b"made-up@example.com", c.OPEN_UNKNOWN_CHANNEL_TYPE),
    ],
)
def test_other_channel_types_are_refused(kind: bytes, code: int) -> None:
    # D4.
    h = Harness()
    h.forward()
    h.open(kind=kind)
    assert [f[1] for f in h.failures()] == [code]
    assert Recorder.instances == [] and h.conn.channels == {}


def test_accept_hook_sees_the_request_and_can_refuse_later() -> None:
    seen: list[ChannelOpenRequest] = []
    answer: Deferred[bool] = Deferred()

    def accept(request: ChannelOpenRequest) -> Deferred[bool]:
        seen.append(request)
        return answer

    h = Harness()
    h.forward(accept=accept)
    h.open()
    assert seen[0].origin_address == "203.0.113.9" and seen[0].connected_port == 40000
    assert seen[0].service == "forwarded-tcpip"
    assert h.ssh.of(c.MSG_CHANNEL_OPEN_CONFIRMATION) == []
    answer.callback(False)
    assert h.failures() == [(7, 1, b"refused by the application")]


@pytest.mark.parametrize("behaviour", ["raises", "never"])
def test_accept_hook_failure_or_silence_refuses_only_that_channel(behaviour: str) -> None:
    # C14.
    def accept(request: ChannelOpenRequest) -> Any:
        if behaviour == "raises":
            raise RuntimeError("boom")
        return Deferred()

    h = Harness()
    h.forward(accept=accept)
    h.open()
    h.clock.advance(11)
    assert [f[1] for f in h.failures()] == [c.OPEN_ADMINISTRATIVELY_PROHIBITED]
    assert h.conn.channels == {} and h.ssh.disconnects == []


def test_channel_cap_gives_resource_shortage() -> None:
    # C11.
    h = Harness(max_channels=2)
    h.forward()
    for sender in range(3):
        h.open(sender=sender)
    assert h.failures() == [(2, c.OPEN_RESOURCE_SHORTAGE, b"too many channels")]


def test_window_is_granted_only_as_the_consumer_drains() -> None:
    h = Harness(window=64 * 1024, max_packet=16 * 1024)
    h.forward()
    h.open()
    (proto,) = Recorder.instances
    channel = h.conn.channels[0]
    channel.pauseProducing()  # the consumer is full
    for _ in range(4):
        h.feed(c.MSG_CHANNEL_DATA, U32.pack(0) + wire.encode_string(b"x" * 16384))
    assert h.ssh.of(c.MSG_CHANNEL_WINDOW_ADJUST) == []
    # A fifth packet would exceed the window we granted: protocol error (D7).
    h.feed(c.MSG_CHANNEL_DATA, U32.pack(0) + wire.encode_string(b"x"))
    assert h.ssh.disconnects and h.ssh.disconnects[0][0] == c.DISCONNECT_PROTOCOL_ERROR
    assert len(proto.data) == 4


def test_window_grant_after_resume() -> None:
    h = Harness(window=64 * 1024, max_packet=16 * 1024)
    h.forward()
    h.open()
    channel = h.conn.channels[0]
    channel.pauseProducing()
    for _ in range(3):
        h.feed(c.MSG_CHANNEL_DATA, U32.pack(0) + wire.encode_string(b"x" * 16384))
    channel.resumeProducing()
    (adjust,) = h.ssh.of(c.MSG_CHANNEL_WINDOW_ADJUST)
    assert struct.unpack(">2L", adjust) == (7, 3 * 16384)


def test_outgoing_data_is_chunked_and_held_for_window() -> None:
    # C15: the server allows 1000-byte packets and a 2500-byte window.
    h = Harness()
    h.forward()
    h.open(window=2500, max_packet=1000)
    (proto,) = Recorder.instances
    ready: list[ChannelInfo] = []

    class Obs(TunnelObserver):
        def channel_ready_to_send(self, info: ChannelInfo) -> None:
            ready.append(info)

    h.tunnel.add_observer(Obs())
    assert proto.transport is not None
    proto.transport.write(b"a" * 4000)
    sizes = [len(p) - 8 for p in h.ssh.of(c.MSG_CHANNEL_DATA)]
    assert sizes == [1000, 1000, 500]
    h.feed(c.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", 0, 10000))
    sizes = [len(p) - 8 for p in h.ssh.of(c.MSG_CHANNEL_DATA)]
    assert sizes == [1000, 1000, 500, 1000, 500]
    assert h.tunnel.channel(0).bytes_sent == 4000 and len(ready) == 1


def test_max_transfer_rate_holds_data_and_pauses_the_source() -> None:
    # MaxTransferRate 10,000 B/s (burst 1 KiB, a tenth of a second's worth at least
    # 1 KiB): what the bucket does not allow waits in the channel, whose producer is
    # paused, and goes out as the clock earns it, in order; never more than rate x time +
    # burst in all.
    h = Harness()
    h.conn._clock = h.clock
    h.conn._seconds = h.clock.seconds
    h.conn.rate_limit = TokenBucket(10_000, h.clock.seconds())
    h.forward()
    h.open()
    h.open(sender=8)
    first, second = Recorder.instances
    paused: list[str] = []

    @implementer(IPushProducer)
    class Source:
        def pauseProducing(self) -> None:  # noqa: N802
            paused.append("pause")

        def resumeProducing(self) -> None:  # noqa: N802
            paused.append("resume")

        def stopProducing(self) -> None:  # noqa: N802
            pass

    assert first.transport is not None and second.transport is not None
    first.transport.registerProducer(Source(), True)  # type: ignore[attr-defined]
    payload = bytes(range(256)) * 40  # 10,240 bytes
    first.transport.write(payload)
    second.transport.write(b"b" * 3000)

    def sent(sender: int) -> bytes:
        return b"".join(
            p[8:] for p in h.ssh.of(c.MSG_CHANNEL_DATA) if U32.unpack(p[:4])[0] == sender
        )

    assert len(sent(7)) == 1024 and sent(8) == b""
    assert paused == ["pause"]
    for _ in range(200):
        h.clock.advance(0.05)
        total = len(sent(7)) + len(sent(8))
        assert total <= 10_000 * h.clock.seconds() + 1024 + 1  # +1: float rounding
    assert sent(7) == payload and sent(8) == b"b" * 3000
    assert paused == ["pause", "resume"]
    # Both channels took turns: the second did not wait for all of the first.
    order = [U32.unpack(p[:4])[0] for p in h.ssh.of(c.MSG_CHANNEL_DATA)]
    assert order.index(8) < len(order) - 1 - order[::-1].index(7)
    assert h.clock.seconds() >= (10_240 + 3000 - 1024) / 10_000


def test_huge_peer_packet_size_is_capped() -> None:
    h = Harness()
    h.forward()
    h.open(window=0xFFFFFFFF, max_packet=0xFFFFFFFF)
    (proto,) = Recorder.instances
    proto.transport.write(b"z" * (600 * 1024))  # type: ignore[union-attr]
    assert max(len(p) - 8 for p in h.ssh.of(c.MSG_CHANNEL_DATA)) == 256 * 1024


def test_window_adjust_past_2_32_is_a_protocol_error() -> None:
    # D6.
    h = Harness()
    h.forward()
    h.open(window=0xFFFFFFF0)
    h.feed(c.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", 0, 0x100))
    assert h.ssh.disconnects[0][0] == c.DISCONNECT_PROTOCOL_ERROR


def test_max_packet_zero_is_refused_cleanly() -> None:
    # D5.
    h = Harness()
    h.forward()
    h.open(max_packet=0)
    assert [f[1] for f in h.failures()] == [c.OPEN_RESOURCE_SHORTAGE]


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (c.MSG_CHANNEL_DATA, U32.pack(99) + wire.encode_string(b"x")),  # unknown channel
        (c.MSG_CHANNEL_DATA, U32.pack(0) + U32.pack(5) + b"ab"),  # length lies
        (c.MSG_CHANNEL_DATA, b"\x00"),  # truncated
        (c.MSG_CHANNEL_EOF, U32.pack(3)),
        (c.MSG_CHANNEL_CLOSE, U32.pack(3)),
        (c.MSG_CHANNEL_WINDOW_ADJUST, U32.pack(0)),
        (c.MSG_REQUEST_SUCCESS, b""),  # D9: nothing asked
        (c.MSG_REQUEST_FAILURE, b""),
        (c.MSG_CHANNEL_SUCCESS, U32.pack(0)),
        (c.MSG_CHANNEL_OPEN_CONFIRMATION, b"\x00" * 16),
        (c.MSG_GLOBAL_REQUEST, b"\x00\x00\x00\x09keepalive"),  # no want-reply byte
        (c.MSG_CHANNEL_OPEN, b"\x00\x00\x00\x0fforwarded-tcpip"),
    ],
)
def test_malformed_or_unexpected_messages_disconnect_cleanly(message: int, payload: bytes) -> None:
    # D8/D9/D16: a protocol-error disconnect, never an exception.
    h = Harness()
    h.forward()
    h.open()
    h.feed(message, payload)
    assert [d[0] for d in h.ssh.disconnects] == [c.DISCONNECT_PROTOCOL_ERROR]
    assert h.conn.protocol_error is not None


def test_messages_after_close_are_protocol_errors() -> None:
    h = Harness()
    h.forward()
    h.open()
    (proto,) = Recorder.instances
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(0))
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(7)]  # answered once
    assert proto.lost and h.tunnel.channels == []
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(0))
    assert h.ssh.disconnects[0][0] == c.DISCONNECT_PROTOCOL_ERROR
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(7)]


def test_server_global_requests_are_refused() -> None:
    # B7 (tcpip-forward from the server) and B8 (keepalive / hostkeys).
    h = Harness()
    for name, want in [
        (b"tcpip-forward", 1),
        (b"keepalive@openssh.com", 1),
        (b"hostkeys-00@openssh.com", 0),
    ]:
        h.feed(c.MSG_GLOBAL_REQUEST, wire.encode_string(name) + bytes([want]) + b"junk")
    assert h.ssh.of(c.MSG_REQUEST_FAILURE) == [b"", b""]
    assert h.ssh.disconnects == []


def test_global_replies_are_matched_in_order() -> None:
    # B5: three requests in flight, the middle one refused.
    h = Harness()
    factory = Factory.forProtocol(Recorder)
    ds = [h.tunnel.request_forwarding("127.0.0.1", p, factory=factory) for p in (1001, 1002, 1003)]
    h.feed(c.MSG_REQUEST_SUCCESS, b"")
    h.feed(c.MSG_REQUEST_FAILURE, b"")
    h.feed(c.MSG_REQUEST_SUCCESS, b"")
    assert _result(ds[0]).port == 1001
    with pytest.raises(ForwardingError, match="listen port 1002"):
        _result(ds[1])
    assert _result(ds[2]).port == 1003
    assert [f.port for f in h.tunnel.forwards] == [1001, 1003]


def test_channel_requests_get_failure() -> None:
    h = Harness()
    h.forward()
    h.open()
    h.feed(
        c.MSG_CHANNEL_REQUEST,
        U32.pack(0) + wire.encode_string(b"exit-status") + b"\x01" + U32.pack(0),
    )
    assert h.ssh.of(c.MSG_CHANNEL_FAILURE) == [U32.pack(7)]


def test_connection_loss_tells_every_channel_and_pending_request() -> None:
    # C13 at this layer: protocols see the loss; pending requests fail. (The tunnel above
    # decides, once it hears of the loss, whether a forward request waits for the next
    # connection: tests/test_first_forwards_lost.py.)
    h = Harness()
    h.forward()
    h.open(sender=1)
    h.open(sender=2)
    pending = h.conn.send_global_request(b"tcpip-forward", wire.encode_tcpip_forward("", 0))
    h.conn.serviceStopped()
    assert all(p.lost for p in Recorder.instances) and len(Recorder.instances) == 2
    with pytest.raises(ConnectionLostError):
        _result(pending)


def test_protocol_exception_closes_only_its_channel() -> None:
    class Bad(Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            raise ValueError("app bug")

    h = Harness()
    h.forward(factory=Factory.forProtocol(Bad))
    h.open(sender=1)
    h.feed(c.MSG_CHANNEL_DATA, U32.pack(0) + wire.encode_string(b"x"))
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(1)] and h.ssh.disconnects == []


def test_half_close_and_close_by_channel_id() -> None:
    h = Harness()
    h.forward()
    h.open()
    h.tunnel.send_channel_data(0, b"abc")
    h.tunnel.send_channel_eof(0)
    h.tunnel.close_channel(0)
    assert h.ssh.of(c.MSG_CHANNEL_EOF) == [U32.pack(7)]
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(7)]
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(0))
    assert h.tunnel.channels == []


# -- The ACK a lone EOF or CLOSE from the server needs (the ssh -R 43 ms stall)


@implementer(IConsumer)
class _TCPWithSocket:
    """The server's TCP connection as the service sees it, with a real socket handle."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.bufferSize = 64 * 1024

    def getHandle(self) -> socket.socket:  # noqa: N802
        return self.sock

    def registerProducer(self, producer: object, streaming: bool) -> None:  # noqa: N802
        pass

    def unregisterProducer(self) -> None:  # noqa: N802
        pass

    def write(self, data: bytes) -> None:
        pass


@pytest.fixture
def tcp_pair() -> Any:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    yield client
    client.close()
    accepted.close()


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
needs_quickack = pytest.mark.skipif(_QUICKACK is None, reason="TCP_QUICKACK is Linux-only")


def _quickack_harness(sock: socket.socket, factory: Any = None) -> Harness:
    h = Harness()
    h.ssh.transport = _TCPWithSocket(sock)  # type: ignore[assignment]
    h.conn.serviceStarted()
    h.forward(factory=factory or Factory.forProtocol(Recorder))
    h.open(sender=7)
    # Delayed-ACK ("pingpong") mode: what setting TCP_QUICKACK to 1 leaves (tcp(7)).
    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 0)  # type: ignore[arg-type]
    return h


def _quickack(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, _QUICKACK)  # type: ignore[arg-type]


@needs_quickack
def test_the_servers_close_answering_ours_is_acked_at_once(tcp_pair: socket.socket) -> None:
    h = _quickack_harness(tcp_pair)
    (proto,) = Recorder.instances
    assert proto.transport is not None
    proto.transport.loseConnection()  # we close first: EOF, CLOSE
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(7)]
    assert _quickack(tcp_pair) == 0
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(0))  # the server's answer: nothing of ours follows
    assert _quickack(tcp_pair) == 1


@needs_quickack
def test_a_close_we_answer_needs_no_quickack(tcp_pair: socket.socket) -> None:
    h = _quickack_harness(tcp_pair)
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(0))  # the server closes first; our CLOSE carries the ACK
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(7)]
    assert _quickack(tcp_pair) == 0


@needs_quickack
def test_an_eof_we_do_not_answer_yet_is_acked_at_once(tcp_pair: socket.socket) -> None:
    @implementer(IHalfCloseableProtocol)
    class HalfCloser(Recorder):
        def readConnectionLost(self) -> None:  # noqa: N802
            pass  # keeps writing: nothing goes back to the server now

        def writeConnectionLost(self) -> None:  # noqa: N802
            pass

    h = _quickack_harness(tcp_pair, Factory.forProtocol(HalfCloser))
    h.feed(c.MSG_CHANNEL_EOF, U32.pack(0))
    assert h.ssh.of(c.MSG_CHANNEL_EOF) == []
    assert _quickack(tcp_pair) == 1


@needs_quickack
def test_a_global_request_wanting_no_reply_is_acked_at_once(tcp_pair: socket.socket) -> None:
    # sshd 9.2 sends hostkeys-00@openssh.com right after the logon, ahead of the answers
    # to our tcpip-forward requests; without the ACK its Nagle held them 40 ms.
    h = _quickack_harness(tcp_pair)
    h.feed(
        c.MSG_GLOBAL_REQUEST,
        wire.encode_string(b"hostkeys-00@openssh.com") + b"\x00" + wire.encode_string(b"k"),
    )
    assert h.ssh.of(c.MSG_REQUEST_FAILURE) == []
    assert _quickack(tcp_pair) == 1


@needs_quickack
def test_a_global_request_we_refuse_needs_no_quickack(tcp_pair: socket.socket) -> None:
    h = _quickack_harness(tcp_pair)
    h.feed(c.MSG_GLOBAL_REQUEST, wire.encode_string(b"keepalive@openssh.com") + b"\x01")
    assert h.ssh.of(c.MSG_REQUEST_FAILURE) == [b""]  # our answer carries the ACK
    assert _quickack(tcp_pair) == 0


def test_the_server_socket_reads_and_queues_more_than_twisteds_default(
    tcp_pair: socket.socket,
) -> None:
    h = Harness()
    tcp = _TCPWithSocket(tcp_pair)
    h.ssh.transport = tcp  # type: ignore[assignment]
    h.conn.serviceStarted()
    assert tcp.bufferSize == c.SERVER_SOCKET_BUFFER > 64 * 1024


# -- the one channel we open: direct-tcpip (RFC 4254 §7.2), for a jump host


def _open_direct(h: Harness) -> tuple[Deferred[Any], Recorder, int]:
    protocol = Recorder()
    d = h.conn.open_direct_tcpip("target.example", 2222, protocol)
    (packet,) = h.ssh.of(c.MSG_CHANNEL_OPEN)
    kind, offset = wire.decode_string(packet)
    assert kind == b"direct-tcpip"
    local_id, window, max_packet = struct.unpack_from(">3L", packet, offset)
    assert (window, max_packet) == (h.conn.window_size, h.conn.max_packet)
    host, offset = wire.decode_string(packet, offset + 12)
    (port,) = U32.unpack_from(packet, offset)
    origin, offset = wire.decode_string(packet, offset + 4)
    (origin_port,) = U32.unpack_from(packet, offset)
    assert (host, port, origin, origin_port) == (b"target.example", 2222, b"127.0.0.1", 65535)
    return d, protocol, local_id


def test_a_direct_tcpip_open_is_completed_by_the_confirmation() -> None:
    h = Harness()
    d, protocol, local_id = _open_direct(h)
    assert not d.called
    h.feed(c.MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">4L", local_id, 33, 100, 50))
    channel: ForwardedChannel = _result(d)
    assert protocol.transport is channel
    peer = channel.getPeer()
    assert (peer.host, peer.port) == ("target.example", 2222)
    # The channel is live both ways, with the server's window and packet size.
    channel.write(b"x" * 120)
    sent = h.ssh.of(c.MSG_CHANNEL_DATA)
    assert [struct.unpack_from(">2L", p) for p in sent] == [(33, 50), (33, 50)]
    h.feed(c.MSG_CHANNEL_DATA, U32.pack(local_id) + wire.encode_string(b"hello"))
    assert protocol.data == [b"hello"]
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(local_id))
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(33)]
    assert len(protocol.lost) == 1
    assert h.conn.channels == {}
    assert h.ssh.disconnects == []


def test_a_direct_tcpip_open_fails_with_the_servers_reason() -> None:
    h = Harness()
    d, protocol, local_id = _open_direct(h)
    h.feed(
        c.MSG_CHANNEL_OPEN_FAILURE,
        struct.pack(">2L", local_id, c.OPEN_ADMINISTRATIVELY_PROHIBITED)
        + wire.encode_string(b"open failed")
        + wire.encode_string(b""),
    )
    with pytest.raises(c.ChannelRefused) as refused:
        _result(d)
    assert (refused.value.code, refused.value.description) == (1, "open failed")
    assert protocol.transport is None and h.conn.channels == {}
    # Answered once: a second answer for it is unsolicited.
    h.feed(c.MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">4L", local_id, 1, 100, 50))
    assert [d[0] for d in h.ssh.disconnects] == [c.DISCONNECT_PROTOCOL_ERROR]


@pytest.mark.parametrize("message", [c.MSG_CHANNEL_OPEN_CONFIRMATION, c.MSG_CHANNEL_OPEN_FAILURE])
def test_an_answer_to_an_open_we_did_not_send_is_a_protocol_violation(message: int) -> None:
    h = Harness()
    d, _protocol, local_id = _open_direct(h)
    if message == c.MSG_CHANNEL_OPEN_CONFIRMATION:
        payload = struct.pack(">4L", local_id + 1, 1, 100, 50)
    else:
        payload = struct.pack(">2L", local_id + 1, 2) + wire.encode_string(b"no") + U32.pack(0)
    h.feed(message, payload)
    assert [d[0] for d in h.ssh.disconnects] == [c.DISCONNECT_PROTOCOL_ERROR]
    assert "unsolicited" in str(h.conn.protocol_error)
    assert not d.called


def test_a_cancelled_direct_tcpip_open_is_closed_when_confirmed() -> None:
    h = Harness()
    d, protocol, local_id = _open_direct(h)
    d.cancel()
    h.feed(c.MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">4L", local_id, 33, 100, 50))
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == [U32.pack(33)]
    assert protocol.transport is None
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(local_id))
    assert h.conn.channels == {} and h.ssh.disconnects == []


def test_a_direct_tcpip_open_fails_when_the_connection_is_lost() -> None:
    h = Harness()
    d, _protocol, _local_id = _open_direct(h)
    h.conn.serviceStopped()
    with pytest.raises(ConnectionLostError):
        _result(d)
    with pytest.raises(ConnectionLostError):
        _result(h.conn.open_direct_tcpip("t", 1, Recorder()))


def test_the_connections_callbacks_are_not_public_methods_of_the_tunnel() -> None:
    # Issue #16: they were public by accident; the connection gets a private object.
    callbacks = ("find_forward", "find_socket_forward", "open_target", "channel_event")
    assert [n for n in callbacks if hasattr(ReverseTunnel, n)] == []
    h = Harness()
    assert h.conn.host is h.tunnel._channel_host
    assert all(callable(getattr(h.conn.host, n)) for n in callbacks)


def test_the_connection_host_finds_only_active_forwards_and_counts_channels() -> None:
    h = Harness()
    host = h.tunnel._channel_host
    fwd = h.forward()
    assert host.find_forward("127.0.0.1", 40000) is fwd
    assert host.find_forward("127.0.0.1", 40001) is None
    assert host.find_socket_forward("127.0.0.1") is None
    h.open(sender=7)
    h.open(sender=8)
    assert h.tunnel.statistics().channels_opened == 2
    h.tunnel.close_channel(0)
    h.feed(c.MSG_CHANNEL_CLOSE, U32.pack(0))
    assert [i.channel_id for i in h.tunnel.channels] == [1]
    d = h.tunnel.cancel_forwarding("127.0.0.1", 40000)
    # Cancelled before the server answers (B4): no longer found.
    assert fwd.state is ForwardState.CANCELLED
    assert host.find_forward("127.0.0.1", 40000) is None
    h.feed(c.MSG_REQUEST_SUCCESS, b"")
    _result(d)


def test_a_forward_no_longer_in_the_table_cannot_be_made_active() -> None:
    # The table refuses the move instead of reviving a cancelled forward.
    from rtunnel._core.forwards import ForwardEvent, ForwardTransitionError

    h = Harness()
    fwd = h.forward()
    d = h.tunnel.cancel_forwarding("127.0.0.1", 40000)
    h.feed(c.MSG_REQUEST_SUCCESS, b"")
    _result(d)
    with pytest.raises(ForwardTransitionError, match="a cancelled forward cannot take"):
        ForwardTable.move(fwd, ForwardEvent.AGREED)
    assert fwd.state is ForwardState.CANCELLED


@pytest.mark.parametrize("answer", ["agreed", "refused"])
def test_a_forward_cancelled_while_asked_for_again_stays_cancelled(answer: str) -> None:
    # After a reconnect the forward is asked for again (REQUEST); cancel_forwarding() in
    # the meantime wins: the server's late answer neither revives the forward nor
    # schedules a retry, nor breaks the re-requesting with an internal error.
    from rtunnel._core.forwards import ForwardEvent

    h = Harness()
    watcher = _States()
    h.tunnel.add_observer(watcher)
    fwd = h.forward()
    ForwardTable.move(fwd, ForwardEvent.LOST)
    again = Deferred.fromCoroutine(h.tunnel._table.retry(fwd))
    cancelled = h.tunnel.cancel_forwarding("127.0.0.1", 40000)
    if answer == "agreed":
        h.feed(c.MSG_REQUEST_SUCCESS, U32.pack(40000))
    else:
        h.feed(c.MSG_REQUEST_FAILURE, b"")
    h.feed(c.MSG_REQUEST_SUCCESS, b"")  # the cancel's
    assert _result(again) is None and _result(cancelled) is None
    assert fwd.state is ForwardState.CANCELLED and h.tunnel.forwards == []
    assert watcher.states == [ForwardState.ACTIVE, ForwardState.CANCELLED]
    assert h.clock.getDelayedCalls() == []


class _States(TunnelObserver):
    def __init__(self) -> None:
        self.states: list[ForwardState] = []

    def forward_state_changed(self, forward: Forward) -> None:
        self.states.append(forward.state)
