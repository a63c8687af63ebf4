"""
The whole SSH stack in memory, for tests: :class:`MemoryPair` joins a
:class:`~rtunnel.ReverseTunnel` and the bundled :class:`~rtunnel.testing.SSHTestServer` with
``twisted.test.iosim`` on a clock, with no sockets and no real time (as ``treq.testing``
ships an in-memory HTTP pair). Key exchange, authentication, ``tcpip-forward`` and a
forwarded channel take a few milliseconds, and a test that waits 60 seconds for a
keepalive or a reconnect takes none.

The clock is a :class:`_MemoryNetwork`: a ``MemoryReactorClock`` whose TCP (and Unix)
listeners and connects form a small network, so that the tunnel, the server, forward
listeners and local targets reach each other by address as on a real machine.
"""

from __future__ import annotations

import ipaddress
import itertools
import tempfile
from collections.abc import Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    CannotListenError,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from typing_extensions import override
from zope.interface import implementer

from rtunnel.testing._keys import KeyKind, generate_client_key
from rtunnel.testing._waiting import DEFAULT_TIMEOUT, WaitTimeoutError, check_timeout

if TYPE_CHECKING:
    from rtunnel import ReverseTunnel, TunnelOptions
    from rtunnel.testing.server import SSHTestServer

__all__ = ["InboundConnection", "MemoryPair"]

_T = TypeVar("_T")

#: Rounds of moving bytes one :meth:`MemoryPair.flush` makes before it calls it a loop.
_MAX_ROUNDS = 100_000

#: The first port handed out for port 0 and for the client end of a connection.
_FIRST_EPHEMERAL = 40000

_Address = IPv4Address | IPv6Address | UNIXAddress


def _ip_address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def _wildcard(host: str) -> str:
    """The interface a listener names to accept connections to ``host`` on any address."""
    return "::" if ":" in host else "0.0.0.0"


# -- the network ---------------------------------------------------------------------------


@implementer(IPushProducer)
class _Transport(iosim.FakeTransport):  # type: ignore[misc]  # iosim is not typed
    """
    ``iosim.FakeTransport`` with what the tunnel and the server rely on: reading that
    stops while paused (a frozen server, flow control; a closed connection is noticed
    only once reading resumes, as with a socket), a write side that can be shut down
    alone (half-close, ``loseWriteConnection``), and an abort that drops what was not
    sent yet and ends the other side with ``ConnectionLost``, as a reset does.
    """

    def __init__(
        self, protocol: IProtocol, is_server: bool, host: _Address, peer: _Address
    ) -> None:
        super().__init__(protocol, is_server, hostAddress=host, peerAddress=peer)
        self.paused = False
        #: Bytes that arrived while paused, delivered once resumed.
        self.held: list[bytes] = []
        #: The connection ended while paused: told once reading resumes.
        self.lost_while_paused = False
        self.write_closed = False
        self.eof_sent = False
        self.aborted = False
        #: This side closed (rather than learning of the other side's close by reading).
        self.closed_here = False

    @override
    def pauseProducing(self) -> None:
        self.paused = True

    @override
    def resumeProducing(self) -> None:
        self.paused = False

    @override
    def bufferReceived(self, buf: bytes) -> None:
        if self.paused or self.held:
            self.held.append(buf)
            return
        super().bufferReceived(buf)

    @override
    def reportDisconnect(self) -> None:
        if (self.paused or self.held) and not self.closed_here:
            self.lost_while_paused = True
            return
        super().reportDisconnect()

    def catch_up(self) -> bool:
        """Once reading goes on: what arrived meanwhile, then the end. Whether any was."""
        if self.paused:
            return False
        if self.held:
            data, self.held = b"".join(self.held), []
            self.protocol.dataReceived(data)
            return True
        if self.lost_while_paused:
            self.lost_while_paused = False
            super().reportDisconnect()
            return True
        return False

    @override
    def loseWriteConnection(self) -> None:
        self.write_closed = True

    @override
    def loseConnection(self) -> None:
        self.closed_here = True
        super().loseConnection()

    @override
    def abortConnection(self) -> None:
        self.stream = []
        self.aborted = True
        self.closed_here = True
        self.disconnecting = True

    @override
    def write(self, data: bytes) -> None:
        if self.write_closed:
            return
        super().write(data)


