"""
A policy per forward (issue #15) in the connection service: opens with chosen originators
fed straight in, the OPEN_FAILURE codes and texts, the counters, the channel cap and the
rate on a task clock, the shared bandwidth cap, the per-forward idle timeout, the refusal
log kept short; and once through the whole stack in memory (MemoryPair).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from connection_fakes import FakeSSHTransport, Recorder
from memory_stack import Stack, Upper, result_of
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from rtunnel import Forward, ForwardingError, ForwardPolicy, ReverseTunnel, SpecError, TunnelOptions
from rtunnel._core import wire
from rtunnel.client.channels import connection as c
from rtunnel.client.channels.channel import CappedChannel, ForwardedChannel
from rtunnel.client.channels.idle import IdleChannelReaper

U32 = struct.Struct(">L")


class Harness:
    """The connection service on a task clock, the tunnel's host behind it."""

    def __init__(self, max_channels: int = 1000) -> None:
        self.clock = MemoryReactorClock()
        self.tunnel = ReverseTunnel(
            self.clock,
            "server",
            22,
            options=TunnelOptions.create(max_channels=max_channels, target_connect_timeout=5),
        )
        self.ssh = FakeSSHTransport()
        self.conn = c.ForwardingConnection(
            self.tunnel._channel_host,
            window_size=1 << 20,
            max_packet=32768,
            max_channels=max_channels,
            on_started=lambda conn: None,
            on_stopped=lambda conn: None,
            clock=self.clock,
        )
        self.conn.transport = self.ssh  # type: ignore[assignment]
        self.tunnel._conn = self.conn
        self.conn.serviceStarted()
        self.sender = 0

    def forward(self, port: int, policy: ForwardPolicy | None = None) -> Forward:
        d = self.tunnel.request_forwarding(
            "127.0.0.1", port, factory=Factory.forProtocol(Recorder), policy=policy
        )
        self.conn.packetReceived(c.MSG_REQUEST_SUCCESS, b"")
        return _result(d)

    def open(self, port: int, origin: str = "203.0.113.9") -> int:
        """Open a channel from ``origin`` to listen port ``port``; the server's id for it."""
        self.sender += 1
        data = wire.encode_forwarded_tcpip(wire.ForwardedTcpip("127.0.0.1", port, origin, 5555))
        self.conn.packetReceived(
            c.MSG_CHANNEL_OPEN,
            wire.encode_string(b"forwarded-tcpip")
            + struct.pack(">3L", self.sender, 1 << 20, 32768)
            + data,
        )
        return self.sender

    def failures(self) -> dict[int, tuple[int, bytes]]:
        out = {}
        for p in self.ssh.of(c.MSG_CHANNEL_OPEN_FAILURE):
            sender, code = struct.unpack(">2L", p[:8])
            out[sender] = (code, wire.decode_string(p, 8)[0])
        return out

    def confirmed(self) -> set[int]:
        return {U32.unpack(p[:4])[0] for p in self.ssh.of(c.MSG_CHANNEL_OPEN_CONFIRMATION)}

    def close_from_server(self, local_id: int) -> None:
        self.conn.packetReceived(c.MSG_CHANNEL_CLOSE, U32.pack(local_id))

    def sent_on(self, sender: int) -> int:
        return sum(
            len(p) - 8 for p in self.ssh.of(c.MSG_CHANNEL_DATA) if U32.unpack(p[:4])[0] == sender
        )


