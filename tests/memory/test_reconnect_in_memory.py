"""
Staying up on a clock: keepalive alone (a fake connection), then reconnect with
re-forwarding through the whole stack in memory (MemoryPair): a dropped session, a
refused logon, the first logon retried until the server is up, the retry limit, an
observer that cancels, and exit_on_forward_failure after a reconnect. The same against a
real sshd: tests/interop/test_reconnect.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Recorder
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from typing_extensions import override

from rtunnel import (
    AuthenticationError,
    ForwardingError,
    ForwardState,
    PrivateKeyFile,
    ReconnectLimitError,
    ReverseTunnel,
    TunnelOptions,
)
from rtunnel._core.policy import ReconnectPolicy
from rtunnel.client.channels.keepalive import Keepalive
from rtunnel.testing import MemoryPair, generate_client_key

FAST = ReconnectPolicy(initial_delay=0.2, max_delay=1.0, jitter=0.0)


class FakeConn:
    """
    The keepalive's view of a connection. ``reply_after`` seconds after each keepalive
    the server's answer arrives (None: a dead server never answers).
    """

    def __init__(self, clock: Clock, reply_after: float | None = None) -> None:
        self.clock = clock
        self.stopped = False
        self.last_received = clock.seconds()
        self.packets_received = 0
        self.requests: list[float] = []
        self.replies: list[float] = []
        self.reply_after = reply_after

    def send_global_request(self, name: bytes, data: bytes) -> Deferred[bytes]:
        assert name == b"keepalive@openssh.com"
        self.requests.append(self.clock.seconds())
        d: Deferred[bytes] = Deferred()
        if self.reply_after is not None:
            self.clock.callLater(self.reply_after, self.reply, d)
        return d

    def reply(self, d: Deferred[bytes]) -> None:
        if self.reply_after is None:
            return  # the server died meanwhile
        self.packets_received += 1
        self.last_received = self.clock.seconds()
        self.replies.append(self.last_received)
        d.errback(Exception("REQUEST_FAILURE"))  # OpenSSH's answer to keepalive@openssh.com


class LateClock:
    """The Keepalive's view of ``clock`` on a busy reactor: its timers fire ``lateness``
    seconds after they are due (the server's replies are not delayed)."""

    def __init__(self, clock: Clock, lateness: float) -> None:
        self.clock = clock
        self.lateness = lateness

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:  # noqa: N802
        return self.clock.callLater(delay + self.lateness, callable, *args, **kw)


def run_until(clock: Clock, end: float) -> None:
    """Advance to each timer in turn (so each runs at its own time) until ``end``."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls()]
        if not due or min(due) > end:
            clock.advance(max(0.0, end - clock.seconds()))
            return
        clock.advance(max(0.0, min(due) - clock.seconds()))


def test_keepalive_sends_after_silence_and_gives_up_after_count_max() -> None:
    clock = Clock()
    conn = FakeConn(clock)
    dead: list[float] = []
    keepalive = Keepalive(conn, clock, 10, 3, lambda: dead.append(clock.seconds()))  # type: ignore[arg-type]
    keepalive.start()
    clock.advance(5)
    conn.last_received = clock.seconds()  # traffic at t=5 defers the first keepalive
    conn.packets_received += 1
    for _ in range(100):
        clock.advance(1)
        if dead:
            break
    assert conn.requests == [15, 25, 35]
    assert dead == [45]  # last traffic at 5; K * (N + 1) = 40 later
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(("interval", "count_max"), [(2, 3), (1, 3), (1, 1), (30, 3)])
def test_answered_keepalives_on_a_late_clock_never_give_up(interval: int, count_max: int) -> None:
    # Issue #12, defect 2: ServerAliveInterval=2 gave up after ~8 s on a healthy idle
    # server, because the check one interval after a keepalive still saw "idle >= interval"
    # and only a check seeing less idleness reset the count, never the reply. Replies
    # arrive in 1 ms, checks run 3 ms late: 1,000 idle intervals, no give-up, exactly one
    # keepalive per interval, each answered.
    clock = Clock()
    conn = FakeConn(clock, reply_after=0.001)
    dead: list[float] = []
    keepalive = Keepalive(
        conn,  # type: ignore[arg-type]
        LateClock(clock, 0.003),  # type: ignore[arg-type]
        interval,
        count_max,
        lambda: dead.append(clock.seconds()),
    )
    keepalive.start()
    run_until(clock, 1000 * interval)
    assert dead == []
    period = interval + 0.003  # sent, answered 1 ms later, checked an interval + 3 ms on
    expected = int(1000 * interval / period)
    assert expected - 1 <= len(conn.requests) <= expected + 1
    assert keepalive.sent == len(conn.requests)
    assert len(conn.replies) in (len(conn.requests), len(conn.requests) - 1)
    gaps = [b - a for a, b in itertools.pairwise(conn.requests)]
    assert all(interval <= g <= interval + 0.0041 for g in gaps), (min(gaps), max(gaps))
    # Then the server dies: noticed K * (N + 1) after its last packet, plus lateness.
    conn.reply_after = None
    last_packet = conn.last_received
    run_until(clock, clock.seconds() + 10 * interval * (count_max + 2))
    assert len(dead) == 1
    took = dead[0] - last_packet
    assert interval * (count_max + 1) - 0.001 <= took <= (interval + 0.003) * (count_max + 1)
    assert len(conn.requests) - len(conn.replies) == count_max  # unanswered, then give-up
    assert clock.getDelayedCalls() == []


def test_a_reply_at_the_same_clock_reading_counts() -> None:
    # In memory (iosim) the answer arrives without the clock moving: a count of packets,
    # not a comparison of times, tells that it came after the keepalive.
    clock = Clock()
    conn = FakeConn(clock, reply_after=0)
    dead: list[float] = []
    keepalive = Keepalive(conn, clock, 1, 1, lambda: dead.append(clock.seconds()))  # type: ignore[arg-type]
    keepalive.start()
    run_until(clock, 100)
    assert dead == [] and 99 <= len(conn.requests) <= 100
    keepalive.stop()
    assert clock.getDelayedCalls() == []


def test_our_own_traffic_is_not_an_answer() -> None:
    # RELIABILITY.md A8: the server is silent while we send; only what we receive counts.
    clock = Clock()
    conn = FakeConn(clock)
    dead: list[float] = []
    keepalive = Keepalive(conn, clock, 1, 3, lambda: dead.append(clock.seconds()))  # type: ignore[arg-type]
    keepalive.start()
    run_until(clock, 10)
    assert conn.requests == [1, 2, 3] and dead == [4]


def test_logoff_while_waiting_to_reconnect_stops_cleanly() -> None:
    clock = MemoryReactorClock()
    t = ReverseTunnel(clock, "example.invalid", 22, options=TunnelOptions.create(reconnect=FAST))
    t._reconnector.call = clock.callLater(5, lambda: None)
    done: list[Any] = []
    t.when_disconnected().addBoth(done.append)
    t.logoff().addBoth(done.append)
    assert done == [None, None] and clock.getDelayedCalls() == []


# -- reconnect through the whole stack, in memory ----------------------------------------


class _Echo(Protocol):
    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    pair = MemoryPair(tmp_path, reconnect=FAST, keepalive_interval=0)
    pair.reactor.listenTCP(8000, ServerFactory.forProtocol(_Echo), interface="127.0.0.1")
    yield pair
    pair.close()


def _echoes(pair: MemoryPair, port: int, payload: bytes) -> bool:
    client = pair.connect(port)
    client.write(payload)
    pair.flush()
    client.close()
    return client.received == payload


def test_reconnects_and_requests_every_forward_again(pair: MemoryPair) -> None:
    # A4/B3: the session dies; rtunnel reconnects; the fixed port comes back on the same
    # port and the port-0 forward gets a (reported) new allocation.
    t = pair.tunnel
    watcher = Recorder()
    t.add_observer(watcher)
    pair.logon()
    fixed = pair.run(t.request_forwarding("127.0.0.1", 7000, "127.0.0.1", 8000))
    dynamic = pair.run(t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 8000))
    first_dynamic = dynamic.port
    pair.drop()
    assert not t.connected and watcher.losses and watcher.losses[0] is not None
    pair.advance(0.2)
    assert watcher.connects == 2 and all(f.state is ForwardState.ACTIVE for f in t.forwards)
    assert watcher.attempts[0].retry_type == "ssh" and watcher.attempts[0].retry_count == 1
    assert watcher.attempts[0].retries_remaining == -1
    assert fixed.port == 7000 and dynamic.port not in (0, first_dynamic)
    assert (0, ForwardState.ACTIVE, dynamic.port) in watcher.states[-2:]
    assert _echoes(pair, 7000, b"fixed again") and _echoes(pair, dynamic.port, b"again")
    pair.run(t.logoff())


def test_authentication_refusal_is_never_retried(pair: MemoryPair, tmp_path: Path) -> None:
    # A17: a refusal is final, even with mode "always".
    stranger = generate_client_key("ecdsa", tmp_path / "stranger")
    watcher = Recorder()
    t = pair.make_tunnel(
        auth=[PrivateKeyFile(stranger)], reconnect=ReconnectPolicy(mode="always", initial_delay=0.1)
    )
    t.add_observer(watcher)
    with pytest.raises(AuthenticationError):
        pair.run(t.logon())
    pair.advance(60)
    assert watcher.attempts == [] and pair.server.accepted_connections == 1


def test_first_logon_retried_until_the_server_is_up(pair: MemoryPair) -> None:
    # A1: mode "always" retries the first logon while nothing listens.
    pair.refuse_connections()
    watcher = Recorder()
    t = pair.make_tunnel(
        reconnect=ReconnectPolicy(mode="always", initial_delay=0.2, max_delay=0.4, jitter=0)
    )
    t.add_observer(watcher)
    attempt = t.logon()
    pair.advance(0.2 + 0.4 + 0.4)
    assert [a.retry_interval for a in watcher.attempts] == [0.2, 0.4, 0.4, 0.4]
    assert pair.connection_attempts == 4 and not attempt.called
    pair.refuse_connections(False)
    pair.run(attempt)
    assert t.connected and watcher.connects == 1
    assert pair.connection_attempts == 5
    assert all(a.retry_type == "ssh" for a in watcher.attempts)
    pair.run(t.logoff())


def test_retry_limit_gives_up_with_1037(pair: MemoryPair) -> None:
    t = pair.make_tunnel(
        reconnect=ReconnectPolicy(initial_delay=0.1, max_delay=0.1, jitter=0, max_retries=2)
    )
    watcher = Recorder()
    t.add_observer(watcher)
    pair.run(t.logon())
    failures: list[Any] = []
    t.when_disconnected().addErrback(failures.append)
    pair.run(pair.server.stop())
    pair.advance(0.2)
    assert len(failures) == 1
    assert failures[0].check(ReconnectLimitError) and failures[0].value.code == 1037
    assert [a.retry_count for a in watcher.attempts] == [1, 2]
    assert not t.connected


def test_observer_can_cancel_reconnecting(pair: MemoryPair) -> None:
    t = pair.tunnel
    watcher = Recorder()
    watcher.cancel_after = 0
    t.add_observer(watcher)
    pair.logon()
    failures: list[Any] = []
    t.when_disconnected().addErrback(failures.append)
    pair.drop()
    assert len(failures) == 1
    assert failures[0].check(ReconnectLimitError) and len(watcher.attempts) == 1
    pair.advance(60)
    assert pair.server.accepted_connections == 1


def test_exit_on_forward_failure_after_a_reconnect(pair: MemoryPair) -> None:
    # A re-forward refused after a reconnect ends the tunnel with ForwardingError, instead
    # of being retried, when exit_on_forward_failure is set (OpenSSH's ExitOnForwardFailure).
    t = pair.make_tunnel(reconnect=ReconnectPolicy.fixed(2.0), exit_on_forward_failure=True)
    watcher = Recorder()
    t.add_observer(watcher)
    pair.run(t.logon())
    pair.run(t.request_forwarding("127.0.0.1", 7000, "127.0.0.1", 8000))
    failures: list[Any] = []
    t.when_disconnected().addErrback(failures.append)
    pair.drop()
    # Someone takes the port in between.
    pair.reactor.listenTCP(7000, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
    pair.advance(2)
    assert len(failures) == 1 and failures[0].check(ForwardingError)
    assert "listen port 7000" in str(failures[0].value)
    assert not any(a.retry_type == "tunnel" for a in watcher.attempts)
    assert not t.connected
