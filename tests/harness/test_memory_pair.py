"""
rtunnel.testing.MemoryPair, the public in-memory tunnel and server (issue #16): what it
promises users, checked through the whole SSH stack on a clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel import AuthenticationError, ReconnectAttempt, ReconnectPolicy, TunnelObserver
from rtunnel.testing import InboundConnection, MemoryPair, WaitTimeoutError


class Upper(Protocol):
    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data.upper())


@implementer(IHalfCloseableProtocol)
class HalfCloser(Protocol):
    """Answers what it got, in upper case, once the other side has finished sending."""

    def __init__(self) -> None:
        self.got = b""

    @override
    def dataReceived(self, data: bytes) -> None:
        self.got += data

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        assert self.transport is not None
        self.transport.write(self.got.upper())
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        pass


class Events(TunnelObserver):
    def __init__(self) -> None:
        self.attempts: list[ReconnectAttempt] = []
        self.reasons: list[Exception | None] = []

    @override
    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self.attempts.append(attempt)

    @override
    def disconnected(self, reason: Exception | None) -> None:
        self.reasons.append(reason)


def _forward(pair: MemoryPair, factory: Factory, port: int = 0) -> int:
    forward = pair.run(pair.tunnel.request_forwarding("127.0.0.1", port, factory=factory))
    assert isinstance(forward.port, int)
    return forward.port


def test_a_forward_and_its_connections_in_memory(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    pair.logon()
    assert pair.tunnel.connected and pair.reactor.seconds() == 0
    port = _forward(pair, Factory.forProtocol(Upper))
    # Port 0: the server allocates one, as sshd does, and listens there.
    assert port >= 1024 and pair.server.forwards == [("127.0.0.1", port)]
    first = pair.connect(port)
    second = pair.connect(port, source=("198.51.100.7", 5555))
    assert pair.server.open_channels == 2
    assert sorted((c.origin_address, c.origin_port) for c in pair.tunnel.channels)[0] == (
        "198.51.100.7",
        5555,
    )
    first.write(b"one")
    second.write(b"two")
    pair.flush()
    assert (first.received, second.received) == (b"ONE", b"TWO")
    first.close()
    pair.flush()
    assert first.closed and not second.closed and len(pair.tunnel.channels) == 1
    second.abort()
    pair.flush()
    assert second.closed and pair.tunnel.channels == [] and pair.server.open_channels == 0
    pair.run(pair.tunnel.logoff())
    assert pair.server.forwards == [] and pair.reactor.getDelayedCalls() == []
    pair.close()


def test_half_close_travels_both_ways(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    pair.logon()
    port = _forward(pair, Factory.forProtocol(HalfCloser))
    client = pair.connect(port)
    client.write(b"all of it")
    pair.flush()
    assert client.received == b""  # the target answers only after our EOF
    client.write_eof()
    pair.flush()
    assert client.received == b"ALL OF IT" and client.closed
    pair.close()


def test_a_target_on_the_network_in_forwarding_mode(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    target = pair.reactor.listenTCP(8000, ServerFactory.forProtocol(Upper), interface="127.0.0.1")
    pair.logon()
    forward = pair.run(pair.tunnel.request_forwarding("127.0.0.1", 9000, "127.0.0.1", 8000))
    assert forward.port == 9000
    client = pair.connect(9000)
    client.write(b"to the target")
    pair.flush()
    assert client.received == b"TO THE TARGET"
    target.stopListening()
    refused = pair.connect(9000)  # the forward is there; its target is not
    assert refused.closed and refused.received == b""
    pair.close()


def test_nothing_listening_is_refused_and_ports_are_taken_once(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    with pytest.raises(ConnectionRefusedError):
        pair.connect(4444)
    factory = ServerFactory.forProtocol(Protocol)
    pair.reactor.listenTCP(4444, factory, interface="0.0.0.0")
    with pytest.raises(CannotListenError):
        pair.reactor.listenTCP(4444, factory, interface="127.0.0.1")
    with pytest.raises(CannotListenError):
        pair.reactor.listenTCP(pair.port, factory, interface="127.0.0.1")
    pair.reactor.listenTCP(4444, factory, interface="::1")  # the other family is free
    assert pair.connect(4444, "127.0.0.5").connected
    pair.close()


def test_run_gives_the_result_or_raises_the_failure(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)

    async def steps() -> str:
        await pair.tunnel.logon()
        return "logged on"

    assert pair.run(steps()) == "logged on"
    stranger = pair.make_tunnel(user="mallory", reconnect=ReconnectPolicy.off())
    with pytest.raises(AuthenticationError):
        pair.run(stranger.logon())
    pair.close()


def test_run_says_when_nothing_is_left_to_happen(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path, keepalive_interval=0)
    pair.logon()
    never: Deferred[None] = Deferred()
    with pytest.raises(WaitTimeoutError, match=r"^MemoryPair\.run\(a Deferred\): nothing is"):
        pair.run(never)
    pair.close()


def test_run_gives_up_after_its_timeout_in_simulated_time(tmp_path: Path) -> None:
    # Keepalives keep the clock busy for ever: the timeout ends the wait.
    pair = MemoryPair(tmp_path, keepalive_interval=1)
    pair.logon()
    with pytest.raises(
        WaitTimeoutError, match=r"^MemoryPair\.run\(a Deferred\): gave up after 7\.5 simulated s"
    ):
        pair.run(Deferred(), timeout=7.5)
    assert pair.reactor.seconds() == 7.5
    assert 6 <= pair.tunnel.statistics().keepalives_sent <= 8
    pair.close()


def test_advance_answers_each_keepalive_before_the_next_timer(tmp_path: Path) -> None:
    # One unanswered keepalive ends the session (count max 1): every one sent in 100
    # seconds was answered, so none was missed.
    pair = MemoryPair(tmp_path, keepalive_interval=1, keepalive_count_max=1)
    pair.logon()
    pair.advance(100)
    assert pair.tunnel.connected and pair.reactor.seconds() == 100
    assert 98 <= pair.tunnel.statistics().keepalives_sent <= 101
    pair.close()


def test_a_frozen_server_is_noticed_by_keepalives_and_left_for_a_new_session(
    tmp_path: Path,
) -> None:
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=1.0, jitter=0.0)
    pair = MemoryPair(tmp_path, keepalive_interval=1, keepalive_count_max=2, reconnect=policy)
    events = Events()
    pair.tunnel.add_observer(events)
    pair.logon()
    pair.server.freeze()
    # Three keepalives (at 1, 2 and 3 s) go unanswered: gone at 3 s, as ssh's
    # ServerAliveInterval 1 with ServerAliveCountMax 2.
    pair.advance(2.9)
    assert pair.tunnel.connected
    pair.advance(0.2)
    assert not pair.tunnel.connected and events.reasons and events.attempts
    # The next session is not frozen.
    pair.advance(1)
    assert pair.tunnel.connected and pair.server.accepted_connections == 2
    pair.close()


def test_kill_drop_and_refused_connections_are_reconnected_from(tmp_path: Path) -> None:
    policy = ReconnectPolicy(initial_delay=2.0, max_delay=2.0, jitter=0.0)
    pair = MemoryPair(tmp_path, reconnect=policy, keepalive_interval=0)
    events = Events()
    pair.tunnel.add_observer(events)
    pair.logon()
    port = _forward(pair, Factory.forProtocol(Upper), 7000)
    pair.kill()
    assert not pair.tunnel.connected and pair.server.connections == 0
    assert [a.retry_interval for a in events.attempts] == [2.0]
    pair.refuse_connections()
    pair.advance(2)
    assert pair.connection_attempts == 2 and pair.server.accepted_connections == 1
    pair.refuse_connections(False)
    pair.advance(2)
    assert pair.tunnel.connected and pair.connection_attempts == 3
    # The forward was asked for again, on the same port.
    assert pair.connect(port).connected
    pair.drop("maintenance")
    assert "maintenance" in str(events.reasons[-1])
    pair.advance(2)
    assert pair.tunnel.connected and pair.server.accepted_connections == 3
    pair.close()


def test_an_abort_is_a_reset_for_the_other_side(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    pair.logon()
    protocols: list[Protocol] = []

    class Keep(Protocol):
        @override
        def connectionLost(self, reason: Failure | None = None) -> None:
            protocols.append(self)
            self.reason = reason

    port = _forward(pair, Factory.forProtocol(Keep))
    client = pair.connect(port)
    client.abort()
    pair.flush()
    # The channel closes; the target's protocol sees the connection end.
    assert client.closed and len(protocols) == 1
    server_side = [p for p in pair.server._inbound]
    assert server_side == []
    pair.close()


def test_connections_are_the_servers_ends(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    assert pair.connections == []
    pair.logon()
    (ssh,) = pair.connections
    pair.run(ssh.rekey())
    assert pair.tunnel.statistics().rekeys_by_server == 1
    pair.close()


def test_an_inbound_connection_reports_a_reset(tmp_path: Path) -> None:
    pair = MemoryPair(tmp_path)
    factory = ServerFactory.forProtocol(Protocol)
    pair.reactor.listenTCP(5555, factory, interface="127.0.0.1")
    client = pair.connect(5555)
    assert isinstance(client, InboundConnection) and client.connected
    (link,) = [link for link in pair.reactor.links if link.listener.key == ("127.0.0.1", 5555)]
    link.server_io.abortConnection()
    pair.flush()
    assert client.closed and client.reason is not None and client.reason.check(ConnectionLost)
    pair.close()


def test_close_removes_the_directory_it_made() -> None:
    with MemoryPair() as pair:
        directory = pair.directory
        assert pair.client_key.parent == directory and pair.known_hosts.exists()
    assert not directory.exists()


def test_the_server_takes_its_options(tmp_path: Path) -> None:
    pair = MemoryPair(
        tmp_path, server_options={"host_key_type": "ecdsa"}, port=2200, start_time=1e9
    )
    assert pair.known_hosts.read_text().startswith("[127.0.0.1]:2200 ecdsa-sha2-nistp256 ")
    assert pair.reactor.seconds() == 1e9
    pair.logon()
    assert pair.tunnel.connected and pair.reactor.seconds() == 1e9
    pair.close()


def test_a_frozen_server_reads_nothing_until_thawed(tmp_path: Path) -> None:
    # As a stopped sshd session: what the client sends waits, in order, and so does the
    # news that the client went away.
    pair = MemoryPair(tmp_path, keepalive_interval=0)
    pair.logon()
    pair.server.freeze()
    requested = pair.tunnel.request_forwarding(
        "127.0.0.1", 7100, factory=Factory.forProtocol(Upper)
    )
    pair.flush()
    assert pair.server.forwards == [] and not requested.called
    pair.server.thaw()
    pair.flush()
    assert pair.server.forwards == [("127.0.0.1", 7100)] and requested.called
    pair.server.freeze()
    (link,) = pair.reactor.links
    link.client_io.loseConnection()  # the client's TCP connection ends
    pair.flush()
    assert pair.server.connections == 1
    pair.server.thaw()
    pair.flush()
    assert pair.server.connections == 0 and pair.server.forwards == []
    pair.close()