class _Link(iosim.IOPump):  # type: ignore[misc]  # iosim is not typed
    """One connection on the network, and the pump that moves its bytes."""

    def __init__(self, listener: _Listener, client: _Transport, server: _Transport) -> None:
        super().__init__(
            client.protocol, server.protocol, client, server, False, clock=listener.network
        )
        self.listener = listener
        self.client_io = client
        self.server_io = server

    @property
    def closed(self) -> bool:
        return bool(
            self.client_io.disconnected
            and self.server_io.disconnected
            and not self.client_io.lost_while_paused
            and not self.server_io.lost_while_paused
        )

    @override
    def pump(self, debug: bool = False, advanceClock: bool = True) -> bool:
        """
        One round: bytes both ways (``IOPump.pump``), then what was held while paused and
        half-closes. ``IOPump.flush`` repeats it until nothing moves.

        :return: whether anything moved.
        """
        sides = ((self.client_io, self.server_io), (self.server_io, self.client_io))
        for one, other in sides:
            if one.aborted and not other.disconnected:
                cast(Any, other).disconnectReason = ConnectionLost("Connection reset by peer")
        moved = bool(super().pump(debug, advanceClock))
        for writer, reader in sides:
            if reader.catch_up():
                moved = True
            if (
                writer.write_closed
                and not writer.eof_sent
                and not writer.stream
                and not writer.disconnecting
                and not reader.disconnecting
            ):
                # The FIN of a half-close, after the bytes before it (tcp.Connection).
                writer.eof_sent = True
                moved = True
                writing = IHalfCloseableProtocol(writer.protocol, None)
                if writing is not None:
                    writing.writeConnectionLost()
                reading = IHalfCloseableProtocol(reader.protocol, None)
                if reading is not None:
                    reading.readConnectionLost()
                else:
                    reader.loseConnection()
        return moved


@implementer(IListeningPort)
class _Listener:
    """A port listening on the network."""

    def __init__(
        self, network: _MemoryNetwork, key: tuple[str, int | str], factory: IProtocolFactory
    ) -> None:
        self.network = network
        self.key = key
        self.factory = factory

    def startListening(self) -> None:  # noqa: N802 (IListeningPort)
        pass

    def stopListening(self) -> Deferred[None]:  # noqa: N802 (IListeningPort)
        if self.network._listeners.get(self.key) is self:
            del self.network._listeners[self.key]
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> _Address:  # noqa: N802 (IListeningPort)
        interface, port = self.key
        if isinstance(port, str):
            return UNIXAddress(port)
        return _ip_address(interface, port)


@implementer(IConnector)
class _Connector:
    """A connect in progress or done (``IConnector``)."""

    def __init__(self, destination: _Address) -> None:
        self.destination = destination
        self.stopped = False

    def stopConnecting(self) -> None:  # noqa: N802 (IConnector)
        self.stopped = True

    def disconnect(self) -> None:
        self.stopped = True

    def connect(self) -> None:
        pass

    def getDestination(self) -> _Address:  # noqa: N802 (IConnector)
        return self.destination


