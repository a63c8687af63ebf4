"""
Remote dynamic forwarding (``ssh -R [bind_address:]port``, OpenSSH 7.6): each connection
to the server's port arrives as a channel whose client speaks SOCKS4, SOCKS4A or SOCKS5;
rtunnel connects where it asks from this machine (subject to ``PermitRemoteOpen``),
answers, and from then on splices the channel to that connection like any forward.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core.syntax import remote_open_permitted
from rtunnel._core.text import printable
from rtunnel.client.channels._socksserver import (
    FailureKind,
    SocksFailure,
    SocksRequest,
    SocksServerHandshake,
    socks_reply,
)
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.forwarder import (
    Splice,
    TargetFactory,
    TargetProtocol,
    connect_failure_text,
    tcp_endpoint,
)

__all__ = ["SocksChannel"]

#: Bytes a client may send after its request, before the destination has answered.
_EARLY_DATA_LIMIT = 64 * 1024


class SocksChannel(Protocol):
    """
    The protocol on one channel of a dynamic forward, until the destination is connected;
    then the channel carries a :class:`~rtunnel.client.channels.forwarder.Splice`.

    :param reactor: connects to destinations and times the handshake.
    :param timeout: seconds for the SOCKS request and the connect together.
    :param bind_address: the local address to connect from (ForwardingLocalHost).
    :param permitted: PermitRemoteOpen rules (None: any destination).
    :param log: gets (level, message) for what happened (the tunnel's log).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        timeout: float,
        bind_address: tuple[str, int] | None,
        permitted: tuple[tuple[str, str], ...] | None,
        log: Callable[[int, str], None],
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._bind = bind_address
        self._permitted = permitted
        self._log = log
        self._handshake = SocksServerHandshake()
        self._request: SocksRequest | None = None
        self._early = b""
        self._connecting: Deferred[IProtocol] | None = None
        self._timer: IDelayedCall | None = None
        self._done = False

    @override
    def connectionMade(self) -> None:
        clock: IReactorTime = self._reactor  # type: ignore[assignment]
        self._timer = clock.callLater(self._timeout, self._too_slow)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._request is not None:
            # Sent before our answer (allowed by neither RFC, done by some clients): kept
            # for the destination, within bounds.
            self._early += data
            if len(self._early) > _EARLY_DATA_LIMIT:
                self._fail(None, "the client sent too much before the destination answered")
            return
        send, outcome = self._handshake.feed(data)
        if send:
            self._write(send)
        if outcome is None:
            return
        if isinstance(outcome, SocksFailure):
            self._fail_with(outcome.reply, outcome.reason)
            return
        self._request = outcome
        self._early = outcome.leftover
        if not remote_open_permitted(self._permitted, outcome.host, outcome.port):
            self._fail(
                "not-allowed",
                f"connect to {_shown(outcome.host)} port {outcome.port} is not permitted "
                "(PermitRemoteOpen)",
            )
            return
        target = TargetProtocol()
        endpoint = tcp_endpoint(
            self._reactor, outcome.host, outcome.port, self._timeout, self._bind
        )
        connecting = endpoint.connect(TargetFactory(target))
        self._connecting = connecting
        connecting.addCallbacks(lambda _: self._connected(target), self._connect_failed)

    def _connected(self, target: TargetProtocol) -> None:
        self._connecting = None
        request = self._request
        channel = self.transport
        if self._done or request is None or not isinstance(channel, ForwardedChannel):
            if target.transport is not None:
                target.transport.loseConnection()
            return
        self._done = True
        self._cancel_timer()
        host = target.transport.getHost() if target.transport is not None else None
        bound = (getattr(host, "host", "0.0.0.0"), getattr(host, "port", 0))
        self._write(socks_reply(request.version, None, bound))
        self._log(
            2,
            f"Channel {channel.local_id}: dynamic forward connected to {_shown(request.host)} port "
            f"{request.port} (SOCKS{request.version}).",
        )
        splice = Splice(target)
        channel.attach(splice)
        if self._early:
            splice.dataReceived(self._early)
            self._early = b""

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        # A cancelled connect (our timeout, or the client went away) is answered there.
        if self._done or failure.check(defer.CancelledError, error.ConnectingCancelledError):
            return
        request = self._request
        assert request is not None
        kind: FailureKind = "general"
        if failure.check(error.ConnectionRefusedError):
            kind = "refused"
        elif failure.check(error.DNSLookupError, error.TimeoutError):
            kind = "host"
        elif failure.check(error.NoRouteError):
            kind = "network"
        self._fail(
            kind,
            f"connect to {_shown(request.host)} port {request.port} failed: "
            f"{connect_failure_text(failure.value or Exception('unknown'))}",
        )

    def _too_slow(self) -> None:
        self._timer = None
        if self._done:
            return
        if self._connecting is not None:
            self._connecting.cancel()
        what = "connect" if self._request is not None else "SOCKS request"
        self._fail("host" if self._request else None, f"no {what} within {self._timeout:g} s")

    def _fail(self, kind: FailureKind | None, reason: str) -> None:
        version = self._request.version if self._request is not None else 5
        reply = socks_reply(version, kind) if kind is not None else b""
        self._fail_with(reply, reason)

    def _fail_with(self, reply: bytes, reason: str) -> None:
        self._done = True
        self._cancel_timer()
        channel = self.transport
        number = channel.local_id if isinstance(channel, ForwardedChannel) else "?"
        self._log(1, f"Channel {number}: dynamic forward: {reason}.")
        if reply:
            self._write(reply)
        if self.transport is not None:
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @override
    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        # The remote client went away before the destination answered.
        self._done = True
        self._cancel_timer()
        if self._connecting is not None:
            self._connecting.cancel()


def _shown(host: str) -> str:
    # The SOCKS client's host name, as logs show it (RELIABILITY.md D17).
    return printable(host, 255)
