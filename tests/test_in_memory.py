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
