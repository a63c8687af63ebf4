"""
Staying up: keepalive on a Clock, and reconnect with re-forwarding against the bundled
server and a real sshd (dropped sessions, restarts, a frozen session holding the port).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from e2e_support import Recorder, Server
from sockets import (
    TargetServer,
    echo,
    eventually,
    exchange,
    in_thread,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from rtunnel import (
    AuthenticationError,
    ForwardState,
    KeepaliveError,
    PrivateKeyFile,
    ReconnectLimitError,
    ReverseTunnel,
)
from rtunnel._core.policy import ReconnectPolicy
from rtunnel.client.channels.keepalive import Keepalive

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


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest_twisted.ensureDeferred
async def test_reconnects_and_requests_every_forward_again(server: Server) -> None:
    # A4/B3: the session dies; rtunnel reconnects; the fixed port comes back on the same
    # port and the port-0 forward gets a (reported) new allocation.
    target = TargetServer(echo)
    watcher = Recorder()
    t = server.tunnel(reconnect=FAST)
    t.add_observer(watcher)
    await t.logon()
    try:
        fixed_port = free_port()
        fixed = await t.request_forwarding("127.0.0.1", fixed_port, "127.0.0.1", target.port)
        dynamic = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        first_dynamic = dynamic.port
        await server.drop()
        await eventually(lambda: watcher.connects == 2, timeout=15)
        await eventually(lambda: all(f.state is ForwardState.ACTIVE for f in t.forwards), 10)
        assert watcher.attempts[0].retry_type == "ssh" and watcher.attempts[0].retry_count == 1
        assert watcher.attempts[0].retries_remaining == -1
        assert fixed.port == fixed_port and dynamic.port != 0
        assert (0, ForwardState.ACTIVE, dynamic.port) in watcher.states[-2:]
        assert await in_thread(exchange, fixed_port, b"fixed again") == b"fixed again"
        assert await in_thread(exchange, dynamic.port, b"dynamic again") == b"dynamic again"
        assert first_dynamic > 0 and t.connected
        assert watcher.losses and watcher.losses[0] is not None
    finally:
        await t.logoff()
        target.close()


@pytest_twisted.ensureDeferred
async def test_authentication_refusal_is_never_retried(server: Server, tmp_path: Any) -> None:
    # A17: a refusal is final, even with mode "always".
    from rtunnel.testing import generate_client_key

    stranger = generate_client_key("ecdsa", tmp_path / "stranger")
    watcher = Recorder()
    t = server.tunnel(
        auth=[PrivateKeyFile(stranger)], reconnect=ReconnectPolicy(mode="always", initial_delay=0.1)
    )
    t.add_observer(watcher)
    with pytest.raises(AuthenticationError):
        await t.logon()
    assert watcher.attempts == []


@pytest_twisted.ensureDeferred
async def test_first_logon_retried_until_the_server_is_up(
    ssh_test_server: Any, ssh_user: str, ssh_client_key: Any, ssh_known_hosts: Any
) -> None:
    # A1: mode "always" retries the first logon while nothing listens.
    port = ssh_test_server.port
    await ssh_test_server.stop()
    watcher = Recorder()
    t = ReverseTunnel(
        reactor,
        "127.0.0.1",
        port,
        user=ssh_user,
        auth=[PrivateKeyFile(ssh_client_key)],
        known_hosts=ssh_known_hosts,
        reconnect=ReconnectPolicy(mode="always", initial_delay=0.2, max_delay=0.4, jitter=0),
    )
    t.add_observer(watcher)
    attempt = t.logon()
    await eventually(lambda: len(watcher.attempts) >= 2, timeout=5)
    from rtunnel.testing import SSHTestServer, client_key

    revived = SSHTestServer(reactor, port=port)
    revived.add_user(ssh_user, authorized_keys=[client_key("ed25519").public()])
    await revived.start()
    try:
        await attempt
        assert t.connected and watcher.connects == 1
        assert all(a.retry_type == "ssh" for a in watcher.attempts)
    finally:
        await t.logoff()
        await revived.stop()


@pytest_twisted.ensureDeferred
async def test_retry_limit_gives_up_with_1037(server: Server) -> None:
    t = server.tunnel(
        reconnect=ReconnectPolicy(initial_delay=0.1, max_delay=0.1, jitter=0, max_retries=2)
    )
    watcher = Recorder()
    t.add_observer(watcher)
    await t.logon()
    ended = t.when_disconnected()
    failures: list[Any] = []
    ended.addErrback(failures.append)
    if server.kind == "openssh":
        await in_thread(server.extra["server"].stop)
    else:
        await server.extra["server"].stop()
    await eventually(lambda: bool(failures), timeout=10)
    assert failures[0].check(ReconnectLimitError) and failures[0].value.code == 1037
    assert [a.retry_count for a in watcher.attempts] == [1, 2]
    assert not t.connected


@pytest_twisted.ensureDeferred
async def test_observer_can_cancel_reconnecting(server: Server) -> None:
    t = server.tunnel(reconnect=FAST)
    watcher = Recorder()
    watcher.cancel_after = 0
    t.add_observer(watcher)
    await t.logon()
    ended = t.when_disconnected()
    failures: list[Any] = []
    ended.addErrback(failures.append)
    await server.drop()
    await eventually(lambda: bool(failures), timeout=10)
    assert failures[0].check(ReconnectLimitError) and len(watcher.attempts) == 1


@pytest_twisted.ensureDeferred
async def test_frozen_server_noticed_by_keepalive_and_stale_port_retried(
    openssh_server: Any, openssh_client_key: Any
) -> None:
    # A7 + A9: SIGSTOP the session: keepalives (1 s x 2) notice within K*(N+1)+1 s; the
    # reconnect succeeds but the frozen session still holds the fixed port, so that
    # forward is retried on its own until the stale session is gone.
    target = TargetServer(echo)
    watcher = Recorder()
    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        user=openssh_server.user,
        auth=[PrivateKeyFile(openssh_client_key)],
        known_hosts=openssh_server.known_hosts_path,
        keepalive_interval=1,
        keepalive_count_max=2,
        reconnect=ReconnectPolicy(initial_delay=0.2, max_delay=0.5, jitter=0),
    )
    t.add_observer(watcher)
    await t.logon()
    frozen: list[int] = []
    try:
        port = free_port()
        await t.request_forwarding("127.0.0.1", port, "127.0.0.1", target.port)
        frozen = openssh_server.sshd_session_pids()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await eventually(lambda: bool(watcher.losses), timeout=10)
        assert time.monotonic() - stopped_at <= 1 * (2 + 1) + 1 + 0.5  # slack for CI
        assert isinstance(watcher.losses[0], KeepaliveError) and watcher.losses[0].code == 1039
        await eventually(lambda: watcher.connects == 2, timeout=10)
        await eventually(lambda: any(a.retry_type == "tunnel" for a in watcher.attempts), 10)
        assert (port, ForwardState.RETRYING, port) in watcher.states
        for pid in frozen:  # the stale session goes away
            os.kill(pid, signal.SIGKILL)
        frozen = []
        await eventually(lambda: t.forwards[0].state is ForwardState.ACTIVE, timeout=15)
        assert await in_thread(exchange, port, b"back") == b"back"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        await t.logoff()
        target.close()


@pytest_twisted.ensureDeferred
async def test_sshd_restart(openssh_server: Any, openssh_client_key: Any) -> None:
    # A5: the server restarts; rtunnel comes back with its forward.
    target = TargetServer(echo)
    watcher = Recorder()
    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        user=openssh_server.user,
        auth=[PrivateKeyFile(openssh_client_key)],
        known_hosts=openssh_server.known_hosts_path,
        reconnect=FAST,
    )
    t.add_observer(watcher)
    await t.logon()
    try:
        fwd = await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", target.port)
        await in_thread(openssh_server.restart)
        await eventually(lambda: watcher.connects == 2 and fwd.state is ForwardState.ACTIVE, 15)
        assert await in_thread(exchange, fwd.port, b"restarted") == b"restarted"
    finally:
        await t.logoff()
        target.close()


def test_logoff_while_waiting_to_reconnect_stops_cleanly() -> None:
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    t = ReverseTunnel(clock, "example.invalid", 22, reconnect=FAST)
    t._reconnect_call = clock.callLater(5, lambda: None)
    done: list[Any] = []
    t.when_disconnected().addBoth(done.append)
    t.logoff().addBoth(done.append)
    assert done == [None, None] and clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_exit_on_forward_failure_after_a_reconnect(server: Server) -> None:
    # A re-forward refused after a reconnect ends the tunnel with ForwardingError, instead
    # of being retried, when exit_on_forward_failure is set (OpenSSH's ExitOnForwardFailure).
    from rtunnel import ForwardingError

    target = TargetServer(echo)
    watcher = Recorder()
    # Reconnect after 2 s, so that the port can be taken in between.
    t = server.tunnel(reconnect=ReconnectPolicy.fixed(2.0), exit_on_forward_failure=True)
    t.add_observer(watcher)
    await t.logon()
    squatter = socket.socket()
    try:
        port = free_port()
        await t.request_forwarding("127.0.0.1", port, "127.0.0.1", target.port)
        ended = t.when_disconnected()
        failures: list[Any] = []
        ended.addErrback(failures.append)
        await server.drop()

        def squat() -> bool:
            try:
                squatter.bind(("127.0.0.1", port))
            except OSError:
                return False  # the server's listener is not closed yet
            return True

        await eventually(squat, timeout=1.5)
        squatter.listen(1)
        await eventually(lambda: bool(failures), timeout=15)
        assert failures[0].check(ForwardingError)
        assert f"listen port {port}" in str(failures[0].value)
        assert not any(a.retry_type == "tunnel" for a in watcher.attempts)
        assert not t.connected
    finally:
        squatter.close()
        target.close()
        await t.logoff()
