"""
A fault-injecting TCP proxy for tests, on the loopback interface only: it passes bytes
between a client and one target (an SSH server), and on demand blackholes them without a
FIN, stalls, resets with RST, or flips one bit. Switchable at any time; runs on the
reactor it is given.

Each accepted connection is a pair::

    client --TCP--> _ClientSide  ==upstream==>  _ServerSide --TCP--> target
                                <=downstream==

Reading either side is paused for several reasons at once (connecting, the other side's
write buffer is full, ``stall``), and resumed only when none is left; Twisted's own
producer calls would otherwise undo a stall.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel.client.channels.forwarder import abort_with_reset
from rtunnel.testing._listening import ListeningAddress
from rtunnel.testing._waiting import DEFAULT_TIMEOUT, Waiters

__all__ = ["Direction", "FaultProxy", "ProxyMode"]

#: Which way a fault applies: ``"upstream"`` is client to server, ``"downstream"`` server
#: to client.
Direction = Literal["both", "upstream", "downstream"]

#: What the proxy does now: see :attr:`FaultProxy.mode`.
ProxyMode = Literal["pass", "blackhole", "stall", "reset", "flip"]

_UP = "upstream"
_DOWN = "downstream"


def _loopback(host: str, what: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"FaultProxy {what} must be a loopback address literal (127.0.0.1 or ::1), not {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"FaultProxy works on the loopback interface only; {what} is {host}")
    return host


def _directions(direction: Direction) -> frozenset[str]:
    if direction == "both":
        return frozenset((_UP, _DOWN))
    if direction in (_UP, _DOWN):
        return frozenset((direction,))
    raise ValueError(f"direction must be 'both', 'upstream' or 'downstream', not {direction!r}")


class FaultProxy(ListeningAddress):
    """
    A TCP proxy between clients and one target, on the loopback interface, that injects
    network faults on demand. Point the client at :attr:`host` and :attr:`port`.

    Modes (switch at any time; they apply at once to every connection, and to new ones):

    - :meth:`pass_through`: bytes pass both ways, as do half-closes and closes (a reset
      passes as a reset).
    - :meth:`blackhole`: bytes are read and silently discarded, in one direction or both;
      no FIN or RST passes either, so the TCP connections stay open: a silent partition.
    - :meth:`stall`: the proxy stops reading, in one direction or both, so the sender's
      socket buffers fill up: a peer that hangs.
    - :meth:`reset`: every connection is aborted with RST (``SO_LINGER`` 0), both sides,
      and new ones are reset as soon as they are accepted.
    - :meth:`flip_bit`: one bit of the server-to-client stream is flipped, after a given
      number of bytes; then the proxy passes again.

    Every accepted connection is connected to the target, whatever the mode, so going back
    to :meth:`pass_through` carries on with it (a side that closed meanwhile is then
    reset on the other side, as a healed network would show).

    :param reactor: the reactor to listen and connect with (and whose clock the
        ``wait_for_*`` helpers' timeouts run on).
    :param target_host: the target's address: a loopback literal (``127.0.0.1``, ``::1``).
    :param target_port: the target's port.
    :param host: the loopback address to listen on.
    :param port: the port to listen on; 0 picks a free one (see :attr:`port`).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._reactor = reactor
        self.target_host = _loopback(target_host, "target_host")
        self.target_port = target_port
        self._host = _loopback(host, "host")
        self._port = port
        self._listening: IListeningPort | None = None
        self._pairs: set[_Pair] = set()
        self._waiters = Waiters(IReactorTime(reactor))
        self._mode: ProxyMode = "pass"
        self._blackholed: frozenset[str] = frozenset()
        self._stalled: frozenset[str] = frozenset()
        self._flip_at = 0
        self._flip_mask = 0
        self._accepted = 0
        self.flips = 0
        self.bytes_from_clients = 0
        self.bytes_from_server = 0

    # Life cycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Start listening.

        :return: a Deferred that fires once :attr:`port` is known.
        """
        if self._listening is not None:
            return defer.fail(RuntimeError("FaultProxy already started"))
        try:
            self._listening = self._reactor.listenTCP(
                self._port, _ClientFactory(self), interface=self._host
            )
        except Exception:
            return defer.fail()
        return defer.succeed(None)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and abort every connection.

        :return: a Deferred that fires once all of them are closed.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await defer.maybeDeferred(listening.stopListening)
        for pair in list(self._pairs):
            pair.abort(reset=False)
        await self._waiters.when(
            lambda: not self._pairs,
            timeout=DEFAULT_TIMEOUT,
            what="FaultProxy.stop()",
            seen=lambda: f"{len(self._pairs)} proxied connections still open",
        )

    # Modes ---------------------------------------------------------------------------

    @property
    def mode(self) -> ProxyMode:
        """
        ``"pass"``, ``"blackhole"``, ``"stall"``, ``"reset"`` or ``"flip"`` (a bit flip is
        armed and not done yet).
        """
        return self._mode

    def pass_through(self) -> None:
        """Pass bytes, half-closes and closes both ways (the initial mode)."""
        self._set("pass")
        for pair in list(self._pairs):
            pair.heal()

    def blackhole(self, direction: Direction = "both") -> None:
        """
        Read and silently discard bytes in ``direction`` (``"upstream"``: client to server,
        ``"downstream"``: server to client, or ``"both"``); no FIN or RST passes that way.

        :param direction: which way.
        """
        self._set("blackhole", blackholed=_directions(direction))

    def stall(self, direction: Direction = "both") -> None:
        """
        Stop reading in ``direction``: what was sent stays in the sockets' buffers, and
        the sender blocks once they are full. Closes are not noticed meanwhile.

        :param direction: which way (``"upstream"`` stops reading from clients).
        """
        self._set("stall", stalled=_directions(direction))

    def reset(self) -> None:
        """
        Abort every connection with RST, on both sides; new connections are reset as soon
        as they are accepted, until the mode changes.
        """
        self._set("reset")
        for pair in list(self._pairs):
            pair.abort(reset=True)

    def flip_bit(self, after: int, bit: int = 0) -> None:
        """
        Flip one bit of the server-to-client stream: bit ``bit`` (0 is the least
        significant) of the byte that comes ``after`` bytes from now, counted over every
        connection. Then the mode goes back to ``"pass"`` by itself, and :attr:`flips`
        counts one more.

        :param after: how many server-to-client bytes pass unchanged first.
        :param bit: which bit of the byte, 0-7.
        """
        if after < 0 or not 0 <= bit <= 7:
            raise ValueError("need after >= 0 and 0 <= bit <= 7")
        self._set("flip")
        self._flip_at = after
        self._flip_mask = 1 << bit

    def _set(
        self,
        mode: ProxyMode,
        *,
        blackholed: frozenset[str] = frozenset(),
        stalled: frozenset[str] = frozenset(),
    ) -> None:
        self._mode = mode
        self._blackholed = blackholed
        self._stalled = stalled
        for pair in list(self._pairs):
            pair.update_stall()

    # State ---------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """
        The number of proxied connections open now: accepted and not yet closed on both
        sides (a blackhole keeps one side open after the other closed).
        """
        return len(self._pairs)

    @property
    def accepted_connections(self) -> int:
        """The number of client connections accepted since the proxy was made."""
        return self._accepted

    def wait_for_connections(
        self, count: int, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Deferred[None]:
        """
        Wait until exactly ``count`` proxied connections are open (:attr:`connections`).

        :param count: the number.
        :param timeout: seconds to wait (on the proxy's reactor); None: no limit.
        :return: a Deferred firing with ``None``, or failing with
            :class:`~rtunnel.testing.WaitTimeoutError` after ``timeout`` seconds.
        """
        return self._waiters.when(
            lambda: self.connections == count,
            timeout=timeout,
            what=f"FaultProxy.wait_for_connections({count})",
            seen=lambda: (
                f"{self.connections} proxied connections are open, not exactly {count} "
                f"({self.accepted_connections} accepted since the proxy was made)"
            ),
        )

    def _changed(self) -> None:
        self._waiters.changed()

    # Called by the pairs -------------------------------------------------------------

    def _passes(self, direction: str) -> bool:
        """Whether bytes and closes go through in ``direction`` now."""
        return direction not in self._blackholed and direction not in self._stalled

    def _filter(self, direction: str, data: bytes) -> bytes | None:
        """What to forward of ``data`` read in ``direction``; None: discard it."""
        if direction == _UP:
            self.bytes_from_clients += len(data)
        else:
            self.bytes_from_server += len(data)
        if direction in self._blackholed:
            return None
        if self._mode == "flip" and direction == _DOWN:
            if self._flip_at < len(data):
                flipped = bytearray(data)
                flipped[self._flip_at] ^= self._flip_mask
                data = bytes(flipped)
                self.flips += 1
                self._set("pass")
            else:
                self._flip_at -= len(data)
        return data


class _ClientFactory(ServerFactory):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    @override
    def buildProtocol(self, addr: IAddress | None) -> _Side:
        return _Pair(self.proxy).client


class _ServerFactory(ClientFactory):
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    @override
    def buildProtocol(self, addr: IAddress | None) -> _Side:
        return self.pair.server

    @override
    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        # The target refused or is unreachable: the client sees a reset.
        self.pair.server.lost = True
        self.pair.client.close(reset=True)


@implementer(IHalfCloseableProtocol, IPushProducer)
class _Side(Protocol):
    """
    One socket of a pair. As the producer registered on the *other* socket, it pauses its
    own reading while that socket's write buffer is full.
    """

    transport: ITCPTransport

    def __init__(self, pair: _Pair, reads: str) -> None:
        self.pair = pair
        #: The direction of what this side reads: "upstream" for the client's socket.
        self.reads = reads
        self.connected_ = False
        self.lost = False
        self.eof = False
        self._pauses: set[str] = set()

    @property
    def other(self) -> _Side:
        return self.pair.server if self is self.pair.client else self.pair.client

    # Pausing -------------------------------------------------------------------------

    def pause(self, reason: str) -> None:
        if not self._pauses and self.connected_ and not self.lost:
            IPushProducer(self.transport).pauseProducing()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.connected_ and not self.lost:
            IPushProducer(self.transport).resumeProducing()

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self.pause("backpressure")

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self.resume("backpressure")

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        pass

    # Protocol ------------------------------------------------------------------------

    @override
    def connectionMade(self) -> None:
        self.connected_ = True
        if self._pauses:
            IPushProducer(self.transport).pauseProducing()
        self.pair.side_connected(self)

    @override
    def dataReceived(self, data: bytes) -> None:
        out = self.pair.proxy._filter(self.reads, data)
        if out and self.other.connected_ and not self.other.lost and not self.other.eof_sent:
            self.other.transport.write(out)

    def readConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.eof = True
        if self.pair.proxy._passes(self.reads):
            self.other.send_eof()
        self.close_if_done()

    def writeConnectionLost(self) -> None:  # noqa: N802 (IHalfCloseableProtocol)
        self.write_closed = True
        self.close_if_done()

    def close_if_done(self) -> None:
        # A half-closeable protocol must close the socket itself once both ways are shut.
        if self.eof and self.write_closed:
            self.close(reset=False)

    eof_sent = False
    write_closed = False

    def send_eof(self) -> None:
        if self.connected_ and not self.lost and not self.eof_sent:
            self.eof_sent = True
            IConsumer(self.transport).unregisterProducer()
            self.transport.loseWriteConnection()

    def close(self, *, reset: bool) -> None:
        if not self.connected_ or self.lost:
            return
        # Unregister first: Twisted does not close while a registered producer is paused.
        IConsumer(self.transport).unregisterProducer()
        if reset:
            abort_with_reset(self.transport)
        else:
            self.transport.loseConnection()

    @override
    def connectionLost(self, reason: Failure | None = connectionDone) -> None:
        self.lost = True
        self.pair.side_lost(self, reason is None or reason.check(ConnectionDone) is not None)


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, _UP)
        self.server = _Side(self, _DOWN)
        #: How each side ended (True: cleanly), once it has.
        self.clean: dict[str, bool] = {}
        self.client.pause("connecting")

    def side_connected(self, side: _Side) -> None:
        proxy = self.proxy
        if side is self.client:
            proxy._pairs.add(self)
            proxy._accepted += 1
            proxy._changed()
            if proxy.mode == "reset":
                side.close(reset=True)
                return
            proxy._reactor.connectTCP(proxy.target_host, proxy.target_port, _ServerFactory(self))
            return
        if self.client.lost:
            side.close(reset=not self.clean.get(_UP, False))
            return
        for a, b in ((self.client, self.server), (self.server, self.client)):
            IConsumer(b.transport).registerProducer(a, True)
        self.update_stall()
        self.client.resume("connecting")

    def side_lost(self, side: _Side, clean: bool) -> None:
        self.clean[side.reads] = clean
        other = side.other
        if self.proxy._passes(side.reads):
            # A reset passes as a reset, a close as a close.
            other.close(reset=not clean)
        if self.client.lost and (self.server.lost or not self.server.connected_):
            self.server.close(reset=True)
            self.proxy._pairs.discard(self)
            self.proxy._changed()

    def update_stall(self) -> None:
        for side in (self.client, self.server):
            if side.reads in self.proxy._stalled:
                side.pause("stall")
            else:
                side.resume("stall")

    def heal(self) -> None:
        """Back to passing: a side that ended meanwhile ends the other one too."""
        for side in (self.client, self.server):
            if side.lost:
                side.other.close(reset=True)
            elif side.eof:
                side.other.send_eof()

    def abort(self, *, reset: bool) -> None:
        for side in (self.client, self.server):
            if side.connected_ and not side.lost:
                if reset:
                    side.close(reset=True)
                else:
                    side.transport.abortConnection()
