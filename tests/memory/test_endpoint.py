"""
The connection endpoint (rtunnel/client/reach/endpoint.py): the four routes to the server,
and the logon's phases and their timers, with a stand-in transport on a
MemoryReactorClock (the whole stack in memory runs through it in test_in_memory.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from rtunnel.client.channels.connection import ForwardingConnection
from rtunnel.client.reach._proxycommand import ProxyCommandEndpoint
from rtunnel.client.reach.endpoint import (
    DirectRoute,
    JumpRoute,
    LogonHooks,
    LogonPhase,
    LostHook,
    ProxyCommandRoute,
    ProxyRoute,
    SecureHook,
    ServerRoute,
    SSHConnectionEndpoint,
    SSHSession,
)
from rtunnel.client.reach.jump import JumpHost
from rtunnel.client.reach.proxy import Proxy
from rtunnel.errors import ConnectError, ConnectionLostError, RTunnelError, TimedOutError

# -- routes


def test_direct_route_connects_by_tcp_from_the_bind_address() -> None:
    reactor = MemoryReactorClock()
    route: ServerRoute = DirectRoute(reactor, "192.0.2.7", 2222, 7.0, ("192.0.2.1", 5000))
    assert route.announcement() == "Connecting to 192.0.2.7 port 2222."
    assert route.connected() is None
    route.endpoint().connect(Stand.factory())
    assert [(h, p, t, b) for h, p, _f, t, b in reactor.tcpClients] == [
        ("192.0.2.7", 2222, 7.0, ("192.0.2.1", 5000))
    ]


def test_direct_route_to_a_name_resolves_it() -> None:
    route = DirectRoute(MemoryReactorClock(), "ssh.example", 22, 30.0)
    assert isinstance(route.endpoint()._endpoint, HostnameEndpoint)  # type: ignore[attr-defined]


def test_proxy_route_connects_to_the_proxy_and_says_so() -> None:
    reactor = MemoryReactorClock()
    proxy = Proxy("socks5", "192.0.2.9", 1080)
    route: ServerRoute = ProxyRoute(reactor, proxy, "ssh.example", 22, 9.0)
    assert route.announcement() == (
        "Connecting to ssh.example port 22 through socks5 proxy 192.0.2.9 port 1080."
    )
    assert route.connected() == (
        "proxy-connected",
        "The socks5 proxy 192.0.2.9 port 1080 connected us to ssh.example port 22.",
    )
    route.endpoint().connect(Stand.factory())
    assert [(h, p, t) for h, p, _f, t, _b in reactor.tcpClients] == [("192.0.2.9", 1080, 9.0)]


def test_proxy_command_route_runs_the_command() -> None:
    route: ServerRoute = ProxyCommandRoute(cast(Any, MemoryReactorClock()), "nc 192.0.2.7 22")
    assert route.announcement() == "Executing proxy command: exec nc 192.0.2.7 22"
    endpoint = route.endpoint()
    assert isinstance(endpoint, ProxyCommandEndpoint) and endpoint.command == "nc 192.0.2.7 22"
    assert route.connected() is None


class RefusingJump:
    """A jump tunnel whose logon fails: enough to see the route make one per connect."""

    made = 0

    def __init__(self) -> None:
        RefusingJump.made += 1

    def logon(self) -> Deferred[None]:
        return defer.fail(ConnectError("connect to host jump.example port 22: refused"))

    def logoff(self) -> Deferred[None]:
        return defer.succeed(None)

    def open_direct_tcpip(self, host: str, port: int, protocol: Any) -> Deferred[Any]:
        raise AssertionError("never logged on")


def test_jump_route_makes_a_jump_tunnel_per_connect() -> None:
    RefusingJump.made = 0
    hop = JumpHost("jump.example", 22, "bob")
    route: ServerRoute = JumpRoute(RefusingJump, hop, "inner.example", 2222)
    assert route.announcement() == (f"Connecting to inner.example port 2222 through {hop.where}.")
    for attempt in (1, 2):
        failures: list[Failure] = []
        route.endpoint().connect(Stand.factory()).addErrback(failures.append)
        assert RefusingJump.made == attempt
        assert len(failures) == 1 and failures[0].check(ConnectError)
        assert "jump.example" in str(failures[0].value)


# -- the endpoint's phases


class Stand(Protocol):
    """Stands in for ClientTransport: the endpoint only connects it and reads .transport."""

    def __init__(self, on_lost: LostHook, on_secure: SecureHook) -> None:
        self.on_lost = on_lost
        self.on_secure = on_secure

    @staticmethod
    def factory() -> Any:
        from twisted.internet.protocol import Factory

        return Factory.forProtocol(Protocol)

    def secure(self) -> None:
        self.on_secure(cast(Any, self))

    def lose(self) -> None:
        self.on_lost(cast(Any, self), Failure(error.ConnectionDone()))


class Logon:
    """An SSHConnectionEndpoint with Stand transports, recording what it tells the tunnel."""

    def __init__(
        self, connect_timeout: float | None = 10.0, auth_timeout: float | None = 5.0
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.told: list[tuple[Any, ...]] = []
        self.started: list[Callable[[ForwardingConnection], None]] = []
        self.stands: list[Stand] = []
        self.conn = cast(ForwardingConnection, object())
        hooks = LogonHooks(
            new_connection=self.new_connection,
            new_transport=self.new_transport,
            status=lambda text: self.told.append(("status", text)),
            connection_status=lambda *a: self.told.append(("event", a[0])),
            stream_connected=lambda t, lost: self.told.append(("stream", t)),
            secured=lambda t: self.told.append(("secured", t)),
            describe_loss=self.describe_loss,
            ended=lambda t, f: self.told.append(("ended", type(f.value).__name__)),
            timeout_text=lambda phase, t: f"timed out in {phase}",
        )
        self.endpoint = SSHConnectionEndpoint(
            self.reactor,
            "192.0.2.7",
            2222,
            DirectRoute(self.reactor, "192.0.2.7", 2222, 30.0, ("192.0.2.1", 5000)),
            hooks,
            connect_timeout=connect_timeout,
            auth_timeout=auth_timeout,
            bind=("192.0.2.1", 5000),
        )
        self.outcome: list[SSHSession | Failure] = []
        self.wire = StringTransport()

    def new_connection(
        self, on_started: Callable[[ForwardingConnection], None]
    ) -> ForwardingConnection:
        self.started.append(on_started)
        return self.conn

    def new_transport(self, conn: Any, on_lost: LostHook, on_secure: SecureHook) -> Any:
        assert conn is self.conn
        stand = Stand(on_lost, on_secure)
        self.stands.append(stand)
        return stand

    def describe_loss(self, transport: Any, reason: Failure) -> RTunnelError:
        return ConnectionLostError("closed by remote host")

    def connect(self) -> Deferred[SSHSession]:
        d = self.endpoint.connect()
        d.addBoth(self.outcome.append)
        return d

    def accept(self) -> Stand:
        """The TCP connect succeeds."""
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 2222))
        protocol.makeConnection(self.wire)
        return self.stands[-1]

    def failure(self) -> BaseException:
        assert len(self.outcome) == 1 and isinstance(self.outcome[0], Failure), self.outcome
        return self.outcome[0].value


def test_the_phases_in_order_and_the_session_at_the_end() -> None:
    logon = Logon()
    assert logon.endpoint.phase is LogonPhase.DISCONNECTED
    logon.connect()
    assert logon.endpoint.phase is LogonPhase.CONNECTING
    assert logon.told == [("status", "Connecting to 192.0.2.7 port 2222.")]
    stand = logon.accept()
    assert logon.endpoint.phase is LogonPhase.SECURING
    assert logon.told[1:] == [("stream", stand), ("event", "tcp-connected")]
    stand.secure()
    assert logon.endpoint.phase is LogonPhase.AUTHENTICATING
    assert logon.told[-1] == ("secured", stand)
    assert not logon.outcome
    logon.started[0](logon.conn)
    assert logon.endpoint.phase is LogonPhase.CONNECTED
    [session] = logon.outcome
    assert isinstance(session, SSHSession)
    assert session.transport is stand and session.connection is logon.conn
    assert not session.lost.called
    # No phase timer is left running once logged on.
    assert logon.reactor.getDelayedCalls() == []
    stand.lose()
    assert session.lost.called and logon.told[-1] == ("ended", "ConnectionLostError")


def test_the_handshake_gets_what_is_left_of_connect_timeout() -> None:
    logon = Logon(connect_timeout=10.0)
    logon.connect()
    logon.reactor.advance(3)
    logon.accept()
    logon.reactor.advance(7 - 1e-6)
    assert not logon.wire.disconnecting
    logon.reactor.advance(2e-6)
    assert logon.wire.disconnecting  # aborted at 10 s after connect(), not 13
    logon.stands[-1].lose()
    assert isinstance(logon.failure(), TimedOutError)
    assert str(logon.failure()) == "timed out in handshake"
    assert logon.endpoint.phase is LogonPhase.FAILED


def test_authentication_has_its_own_timeout() -> None:
    logon = Logon(connect_timeout=10.0, auth_timeout=5.0)
    logon.connect()
    stand = logon.accept()
    logon.reactor.advance(9)
    stand.secure()  # the handshake timer stops; the auth timer starts
    logon.reactor.advance(5 - 1e-6)
    assert not logon.wire.disconnecting
    logon.reactor.advance(2e-6)
    assert logon.wire.disconnecting
    stand.lose()
    assert str(logon.failure()) == "timed out in auth"


def test_no_timeouts_no_timers() -> None:
    logon = Logon(connect_timeout=None, auth_timeout=None)
    logon.connect()
    stand = logon.accept()
    assert logon.reactor.getDelayedCalls() == []
    stand.secure()
    assert logon.reactor.getDelayedCalls() == []


def test_a_loss_before_the_logon_is_the_described_error() -> None:
    logon = Logon()
    logon.connect()
    logon.accept().lose()
    assert type(logon.failure()) is ConnectionLostError
    assert logon.told[-1] == ("ended", "ConnectionLostError")
    assert logon.reactor.getDelayedCalls() == []


def test_cancel_while_connecting_stops_the_connect() -> None:
    logon = Logon()
    d = logon.connect()
    d.cancel()
    assert isinstance(logon.failure(), defer.CancelledError)
    assert logon.reactor.connectors[-1].stoppedConnecting  # type: ignore[attr-defined]
    assert logon.endpoint.phase is LogonPhase.FAILED


def test_cancel_during_the_handshake_closes_the_connection_first() -> None:
    logon = Logon()
    d = logon.connect()
    stand = logon.accept()
    d.cancel()
    assert logon.wire.disconnecting
    assert not logon.outcome, "failed before the connection was closed"
    stand.lose()
    assert isinstance(logon.failure(), defer.CancelledError)
    assert logon.reactor.getDelayedCalls() == []


def test_an_unusable_local_address_is_named() -> None:
    logon = Logon()
    logon.connect()
    factory = logon.reactor.tcpClients[-1][2]
    bind_error = error.ConnectBindError(99, "Cannot assign requested address")
    factory.clientConnectionFailed(logon.reactor.connectors[-1], Failure(bind_error))
    text = str(logon.failure())
    assert isinstance(logon.failure(), ConnectError)
    assert text.startswith(
        "connect to host 192.0.2.7 port 2222: cannot use local address 192.0.2.1 port 5000 ("
    )
    assert text.endswith("check local_host / -b (BindAddress).")


def test_a_refused_connect_is_ssh_s_line() -> None:
    logon = Logon()
    logon.connect()
    factory = logon.reactor.tcpClients[-1][2]
    factory.clientConnectionFailed(
        logon.reactor.connectors[-1], Failure(error.ConnectionRefusedError())
    )
    assert str(logon.failure()) == "connect to host 192.0.2.7 port 2222: Connection refused"


@pytest.mark.parametrize("phase", list(LogonPhase))
def test_every_phase_has_a_name(phase: LogonPhase) -> None:
    assert phase.value == phase.name.lower()