class _MemoryNetwork(MemoryReactorClock):
    """
    A ``MemoryReactorClock`` whose TCP and Unix-socket listeners and connects form a
    network in memory, joined by ``twisted.test.iosim``: a connect reaches the listener
    on its address (an interface or a wildcard one, as on a real machine) on the next
    turn of the clock, is refused when nothing listens there, and port 0 gets a free
    port. Every call is still recorded as ``MemoryReactorClock`` records it
    (``tcpServers``, ``tcpClients``, ...).
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners: dict[tuple[str, int | str], _Listener] = {}
        self._ports = itertools.count(_FIRST_EPHEMERAL)
        self.links: list[_Link] = []
        #: Addresses whose connects are refused although something listens there.
        self.refusing: set[tuple[str, int]] = set()
        #: Connects made, per (host, port) as given.
        self.attempts: dict[tuple[str, int | str], int] = {}

    # Listening -------------------------------------------------------------------------

    def _free_port(self, interface: str) -> int:
        for port in self._ports:
            if not self._taken(interface, port):
                return port
        raise AssertionError("unreachable")

    def _taken(self, interface: str, port: int) -> bool:
        """Whether ``interface:port`` is bound, by that interface or a wildcard one."""
        for other, taken in self._listeners:
            if taken != port or other == "unix":
                continue
            if other == interface:
                return True
            if (":" in other) == (":" in interface) and _wildcard(interface) in (
                other,
                interface,
            ):
                return True
        return False

    @override
    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        super().listenTCP(port, factory, backlog, interface)
        interface = interface or "0.0.0.0"
        if port == 0:
            port = self._free_port(interface)
        elif self._taken(interface, port):
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        listener = _Listener(self, (interface, port), factory)
        self._listeners[interface, port] = listener
        factory.doStart()
        return listener

    @override
    def listenUNIX(
        self,
        address: str,
        factory: IProtocolFactory,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> IListeningPort:
        super().listenUNIX(address, factory, backlog, mode, wantPID)
        if ("unix", address) in self._listeners:
            raise CannotListenError(None, address, OSError(98, "Address already in use"))
        listener = _Listener(self, ("unix", address), factory)
        self._listeners["unix", address] = listener
        factory.doStart()
        return listener

    # Connecting ------------------------------------------------------------------------

    @override
    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        cast(Any, self.tcpClients).append((host, port, factory, timeout, bindAddress))
        self.attempts[host, port] = self.attempts.get((host, port), 0) + 1
        address = "127.0.0.1" if host == "localhost" else host
        try:
            ipaddress.ip_address(address)
        except ValueError:
            connector = _Connector(IPv4Address("TCP", "0.0.0.0", port))
            factory.startedConnecting(connector)
            self.callLater(0, self._fail, connector, factory, DNSLookupError(host))
            return connector
        connector = _Connector(_ip_address(address, port))
        factory.startedConnecting(connector)
        source = bindAddress or ("::1" if ":" in address else "127.0.0.1", 0)
        self.callLater(0, self._arrive, connector, factory, (address, port), source)
        return connector

    @override
    def connectUNIX(
        self,
        address: str,
        factory: ClientFactory,
        timeout: float = 30,
        checkPID: int = 0,
    ) -> IConnector:
        self.unixClients.append((address, factory, timeout, checkPID))
        self.attempts["unix", address] = self.attempts.get(("unix", address), 0) + 1
        connector = _Connector(UNIXAddress(address))
        factory.startedConnecting(connector)
        self.callLater(0, self._arrive, connector, factory, ("unix", address), None)
        return connector

    def _fail(self, connector: _Connector, factory: ClientFactory, error: Exception) -> None:
        if not connector.stopped:
            factory.clientConnectionFailed(connector, Failure(error))

    def _find(self, host: str, port: int | str) -> _Listener | None:
        if host == "unix":
            return self._listeners.get(("unix", port))
        for interface in (host, _wildcard(host)):
            listener = self._listeners.get((interface, port))
            if listener is not None:
                return listener
        return None

    def _arrive(
        self,
        connector: _Connector,
        factory: ClientFactory,
        destination: tuple[str, int | str],
        source: tuple[str, int] | None,
    ) -> None:
        if connector.stopped:
            return
        host, port = destination
        listener = self._find(host, port)
        if listener is None or (host, port) in self.refusing:
            self._fail(connector, factory, ConnectionRefusedError(f"{host}:{port}"))
            return
        server_address: _Address
        client_address: _Address
        if isinstance(port, str):
            server_address = client_address = UNIXAddress(port)
        else:
            server_address = _ip_address(host, port)
            assert source is not None
            client_address = _ip_address(source[0], source[1] or next(self._ports))
        server = listener.factory.buildProtocol(client_address)
        if server is None:
            self._fail(connector, factory, ConnectionRefusedError(f"{host}:{port}"))
            return
        client = factory.buildProtocol(server_address)
        if client is None:
            return
        client_io = _Transport(client, False, client_address, server_address)
        server_io = _Transport(server, True, server_address, client_address)
        link = _Link(listener, client_io, server_io)
        self.links.append(link)
        server.makeConnection(server_io)
        client.makeConnection(client_io)

    # Moving bytes ----------------------------------------------------------------------

    def flush(self) -> None:
        """
        Run what is due now and move bytes on every connection until nothing moves.

        :raises RuntimeError: bytes still move after many rounds (two protocols that
            answer each other forever).
        """
        for _ in range(_MAX_ROUNDS):
            self.advance(0)
            moved = False
            for link in list(self.links):
                if link.pump(advanceClock=False):
                    moved = True
                if link.closed and link in self.links:
                    self.links.remove(link)
            if not moved and not any(c.getTime() <= self.seconds() for c in self.calls):
                return
        raise RuntimeError(
            f"MemoryPair.flush(): bytes still moving after {_MAX_ROUNDS} rounds: two "
            "protocols answer each other without end"
        )


# -- a client on a forwarded port ------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class InboundConnection(Protocol):
    """
    A client connected to a port the server listens on for the tunnel (a forwarded
    port), made by :meth:`MemoryPair.connect`: what it sent and received, and its end of
    the connection.

    Nothing moves until the pair flushes (:meth:`MemoryPair.flush`, or
    :meth:`MemoryPair.run` and :meth:`MemoryPair.advance`, which flush as they go).

    :ivar connected: 1 while connected (``Protocol.connected``), 0 once the connection
        ended.
    :ivar received: every byte received so far.
    :ivar eof_received: whether the other side shut down its writing (half-close).
    :ivar reason: why the connection ended (a ``Failure``), or None while it is open.
    """

    def __init__(self) -> None:
        self.received = b""
        self.eof_received = False
        self.reason: Failure | None = None

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self.reason is not None

    def write(self, data: bytes) -> None:
        """Send ``data`` (it arrives at the next flush)."""
        assert self.transport is not None, "not connected"
        self.transport.write(data)

    def write_eof(self) -> None:
        """Shut down writing, as ``shutdown(SHUT_WR)``: the other side reads EOF."""
        assert self.transport is not None, "not connected"
        cast(Any, self.transport).loseWriteConnection()

    def close(self) -> None:
        """Close the connection (after what was written is sent)."""
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Reset the connection: what was not sent yet is dropped."""
        if self.transport is not None:
            cast(Any, self.transport).abortConnection()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.eof_received = True

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        pass

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = 0
        self.reason = reason


