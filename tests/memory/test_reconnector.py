"""
The reconnect loop (rtunnel/_reconnect.py) on a task.Clock with a scripted host, no SSH:
the waits it keeps, when it gives up, and logoff from every state (after Twisted's
ClientService tests: no delayed call is left over).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from rtunnel._core.policy import ReconnectPolicy
from rtunnel._core.reconnect import Event, State
from rtunnel._reconnect import Reconnector
from rtunnel.errors import (
    AlreadyConnectedError,
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    ReconnectLimitError,
)

FIXED = ReconnectPolicy(initial_delay=1, max_delay=8, factor=2, jitter=0)


class Host:
    """Each connect waits for the test to answer it; records everything it is asked."""

    def __init__(self, reconnector: Reconnector | None = None) -> None:
        self.connects: list[Deferred[None]] = []
        self.connect_times: list[float] = []
        self.announced: list[tuple[int, str]] = []
        self.given_up: list[Failure] = []
        self.logged_off = 0
        self.losses = 0
        self.reconnects = 0
        self.refuse_after: int | None = None
        self.clock = task.Clock()
        self.reconnector: Reconnector = reconnector or Reconnector(
            self.clock, self, lambda: self.policy, "server.example port 22"
        )
        self.policy = FIXED

    def connect(self) -> Coroutine[Any, Any, None]:
        async def attempt() -> None:
            d: Deferred[None] = Deferred()
            self.connects.append(d)
            self.connect_times.append(self.clock.seconds())
            try:
                await d
            except defer.CancelledError:
                raise self.abandoned() from None  # as the tunnel's connect does
            self.reconnector.move(Event.LOGGED_ON)  # as the tunnel does once logged on

        return attempt()

    def announce(self, retry: int, error: Exception) -> float | None:
        self.announced.append((retry, str(error)))
        if self.refuse_after is not None and retry > self.refuse_after:
            return None
        return FIXED.delay(retry)

    def retryable(self, error: Exception) -> bool:
        return not isinstance(error, AuthenticationError)

    def abandoned(self) -> Exception:
        return ConnectError("abandoned")

    def reconnected(self) -> Coroutine[Any, Any, None]:
        async def again() -> None:
            self.reconnects += 1

        return again()

    def lost(self) -> None:
        self.losses += 1

    def stopped(self, failure: Failure | None) -> None:
        if failure is not None:
            self.given_up.append(failure)
        else:
            self.logged_off += 1

    # -- the test's side

    def refuse(self) -> None:
        self.connects[-1].errback(ConnectError("connect to host: Connection refused"))

    def accept(self) -> None:
        self.connects[-1].callback(None)

    def lose(self, error: Exception | None = None) -> None:
        error = error or ConnectionLostError("closed by remote host")
        if self.reconnector.lost(error):
            self.reconnector.schedule(error)


def outcome(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def test_logon_and_an_outage_with_backoff_until_it_works() -> None:
    host = Host()
    r = host.reconnector
    logon = outcome(r.logon())
    assert r.state is State.LOGGING_ON
    host.accept()
    assert logon == [None] and r.state is State.CONNECTED
    host.lose()
    assert r.state is State.WAITING
    for _ in range(3):
        host.clock.advance(host.clock.getDelayedCalls()[0].getTime() - host.clock.seconds())
        assert r.state is State.RECONNECTING
        host.refuse()
        assert r.state is State.WAITING
    host.clock.advance(8)
    host.accept()
    assert r.state is State.CONNECTED and host.reconnects == 1
    # connect at 0; lost at 0; retries after 1, 2, 4 and 8 s
    assert host.connect_times == [0, 1, 3, 7, 15]
    assert [n for n, _ in host.announced] == [1, 2, 3, 4]
    assert host.clock.getDelayedCalls() == []


def test_the_reconnect_gives_up_after_the_last_retry() -> None:
    host = Host()
    host.refuse_after = 2
    r = host.reconnector
    r.logon()
    host.accept()
    host.lose()
    host.clock.advance(1)
    host.refuse()
    host.clock.advance(2)
    host.refuse()
    assert r.state is State.STOPPED
    assert len(host.connects) == 3
    [failure] = host.given_up
    assert failure.check(ReconnectLimitError)
    assert str(failure.value) == (
        "Gave up reconnecting to server.example port 22 after 2 retries; the last error "
        "was: connect to host: Connection refused"
    )
    assert host.clock.getDelayedCalls() == []


def test_a_refusal_while_reconnecting_stops_at_once() -> None:
    host = Host()
    r = host.reconnector
    r.logon()
    host.accept()
    host.lose()
    host.clock.advance(1)
    host.connects[-1].errback(AuthenticationError("Permission denied"))
    assert r.state is State.STOPPED
    assert [type(f.value) for f in host.given_up] == [AuthenticationError]
    assert host.clock.getDelayedCalls() == []


def test_mode_off_and_a_refused_loss_do_not_reconnect() -> None:
    for policy, error in (
        (ReconnectPolicy.off(), ConnectionLostError("lost")),
        (FIXED, AuthenticationError("no")),
    ):
        host = Host()
        host.policy = policy
        host.reconnector.logon()
        host.accept()
        host.lose(error)
        assert host.reconnector.state is State.STOPPED
        assert host.announced == [] and host.clock.getDelayedCalls() == []


def test_mode_always_retries_the_first_logon() -> None:
    host = Host()
    host.policy = ReconnectPolicy(mode="always", initial_delay=1, max_delay=8, jitter=0)
    host.refuse_after = 2
    r = host.reconnector
    logon = outcome(r.logon())
    host.refuse()
    assert r.state is State.LOGON_WAIT
    host.clock.advance(1)
    assert r.state is State.LOGGING_ON
    host.refuse()
    host.clock.advance(2)
    host.refuse()
    assert host.connect_times == [0, 1, 3]
    [failure] = logon
    assert failure.check(ReconnectLimitError)
    assert str(failure.value) == (
        "Gave up connecting to server.example port 22 after 2 retries: "
        "connect to host: Connection refused"
    )
    assert r.state is State.STOPPED and host.clock.getDelayedCalls() == []


def test_mode_on_loss_does_not_retry_the_first_logon() -> None:
    host = Host()
    logon = outcome(host.reconnector.logon())
    host.refuse()
    assert logon[0].check(ConnectError) and host.announced == []
    assert host.reconnector.state is State.STOPPED


def test_a_second_logon_is_refused_while_one_is_under_way_or_connected() -> None:
    host = Host()
    r = host.reconnector
    r.logon()
    [failure] = outcome(r.logon())
    assert str(failure.value) == "A logon is already in progress."
    host.accept()
    [failure] = outcome(r.logon())
    assert failure.check(AlreadyConnectedError)
    assert str(failure.value) == "Already logged on; log off first."
    assert len(host.connects) == 1


def logoff(r: Reconnector) -> list[Any]:
    async def steps() -> None:
        await r.stop()
        r.stopped()

    return outcome(Deferred.fromCoroutine(steps()))


def test_logoff_while_logging_on_gives_the_connect_up() -> None:
    host = Host()
    r = host.reconnector
    logon = outcome(r.logon())
    assert logoff(r) == [None]
    assert logon[0].check(ConnectError) and str(logon[0].value) == "abandoned"
    assert host.connects[0].called  # cancelled
    assert r.state is State.STOPPED and host.clock.getDelayedCalls() == []


def test_logoff_while_waiting_to_retry_the_logon_ends_the_wait() -> None:
    host = Host()
    host.policy = ReconnectPolicy(mode="always", jitter=0)
    r = host.reconnector
    logon = outcome(r.logon())
    host.refuse()
    assert r.state is State.LOGON_WAIT
    assert logoff(r) == [None]
    assert str(logon[0].value) == "abandoned"
    assert r.state is State.STOPPED and host.clock.getDelayedCalls() == []
    assert len(host.connects) == 1


def test_logoff_while_waiting_to_reconnect_cancels_the_timer() -> None:
    host = Host()
    r = host.reconnector
    r.logon()
    host.accept()
    host.lose()
    assert logoff(r) == [None]
    assert r.state is State.STOPPED and host.clock.getDelayedCalls() == []
    host.clock.advance(100)
    assert len(host.connects) == 1


def test_logoff_while_reconnecting_gives_the_reconnect_up_quietly() -> None:
    host = Host()
    r = host.reconnector
    r.logon()
    host.accept()
    host.lose()
    host.clock.advance(1)
    assert r.state is State.RECONNECTING
    assert logoff(r) == [None]
    assert r.state is State.STOPPED
    assert host.given_up == [] and host.reconnects == 0
    assert host.clock.getDelayedCalls() == []


def test_an_observer_logging_off_from_the_announcement_stops_the_loop() -> None:
    host = Host()
    r = host.reconnector
    r.logon()
    host.accept()
    stopping: list[Any] = []

    def announce(retry: int, error: Exception) -> float | None:
        stopping.extend(logoff(r))
        return 1.0

    host.announce = announce  # type: ignore[method-assign]
    host.lose()
    assert stopping == [None]
    assert r.state is State.STOPPED and host.clock.getDelayedCalls() == []


def test_a_cancelled_logon_is_abandoned() -> None:
    host = Host()
    d = host.reconnector.logon()
    d.cancel()
    [failure] = outcome(d)
    assert str(failure.value) == "abandoned"
    assert host.reconnector.state is State.STOPPED


# -- an established connection's end, and stopping for good (moved off the facade)


def _connected(host: Host) -> Reconnector:
    r = host.reconnector
    r.logon()
    host.accept()
    return r


def test_an_end_while_logging_off_stops_with_no_error_or_the_loss() -> None:
    for clean in (True, False):
        host = Host()
        r = _connected(host)
        stopped = outcome(r.when_stopped())
        Deferred.fromCoroutine(r.stop())
        loss = Failure(ConnectionLostError("closed by remote host"))
        r.ended(loss, clean, worked=lambda: True)
        if clean:
            assert stopped == [None] and host.logged_off == 1 and host.given_up == []
        else:
            assert [f.value for f in stopped] == [loss.value] and host.given_up == [loss]
        assert host.losses == 0 and host.clock.getDelayedCalls() == []


def test_an_end_reconnects_and_a_connection_that_worked_restarts_the_backoff() -> None:
    host = Host()
    r = _connected(host)
    loss = Failure(ConnectionLostError("closed by remote host"))
    r.ended(loss, clean=False, worked=lambda: False)
    assert r.state is State.WAITING and host.losses == 1 and r.retry == 1
    host.clock.advance(1)
    host.accept()
    r.ended(loss, clean=False, worked=lambda: False)  # did not work: the backoff grows
    assert r.retry == 2 and [n for n, _ in host.announced] == [1, 2]
    host.clock.advance(2)
    host.accept()
    r.ended(loss, clean=False, worked=lambda: True)  # worked: from the first step again
    assert r.retry == 1 and [n for n, _ in host.announced] == [1, 2, 1]
    assert host.losses == 3 and host.given_up == []
    assert [c.getTime() for c in host.clock.getDelayedCalls()] == [host.clock.seconds() + 1]


def test_an_end_with_reconnect_off_gives_up_with_the_loss() -> None:
    host = Host()
    host.policy = ReconnectPolicy.off()
    r = _connected(host)
    stopped = outcome(r.when_stopped())
    loss = Failure(ConnectionLostError("closed by remote host"))
    r.ended(loss, clean=False, worked=lambda: True)
    assert r.state is State.STOPPED and host.given_up == [loss] and host.losses == 0
    assert [f.value for f in stopped] == [loss.value] and r.retry == 0


def test_fail_with_makes_the_next_stop_fail_with_that_error() -> None:
    host = Host()
    r = _connected(host)
    first, second = outcome(r.when_stopped()), outcome(r.when_stopped())
    refused = ConnectError("the forward was refused again")
    r.fail_with(refused)
    r.give_up(None)  # a logoff, which the refusal asked for
    assert [f.value for f in first] == [refused] and [f.value for f in second] == [refused]
    assert [f.value for f in host.given_up] == [refused] and host.logged_off == 0
    later = outcome(r.when_stopped())
    r.give_up(None)  # the error is used once; a later logoff is clean again
    assert later == [None] and host.logged_off == 1
