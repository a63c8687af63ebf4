"""
The tunnel driven through its connection state machine (rtunnel/_core/reconnect.py), the
whole SSH stack in memory on a clock: the states it passes, and what logoff or logon do
in the middle of an outage.
"""

from __future__ import annotations

from pathlib import Path

from memory_stack import ReconnectingStack
from twisted.python.failure import Failure

from rtunnel import (
    AlreadyConnectedError,
    ConnectError,
    ReconnectAttempt,
    ReconnectPolicy,
    TunnelObserver,
)
from rtunnel._core.reconnect import State

# As tests/memory/test_backoff.py's.
POLICY = ReconnectPolicy(initial_delay=1.0, max_delay=60.0, factor=2.0, jitter=0.2)


def test_an_outage_passes_through_the_states_of_the_table(tmp_path: Path) -> None:
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    tunnel = stack.tunnel
    seen = [tunnel._state]
    d = tunnel.logon()
    seen.append(tunnel._state)
    assert stack.join()
    d.addBoth(lambda _: None)
    seen.append(tunnel._state)
    stack.down = True
    stack.kill()
    seen.append(tunnel._state)
    stack.next_attempt()  # refused: back to waiting
    seen.append(tunnel._state)
    stack.down = False
    attempt = stack.watcher.attempts[-1]
    stack.reactor.advance(attempt.retry_interval - 1e-6)
    seen.append(tunnel._state)
    stack.reactor.advance(2e-6)
    seen.append(tunnel._state)  # the connect is made, not yet answered
    assert stack.join()
    seen.append(tunnel._state)
    stack.logoff()
    seen.append(tunnel._state)
    assert seen == [
        State.STOPPED,
        State.LOGGING_ON,
        State.CONNECTED,
        State.WAITING,
        State.WAITING,
        State.WAITING,
        State.RECONNECTING,
        State.CONNECTED,
        State.STOPPED,
    ]
    assert [a.retry_count for a in stack.watcher.attempts] == [1, 2]


class LogsOffOnTheFirstAttempt(TunnelObserver):
    def __init__(self, stack: ReconnectingStack) -> None:
        self.stack = stack
        self.logoffs: list[object] = []

    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self.stack.tunnel.logoff().addBoth(self.logoffs.append)


def test_a_logoff_from_the_reconnect_announcement_leaves_no_reconnect_behind(
    tmp_path: Path,
) -> None:
    # Before the state machine, the reconnect was scheduled after the observer's logoff
    # had finished, and the tunnel connected again 1 s later.
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    stack.logon_with_forward()
    observer = LogsOffOnTheFirstAttempt(stack)
    stack.tunnel.add_observer(observer)
    ended: list[object] = []
    stack.tunnel.when_disconnected().addBoth(ended.append)
    stack.kill()
    assert observer.logoffs == [None]
    assert ended == [None]
    assert stack.reactor.getDelayedCalls() == []
    stack.reactor.advance(120)
    assert not stack.join(), "connected again after logoff()"
    assert stack.tunnel._state is State.STOPPED


def test_logon_while_waiting_to_reconnect_is_refused(tmp_path: Path) -> None:
    # Before, it started a second connection beside the scheduled reconnect.
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    stack.logon_with_forward()
    stack.kill()
    failures: list[Failure] = []
    stack.tunnel.logon().addErrback(failures.append)
    assert not stack.join(), "logon() connected beside the reconnect"
    assert len(failures) == 1 and failures[0].check(AlreadyConnectedError)
    assert str(failures[0].value) == "A logon is already in progress."
    stack.next_attempt()
    assert stack.tunnel._state is State.CONNECTED
    stack.logoff()


def test_logoff_while_the_tcp_connect_is_under_way_abandons_the_logon(tmp_path: Path) -> None:
    # Before, the logon failed with Twisted's ConnectingCancelledError, no RTunnelError.
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    outcome: list[Failure] = []
    stack.tunnel.logon().addErrback(outcome.append)
    assert stack.tunnel._state is State.LOGGING_ON
    stack.logoff()
    assert len(outcome) == 1 and outcome[0].check(ConnectError), outcome
    assert str(outcome[0].value) == ("Logon to 127.0.0.1 port 2222 abandoned: logoff() was called.")
    assert stack.tunnel._state is State.STOPPED
