"""
Every helper of rtunnel.testing that waits gives up (issue #16): after its timeout, 30
seconds unless told, with a WaitTimeoutError that names what it waited for and what it
saw. On a Clock, so the seconds are simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from rtunnel.testing import FaultProxy, MemoryPair, SSHTestServer, WaitTimeoutError
from rtunnel.testing._waiting import DEFAULT_TIMEOUT, Waiters


def _outcome(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def _server() -> tuple[MemoryReactorClock, SSHTestServer]:
    reactor = MemoryReactorClock()
    server = SSHTestServer(reactor, port=2222)
    assert _outcome(server.start()) == [None]
    return reactor, server


WAITS: dict[str, tuple[Callable[..., Deferred[Any]], tuple[Any, ...], str, str]] = {
    "connections": (
        SSHTestServer.wait_for_connections,
        (1,),
        "SSHTestServer.wait_for_connections(1)",
        "0 SSH connections are live, not exactly 1 (0 accepted since the server was made)",
    ),
    "open channels": (
        SSHTestServer.wait_for_open_channels,
        (2,),
        "SSHTestServer.wait_for_open_channels(2)",
        "0 forwarded channels are open, not exactly 2",
    ),
    "forward": (
        SSHTestServer.wait_for_forward,
        ("127.0.0.1", 8080),
        "SSHTestServer.wait_for_forward('127.0.0.1', 8080)",
        "the forwards are none",
    ),
}


@pytest.mark.parametrize("name", WAITS)
def test_a_server_wait_gives_up_after_30_seconds_by_default_and_says_why(name: str) -> None:
    reactor, server = _server()
    method, args, what, seen = WAITS[name]
    box = _outcome(method(server, *args))
    reactor.advance(DEFAULT_TIMEOUT - 0.001)
    assert box == []
    reactor.advance(0.002)
    (failure,) = box
    assert isinstance(failure, Failure) and failure.check(WaitTimeoutError)
    assert str(failure.value) == f"{what}: gave up after 30 s; {seen}"
    assert reactor.getDelayedCalls() == []
    assert len(server._waiters) == 0


@pytest.mark.parametrize("name", WAITS)
def test_a_server_wait_takes_its_own_timeout_or_none(name: str) -> None:
    reactor, server = _server()
    method, args, what, _seen = WAITS[name]
    short = _outcome(method(server, *args, timeout=2.5))
    forever = method(server, *args, timeout=None)
    forever_box = _outcome(forever)
    reactor.advance(2.5)
    assert len(short) == 1 and isinstance(short[0], Failure)
    assert str(short[0].value).startswith(f"{what}: gave up after 2.5 s; ")
    reactor.advance(10 * DEFAULT_TIMEOUT)
    assert forever_box == []
    # No deadline, but it can still be cancelled (Deferred.addTimeout does that).
    forever.cancel()
    assert len(forever_box) == 1 and forever_box[0].check(CancelledError)
    assert len(server._waiters) == 0


def test_a_wait_that_is_met_cancels_its_deadline() -> None:
    reactor, server = _server()
    box = _outcome(server.wait_for_forward_closed("127.0.0.1", 8080, timeout=5))
    # Nothing listens there: met at once, no timer.
    assert box == [None] and reactor.getDelayedCalls() == []
    waiters = Waiters(reactor)
    flag: list[bool] = []
    met = _outcome(waiters.when(lambda: bool(flag), timeout=5, what="x", seen=lambda: "y"))
    assert len(reactor.getDelayedCalls()) == 1
    flag.append(True)
    waiters.changed()
    assert met == [None] and reactor.getDelayedCalls() == [] and len(waiters) == 0


def test_drop_connections_waits_with_a_deadline() -> None:
    _reactor, server = _server()
    # No connections: done at once.
    assert _outcome(server.drop_connections(timeout=1)) == [None]


def test_the_fault_proxy_wait_gives_up_and_says_why() -> None:
    reactor = MemoryReactorClock()
    proxy = FaultProxy(reactor, "127.0.0.1", 2222, port=3333)
    assert _outcome(proxy.start()) == [None]
    box = _outcome(proxy.wait_for_connections(1))
    reactor.advance(DEFAULT_TIMEOUT)
    (failure,) = box
    assert failure.check(WaitTimeoutError)
    assert str(failure.value) == (
        "FaultProxy.wait_for_connections(1): gave up after 30 s; 0 proxied connections are "
        "open, not exactly 1 (0 accepted since the proxy was made)"
    )
    short = _outcome(proxy.wait_for_connections(2, timeout=0.5))
    reactor.advance(0.5)
    assert short[0].check(WaitTimeoutError)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("timeout", [-1, -0.001])
def test_a_negative_timeout_is_refused(timeout: float) -> None:
    _reactor, server = _server()
    with pytest.raises(ValueError, match="timeout must be None or 0 or more seconds"):
        server.wait_for_connections(1, timeout=timeout)


def test_waits_with_a_client_name_what_is_there(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    pair.logon()
    pair.run(pair.tunnel.request_forwarding("127.0.0.1", 8080, "127.0.0.1", 1))
    server = pair.server
    # Run in memory, the server's wait gives up on the pair's clock, and says why.
    with pytest.raises(WaitTimeoutError) as caught:
        pair.run(server.wait_for_forward_closed("127.0.0.1", 8080, timeout=3))
    assert str(caught.value) == (
        "SSHTestServer.wait_for_forward_closed('127.0.0.1', 8080): gave up after 3 s; "
        "the forwards are [127.0.0.1:8080]"
    )
    other = _outcome(server.wait_for_forward("127.0.0.1", 9090, timeout=1))
    connections = _outcome(server.wait_for_connections(0, timeout=1))
    pair.advance(1)
    assert str(other[0].value).endswith("; the forwards are [127.0.0.1:8080]")
    assert str(connections[0].value).endswith(
        "; 1 SSH connections are live, not exactly 0 (1 accepted since the server was made)"
    )
    # And a wait that is met fires with what it waited for.
    assert pair.run(server.wait_for_forward("127.0.0.1")) == 8080
    pair.close()
