"""
Rekeying by volume, counted exactly (issue 12, defect 1; RELIABILITY.md F1) with the whole
SSH stack in memory: a transfer crossing N rekey limits in one direction or both, with and
without strict key exchange, with channel data queued during each exchange, gives N key
exchanges (±1), each started by the side whose limit was reached.

The limit applies to each direction on its own, as OpenSSH's RekeyLimit does (packet.c,
``ssh_packet_need_rekeying``: ``max_blocks_out`` / ``max_blocks_in``), so a transfer both
ways at once crosses it N times, not 2N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from memory_stack import Stack, result_of
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

LIMIT = 256 * 1024
CROSSINGS = 8
#: Channel data moved in each direction: 8.5 limits, so that the packets' own overhead
#: (under 0.3 %) cannot move the count across a boundary.
VOLUME = CROSSINGS * LIMIT + LIMIT // 2
CHUNK = 16 * 1024
_MSG_CHANNEL_DATA = 94


class App(Protocol):
    """The tunnel's target: keeps what arrives; the test writes through its transport."""

    instances: list[App] = []

    def __init__(self) -> None:
        self.received = bytearray()
        App.instances.append(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data


def _pattern(n: int, salt: int) -> bytes:
    block = bytes((i * 7 + salt) & 0xFF for i in range(251))
    return (block * (n // len(block) + 1))[:n]


def _record_flushes(transport: Any) -> list[int]:
    """Channel data packets each finished key exchange flushed from its queue."""
    flushed: list[int] = []
    take = transport._newKeys

    def new_keys() -> None:
        queued = transport._blockedByKeyExchange or []
        flushed.append(sum(1 for kind, _ in queued if kind == _MSG_CHANNEL_DATA))
        take()

    transport._newKeys = new_keys
    return flushed


def _stack(tmp_path: Path, limit_on: str, strict: bool) -> Stack:
    stack = Stack(tmp_path, rekey_bytes=LIMIT if limit_on == "client" else 0, keepalive_interval=0)
    server_factory = stack.reactor.tcpServers[0][1]
    server_factory.offer_strict_kex = strict
    if limit_on == "server":
        server_factory.rekey_bytes = LIMIT
    return stack


def _transfer(stack: Stack, direction: str) -> tuple[bytes, bytes]:
    """
    Move VOLUME bytes down (target to server), up (server to target) or both ways, a chunk
    per round of the in-memory pump, so that data keeps coming while keys are exchanged.
    What arrived at the target, and at the server's side.
    """
    App.instances = []
    d = stack.tunnel.request_forwarding("127.0.0.1", 8080, factory=Factory.forProtocol(App))
    stack.pump.flush()
    result_of(d)
    remote, wire = stack.inbound()
    (app,) = App.instances
    assert app.transport is not None
    down, up = _pattern(VOLUME, 1), _pattern(VOLUME, 2)
    for offset in range(0, VOLUME, CHUNK):
        if direction in ("down", "both"):
            app.transport.write(down[offset : offset + CHUNK])
        if direction in ("up", "both"):
            remote.dataReceived(up[offset : offset + CHUNK])
        stack.pump.pump()
    stack.pump.flush()
    at_target, at_server = bytes(app.received), wire.value()
    assert at_server == (down if direction in ("down", "both") else b"")
    assert at_target == (up if direction in ("up", "both") else b"")
    remote.connectionLost(Failure(Exception("done")))
    stack.pump.flush()
    return at_target, at_server


@pytest.mark.parametrize("strict", [True, False], ids=["strict-kex", "no-strict-kex"])
@pytest.mark.parametrize("direction", ["down", "up", "both"])
@pytest.mark.parametrize("limit_on", ["client", "server"])
def test_rekeys_by_volume_are_counted_exactly(
    tmp_path: Path, limit_on: str, direction: str, strict: bool
) -> None:
    stack = _stack(tmp_path, limit_on, strict)
    result_of(stack.connect())
    client, server = stack.client, stack.server_transport
    assert client.strict_kex is strict and server.strict_kex is strict
    flushed = {"client": _record_flushes(client), "server": _record_flushes(server)}

    _transfer(stack, direction)

    stats = stack.tunnel.statistics()
    by_us, by_server = stats.rekeys_by_us, stats.rekeys_by_server
    assert stats.key_exchanges == client.key_exchanges == server.key_exchanges
    assert stats.key_exchanges == 1 + by_us + by_server
    assert (server.rekeys_by_us, server.rekeys_by_peer) == (by_server, by_us)
    # N limits crossed: N exchanges (±1), all started by the side with the limit.
    started, other = (by_us, by_server) if limit_on == "client" else (by_server, by_us)
    assert CROSSINGS - 1 <= started <= CROSSINGS + 1, (by_us, by_server)
    assert other == 0
    # Channel data was queued during the exchanges and sent after them, by the side
    # that sends it (the condition that set off the storm).
    senders = {"down": ["client"], "up": ["server"], "both": ["client", "server"]}[direction]
    assert any(sum(flushed[side]) > 0 for side in senders), flushed
    # And the connection still carries data.
    assert stack.tunnel.connected


def test_a_collision_counts_once_on_each_side_as_its_own(tmp_path: Path) -> None:
    # Both sides send KEXINIT before seeing the other's (RFC 4253 §7.1): one exchange,
    # which each side started, so each counts it as its own.
    stack = Stack(tmp_path, keepalive_interval=0)
    result_of(stack.connect())
    client_done = stack.tunnel.rekey()
    server_done = stack.server_transport.rekey()
    stack.pump.flush()
    result_of(client_done)
    result_of(server_done)
    client, server = stack.client, stack.server_transport
    assert (client.key_exchanges, client.rekeys_by_us, client.rekeys_by_peer) == (2, 1, 0)
    assert (server.key_exchanges, server.rekeys_by_us, server.rekeys_by_peer) == (2, 1, 0)


def test_a_rekey_that_never_finishes_is_not_counted(tmp_path: Path) -> None:
    # The counters count finished key exchanges: rekeys_by_us + rekeys_by_peer is always
    # key_exchanges - 1, also when the connection ends during one.
    stack = Stack(tmp_path, keepalive_interval=0)
    result_of(stack.connect())
    client = stack.client
    done = stack.tunnel.rekey()  # not pumped: the server never sees it
    assert (client.key_exchanges, client.rekeys_by_us, client.rekeys_by_peer) == (1, 0, 0)
    stack.reactor.advance(client.kex_timeout + 1)
    stack.pump.flush()
    done.addErrback(lambda _f: None)
    assert not stack.tunnel.connected
    assert (client.key_exchanges, client.rekeys_by_us, client.rekeys_by_peer) == (1, 0, 0)


def test_the_limit_is_per_direction(tmp_path: Path) -> None:
    # RekeyLimit 256K with 192 KiB each way: neither direction reaches it (OpenSSH rekeys
    # when one does, not when the two together do).
    stack = _stack(tmp_path, "client", True)
    result_of(stack.connect())
    App.instances = []
    d = stack.tunnel.request_forwarding("127.0.0.1", 8080, factory=Factory.forProtocol(App))
    stack.pump.flush()
    result_of(d)
    remote, wire = stack.inbound()
    (app,) = App.instances
    assert app.transport is not None
    for _ in range(12):
        app.transport.write(b"d" * CHUNK)
        remote.dataReceived(b"u" * CHUNK)
        stack.pump.pump()
    stack.pump.flush()
    assert len(wire.value()) == len(app.received) == 12 * CHUNK
    assert stack.client.key_exchanges == 1
    # 80 KiB more one way crosses it there.
    for _ in range(5):
        remote.dataReceived(b"u" * CHUNK)
        stack.pump.pump()
    stack.pump.flush()
    assert stack.client.key_exchanges == 2
    assert stack.client.rekeys_by_us == 1
