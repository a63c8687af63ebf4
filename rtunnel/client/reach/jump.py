"""
A native ProxyJump: reach the SSH server through jump hosts without OpenSSH's ``ssh``.

rtunnel logs on to the jump host with its own client machinery (a :class:`ReverseTunnel`
with the same credentials and host-key settings, as ``ssh -J`` uses the same identities
and known_hosts for the jump), opens a ``direct-tcpip`` channel (RFC 4254 §7.2) to the
server, and runs the server's SSH transport over that channel. Several hops nest: the
jump tunnel for the last hop reaches it through the hops before it.

State line of one connect: ``LOGON (jump host) -> OPENING (direct-tcpip) -> CONNECTED
(the protocol runs over the channel) -> LOGOFF (jump host, once the channel ends)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtunnel._core.syntax import parse_proxy_jump
from rtunnel.client.auth.credentials import Credential
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import ChannelRefused
from rtunnel.client.hostkeys.verify import HostKeyPolicy
from rtunnel.errors import ConnectError, RTunnelError, SpecError

__all__ = ["JumpHost", "JumpHosts", "JumpTunnel", "jump_endpoint", "jump_hosts"]

_log = Logger()

# RFC 4254 §5.1 reason codes, in OpenSSH's words (channels.c, reason2txt).
_REASONS = {
    1: "administratively prohibited",
    2: "connect failed",
    3: "unknown channel type",
    4: "resource shortage",
}


@dataclass(frozen=True)
class JumpHost:
    """
    One jump host (OpenSSH's ``ProxyJump`` hop).

    :ivar host: the jump host's name or address.
    :ivar port: its SSH port.
    :ivar user: the user to log on as there (default: the local user, as ``ssh -J host``).
    :ivar auth: credentials for it (default: the tunnel's own).
    :ivar known_hosts: known_hosts file(s) for it (default: the tunnel's).
    :ivar host_key_policy: its host key policy (default: the tunnel's).
    """

    host: str
    port: int = 22
    user: str | None = None
    auth: Sequence[Credential] | None = None
    known_hosts: str | Path | Sequence[str | Path] | None = None
    host_key_policy: HostKeyPolicy | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise SpecError("No jump host given.")
        if not 0 < self.port <= 65535:
            raise SpecError(f"Bad jump host port {self.port}: give 1-65535.")

    @property
    def where(self) -> str:
        """``jump host NAME port N``, for messages."""
        return f"jump host {self.host} port {self.port}"


class JumpTunnel(Protocol):
    """
    What a jump needs of its logon to the jump host: a :class:`~rtunnel.ReverseTunnel`
    with the outer tunnel's settings. Said here as a protocol because ``rtunnel.tunnel``
    imports this module, and the client does not import the facade above it.
    """

    def logon(self) -> Deferred[None]: ...

    def logoff(self) -> Deferred[None]: ...

    def open_direct_tcpip(
        self, host: str, port: int, protocol: IProtocol
    ) -> Deferred[ForwardedChannel]: ...


#: What ``proxy_jump=`` takes: a hop, OpenSSH's ``[user@]host[:port][,...]``, or a list.
JumpHosts = JumpHost | str | Sequence[JumpHost | str]


def jump_hosts(value: JumpHosts | None) -> tuple[JumpHost, ...]:
    """
    The hops ``value`` names, first hop first (empty for None or ``"none"``).

    :raises SpecError: for a malformed ``[user@]host[:port]`` hop.
    """
    if value is None:
        return ()
    if isinstance(value, JumpHost):
        return (value,)
    if isinstance(value, str):
        if value.strip().lower() in ("", "none"):
            return ()
        return tuple(JumpHost(d.host, d.port or 22, d.user) for d in parse_proxy_jump(value))
    hops: list[JumpHost] = []
    for item in value:
        hops.extend(jump_hosts(item))
    return tuple(hops)


def jump_endpoint(
    new_tunnel: Callable[[], JumpTunnel], hop: JumpHost, host: str, port: int
) -> IStreamClientEndpoint:
    """
    An endpoint whose ``connect`` logs on to ``hop`` (a fresh tunnel from ``new_tunnel``
    each time), opens a ``direct-tcpip`` channel to ``host:port`` and connects the factory's
    protocol to it. Failures are the jump tunnel's typed errors, with the message naming
    the jump host; a refused channel is :class:`~rtunnel.errors.ConnectError` quoting the
    server's reason. The jump host is logged off when the channel ends.
    """
    return _JumpEndpoint(new_tunnel, hop, host, port)


@implementer(IStreamClientEndpoint)
class _JumpEndpoint:
    def __init__(
        self, new_tunnel: Callable[[], JumpTunnel], hop: JumpHost, host: str, port: int
    ) -> None:
        self._new_tunnel = new_tunnel
        self._hop = hop
        self._host = host
        self._port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Log on to the jump host and run ``protocolFactory``'s protocol over a channel."""
        attempt = _Attempt(self._new_tunnel(), self._hop, self._host, self._port)
        running = Deferred.fromCoroutine(attempt.run(protocolFactory))

        def cancel(_d: Deferred[IProtocol]) -> None:
            # The attempt fails (or is closed if it succeeds) and logs off the jump host;
            # this Deferred fails with CancelledError at once.
            attempt.cancelled = True
            running.cancel()

        result: Deferred[IProtocol] = Deferred(cancel)

        def done(outcome: IProtocol | Failure) -> None:
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)
            elif not isinstance(outcome, Failure):
                transport: ITransport | None = getattr(outcome, "transport", None)
                if transport is not None:
                    transport.loseConnection()

        running.addBoth(done)
        return result


class _Attempt:
    def __init__(self, tunnel: JumpTunnel, hop: JumpHost, host: str, port: int) -> None:
        self.tunnel = tunnel
        self.hop = hop
        self.host = host
        self.port = port
        self.cancelled = False

    async def run(self, factory: IProtocolFactory) -> IProtocol:
        tunnel, where = self.tunnel, self.hop.where
        try:
            await tunnel.logon()
        except RTunnelError as e:
            if self.cancelled:
                raise CancelledError() from None
            raise _naming(e, where) from None
        protocol = factory.buildProtocol(_JumpAddress(self.hop, self.host, self.port))
        if protocol is None:
            await tunnel.logoff()
            raise ConnectError(f"{where}: the protocol factory refused the connection.")
        over = _OverChannel(protocol, self._log_off)
        try:
            await tunnel.open_direct_tcpip(self.host, self.port, over)
        except ChannelRefused as e:
            await tunnel.logoff()
            # OpenSSH's words: "channel 0: open failed: administratively prohibited: ...".
            reason = _REASONS.get(e.code, f"unknown reason {e.code}")
            raise ConnectError(
                f"{where}: cannot reach {self.host} port {self.port} through it: "
                f"open failed: {reason}: {e.description}"
            ) from None
        except BaseException as e:
            await tunnel.logoff()
            if self.cancelled:
                raise CancelledError() from None
            if isinstance(e, RTunnelError):
                raise _naming(e, where) from None
            raise
        return protocol

    def _log_off(self) -> None:
        # The inner connection is over: log off the jump host too.
        def failed(failure: Failure) -> None:
            _log.failure("logging off {where} failed", failure, where=self.hop.where)

        self.tunnel.logoff().addErrback(failed)


def _naming(error: RTunnelError, where: str) -> RTunnelError:
    """The same error (type and details kept), its message naming the jump host."""
    if not error.message.startswith("jump host "):
        error.message = f"{where}: {error.message}"
        error.args = (error.message,)
    return error


@implementer(IAddress)
@dataclass(frozen=True)
class _JumpAddress:
    """The address a protocol built for a jump connection is given."""

    hop: JumpHost
    host: str
    port: int


@implementer(IProtocol)
class _OverChannel:
    """The protocol carried, plus: when its channel ends, log off the jump host."""

    def __init__(self, inner: IProtocol, ended: Callable[[], None]) -> None:
        self._inner = inner
        self._ended = ended

    def makeConnection(self, transport: ITransport) -> None:  # noqa: N802 (IProtocol)
        self._inner.makeConnection(transport)

    def connectionMade(self) -> None:  # noqa: N802 (IProtocol)
        pass

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (IProtocol)
        self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (IProtocol)
        try:
            self._inner.connectionLost(reason)
        finally:
            self._ended()