def _result(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


@pytest.fixture(autouse=True)
def _reset_recorder() -> None:
    Recorder.instances = []


def test_originators_are_allowed_and_denied_with_administratively_prohibited() -> None:
    h = Harness()
    forward = h.forward(
        8080, ForwardPolicy(allow=("10.0.0.0/8", "2001:db8::/32"), deny=("10.0.0.5",))
    )
    origins = {
        "10.1.2.3": True,
        "10.0.0.5": False,
        "::ffff:10.0.0.5": False,
        "::ffff:10.7.7.7": True,
        "192.0.2.1": False,
        "2001:db8::9": True,
        "::1": False,
    }
    senders = {origin: h.open(8080, origin) for origin in origins}
    failures = h.failures()
    for origin, allowed in origins.items():
        sender = senders[origin]
        if allowed:
            assert sender in h.confirmed(), origin
        else:
            code, text = failures[sender]
            assert code == c.OPEN_ADMINISTRATIVELY_PROHIBITED == 1, origin
            reason = b"originator denied" if "10.0.0.5" in origin else b"originator not allowed"
            assert text == reason, origin
    assert forward.refused == {"denied": 2, "not-allowed": 2}
    assert forward.channels_open == 3 and len(Recorder.instances) == 3


def test_the_channel_cap_gives_resource_shortage_and_frees_on_close() -> None:
    h = Harness()
    forward = h.forward(8080, ForwardPolicy(max_channels=2))
    first, second, third = (h.open(8080) for _ in range(3))
    assert h.confirmed() == {first, second}
    assert h.failures() == {third: (c.OPEN_RESOURCE_SHORTAGE, b"too many connections")}
    h.close_from_server(0)  # our id of the first channel
    fourth = h.open(8080)
    assert fourth in h.confirmed()
    assert forward.refused == {"max-channels": 1}
    assert forward.gate is not None and forward.gate.active == 2


def test_the_rate_holds_on_the_clock() -> None:
    h = Harness()
    forward = h.forward(8080, ForwardPolicy(rate=2, burst=3))
    opened = [h.open(8080) for _ in range(10)]
    assert len(h.confirmed()) == 3
    for _ in range(10):
        h.clock.advance(0.5)  # one token each time
        opened += [h.open(8080) for _ in range(5)]
    assert len(h.confirmed()) == 3 + 10
    assert forward.refused == {"rate": len(opened) - 13}
    code, text = h.failures()[opened[-1]]
    assert (code, text) == (c.OPEN_RESOURCE_SHORTAGE, b"too many new connections")


def test_other_forwards_are_untouched_and_pay_nothing() -> None:
    h = Harness()
    h.forward(8080, ForwardPolicy(deny=("0.0.0.0/0", "::/0"), max_channels=1))
    plain = h.forward(8081)
    assert plain.gate is None and plain.policy is None
    for _ in range(50):
        h.open(8080, "10.0.0.1")
        h.open(8081, "10.0.0.1")
    assert len(h.confirmed()) == 50 and len(h.failures()) == 50
    # A forward without a policy gets the plain channel class, no gate to release.
    channels = list(h.conn.channels.values())
    assert all(type(ch) is ForwardedChannel and ch.gate is None for ch in channels)
    assert plain.refused == {}


def test_channels_get_the_capped_class_only_with_a_bandwidth_cap() -> None:
    h = Harness()
    h.forward(8080, ForwardPolicy(allow=("0.0.0.0/0",)))
    h.forward(8081, ForwardPolicy(bandwidth=10_000))
    h.open(8080)
    h.open(8081)
    first, second = h.conn.channels.values()
    assert type(first) is ForwardedChannel and first.gate is not None
    assert type(second) is CappedChannel


def test_the_bandwidth_cap_is_shared_by_the_forwards_channels_only() -> None:
    # 10,000 B/s for forward 8080, whatever its channels number; 8081 has none.
    h = Harness()
    h.forward(8080, ForwardPolicy(bandwidth=10_000))
    h.forward(8081)
    a, b = h.open(8080), h.open(8080)
    other = h.open(8081)
    proto_a, proto_b, proto_other = Recorder.instances
    for proto in (proto_a, proto_b, proto_other):
        assert proto.transport is not None
    proto_a.transport.write(b"a" * 20_000)  # type: ignore[union-attr]
    proto_b.transport.write(b"b" * 20_000)  # type: ignore[union-attr]
    proto_other.transport.write(b"o" * 100_000)  # type: ignore[union-attr]
    assert h.sent_on(other) == 100_000  # at once
    start = h.clock.seconds()
    for _ in range(60):
        h.clock.advance(0.05)
        elapsed = h.clock.seconds() - start
        total = h.sent_on(a) + h.sent_on(b)
        burst = 1024
        assert total <= 10_000 * elapsed + burst + 1
        assert total >= 10_000 * elapsed - 10_000 * 0.1  # paced, not starved
    # Both channels got a share (they take turns).
    assert h.sent_on(a) > 5_000 and h.sent_on(b) > 5_000


def test_the_forwards_idle_timeout_closes_only_its_channels() -> None:
    h = Harness()
    h.forward(8080, ForwardPolicy(idle_timeout=2))
    h.forward(8081)
    h.forward(8082, ForwardPolicy(idle_timeout=0))  # never, whatever the tunnel's
    for port in (8080, 8081, 8082):
        h.open(port)
    # The tunnel-wide reaper (10 s) leaves the channels of forwards with their own.
    closed: list[int] = []
    tunnel_wide = IdleChannelReaper(
        h.conn, h.clock, 10, False, lambda ch: closed.append(ch.local_id)
    )
    tunnel_wide.start()
    for _ in range(19):
        h.clock.advance(0.1)
    assert h.ssh.of(c.MSG_CHANNEL_CLOSE) == []
    for _ in range(5):
        h.clock.advance(0.1)
    # Between 2 and 2.4 s (a sample after 2 s of quiet): 8080's channel (the server's
    # id 1) closed, alone.
    assert [U32.unpack(p)[0] for p in h.ssh.of(c.MSG_CHANNEL_CLOSE)] == [1]
    for _ in range(100):
        h.clock.advance(0.1)
    # At 10.5 s+: the tunnel-wide one took 8081's channel, never 8082's.
    assert closed == [1]
    assert sorted(U32.unpack(p)[0] for p in h.ssh.of(c.MSG_CHANNEL_CLOSE)) == [1, 2]
    tunnel_wide.stop()


def test_refusals_are_counted_always_and_logged_a_few_times() -> None:
    h = Harness()
    forward = h.forward(8080, ForwardPolicy(deny=("10.0.0.0/8",)))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for i in range(500):
            h.open(8080, f"10.0.{i // 250}.{i % 250}")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e.get("message", "") for e in events if "forward policy" in str(e.get("message"))]
    assert len(lines) == 5  # RepeatLimiter's burst per minute
    assert lines[0] == (
        "Refused a connection from 10.0.0.0 port 5555 to listen port 8080: originator "
        "denied (forward policy)."
    )
    assert forward.refused == {"denied": 500}


