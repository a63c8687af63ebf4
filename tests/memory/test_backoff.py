"""
Reconnect backoff through the whole SSH stack in memory, on a clock (issue #12, defect 3):
after a reconnect that worked, the next outage starts from the first step again; a
server that drops every session right after the logon still meets a growing wait; the
cap holds.
"""

from __future__ import annotations

from pathlib import Path

from memory_stack import ReconnectingStack

from rtunnel import (
    ReconnectAttempt,
    ReconnectPolicy,
)

POLICY = ReconnectPolicy(initial_delay=1.0, max_delay=60.0, factor=2.0, jitter=0.2)


def first_step(attempt: ReconnectAttempt) -> bool:
    return attempt.retry_count == 1 and 0.8 <= attempt.retry_interval <= 1.2


def test_each_outage_after_a_working_reconnect_starts_from_the_first_step(
    tmp_path: Path,
) -> None:
    # The six kills with traffic flowing: the waits were 1.2, 2.2, 4.3, 58, 58
    # and 69 s, because only a connection that lasted 60 s reset the backoff. Here each
    # connection carries traffic for 5 s and is killed: every outage is attempt 1 of the
    # backoff, initial_delay * (1 +- jitter).
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    stack.logon_with_forward()
    for _ in range(6):
        assert stack.round_trip(b"hello") == b"HELLO"
        stack.reactor.advance(5)
        stack.kill()
        assert first_step(stack.watcher.attempts[-1]), stack.watcher.attempts[-1]
        stack.next_attempt()
        assert stack.tunnel.connected and stack.forward_active()
    assert len(stack.watcher.attempts) == 6
    assert stack.tunnel.statistics().sessions == 7
    stack.logoff()


def test_a_server_that_drops_each_session_after_the_logon_still_meets_backoff(
    tmp_path: Path,
) -> None:
    # A flapping server: it accepts, authenticates, grants the forward again and drops
    # the session at once. That proves nothing; the waits keep growing up to the cap,
    # never a tight loop. Then one reconnect that carries traffic starts the next outage
    # from the first step again, and the flapping climbs from there.
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    stack.logon_with_forward()
    stack.kill()
    for _ in range(12):
        stack.next_attempt()
        assert stack.tunnel.connected and stack.forward_active()
        stack.kill()
    counts = [a.retry_count for a in stack.watcher.attempts]
    waits = [a.retry_interval for a in stack.watcher.attempts]
    assert counts == list(range(1, 14))
    for n, wait in enumerate(waits, start=1):
        base = min(60 / 1.2, 2.0 ** (n - 1))
        assert 0.8 * base - 1e-9 <= wait <= 1.2 * base + 1e-9, (n, wait)
        assert wait <= 60
    # A reconnect that carried traffic:
    stack.next_attempt()
    assert stack.round_trip(b"traffic") == b"TRAFFIC"
    stack.kill()
    assert first_step(stack.watcher.attempts[-1])
    stack.next_attempt()
    stack.kill()
    assert stack.watcher.attempts[-1].retry_count == 2
    stack.logoff()


def test_the_cap_holds_while_the_server_is_down_for_long(tmp_path: Path) -> None:
    # A7/F4: the server is down for a day: every wait stays at most max_delay, and once it
    # is back and the forward carries traffic, the next outage starts from the first step.
    stack = ReconnectingStack(tmp_path, reconnect=POLICY)
    stack.logon_with_forward()
    stack.down = True
    stack.kill()
    elapsed = 0.0
    while elapsed < 24 * 3600:
        elapsed += stack.next_attempt().retry_interval
    waits = [a.retry_interval for a in stack.watcher.attempts]
    assert max(waits) <= 60 and min(waits[10:]) >= 60 * 0.8 / 1.2 - 1e-9
    assert 24 * 3600 / 60 <= len(waits) <= 24 * 3600 / 40 + 1
    stack.down = False
    stack.next_attempt()
    assert stack.tunnel.connected and stack.forward_active()
    assert stack.round_trip(b"back") == b"BACK"
    stack.kill()
    assert first_step(stack.watcher.attempts[-1])
    stack.logoff()


def test_a_reconnect_that_lasted_reset_after_counts_as_working(tmp_path: Path) -> None:
    # No keepalives, no traffic after the forward came back; the session lasted
    # reset_after.
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=60.0, jitter=0.2, reset_after=30)
    stack = ReconnectingStack(tmp_path, reconnect=policy, keepalive_interval=0)
    stack.logon_with_forward()
    stack.kill()
    stack.next_attempt()
    stack.kill()
    assert stack.watcher.attempts[-1].retry_count == 2  # dropped at once: not working
    stack.next_attempt()
    stack.reactor.advance(29.5)
    stack.kill()
    assert stack.watcher.attempts[-1].retry_count == 3  # idle for less than reset_after
    stack.next_attempt()
    stack.reactor.advance(30.5)
    stack.kill()
    assert first_step(stack.watcher.attempts[-1])
    stack.logoff()


def test_an_answered_keepalive_shows_an_idle_reconnect_works(tmp_path: Path) -> None:
    # ServerAliveInterval=1 on an idle tunnel: the first keepalive answered after the
    # forward came back shows that the reconnect worked.
    stack = ReconnectingStack(tmp_path, reconnect=POLICY, keepalive_interval=1)
    stack.logon_with_forward()
    stack.kill()
    stack.next_attempt()
    stack.kill()
    assert stack.watcher.attempts[-1].retry_count == 2
    stack.next_attempt()
    assert stack.pump is not None
    stack.reactor.advance(0.5)
    stack.pump.flush()
    assert stack.tunnel.statistics().keepalives_sent == 0
    stack.kill()
    assert stack.watcher.attempts[-1].retry_count == 3  # no keepalive yet: not shown
    stack.next_attempt()
    stack.reactor.advance(1.5)
    stack.pump.flush()  # the keepalive and its answer
    assert stack.tunnel.statistics().keepalives_sent == 1
    stack.kill()
    assert first_step(stack.watcher.attempts[-1])
    stack.logoff()
