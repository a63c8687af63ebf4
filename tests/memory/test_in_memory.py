"""
The whole SSH stack in memory: key exchange, authentication, tcpip-forward, a forwarded
channel, cancel and logoff between ReverseTunnel and the bundled server, over
``twisted.test.iosim`` with a ``MemoryReactorClock``: no sockets, no real time.
"""

from __future__ import annotations

from pathlib import Path

from memory_stack import Stack, Upper, result_of
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from rtunnel import ChannelOpenRequest, ForwardState


def test_forward_and_channel_in_memory(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    assert stack.tunnel.connected

    seen: list[ChannelOpenRequest] = []

    def accept(request: ChannelOpenRequest) -> bool:
        seen.append(request)
        return True

    d = stack.tunnel.request_forwarding(
        "127.0.0.1", 8080, factory=Factory.forProtocol(Upper), accept=accept
    )
    stack.pump.flush()
    forward = result_of(d)
    assert forward.port == 8080 and forward.state is ForwardState.ACTIVE
    assert [tuple(f) for f in stack.server.forwards] == [("127.0.0.1", 8080)]

    remote, wire = stack.inbound()
    assert [(r.origin_address, r.origin_port, r.connected_port) for r in seen] == [
        ("203.0.113.5", 40000, 8080)
    ]
    remote.dataReceived(b"hello, tunnel")
    stack.pump.flush()
    assert wire.value() == b"HELLO, TUNNEL"
    (info,) = stack.tunnel.channels
    assert (info.bytes_received, info.bytes_sent) == (13, 13)

    # The remote client goes away: the channel closes on both sides.
    remote.connectionLost(Failure(Exception("gone")))
    stack.pump.flush()
    assert stack.tunnel.channels == []

    result = stack.tunnel.cancel_forwarding("127.0.0.1", 8080)
    stack.pump.flush()
    result_of(result)
    stack.reactor.advance(0)
    assert stack.server.forwards == []

    done = stack.tunnel.logoff()
    stack.pump.flush()
    result_of(done)
    assert not stack.tunnel.connected
    assert [call for call in stack.reactor.getDelayedCalls() if call.active()] == []


def test_statistics_count_sessions_rekeys_channels_and_bytes(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    before = stack.tunnel.statistics()
    assert (before.connected, before.sessions, before.reconnects) == (False, 0, 0)
    assert before.total_key_exchanges == before.channels_opened == before.bytes_sent == 0
    result_of(stack.connect())
    stack.forward_upper()
    assert stack.round_trip(b"abc") == b"ABC"
    assert stack.round_trip(b"hello") == b"HELLO"

    ours = stack.tunnel.rekey()
    stack.pump.flush()
    result_of(ours)
    theirs = stack.server_transport.rekey()
    stack.pump.flush()
    result_of(theirs)
    remote, wire = stack.inbound(40001)
    remote.dataReceived(b"open")
    stack.pump.flush()

    stats = stack.tunnel.statistics()
    assert (stats.connected, stats.sessions, stats.reconnects) == (True, 1, 0)
    assert (stats.key_exchanges, stats.rekeys_by_us, stats.rekeys_by_server) == (3, 1, 1)
    assert stats.total_key_exchanges == 3
    assert (stats.total_rekeys_by_us, stats.total_rekeys_by_server) == (1, 1)
    assert (stats.channels_open, stats.channels_opened) == (1, 3)
    # Closed channels and the open one: 3 + 5 + 4 bytes each way.
    assert (stats.bytes_received, stats.bytes_sent) == (12, 12)
    assert wire.value() == b"OPEN"
    assert stats.forwards_active == 1

    remote.connectionLost(Failure(Exception("done")))
    stack.pump.flush()
    done = stack.tunnel.logoff()
    stack.pump.flush()
    result_of(done)
    after = stack.tunnel.statistics()
    assert (after.connected, after.sessions, after.key_exchanges) == (False, 1, 0)
    assert (after.total_key_exchanges, after.channels_open, after.channels_opened) == (3, 0, 3)
    assert (after.bytes_received, after.bytes_sent, after.forwards_active) == (12, 12, 0)
    assert (after.rekeys_by_us, after.total_rekeys_by_us, after.total_rekeys_by_server) == (0, 1, 1)