def test_a_lost_connection_releases_every_slot() -> None:
    h = Harness()
    forward = h.forward(8080, ForwardPolicy(max_channels=3))
    for _ in range(3):
        h.open(8080)
    assert forward.gate is not None and forward.gate.active == 3
    h.conn.serviceStopped()
    assert forward.gate.active == 0


def test_through_the_whole_stack_in_memory(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    d = stack.tunnel.request_forwarding(
        "127.0.0.1",
        8080,
        factory=Factory.forProtocol(Upper),
        policy=ForwardPolicy(deny=("203.0.113.66",), max_channels=2),
    )
    stack.pair.flush()
    forward = result_of(d)
    _, refused = stack.inbound(origin_address="203.0.113.66")
    assert refused.disconnecting  # the server closed the client it could not forward
    remote, wire_ = stack.inbound(origin_address="::ffff:203.0.113.7")
    remote.dataReceived(b"hello")
    stack.pair.flush()
    assert wire_.value() == b"HELLO"
    assert forward.refused == {"denied": 1}
    assert forward.channels_open == 1


def test_set_forward_policy_decides_the_next_opens_and_reaps_the_open_channels() -> None:
    # A reload's path (issue #15): the forward keeps its listener; the new policy counts
    # the channels open under the old one and gives them its idle timeout at once.
    h = Harness()
    forward = h.forward(8080, ForwardPolicy(max_channels=5))
    first, second = h.open(8080), h.open(8080)
    assert h.confirmed() == {first, second}
    h.tunnel.set_forward_policy(forward, ForwardPolicy(max_channels=2, idle_timeout=1))
    third = h.open(8080)
    assert h.failures() == {third: (c.OPEN_RESOURCE_SHORTAGE, b"too many connections")}
    for _ in range(12):
        h.clock.advance(0.1)
    # Both old channels (our ids 0 and 1) closed by the new idle timeout, between 1 and
    # 1.2 s.
    assert sorted(U32.unpack(p)[0] for p in h.ssh.of(c.MSG_CHANNEL_CLOSE)) == [first, second]
    h.tunnel.set_forward_policy(forward, None)
    assert forward.gate is None and forward.refused == {"max-channels": 1}
    fourth = h.open(8080)
    assert fourth in h.confirmed()


def test_set_forward_policy_refuses_what_it_cannot_apply(tmp_path: Path) -> None:
    h = Harness()
    forward = h.forward(8080)
    stranger = Forward("127.0.0.1", 8080, factory=Factory.forProtocol(Recorder))
    with pytest.raises(ForwardingError, match="not one of this tunnel's"):
        h.tunnel.set_forward_policy(stranger, ForwardPolicy(max_channels=1))
    with pytest.raises(SpecError, match="must be a ForwardPolicy"):
        h.tunnel.set_forward_policy(forward, "max_channels=1")  # type: ignore[arg-type]
    sock = h.tunnel.request_socket_forwarding(
        str(tmp_path / "s"), factory=Factory.forProtocol(Recorder)
    )
    h.conn.packetReceived(c.MSG_REQUEST_SUCCESS, b"")
    with pytest.raises(SpecError, match="no originator address"):
        h.tunnel.set_forward_policy(_result(sock), ForwardPolicy(allow=("10.0.0.0/8",)))
    assert forward.policy is None
