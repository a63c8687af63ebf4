"""
The connection as an endpoint (after ``twisted.conch.endpoints``):
:meth:`SSHConnectionEndpoint.connect` fires once the SSH connection is authenticated and
its :class:`~rtunnel.client.channels.connection.ForwardingConnection` started.

How the bytes reach the server is a :class:`ServerRoute`, one interface with four
implementations: :class:`DirectRoute` (TCP), :class:`ProxyRoute` (SOCKS or HTTP
CONNECT), :class:`ProxyCommandRoute` (a child process's stdin and stdout) and
:class:`JumpRoute` (a ``direct-tcpip`` channel of a connection to a jump host).

The logon's phases, one timer at a time (:class:`_PhaseTimer`); the state line::

    DISCONNECTED -> CONNECTING (TCP, proxy, ProxyCommand or jump host: what is left of
    connect_timeout bounds the handshake after it) -> SECURING (version exchange, key
    exchange, host key) -> AUTHENTICATING (auth_timeout) -> CONNECTED
                 any phase -> FAILED (an error, a timeout, or connect() cancelled)
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, cast

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from rtunnel.client.channels.connection import ForwardingConnection
from rtunnel.client.channels.forwarder import connect_failure_text, tcp_endpoint
from rtunnel.errors import ConnectError, RTunnelError, TimedOutError

if TYPE_CHECKING:
    from rtunnel.client.reach.jump import JumpHost, JumpTunnel
    from rtunnel.client.reach.proxy import Proxy
    from rtunnel.client.transport.client_transport import ClientTransport

__all__ = [
    "DirectRoute",
    "JumpRoute",
    "LogonHooks",
    "LogonPhase",
    "ProxyCommandRoute",
    "ProxyRoute",
    "SSHConnectionEndpoint",
    "SSHSession",
    "ServerRoute",
    "bind_address",
    "choose_route",
]


class ServerRoute(Protocol):
    """One way to get a byte stream to the SSH server."""

    def announcement(self) -> str:
        """What the tunnel says before connecting (ssh's ``-v`` line)."""

    def endpoint(self) -> IStreamClientEndpoint:
        """A fresh endpoint that connects a protocol to the server's SSH port."""

    def connected(self) -> tuple[str, str] | None:
        """The connection event (name, description) once the route carried us through."""


@dataclass(frozen=True)
class DirectRoute:
    """TCP to ``host:port`` (from ``bind`` when given)."""

    reactor: IReactorTCP
    host: str
    port: int
    timeout: float
    bind: tuple[str, int] | None = None

    def announcement(self) -> str:
        return f"Connecting to {self.host} port {self.port}."

    def endpoint(self) -> IStreamClientEndpoint:
        return tcp_endpoint(self.reactor, self.host, self.port, self.timeout, self.bind)

    def connected(self) -> tuple[str, str] | None:
        return None


@dataclass(frozen=True)
class ProxyRoute:
    """Through a SOCKS4/4A/5 or HTTP CONNECT proxy."""

    reactor: IReactorTCP
    proxy: Proxy
    host: str
    port: int
    timeout: float
    bind: tuple[str, int] | None = None

    def announcement(self) -> str:
        proxy = self.proxy
        return (
            f"Connecting to {self.host} port {self.port} through {proxy.kind} proxy "
            f"{proxy.host} port {proxy.port}."
        )

    def endpoint(self) -> IStreamClientEndpoint:
        from rtunnel.client.reach.proxy import proxy_endpoint

        return proxy_endpoint(
            self.reactor, self.proxy, self.host, self.port, self.timeout, self.bind
        )

    def connected(self) -> tuple[str, str] | None:
        # The reference's "Firewall connection complete".
        proxy = self.proxy
        return (
            "proxy-connected",
            f"The {proxy.kind} proxy {proxy.host} port {proxy.port} connected us to "
            f"{self.host} port {self.port}.",
        )


@dataclass(frozen=True)
class ProxyCommandRoute:
    """SSH over a child process's stdin and stdout (``command``, tokens expanded)."""

    reactor: IReactorProcess
    command: str

    def announcement(self) -> str:
        # ssh's words at debug1 (sshconnect.c).
        return f"Executing proxy command: exec {self.command}"

    def endpoint(self) -> IStreamClientEndpoint:
        # Each route imports its own machinery: a direct start needs none of it (issue #17).
        from rtunnel.client.reach._proxycommand import ProxyCommandEndpoint

        return ProxyCommandEndpoint(self.reactor, self.command)

    def connected(self) -> tuple[str, str] | None:
        return None


@dataclass(frozen=True)
class JumpRoute:
    """
    A ``direct-tcpip`` channel to ``host:port`` over a connection to the jump host
    ``hop``: ``new_tunnel`` makes that connection (through the hops before it) each time.
    """

    new_tunnel: Callable[[], JumpTunnel]
    hop: JumpHost
    host: str
    port: int

    def announcement(self) -> str:
        return f"Connecting to {self.host} port {self.port} through {self.hop.where}."

    def endpoint(self) -> IStreamClientEndpoint:
        from rtunnel.client.reach.jump import jump_endpoint

        return jump_endpoint(self.new_tunnel, self.hop, self.host, self.port)

    def connected(self) -> tuple[str, str] | None:
        return None


class ReachSettings(Protocol):
    """What :func:`choose_route` reads of the options (``TunnelOptions.reach`` has it)."""

    @property
    def connect_timeout(self) -> float | None: ...
    @property
    def local_host(self) -> str | None: ...
    @property
    def local_port(self) -> int: ...
    @property
    def proxy(self) -> Proxy | Literal["auto"] | None: ...
    @property
    def proxy_exceptions(self) -> tuple[str, ...]: ...
    @property
    def proxy_command(self) -> str | None: ...
    @property
    def proxy_jump(self) -> Sequence[JumpHost]: ...


def bind_address(reach: ReachSettings) -> tuple[str, int] | None:
    """The local address to connect from (``local_host``/``local_port``), if any."""
    if reach.local_host is None and not reach.local_port:
        return None
    return (reach.local_host or "", reach.local_port)


def choose_route(
    reactor: IReactorTCP,
    host: str,
    port: int,
    user: str,
    reach: ReachSettings,
    jump_tunnel: Callable[[], JumpTunnel],
) -> ServerRoute:
    """How this connect reaches ``host:port``: ProxyCommand, jump host (the last one,
    through ``jump_tunnel``), proxy or TCP; read afresh at each connect."""
    if reach.proxy_command is not None:
        from rtunnel.client.reach._proxycommand import expand_proxy_command

        command = expand_proxy_command(reach.proxy_command, host=host, port=port, user=user)
        return ProxyCommandRoute(cast(IReactorProcess, reactor), command)
    if reach.proxy_jump:
        return JumpRoute(jump_tunnel, reach.proxy_jump[-1], host, port)
    timeout = reach.connect_timeout or 30
    bind = bind_address(reach)
    proxy = _proxy_for(reach, host)
    if proxy is None:
        return DirectRoute(reactor, host, port, timeout, bind)
    return ProxyRoute(reactor, proxy, host, port, timeout, bind)


def _proxy_for(reach: ReachSettings, host: str) -> Proxy | None:
    if reach.proxy is None:
        return None
    from rtunnel.client.reach.proxy import Proxy, bypasses

    # "auto" is FirewallAutoDetect: what the environment says now, as curl reads it.
    proxy = Proxy.from_environment(os.environ, host) if reach.proxy == "auto" else reach.proxy
    if proxy is None or bypasses(reach.proxy_exceptions, host):
        return None
    return proxy


class LogonPhase(enum.Enum):
    """Where one logon is (the state line in the module's docstring)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    SECURING = "securing"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    FAILED = "failed"


#: The transport's callbacks: the connection ended (with Conch's reason), the keys are in
#: use (the handshake is done).
LostHook = Callable[["ClientTransport", Failure], None]
SecureHook = Callable[["ClientTransport"], None]


@dataclass(frozen=True)
class LogonHooks:
    """
    What the endpoint asks of the tunnel it connects for.

    :ivar new_connection: the connection service, calling its argument once started.
    :ivar new_transport: the SSH transport over the route's stream, carrying that service
        and calling the two hooks.
    :ivar status: a progress line (the reference's SSHStatus).
    :ivar connection_status: a connection event (name, code, description).
    :ivar stream_connected: the route connected this transport (handshake not yet done).
    :ivar secured: the handshake is done.
    :ivar describe_loss: the error that stands for the connection ending with a reason.
    :ivar ended: the connection ended, with that error (after a logon or during one).
    :ivar timeout_text: what to say when ``phase`` (``"handshake"``, ``"auth"``) timed out.
    """

    new_connection: Callable[[Callable[[ForwardingConnection], None]], ForwardingConnection]
    new_transport: Callable[[ForwardingConnection, LostHook, SecureHook], ClientTransport]
    status: Callable[[str], None]
    connection_status: Callable[[str, int, str], None]
    stream_connected: Callable[[ClientTransport, Deferred[None]], None]
    secured: Callable[[ClientTransport], None]
    describe_loss: Callable[[ClientTransport, Failure], RTunnelError]
    ended: Callable[[ClientTransport, Failure], None]
    timeout_text: Callable[[str, ClientTransport], str]


@dataclass
class SSHSession:
    """An authenticated connection: what :meth:`SSHConnectionEndpoint.connect` gives."""

    transport: ClientTransport
    connection: ForwardingConnection
    #: Fires (with None) once the connection has ended.
    lost: Deferred[None] = field(repr=False)


class SSHConnectionEndpoint:
    """
    Connects to ``host:port`` by ``route``, runs the SSH handshake and the logon, and
    fires with the :class:`SSHSession` once the connection service has started.

    :param clock: the clock for the phase timers.
    :param route: how the byte stream reaches the server.
    :param hooks: the tunnel's side (:class:`LogonHooks`).
    :param connect_timeout: bounds the connect and the handshake together (None: the
        handshake is not bounded; the route's own connect timeout still holds).
    :param auth_timeout: bounds authentication (None: not bounded).
    :param bind: the local address the route binds to, named when it cannot be used.
    """

    def __init__(
        self,
        clock: IReactorTime,
        host: str,
        port: int,
        route: ServerRoute,
        hooks: LogonHooks,
        *,
        connect_timeout: float | None,
        auth_timeout: float | None,
        bind: tuple[str, int] | None = None,
    ) -> None:
        self._clock = clock
        self._host = host
        self._port = port
        self._route = route
        self._hooks = hooks
        self._connect_timeout = connect_timeout
        self._auth_timeout = auth_timeout
        self._bind = bind
        #: Where the last connect() is.
        self.phase = LogonPhase.DISCONNECTED

    def connect(self) -> Deferred[SSHSession]:
        """
        Log on. Fails with :class:`~rtunnel.errors.ConnectError` (the route could not
        connect), :class:`~rtunnel.errors.TimedOutError` (naming the phase), the
        transport's or authentication's typed error, or ``CancelledError`` when
        cancelled (the connection is then closed first).
        """
        return Deferred.fromCoroutine(self._connect())

    async def _connect(self) -> SSHSession:
        try:
            session = await self._phases()
        except BaseException:
            self.phase = LogonPhase.FAILED
            raise
        self.phase = LogonPhase.CONNECTED
        return session

    async def _phases(self) -> SSHSession:
        hooks, clock = self._hooks, self._clock
        self.phase = LogonPhase.CONNECTING
        ready: Deferred[ForwardingConnection] = Deferred()
        lost: Deferred[None] = Deferred()
        conn = hooks.new_connection(ready.callback)

        def on_lost(transport: ClientTransport, reason: Failure) -> None:
            failure = Failure(hooks.describe_loss(transport, reason))
            if not ready.called:
                ready.errback(failure)
            hooks.ended(transport, failure)
            if not lost.called:
                lost.callback(None)

        timer = _PhaseTimer(clock)

        def secure(transport: ClientTransport) -> None:
            self.phase = LogonPhase.AUTHENTICATING
            hooks.secured(transport)
            timer.start("auth", self._auth_timeout)

        factory = Factory.forProtocol(lambda: hooks.new_transport(conn, on_lost, secure))  # type: ignore[arg-type,return-value]
        # No "Starting factory <...>" / "Stopping factory" lines in the log per connection.
        factory.noisy = False
        started = clock.seconds()
        hooks.status(self._route.announcement())
        try:
            transport = cast("ClientTransport", await self._route.endpoint().connect(factory))
        except error.ConnectingCancelledError:
            # How Twisted's TCP endpoints say it: one CancelledError for every phase.
            raise defer.CancelledError() from None
        except error.ConnectBindError as e:
            host, port = self._bind or ("", 0)
            where = f"{host or '*'}" + (f" port {port}" if port else "")
            raise ConnectError(
                f"connect to host {self._host} port {self._port}: cannot use local address "
                f"{where} ({connect_failure_text(e)}); check local_host / -b (BindAddress)."
            ) from None
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            # OpenSSH's words (ssh.c), less its program name.
            raise ConnectError(
                f"connect to host {self._host} port {self._port}: {connect_failure_text(e)}"
            ) from None
        self.phase = LogonPhase.SECURING
        hooks.stream_connected(transport, lost)
        event = self._route.connected()
        if event is not None:
            hooks.connection_status(event[0], 0, event[1])
        hooks.connection_status("tcp-connected", 0, f"Connected to {self._host} port {self._port}.")
        timer.transport = transport
        if self._connect_timeout:
            timer.start("handshake", self._connect_timeout - (clock.seconds() - started))
        try:
            conn = await ready
        except defer.CancelledError:
            tcp = transport.transport
            if tcp is not None:
                tcp.abortConnection()  # type: ignore[attr-defined]
            await lost
            raise
        except RTunnelError:
            if timer.expired is None:
                raise
            raise TimedOutError(hooks.timeout_text(timer.expired, transport)) from None
        finally:
            timer.stop()
        return SSHSession(transport, conn, lost)


class _PhaseTimer:
    """
    Bounds one phase of the logon at a time; when it runs out it aborts the TCP
    connection and remembers which phase it was.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.transport: ClientTransport | None = None
        self.phase = ""
        self.expired: str | None = None
        self._call: IDelayedCall | None = None

    def start(self, phase: str, timeout: float | None) -> None:
        self.stop()
        self.phase = phase
        if timeout is not None:
            self._call = self._clock.callLater(max(0.0, timeout), self._expire)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self._call = None
        self.expired = self.phase
        tcp = self.transport.transport if self.transport is not None else None
        if tcp is not None:
            tcp.abortConnection()  # type: ignore[attr-defined]