class _InboundFactory(ClientFactory):
    def __init__(self, connection: InboundConnection) -> None:
        self.connection = connection
        self.failure: Failure | None = None

    @override
    def buildProtocol(self, addr: IAddress | None) -> InboundConnection:
        return self.connection

    @override
    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.failure = reason


# -- the pair --------------------------------------------------------------------------------


class MemoryPair:
    """
    A :class:`~rtunnel.ReverseTunnel` and a started :class:`~rtunnel.testing.SSHTestServer`
    joined in memory, on a clock: no sockets, no real time, every run the same.

    The server listens on :attr:`host` and :attr:`port` of :attr:`reactor`, a
    ``MemoryReactorClock`` whose connects reach its listeners as on a real network, with
    one user (:attr:`user`) who logs on with the key in :attr:`client_key`, and whose
    host key is in the file :attr:`known_hosts`. :attr:`tunnel` is made with those and
    the options given; :meth:`make_tunnel` makes more (or yours, given
    :attr:`reactor`: every connect to the server's address reaches it).

    Time moves only when told: :meth:`flush` runs what is due now and moves every byte
    that can move; :meth:`advance` moves the clock, flushing at each timer on the way;
    :meth:`run` does both until a Deferred or coroutine is done. Connections to a
    forwarded port: :meth:`connect`. Faults: the server's own controls
    (``pair.server.freeze()``, ``refuse_forwards()``, ... then :meth:`flush`),
    :meth:`kill` and :meth:`drop` for the SSH connection, :meth:`refuse_connections`
    for the network.

    A pair has no TCP flow control of its own (writes never block), and bytes cross in
    no time.

    :param directory: where to write the client key and ``known_hosts``; a new temporary
        directory (removed by :meth:`close`) when None.
    :param user: the user name to log on as.
    :param host: the address the server listens on.
    :param port: its port.
    :param key_kind: the client key's kind: ``"ed25519"``, ``"ecdsa"`` or ``"rsa"``.
    :param server_options: keyword arguments for :class:`~rtunnel.testing.SSHTestServer`
        (``host_key_type``, ``keyboard_interactive``, ``rekey_bytes``, ...).
    :param start_time: what the clock reads at first (``reactor.seconds()``): 0, as
        Twisted's ``Clock``; ``time.time()`` where certificates' validity is checked
        against it.
    :param tunnel_options: settings for :attr:`tunnel` by their flat names (see
        :meth:`make_tunnel`).
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        user: str = "alice",
        host: str = "127.0.0.1",
        port: int = 22,
        key_kind: KeyKind = "ed25519",
        server_options: Mapping[str, Any] | None = None,
        start_time: float = 0.0,
        **tunnel_options: Any,
    ) -> None:
        from rtunnel.testing._keys import client_key
        from rtunnel.testing.server import SSHTestServer

        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="rtunnel-memory-pair-")
            directory = self._temporary.name
        #: The directory the client key and ``known_hosts`` are in.
        self.directory = Path(directory)
        #: The clock, and the network the tunnel and the server are on.
        self.reactor = _MemoryNetwork()
        self.reactor.advance(start_time)
        #: The user name the server knows.
        self.user = user
        #: The server, started.
        self.server: SSHTestServer = SSHTestServer(
            self.reactor, host, port, **dict(server_options or {})
        )
        self.server.add_user(user, authorized_keys=[client_key(key_kind).public()])
        self.run(self.server.start())
        #: The client's private key file (OpenSSH format; ``.pub`` beside it).
        self.client_key = generate_client_key(key_kind, self.directory)
        #: A ``known_hosts`` file with the server's host key.
        self.known_hosts = self.server.write_known_hosts(self.directory / "known_hosts")
        self._tunnels: list[ReverseTunnel] = []
        #: The tunnel, made with ``tunnel_options`` (not logged on yet).
        self.tunnel = self.make_tunnel(**tunnel_options)

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self.server.host

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.server.port

    def make_tunnel(self, options: TunnelOptions | None = None, **settings: Any) -> ReverseTunnel:
        """
        A new :class:`~rtunnel.ReverseTunnel` on :attr:`reactor` to the server, logging on
        as :attr:`user` with :attr:`client_key` and checking the host key against
        :attr:`known_hosts`, unless ``options`` or ``settings`` say otherwise. Not logged
        on yet::

            pair.make_tunnel(keepalive_interval=5)
            pair.make_tunnel(TunnelOptions.create(user="bob"), log_level=3)

        :param options: the tunnel's options (default: the defaults).
        :param settings: settings by their flat names (:class:`~rtunnel.TunnelSettings`),
            applied over ``options`` with :meth:`~rtunnel.TunnelOptions.create`.
        :return: the tunnel.
        """
        from rtunnel import PrivateKeyFile, ReverseTunnel, TunnelOptions

        base = options if options is not None else TunnelOptions()
        # The pair's own user, key and known_hosts where neither the options nor the
        # settings name others.
        if "user" not in settings and base.authentication.user is None:
            settings["user"] = self.user
        if "auth" not in settings and not base.authentication.auth:
            settings["auth"] = [PrivateKeyFile(self.client_key)]
        if "known_hosts" not in settings and base.host_keys == TunnelOptions().host_keys:
            settings["known_hosts"] = self.known_hosts
        tunnel = ReverseTunnel(
            self.reactor,
            self.host,
            self.port,
            options=TunnelOptions.create(base=base, **settings),
        )
        self._tunnels.append(tunnel)
        return tunnel

    # Time and bytes ------------------------------------------------------------------------

    def flush(self) -> None:
        """
        Run every call due now and move every byte that can move, on every connection,
        until nothing more happens. The clock does not move.
        """
        self.reactor.flush()

    def advance(self, seconds: float) -> None:
        """
        Move the clock ``seconds`` on, stopping at each timer due on the way to run it
        and flush (so a keepalive sent at one timer is answered before the next).

        :param seconds: how far.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be 0 or more, not {seconds!r}")
        target = self.reactor.seconds() + seconds
        self.flush()
        while (due := self._next_call()) is not None and due <= target:
            self.reactor.advance(max(0.0, due - self.reactor.seconds()))
            self.flush()
        self.reactor.advance(max(0.0, target - self.reactor.seconds()))
        self.flush()

    def _next_call(self) -> float | None:
        times = [call.getTime() for call in self.reactor.getDelayedCalls() if call.active()]
        return min(times, default=None)

    def run(
        self,
        awaitable: Deferred[_T] | Coroutine[Any, Any, _T],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> _T:
        """
        Flush and move the clock, timer by timer, until ``awaitable`` is done; its result.

        :param awaitable: a Deferred, or a coroutine (``pair.run(my_test_steps())``), which
            is run as a Deferred (``Deferred.fromCoroutine``).
        :param timeout: simulated seconds to wait at most; None: no limit.
        :return: what it fired with.
        :raises WaitTimeoutError: it was not done after ``timeout`` simulated seconds, or
            nothing was left to happen (no bytes to move, no timer set) before it was
            done. It is left as it is (not cancelled).
        :raises Exception: whatever it failed with.
        """
        check_timeout(timeout)
        what = _describe(awaitable)
        deferred: Deferred[_T] = (
            awaitable if isinstance(awaitable, Deferred) else Deferred.fromCoroutine(awaitable)
        )
        outcome: list[_T | Failure] = []
        deferred.addBoth(outcome.append)
        start = self.reactor.seconds()
        deadline = None if timeout is None else start + timeout
        self.flush()
        while not outcome:
            due = self._next_call()
            if due is None:
                raise WaitTimeoutError(
                    f"MemoryPair.run({what}): nothing is left to happen (no bytes to move, "
                    f"no timer set) after {self.reactor.seconds() - start:g} simulated s, "
                    "and it is not done: it would wait forever"
                )
            if deadline is not None and due > deadline:
                self.reactor.advance(max(0.0, deadline - self.reactor.seconds()))
                self.flush()
                if outcome:
                    break
                raise WaitTimeoutError(
                    f"MemoryPair.run({what}): gave up after {timeout:g} simulated s; it is not done"
                )
            self.reactor.advance(max(0.0, due - self.reactor.seconds()))
            self.flush()
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    # The SSH connection ------------------------------------------------------------------

    def logon(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """
        Log :attr:`tunnel` on and wait for it (:meth:`run`).

        :param timeout: simulated seconds.
        """
        self.run(self.tunnel.logon(), timeout=timeout)

    @property
    def connections(self) -> list[Any]:
        """
        The server's ends of the SSH connections on the network, oldest first: Conch
        ``SSHServerTransport`` objects (``rekey()``, ``sendPacket()``, ...).
        """
        return [
            link.server_io.protocol
            for link in self.reactor.links
            if link.listener.factory is self._server_factory() and not link.closed
        ]

    @property
    def connection_attempts(self) -> int:
        """How many connects were made to the server's address, refused ones included."""
        return self.reactor.attempts.get((self.host, self.port), 0)

    def _server_factory(self) -> object:
        listener = self.reactor._find(self.host, self.port)
        return None if listener is None else listener.factory

    def kill(self) -> None:
        """
        End every SSH connection from the server's side without a word, as when sshd's
        session process is killed: the client sees the TCP connection close. The server
        keeps listening. Flushes.
        """
        factory = self._server_factory()
        for link in list(self.reactor.links):
            if link.listener.factory is factory:
                link.server_io.loseConnection()
        self.flush()

    def drop(self, description: str | bytes = b"rtunnel test server dropped you") -> None:
        """
        The server disconnects every client (``SSH_MSG_DISCONNECT`` with ``description``):
        :meth:`SSHTestServer.drop_connections <rtunnel.testing.SSHTestServer.drop_connections>`,
        run to its end.

        :param description: the DISCONNECT message's text.
        """
        self.run(self.server.drop_connections(description))

    def refuse_connections(self, refuse: bool = True) -> None:
        """
        New connects to the server's address are refused (as with no sshd listening)
        while ``refuse`` holds; connections already made are not touched.

        :param refuse: whether to refuse.
        """
        if refuse:
            self.reactor.refusing.add((self.host, self.port))
        else:
            self.reactor.refusing.discard((self.host, self.port))

    # Forwarded ports -------------------------------------------------------------------------

    def connect(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        source: tuple[str, int] = ("203.0.113.5", 0),
    ) -> InboundConnection:
        """
        Connect to ``host:port`` on the network, as a client of a port the server forwards
        (one the tunnel asked for with ``request_forwarding``), and flush: the server
        opens a ``forwarded-tcpip`` channel to the tunnel for it.

        :param port: the port (the forward's, e.g. ``forward.port``).
        :param host: the address (the forward's bind address, or one it covers).
        :param source: the client's address and port as the server sees them (the
            channel's originator); port 0 picks one.
        :return: the connection, connected.
        :raises twisted.internet.error.ConnectionRefusedError: nothing listens there.
        """
        connection = InboundConnection()
        factory = _InboundFactory(connection)
        self.reactor.connectTCP(host, port, factory, bindAddress=source)
        self.flush()
        if factory.failure is not None:
            factory.failure.raiseException()
        return connection

    # Ending ----------------------------------------------------------------------------------

    def close(self) -> None:
        """
        Stop the server (dropping its connections), and remove the temporary directory
        if the pair made one. Tunnels are left as they are: log them off first to end them
        cleanly.
        """
        self.run(self.server.stop())
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _describe(awaitable: object) -> str:
    name = getattr(awaitable, "__qualname__", None)
    if name is not None:
        return f"{name}()"
    return "a Deferred" if isinstance(awaitable, Deferred) else repr(awaitable)
