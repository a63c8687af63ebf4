"""
Keepalive liveness counts every packet the server sends, as OpenSSH does (packet.c,
``ssh_packet_read_poll_seqnr`` resets its count on any packet; clientloop.c times the next
keepalive from the last read): a server that sends only SSH_MSG_IGNORE, or is busy in a
long key exchange, is alive; a silent one is still dropped ``interval * (count_max + 1)``
seconds after its last packet. Whole stack in memory on a clock (tests/memory_stack.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memory_stack import ReconnectingStack, Stack, result_of

from rtunnel import KeepaliveError, ReconnectPolicy, TunnelObserver

INTERVAL = 2.0
COUNT_MAX = 3
#: OpenSSH's ServerAlive bound: silent for this long after its last packet, a server is dead.
DEAD_AFTER = INTERVAL * (COUNT_MAX + 1)


class Losses(TunnelObserver):
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.at: list[float] = []
        self.reasons: list[Exception | None] = []

    def disconnected(self, reason: Exception | None) -> None:
        self.at.append(self.stack.reactor.seconds())
        self.reasons.append(reason)


def _stack(tmp_path: Path) -> tuple[Stack, Losses]:
    stack = Stack(
        tmp_path,
        keepalive_interval=INTERVAL,
        keepalive_count_max=COUNT_MAX,
        reconnect=ReconnectPolicy.off(),
    )
    losses = Losses(stack)
    stack.tunnel.add_observer(losses)
    result_of(stack.connect())
    stack.keepalive = stack.tunnel._keepalive  # type: ignore[attr-defined]
    # The server never answers a keepalive (nor any global request): only what it sends
    # of its own accord can show it alive.
    stack.server.delay_replies(global_requests=10**9)
    return stack, losses


def _run_until(stack: Stack, end: float) -> None:
    """Advance to each timer in turn, moving the bytes after each, until ``end``."""
    clock = stack.reactor
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]
        step = min(due, default=end)
        clock.advance(max(0.0, step - clock.seconds()))
        stack.pump.flush()
        if not due:
            return


def _keepalives(stack: Stack) -> int:
    """Keepalives sent on the connection (the first and only one)."""
    return int(stack.keepalive.sent)


def test_a_server_that_sends_only_ignore_messages_stays_up(tmp_path: Path) -> None:
    stack, losses = _stack(tmp_path)
    start = stack.reactor.seconds()
    # An SSH_MSG_IGNORE every 3 s (more than the interval, less than the bound) for a
    # minute, then silence.
    for n in range(1, 21):
        _run_until(stack, start + 3 * n)
        stack.server_transport.sendIgnore(b"still here")
        stack.pump.flush()
    last_packet = stack.reactor.seconds()
    assert stack.tunnel.connected and losses.at == []
    # A keepalive 2 s after the start and after each IGNORE but the last (the next
    # IGNORE comes 1 s later and answers it): 20 of them, none of them answered.
    assert _keepalives(stack) == 20

    _run_until(stack, last_packet + DEAD_AFTER + 5)
    assert losses.at == [last_packet + DEAD_AFTER]
    assert isinstance(losses.reasons[0], KeepaliveError)
    assert _keepalives(stack) == 20 + COUNT_MAX


def test_a_server_busy_in_a_long_key_exchange_stays_up(tmp_path: Path) -> None:
    stack, losses = _stack(tmp_path)
    start = stack.reactor.seconds()  # the server's last packet: logon, just now
    server: Any = stack.server_transport
    deliver = server.dataReceived
    held: list[bytes] = []

    # 5 s of silence (2 keepalives unanswered), then the server starts a key exchange
    # and takes 5.5 s to answer ours: longer than the 8 s the keepalives allow from its
    # last connection-layer packet, shorter than 8 s from its KEXINIT.
    _run_until(stack, start + 5)
    server.dataReceived = held.append
    server.sendKexInit()
    stack.pump.flush()
    _run_until(stack, start + 10.5)
    assert stack.tunnel.connected and losses.at == []
    exchanges = stack.client.key_exchanges
    server.dataReceived = deliver
    for data in held:
        deliver(data)
    stack.pump.flush()
    assert stack.client.key_exchanges == exchanges + 1
    last_packet = stack.reactor.seconds()
    assert last_packet == start + 10.5
    # Keepalives at 2 and 4, then 7 and 9 (queued by the key exchange, sent after it).
    assert _keepalives(stack) == 4

    # Silent from now on: dropped exactly when OpenSSH would drop it.
    _run_until(stack, last_packet + DEAD_AFTER - 0.001)
    assert stack.tunnel.connected
    _run_until(stack, last_packet + DEAD_AFTER + 5)
    assert losses.at == [last_packet + DEAD_AFTER]
    assert isinstance(losses.reasons[0], KeepaliveError)
    assert _keepalives(stack) == 4 + COUNT_MAX


def test_a_silent_server_is_dropped_after_interval_times_count_max_plus_one(
    tmp_path: Path,
) -> None:
    stack, losses = _stack(tmp_path)
    last_packet = stack.reactor.seconds()  # logon, just now
    _run_until(stack, last_packet + DEAD_AFTER - 0.001)
    assert stack.tunnel.connected and _keepalives(stack) == COUNT_MAX
    _run_until(stack, last_packet + 3 * DEAD_AFTER)
    assert losses.at == [last_packet + DEAD_AFTER]
    assert isinstance(losses.reasons[0], KeepaliveError)
    assert _keepalives(stack) == COUNT_MAX


def test_a_goodbye_is_no_sign_of_life(tmp_path: Path) -> None:
    # Every packet counts as liveness, but the server's DISCONNECT ends the connection:
    # a server that grants the forward again and then says goodbye has not shown that
    # reconnecting works, and still meets a growing backoff (issue #12).
    stack = ReconnectingStack(
        tmp_path, reconnect=ReconnectPolicy(initial_delay=1.0, max_delay=60.0, jitter=0.0)
    )
    stack.logon_with_forward()
    for _ in range(4):
        stack.server.drop_connections()
        assert stack.pump is not None
        stack.pump.flush()
        assert not stack.tunnel.connected
        stack.next_attempt()
        assert stack.tunnel.connected
    assert [a.retry_count for a in stack.watcher.attempts] == [1, 2, 3, 4]
    assert [a.retry_interval for a in stack.watcher.attempts] == [1.0, 2.0, 4.0, 8.0]
    stack.logoff()
