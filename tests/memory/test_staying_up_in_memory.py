"""
Timeouts and the idle-channel timeout (issue #5) on a clock: the deadline arithmetic and
the reaper alone; then the whole stack in memory (MemoryPair): the handshake's, the key
exchange's and authentication's own bounds, giving up a retrying logon, and a channel
closed after T seconds without data (or after T in all, with ``absolute_timeout``). The
seconds are exact, not padded for a loaded machine. tests/loopback/test_staying_up.py
keeps what needs real sockets or sshd.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from typing_extensions import override

from rtunnel import (
    AskPassword,
    ConnectError,
    ReconnectAttempt,
    ReconnectPolicy,
    ReverseTunnel,
    TimedOutError,
    TunnelObserver,
    TunnelOptions,
)
from rtunnel._core.policy import channel_idle_deadline
from rtunnel.client.channels.idle import IdleChannelReaper
from rtunnel.testing import MemoryPair


class _Greeter(Protocol):
    """A TCP server that sends ``greeting`` and then nothing, reading all the while."""

    greeting = b""

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.greeting)


def _listener(pair: MemoryPair, port: int, greeting: bytes) -> list[Protocol]:
    """A server that accepts on ``port`` and says ``greeting``; the connections it took."""
    accepted: list[Protocol] = []

    class Greeter(_Greeter):
        @override
        def connectionMade(self) -> None:
            accepted.append(self)
            super().connectionMade()

    Greeter.greeting = greeting
    pair.reactor.listenTCP(port, ServerFactory.forProtocol(Greeter), interface="127.0.0.1")
    return accepted


# -- the idle-channel timeout, pure and on a Clock ------------------------------------


def test_channel_idle_deadline() -> None:
    assert channel_idle_deadline(10, 25, 30, absolute=False) == 55
    assert channel_idle_deadline(10, 25, 30, absolute=True) == 40
    assert channel_idle_deadline(10, 25, 0, absolute=False) == float("inf")


@dataclass
class _Info:
    origin_address: str = "127.0.0.1"
    origin_port: int = 1
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class _Channel:
    local_id: int
    info: _Info = field(default_factory=_Info)
    confirmed: bool = True
    finished: bool = False
    close_sent: bool = False
    closed_at: float | None = None
    clock: Clock | None = None

    def loseConnection(self) -> None:  # noqa: N802 (ITransport)
        self.close_sent = True
        assert self.clock is not None
        self.closed_at = self.clock.seconds()

    __hash__ = object.__hash__


@dataclass
class _Conn:
    channels: dict[int, _Channel] = field(default_factory=dict)
    stopped: bool = False


def _reaper(timeout: float, absolute: bool) -> tuple[Clock, _Conn, list[int]]:
    clock = Clock()
    conn = _Conn()
    expired: list[int] = []
    reaper = IdleChannelReaper(
        conn,  # type: ignore[arg-type]
        clock,
        timeout,
        absolute,
        lambda ch: expired.append(ch.local_id),
    )
    reaper.start()
    return clock, conn, expired


def _run(clock: Clock, until: float, step: float = 0.05, each: Any = None) -> None:
    while clock.seconds() < until:
        clock.advance(step)
        if each is not None:
            each()


def test_idle_channels_close_within_ten_percent_and_activity_resets_the_timer() -> None:
    clock, conn, expired = _reaper(10, absolute=False)
    idle = _Channel(1, clock=clock)
    busy = _Channel(2, clock=clock)
    conn.channels = {1: idle, 2: busy}

    def chatter() -> None:
        if clock.seconds() < 15:
            busy.info.bytes_received += 1

    _run(clock, 40, each=chatter)
    assert idle.closed_at is not None and 10 <= idle.closed_at <= 11
    # Busy until 15, then idle: closed 10 s later.
    assert busy.closed_at is not None and 25 <= busy.closed_at <= 26.5
    assert expired == [1, 2]


def test_absolute_timeout_closes_busy_channels_too() -> None:
    clock, conn, expired = _reaper(5, absolute=True)
    busy = _Channel(7, clock=clock)
    conn.channels = {7: busy}

    def chatter() -> None:
        busy.info.bytes_sent += 10

    _run(clock, 8, each=chatter)
    assert busy.closed_at is not None and 5 <= busy.closed_at <= 5.6
    assert expired == [7]


def test_zero_timeout_never_schedules_anything() -> None:
    clock, _conn, _expired = _reaper(0, absolute=False)
    assert clock.getDelayedCalls() == []


# -- the logon's timeouts and the idle channels, the whole stack on a clock ------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    pair = MemoryPair(tmp_path)
    yield pair
    pair.close()


def test_a_server_without_a_banner_times_out_in_the_handshake(pair: MemoryPair) -> None:
    # RELIABILITY.md A2: TCP accepted, no banner.
    _listener(pair, 2300, b"")
    t = ReverseTunnel(
        pair.reactor,
        "127.0.0.1",
        2300,
        options=TunnelOptions.create(known_hosts=[], connect_timeout=0.5),
    )
    logon = t.logon()
    pair.advance(0.499)
    assert not logon.called
    with pytest.raises(TimedOutError) as e:
        pair.run(logon, timeout=0.002)
    assert e.value.code == 201
    assert isinstance(e.value, ConnectError)
    assert "timed out during the SSH handshake (after 0.5 s)" in str(e.value)
    assert "no SSH version banner" in str(e.value)


def test_a_server_that_stops_after_its_banner_times_out_in_the_key_exchange(
    pair: MemoryPair,
) -> None:
    _listener(pair, 2300, b"SSH-2.0-OpenSSH_9.2\r\n")
    t = ReverseTunnel(
        pair.reactor,
        "127.0.0.1",
        2300,
        options=TunnelOptions.create(known_hosts=[], connect_timeout=0.5),
    )
    with pytest.raises(TimedOutError, match="the key exchange did not finish"):
        pair.run(t.logon())
    assert pair.reactor.seconds() == pytest.approx(0.5)


def test_authentication_has_its_own_timeout(pair: MemoryPair) -> None:
    # The password callback never answers: the handshake is done, authentication hangs.
    pair.server.add_user(pair.user, password="never asked for in time")
    never: Deferred[str] = Deferred()
    t = pair.make_tunnel(
        auth=[AskPassword(lambda prompt: never)], global_known_hosts=[], auth_timeout=0.5
    )
    with pytest.raises(TimedOutError, match=r"timed out during authentication \(after 0.5 s\)"):
        pair.run(t.logon())
    assert pair.reactor.seconds() == pytest.approx(0.5)
    assert not t.connected


@pytest.mark.parametrize("how", ["logoff", "cancel"])
def test_giving_up_a_retrying_logon_stops_the_retries(pair: MemoryPair, how: str) -> None:
    # Mode "always" retries the first logon; logoff() (or cancelling logon()'s Deferred)
    # in the middle of an attempt must end the loop, not count as one more failure.
    accepted = _listener(pair, 2300, b"")
    t = ReverseTunnel(
        pair.reactor,
        "127.0.0.1",
        2300,
        options=TunnelOptions.create(
            known_hosts=[],
            connect_timeout=5,
            reconnect=ReconnectPolicy.fixed(0.3, max_retries=5, mode="always"),
        ),
    )
    attempts: list[ReconnectAttempt] = []

    class Attempts(TunnelObserver):
        @override
        def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
            attempts.append(attempt)

    t.add_observer(Attempts())
    logon = t.logon()
    pair.advance(0.5)  # inside the first attempt's handshake
    if how == "logoff":
        pair.run(t.logoff(), timeout=0)
    else:
        logon.cancel()
    with pytest.raises(ConnectError, match="abandoned: logoff"):
        pair.run(logon, timeout=0)
    pair.advance(60)
    assert attempts == []
    assert len(accepted) == 1
    assert not t.connected


class _Echo(Protocol):
    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def _forward_to_echo(pair: MemoryPair, t: ReverseTunnel) -> int:
    pair.reactor.listenTCP(8000, ServerFactory.forProtocol(_Echo), interface="127.0.0.1")
    pair.run(t.logon())
    forward = pair.run(t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 8000))
    return int(forward.port)


def test_idle_channels_are_closed_and_activity_keeps_them_open(pair: MemoryPair) -> None:
    # RELIABILITY.md C12: closed at T +- 10 %, activity resets the timer.
    t = pair.make_tunnel(channel_idle_timeout=1.0, keepalive_interval=0)
    port = _forward_to_echo(pair, t)
    quiet = pair.connect(port)
    pair.advance(0.9)
    assert not quiet.closed
    pair.advance(0.2)
    assert quiet.closed
    # Busy for 2 s (twice the timeout), then closed about 1 s after it goes quiet.
    busy = pair.connect(port)
    for _ in range(10):
        busy.write(b"x")
        pair.advance(0.2)
    assert not busy.closed and busy.received == b"x" * 10
    pair.advance(0.7)  # 0.9 s since the last byte
    assert not busy.closed
    pair.advance(0.2)
    assert busy.closed and t.channels == []
    pair.run(t.logoff())


def test_absolute_timeout_closes_a_busy_channel(pair: MemoryPair) -> None:
    t = pair.make_tunnel(channel_idle_timeout=1.0, absolute_timeout=True, keepalive_interval=0)
    port = _forward_to_echo(pair, t)
    busy = pair.connect(port)
    for _ in range(4):
        busy.write(b"x")
        pair.advance(0.2)
    assert not busy.closed
    pair.advance(0.3)  # 1.1 s after it opened, however busy
    assert busy.closed and busy.received == b"x" * 4
    assert t.channels == []
    pair.run(t.logoff())
