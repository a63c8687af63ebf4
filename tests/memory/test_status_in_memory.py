"""
What an operator sees of a running tunnel (issue #14), on the whole stack in memory: the
per-forward counters (channels open and total, bytes each way) counted where channel
events are dispatched, and :func:`rtunnel.operations.status.tunnel_status`'s snapshot of
the tunnel's state machine (state, since when, reconnects, last error) through a logon, a
killed session, the reconnect and logoff. Exact numbers: the clock and the bytes are ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.protocol import Protocol, ServerFactory
from typing_extensions import override

from rtunnel._core.policy import ReconnectPolicy
from rtunnel.openssh.forwards import parse_remote_forward
from rtunnel.operations.status import OneTunnel, forward_name, spec_name, tunnel_status
from rtunnel.testing import MemoryPair

FAST = ReconnectPolicy(initial_delay=0.5, max_delay=1.0, jitter=0.0)


class _Echo(Protocol):
    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    pair = MemoryPair(tmp_path, reconnect=FAST, keepalive_interval=0, start_time=1000.0)
    pair.reactor.listenTCP(8000, ServerFactory.forProtocol(_Echo), interface="127.0.0.1")
    yield pair
    pair.close()


def test_forward_counters_count_channels_and_bytes_each_way(pair: MemoryPair) -> None:
    t = pair.tunnel
    pair.logon()
    forward = pair.run(t.request_forwarding("127.0.0.1", 7000, "127.0.0.1", 8000))
    other = pair.run(t.request_forwarding("127.0.0.1", 7001, "127.0.0.1", 8000))
    first = pair.connect(7000)
    first.write(b"x" * 1000)
    pair.flush()
    second = pair.connect(7000)
    second.write(b"y" * 234)
    pair.flush()
    assert (forward.channels_open, forward.channels_total) == (2, 2)
    # The counters of closed channels only; the open ones' bytes are on their ChannelInfo.
    assert (forward.bytes_in, forward.bytes_out) == (0, 0)
    (now,) = [
        f for f in tunnel_status("gw", t).forwards if f.name == "127.0.0.1:7000:127.0.0.1:8000"
    ]
    assert (now.channels_open, now.channels_total, now.bytes_in, now.bytes_out) == (
        2,
        2,
        1234,
        1234,
    )
    first.close()
    pair.flush()
    assert (forward.channels_open, forward.channels_total) == (1, 2)
    assert (forward.bytes_in, forward.bytes_out) == (1000, 1000)
    second.close()
    pair.flush()
    assert (forward.channels_open, forward.channels_total) == (0, 2)
    assert (forward.bytes_in, forward.bytes_out) == (1234, 1234)
    # The other forward carried nothing: counters are per forward, not per tunnel.
    assert (other.channels_open, other.channels_total, other.bytes_in, other.bytes_out) == (
        0,
        0,
        0,
        0,
    )
    pair.run(t.logoff())


def test_status_follows_the_state_machine_through_a_reconnect(pair: MemoryPair) -> None:
    t = pair.tunnel
    specs = [
        parse_remote_forward("7000:127.0.0.1:8000"),
        parse_remote_forward("0:127.0.0.1:8000"),
    ]
    source = OneTunnel("gw", t, specs)
    (before,) = source.status()
    assert (before.state, before.since, before.ready) == ("stopped", 1000.0, False)
    assert [f.state for f in before.forwards] == ["pending", "pending"]
    assert before.server == "alice@127.0.0.1:22"
    pair.advance(5)
    pair.logon()
    for spec in specs:
        pair.run(t.request_forwarding(spec.bind_address, spec.port, spec.host, spec.host_port))
    (up,) = source.status()
    assert (up.state, up.since, up.reconnects, up.last_error, up.ready) == (
        "connected",
        1005.0,
        0,
        None,
        True,
    )
    assert [f.name for f in up.forwards] == ["7000:127.0.0.1:8000", "0:127.0.0.1:8000"]
    fixed, allocated = up.forwards
    assert (fixed.listen, fixed.allocated_port) == ("localhost:7000", 7000)
    assert allocated.allocated_port is not None and allocated.allocated_port > 0
    assert allocated.listen == f"localhost:{allocated.allocated_port}"
    assert up.key_exchanges == 1

    pair.advance(10)
    pair.kill()
    (down,) = source.status()
    assert (down.state, down.since, down.ready) == ("waiting", 1015.0, False)
    assert [f.state for f in down.forwards] == ["pending", "pending"]
    assert down.last_error_time == 1015.0
    assert down.last_error is not None and "closed by remote host" in down.last_error

    pair.advance(0.5)  # FAST's first wait
    (again,) = source.status()
    assert (again.state, again.since, again.reconnects, again.ready) == (
        "connected",
        1015.5,
        1,
        True,
    )
    assert again.key_exchanges == 2
    # The last error stays until the next one: an operator wants to see why it reconnected.
    assert again.last_error_time == 1015.0

    pair.run(t.logoff())
    (off,) = source.status()
    assert (off.state, off.ready) == ("stopped", False)


def test_a_refused_forward_shows_as_failed(pair: MemoryPair) -> None:
    t = pair.tunnel
    pair.server.refuse_forwards()
    spec = parse_remote_forward("7000:127.0.0.1:8000")
    pair.logon()
    refused = t.request_forwarding(spec.bind_address, spec.port, spec.host, spec.host_port)
    refused.addErrback(lambda _: None)
    pair.flush()
    (status,) = OneTunnel("gw", t, [spec]).status()
    assert [(f.name, f.state, f.listen) for f in status.forwards] == [
        ("7000:127.0.0.1:8000", "failed", "localhost:7000")
    ]
    assert not status.ready
    pair.run(t.logoff())


@pytest.mark.parametrize(
    "spec",
    [
        "8080:127.0.0.1:80",
        "*:9000:localhost:22",
        "[::1]:9000:[::1]:22",
        "0.0.0.0:0:example.com:443",
        "1080",
        "127.0.0.1:1080",
        "2222:/run/app.sock",
    ],
)
def test_a_forward_and_its_spec_have_the_same_name(pair: MemoryPair, spec: str) -> None:
    parsed = parse_remote_forward(spec)
    pair.logon()
    forward = pair.run(
        pair.tunnel.request_forwarding(
            parsed.bind_address,
            parsed.port,
            None if parsed.dynamic or parsed.target_path else parsed.host,
            None if parsed.dynamic or parsed.target_path else parsed.host_port,
            dynamic=parsed.dynamic,
            target_path=parsed.target_path,
        )
    )
    assert forward_name(forward) == spec_name(parsed)
    pair.run(pair.tunnel.logoff())
