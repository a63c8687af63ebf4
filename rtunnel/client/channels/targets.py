"""
Where an inbound channel goes, once its forward's accept hook (if any) said yes: one
:class:`Target` per kind behind one method, ``open(channel)``, which fires with the
protocol to attach to the channel, or fails with
:class:`~rtunnel.client.channels.connection.ChannelRefused` (the OPEN_FAILURE the server
gets). The channel is confirmed only once it fires (ARCHITECTURE.md, the data path, step 4).

- :class:`TCPTarget`: a local ``host:port`` (forwarding mode, ``ssh -R port:host:hostport``);
- :class:`UnixTarget`: a local Unix-domain socket (``ssh -R port:/path/to/socket``);
- :class:`SocksTarget`: a SOCKS exchange on the channel picks the destination (a remote
  dynamic forward, ``ssh -R [bind_address:]port``);
- :class:`AppTarget`: the application's protocol (event mode).

:func:`target_for` picks the one a :class:`~rtunnel.Forward` describes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTCP, IReactorUNIX

from rtunnel._model import Forward
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    ChannelRefused,
)
from rtunnel.client.channels.forwarder import (
    Splice,
    TargetFactory,
    TargetProtocol,
    connect_failure_text,
    tcp_endpoint,
)
from rtunnel.errors import ChannelError

__all__ = ["AppTarget", "SocksTarget", "TCPTarget", "Target", "UnixTarget", "target_for"]

#: Told of a target that could not be connected (the tunnel's error event), before the
#: channel is refused.
ErrorReport = Callable[[ChannelError], None]
#: Gets (level, message) for the tunnel's log (1 info, 2 verbose, 3 debug).
LogReport = Callable[[int, str], None]


class Target(Protocol):
    """Where the channels of one forward go."""

    def open(self, channel: ForwardedChannel) -> Deferred[IProtocol]:
        """
        Connect (or build) what ``channel`` is to carry. Fires with the protocol to attach
        to the channel; fails with :class:`ChannelRefused` to refuse it.
        """
        ...


class TCPTarget:
    """
    A local ``host:port``, connected from ``bind_address`` when given (the reference's
    ForwardingLocalHost); the channel is spliced to that TCP connection.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str,
        port: int,
        *,
        timeout: float,
        bind_address: tuple[str, int] | None = None,
        on_error: ErrorReport,
    ) -> None:
        self.host = host
        self.port = port
        self._reactor = reactor
        self._timeout = timeout
        self._bind = bind_address
        self._on_error = on_error

    def open(self, channel: ForwardedChannel) -> Deferred[IProtocol]:
        """Connect to ``host:port``; fire with the splice for ``channel``."""
        return Deferred.fromCoroutine(self._open(channel))

    async def _open(self, channel: ForwardedChannel) -> IProtocol:
        target = TargetProtocol()
        endpoint = tcp_endpoint(self._reactor, self.host, self.port, self._timeout, self._bind)
        try:
            await endpoint.connect(TargetFactory(target))
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            # OpenSSH's words (channels.c, channel_connect_to_port).
            why = connect_failure_text(e)
            text = f"connect to {self.host} port {self.port} failed: {why}"
            self._on_error(ChannelError(f"Channel {channel.info.channel_id}: {text}."))
            raise ChannelRefused(OPEN_CONNECT_FAILED, text) from None
        return Splice(target)


class UnixTarget:
    """A local Unix-domain socket; the channel is spliced to a connection to it."""

    def __init__(
        self, reactor: IReactorUNIX, path: str, *, timeout: float, on_error: ErrorReport
    ) -> None:
        self.path = path
        self._reactor = reactor
        self._timeout = timeout
        self._on_error = on_error

    def open(self, channel: ForwardedChannel) -> Deferred[IProtocol]:
        """Connect to the socket; fire with the splice for ``channel``."""
        return Deferred.fromCoroutine(self._open(channel))

    async def _open(self, channel: ForwardedChannel) -> IProtocol:
        target = TargetProtocol()
        endpoint = UNIXClientEndpoint(self._reactor, self.path, timeout=self._timeout)
        try:
            await endpoint.connect(TargetFactory(target))
        except (error.ConnectError, OSError) as e:
            text = f"connect to {self.path} failed: {connect_failure_text(e)}"
            self._on_error(ChannelError(f"Channel {channel.info.channel_id}: {text}."))
            raise ChannelRefused(OPEN_CONNECT_FAILED, text) from None
        return Splice(target)


class SocksTarget:
    """
    A remote dynamic forward: the channel is confirmed at once, and the client's SOCKS
    request on it says where to connect from this machine, within ``permitted``
    (PermitRemoteOpen; None: anywhere).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        *,
        timeout: float,
        bind_address: tuple[str, int] | None,
        permitted: tuple[tuple[str, str], ...] | None,
        log: LogReport,
    ) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._bind = bind_address
        self._permitted = permitted
        self._log = log

    def open(self, channel: ForwardedChannel) -> Deferred[IProtocol]:
        """Fire at once with the SOCKS server exchange for ``channel``."""
        # Only a dynamic forward needs the SOCKS server (issue #17: a quick start).
        from rtunnel.client.channels.dynamic import SocksChannel

        return succeed(
            SocksChannel(self._reactor, self._timeout, self._bind, self._permitted, self._log)
        )


class AppTarget:
    """Event mode: the application's factory builds the protocol the channel carries."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory

    def open(self, channel: ForwardedChannel) -> Deferred[IProtocol]:
        """Fire with the factory's protocol for ``channel``'s peer; a factory that builds
        none refuses the channel."""
        return Deferred.fromCoroutine(self._open(channel))

    async def _open(self, channel: ForwardedChannel) -> IProtocol:
        protocol = self.factory.buildProtocol(channel.getPeer())
        if protocol is None:
            raise ChannelRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, "refused by the factory")
        return protocol


def target_for(
    forward: Forward,
    reactor: IReactorTCP,
    *,
    timeout: float,
    bind_address: tuple[str, int] | None,
    permitted: tuple[tuple[str, str], ...] | None,
    on_error: ErrorReport,
    log: LogReport,
) -> Target:
    """
    The target ``forward`` names: its factory (event mode), a SOCKS exchange (dynamic),
    its Unix socket, or its ``host:host_port``. ``timeout`` bounds a connect (and a SOCKS
    exchange with its connect); ``bind_address`` is where TCP connects come from.
    """
    if forward.factory is not None:
        return AppTarget(forward.factory)
    if forward.dynamic:
        return SocksTarget(
            reactor, timeout=timeout, bind_address=bind_address, permitted=permitted, log=log
        )
    if forward.target_path is not None:
        unix: IReactorUNIX = reactor  # type: ignore[assignment]
        return UnixTarget(unix, forward.target_path, timeout=timeout, on_error=on_error)
    if forward.host is None or forward.host_port is None:
        raise ValueError(f"The forward {forward!r} names no target.")
    return TCPTarget(
        reactor,
        forward.host,
        forward.host_port,
        timeout=timeout,
        bind_address=bind_address,
        on_error=on_error,
    )
