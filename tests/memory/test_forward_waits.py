"""
A ``request_forwarding()`` that waits for a reconnect, ended another way than by the
server's answer: cancelled with ``cancel_forwarding()``, or abandoned by its caller while
the forward is being requested again. Through the whole stack in memory (MemoryPair),
with the server's replies held back (``delay_replies``) so that the re-request is in
flight when the caller acts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from rtunnel import ForwardingError, ForwardState, ReverseTunnel
from rtunnel._core.policy import ReconnectPolicy
from rtunnel.testing import MemoryPair

# The reconnect comes 0.2 s after the loss; the server then answers global requests 1 s
# after they arrive.
FAST = ReconnectPolicy(initial_delay=0.2, max_delay=1.0, jitter=0.0)
REPLY_DELAY = 1.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    pair = MemoryPair(tmp_path, reconnect=FAST, keepalive_interval=0)
    yield pair
    pair.close()


def _outcome(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def _waiting_request(pair: MemoryPair, port: int) -> Deferred[Any]:
    """A request_forwarding() made while the tunnel waits to reconnect; then the
    reconnect logs on and the re-request is sent, not yet answered."""
    t = pair.tunnel
    pair.logon()
    pair.drop()
    assert not t.connected
    requested = t.request_forwarding("127.0.0.1", port, "127.0.0.1", 8000)
    pair.server.delay_replies(global_requests=REPLY_DELAY)
    pair.advance(FAST.initial_delay)
    assert t.connected and not requested.called
    assert [f.state for f in t.forwards] == [ForwardState.PENDING]
    return requested


def test_cancel_forwarding_answers_a_request_waiting_for_the_reconnect(pair: MemoryPair) -> None:
    # Before: the forward left the table, but the request_forwarding() Deferred was
    # never answered (its caller waited forever).
    t = pair.tunnel
    requested = _outcome(_waiting_request(pair, 7000))
    cancelled = _outcome(t.cancel_forwarding("127.0.0.1", 7000))
    assert len(requested) == 1 and isinstance(requested[0], Failure)
    assert requested[0].check(ForwardingError)
    assert "cancelled" in str(requested[0].value) and "7000" in str(requested[0].value)
    pair.advance(2 * REPLY_DELAY)
    assert cancelled == [None] and t.forwards == []
    # The cancel followed the re-request, so the server listens no more.
    assert pair.server.forwards == []
    _logoff(pair, t)


def test_cancel_socket_forwarding_answers_a_request_waiting_for_the_reconnect(
    pair: MemoryPair, tmp_path: Path
) -> None:
    # The defect as it was: cancel_socket_forwarding() found the waiting forward by its
    # path and forgot it, and the request_forwarding() Deferred was never answered.
    t = pair.tunnel
    pair.logon()
    pair.drop()
    path = str(tmp_path / "remote.sock")
    requested = _outcome(t.request_socket_forwarding(path, "127.0.0.1", 8000))
    pair.server.delay_replies(global_requests=REPLY_DELAY)
    pair.advance(FAST.initial_delay)
    assert t.connected and requested == []
    assert [f.state for f in t.forwards] == [ForwardState.PENDING]
    cancelled = _outcome(t.cancel_socket_forwarding(path))
    assert len(requested) == 1 and isinstance(requested[0], Failure)
    assert requested[0].check(ForwardingError)
    pair.advance(2 * REPLY_DELAY)
    assert cancelled == [None] and t.forwards == []
    assert pair.server.socket_forwards == []
    _logoff(pair, t)


def test_cancel_forwarding_of_a_forward_retrying_answers_and_stops_the_retries(
    pair: MemoryPair,
) -> None:
    # The re-request is refused (a stale session holds the port, A9), so the forward
    # waits for its own retry timer; a cancel then must answer the caller and take the
    # retry timer away.
    t = pair.tunnel
    pair.logon()
    pair.drop()
    requested = _outcome(t.request_forwarding("127.0.0.1", 7000, "127.0.0.1", 8000))
    pair.server.hold_port(7000)
    pair.advance(FAST.initial_delay)
    assert [f.state for f in t.forwards] == [ForwardState.RETRYING] and requested == []
    timers = len(pair.reactor.getDelayedCalls())
    cancelled = _outcome(t.cancel_forwarding("127.0.0.1", 7000))
    pair.flush()
    assert cancelled == [None] and t.forwards == []
    assert len(requested) == 1 and isinstance(requested[0], Failure)
    assert requested[0].check(ForwardingError)
    # Exactly the forward's retry timer is gone.
    assert len(pair.reactor.getDelayedCalls()) == timers - 1
    pair.run(pair.server.release_port(7000))
    pair.advance(60)
    assert pair.server.forwards == [] and t.forwards == []
    _logoff(pair, t)


def test_cancel_forwarding_while_waiting_to_reconnect_forgets_the_forward(
    pair: MemoryPair,
) -> None:
    # Before: NotConnectedError, and the reconnect asked for the forward again. The
    # server's listener went with the lost session, so nothing needs telling it.
    t = pair.tunnel
    pair.logon()
    result = _outcome(t.request_forwarding("127.0.0.1", 7000, "127.0.0.1", 8000))
    pair.flush()
    assert len(result) == 1 and pair.server.forwards != []
    pair.drop()
    assert not t.connected and [f.port for f in t.forwards] == [7000]
    cancelled = _outcome(t.cancel_forwarding("127.0.0.1", 7000))
    pair.flush()
    assert cancelled == [None] and t.forwards == []
    pair.advance(FAST.initial_delay)
    pair.flush()
    assert t.connected and t.forwards == [] and pair.server.forwards == []
    # A second cancel of it is an error naming it, as for any forward not there.
    again = _outcome(t.cancel_forwarding("127.0.0.1", 7000))
    assert len(again) == 1 and isinstance(again[0], Failure)
    assert again[0].check(ForwardingError) and "7000" in str(again[0].value)
    _logoff(pair, t)


def test_a_forward_abandoned_while_requested_again_is_not_left_listening(
    pair: MemoryPair,
) -> None:
    # Before: the caller's cancel dropped the forward while its tcpip-forward was on its
    # way; the server agreed and listened, and no cancel-tcpip-forward followed.
    t = pair.tunnel
    requested = _waiting_request(pair, 7000)
    requested.cancel()
    assert _outcome(requested)[0].check(CancelledError)
    assert t.forwards == []
    pair.advance(REPLY_DELAY)  # the server agrees, and listens ...
    pair.advance(REPLY_DELAY)  # ... until our cancel arrives and is answered
    assert pair.server.forwards == []
    assert t.connected and t.forwards == []
    _logoff(pair, t)


def test_a_first_request_abandoned_in_flight_is_not_left_listening(pair: MemoryPair) -> None:
    # The same on the first connection: the caller cancels request_forwarding() before
    # the server answers.
    t = pair.tunnel
    pair.logon()
    pair.server.delay_replies(global_requests=REPLY_DELAY)
    requested = t.request_forwarding("127.0.0.1", 7001, "127.0.0.1", 8000)
    pair.flush()
    requested.cancel()
    assert _outcome(requested)[0].check(CancelledError)
    pair.advance(2 * REPLY_DELAY)
    assert pair.server.forwards == [] and t.forwards == []
    _logoff(pair, t)


def _logoff(pair: MemoryPair, t: ReverseTunnel) -> None:
    pair.server.delay_replies()
    pair.run(t.logoff())
    assert pair.reactor.getDelayedCalls() == []
