"""
The public facade: :class:`ReverseTunnel` logs on to an SSH server, requests remote forwards
and keeps the table of live channels.

State line of one logon (after twisted.conch.endpoints):
``DISCONNECTED -> CONNECTING (TCP) -> SECURING (kex, host key) -> AUTHENTICATING ->
CONNECTED -> (LOGGING_OFF) -> DISCONNECTED``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtunnel import _wire
from rtunnel._model import (
    AcceptHook,
    ChannelInfo,
    ChannelOpenRequest,
    Forward,
    ForwardState,
    TunnelObserver,
)
from rtunnel.client.channel import ForwardedChannel
from rtunnel.client.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    ChannelRefused,
    ForwardingConnection,
)
from rtunnel.client.credentials import Credential
from rtunnel.client.forwarder import Splice, TargetFactory, TargetProtocol, tcp_endpoint
from rtunnel.client.verify import HostKeyPolicy, HostKeyVerifier
from rtunnel.errors import (
    AlreadyConnectedError,
    ChannelError,
    ConnectError,
    ConnectionLostError,
    ForwardingError,
    NotConnectedError,
    RTunnelError,
    SpecError,
)

if TYPE_CHECKING:
    from rtunnel.client.transport import ClientTransport

__all__ = ["HostKeyPolicy", "ReverseTunnel"]


DEFAULT_WINDOW_SIZE = 2 * 1024 * 1024
DEFAULT_MAX_PACKET = 32 * 1024
# How long logoff waits for cancels and channel closes before it drops the connection.
LOGOFF_TIMEOUT = 5.0

_log = Logger()


class ReverseTunnel:
    """
    A reverse tunnel over one SSH connection (``ssh -R``).

    :param reactor: the reactor (TCP and time) to use.
    :param host: the SSH server.
    :param port: its port.
    :param user: the user name to log on as (default: the local user).
    :param auth: credentials to try, in order.
    :param known_hosts: known_hosts file(s) to check the host key against
        (default ``~/.ssh/known_hosts``).
    :param host_key_policy: ``"strict"`` (default: unknown keys are refused),
        ``"accept-new"`` (unknown keys are trusted and written to the first known_hosts
        file; changed keys are refused) or ``"accept-any"`` (no check, with a warning).
    :param connect_timeout: seconds to wait for TCP connect plus handshake and logon.
    :param target_connect_timeout: seconds to wait for a local target to accept (and for an
        accept hook to answer) before the channel is refused.
    :param window_size: the SSH channel window we grant (how much the server may send
        before we have passed it on).
    :param max_packet: the largest channel data packet we accept.
    :param max_channels: at most this many channels at once; more are refused with
        "resource shortage".
    :param clock: the clock for timeouts (default: ``reactor``).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str,
        port: int = 22,
        *,
        user: str | None = None,
        auth: Sequence[Credential] = (),
        known_hosts: str | Path | Sequence[str | Path] | None = None,
        host_key_policy: HostKeyPolicy = "strict",
        connect_timeout: float | None = 30.0,
        target_connect_timeout: float = 10.0,
        window_size: int = DEFAULT_WINDOW_SIZE,
        max_packet: int = DEFAULT_MAX_PACKET,
        max_channels: int = 1024,
        clock: IReactorTime | None = None,
    ) -> None:
        if not host:
            raise SpecError("No SSH host given.")
        if not 0 < port <= 65535:
            raise SpecError(f"Bad SSH port {port}: give 1-65535.")
        if host_key_policy not in ("strict", "accept-new", "accept-any"):
            raise SpecError(
                f"Unknown host key policy {host_key_policy!r}: "
                "use 'strict', 'accept-new' or 'accept-any'."
            )
        if not 1024 <= max_packet <= window_size <= 0xFFFFFFFF:
            raise SpecError("Need 1024 <= max_packet <= window_size < 2^32.")
        self._reactor = reactor
        self._clock: IReactorTime = clock or cast(IReactorTime, reactor)
        self.host = host
        self.port = port
        self.user = user or _local_user()
        self._auth = list(auth)
        if known_hosts is None:
            paths = [Path("~/.ssh/known_hosts")]
        elif isinstance(known_hosts, (str, Path)):
            paths = [Path(known_hosts)]
        else:
            paths = [Path(p) for p in known_hosts]
        self.known_hosts = [p.expanduser() for p in paths]
        self.host_key_policy: HostKeyPolicy = host_key_policy
        self._host_key_verifier = HostKeyVerifier(
            self.host, self.port, self.known_hosts, host_key_policy
        )
        self.connect_timeout = connect_timeout
        self.target_connect_timeout = target_connect_timeout
        self.window_size = window_size
        self.max_packet = max_packet
        self.max_channels = max_channels
        self._transport: ClientTransport | None = None
        self._conn: ForwardingConnection | None = None
        self._forwards: list[Forward] = []
        self._observers: list[TunnelObserver] = []
        self._disconnect_waiters: list[Deferred[None]] = []
        self._logging_off = False
        self._lost: Deferred[None] | None = None
        self._logon_finished: Deferred[None] | None = None
        self._abort_logon: Callable[[], object] | None = None

    # -- logon / logoff

    def logon(self) -> Deferred[None]:
        """
        Connect, verify the host key, authenticate. Fires when the tunnel is usable; fails
        with :class:`~rtunnel.errors.ConnectError`, :class:`~rtunnel.errors.HostKeyError`,
        :class:`~rtunnel.errors.AuthenticationError` or another
        :class:`~rtunnel.errors.RTunnelError`.
        """
        if self._logon_finished is not None:
            return defer.fail(AlreadyConnectedError("A logon is already in progress."))
        if self._transport is not None:
            return defer.fail(AlreadyConnectedError("Already logged on; log off first."))
        finished: Deferred[None] = Deferred()
        self._logon_finished = finished
        return Deferred.fromCoroutine(self._logon(finished))

    async def _logon(self, finished: Deferred[None]) -> None:
        try:
            await self._connect_and_authenticate()
        finally:
            # Fired here, inside the coroutine, not from the returned Deferred's callbacks:
            # a logoff() waiting on it must not resume in the middle of that chain.
            self._logon_finished = None
            finished.callback(None)

    async def _connect_and_authenticate(self) -> None:
        # Imported here: Conch's userauth imports the global reactor, and importing
        # rtunnel must not install one (the pytest plugin is loaded before the reactor
        # the user asked for is installed).
        from rtunnel.client.auth import load_credentials
        from rtunnel.client.transport import ClientTransport

        loaded_keys, passwords = load_credentials(self._auth)
        ready: Deferred[ForwardingConnection] = Deferred()
        self._lost = Deferred()
        conn = ForwardingConnection(
            self,
            window_size=self.window_size,
            max_packet=self.max_packet,
            max_channels=self.max_channels,
            on_started=ready.callback,
            on_stopped=lambda _conn: None,
        )
        lost = self._lost

        def on_lost(transport: ClientTransport, reason: Failure) -> None:
            failure = Failure(self._describe_loss(transport, reason))
            if not ready.called:
                ready.errback(failure)
            self._connection_ended(transport, failure)
            if not lost.called:
                lost.callback(None)

        def build() -> ClientTransport:
            return ClientTransport(
                user=self.user,
                keys_to_try=loaded_keys,
                passwords=passwords,
                verify_host_key=self._host_key_verifier.verify,
                connection=conn,
                on_lost=on_lost,
            )

        factory = Factory.forProtocol(build)  # type: ignore[arg-type]
        endpoint = tcp_endpoint(self._reactor, self.host, self.port, self.connect_timeout or 30)
        connecting = endpoint.connect(factory)
        self._abort_logon = connecting.cancel
        try:
            transport = cast(ClientTransport, await connecting)
        except defer.CancelledError:
            raise self._abandoned() from None
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            # OpenSSH's words (ssh.c), less its program name.
            raise ConnectError(
                f"connect to host {self.host} port {self.port}: {_reason_text(e)}"
            ) from None
        finally:
            self._abort_logon = None
        self._transport = transport
        if self.connect_timeout:
            ready.addTimeout(self.connect_timeout, self._clock)
        self._abort_logon = ready.cancel
        try:
            self._conn = await ready
        except (defer.TimeoutError, defer.CancelledError) as e:
            # Timed out, or logoff() was called meanwhile.
            tcp = transport.transport
            if tcp is not None:
                tcp.abortConnection()  # type: ignore[attr-defined]
            await lost
            if isinstance(e, defer.CancelledError):
                raise self._abandoned() from None
            raise ConnectError(
                f"Connection to {self.host} port {self.port} timed out during the SSH "
                f"handshake or logon (after {self.connect_timeout} s)."
            ) from None
        finally:
            self._abort_logon = None

    def _abandoned(self) -> ConnectError:
        return ConnectError(
            f"Logon to {self.host} port {self.port} abandoned: logoff() was called."
        )

    def logoff(self) -> Deferred[None]:
        """
        Cancel every forward, close every channel, close the connection. Fires once the
        connection is closed. Logging off a tunnel that is not connected does nothing.
        """
        return Deferred.fromCoroutine(self._logoff())

    async def _logoff(self) -> None:
        finished = self._logon_finished
        if finished is not None:
            # Logging off while logging on: give up the logon at once; logon() fails
            # with ConnectError, and we wait for it to settle.
            if self._abort_logon is not None:
                self._abort_logon()
            await finished
            return
        conn, transport, lost = self._conn, self._transport, self._lost
        if transport is None or lost is None:
            return
        self._logging_off = True
        if conn is not None and not conn.stopped:
            cancels = [
                self.cancel_forwarding(f.bind_address, f.port)
                for f in list(self._forwards)
                if f.state is ForwardState.ACTIVE
            ]
            await _settle(cancels, LOGOFF_TIMEOUT, self._clock)
            for channel in list(conn.channels.values()):
                if channel.confirmed:
                    channel.loseConnection()
            await _settle([conn.when_idle()], LOGOFF_TIMEOUT, self._clock)
            conn.disconnect("logoff")
        if not lost.called:
            # DISCONNECT was sent and the TCP close started; don't wait on the server.
            tcp = transport.transport
            fallback = (
                self._clock.callLater(LOGOFF_TIMEOUT, _abort_if_open, tcp)
                if tcp is not None
                else None
            )
            await lost
            if fallback is not None and fallback.active():
                fallback.cancel()

    def when_disconnected(self) -> Deferred[None]:
        """
        Fires with None when the SSH connection ends after :meth:`logoff`; fails with the
        reason (a :class:`~rtunnel.errors.RTunnelError`) when it ends any other way. Each
        call returns a new Deferred.
        """
        d: Deferred[None] = Deferred()
        self._disconnect_waiters.append(d)
        return d

    @property
    def connected(self) -> bool:
        """True while logged on."""
        return self._conn is not None and not self._conn.stopped

    # -- forwards

    def request_forwarding(
        self,
        bind_address: str,
        port: int,
        host: str | None = None,
        host_port: int | None = None,
        *,
        factory: IProtocolFactory | None = None,
        accept: AcceptHook | None = None,
    ) -> Deferred[Forward]:
        """
        Ask the server to listen on ``bind_address:port`` (``port`` 0: server's choice).

        ``bind_address`` follows RFC 4254 §7.1 as OpenSSH reads it: ``""`` all addresses
        (IPv4 and IPv6), ``"0.0.0.0"`` all IPv4, ``"::"`` all IPv6, ``"localhost"`` the
        loopback addresses, a literal address only that one (the server may restrict this;
        OpenSSH needs ``GatewayPorts clientspecified`` for non-loopback binds).

        Give ``host`` and ``host_port`` for forwarding mode, or ``factory`` for event mode.
        Fires with the :class:`Forward` (whose ``port`` is the listening port) once the
        server agreed; fails with :class:`~rtunnel.errors.ForwardingError` if it refused.
        """
        return Deferred.fromCoroutine(
            self._request_forwarding(bind_address, port, host, host_port, factory, accept)
        )

    async def _request_forwarding(
        self,
        bind_address: str,
        port: int,
        host: str | None,
        host_port: int | None,
        factory: IProtocolFactory | None,
        accept: AcceptHook | None,
    ) -> Forward:
        if not 0 <= port <= 65535:
            raise SpecError(f"Bad listen port {port}: give 0-65535 (0: the server chooses).")
        if factory is not None and host is not None:
            raise SpecError("Give either a local host:port (forwarding) or a factory (event).")
        if factory is None:
            if not host or host_port is None:
                raise SpecError(
                    "Forwarding mode needs a local host and port; event mode needs a factory."
                )
            if not 0 < host_port <= 65535:
                raise SpecError(f"Bad local port {host_port}: give 1-65535.")
        conn = self._require_conn()
        forward = Forward(bind_address, port, host, host_port, factory, accept)
        self._forwards.append(forward)
        try:
            reply = await conn.send_global_request(
                b"tcpip-forward", _wire.encode_tcpip_forward(bind_address, port)
            )
            forward.port = _wire.decode_tcpip_forward_reply(port, reply)
        except (ForwardingError, _wire.WireError) as e:
            forward.state = ForwardState.FAILED
            self._forwards.remove(forward)
            self._notify_forward(forward)
            # OpenSSH's words (ssh.c), so operators recognise it.
            raise ForwardingError(
                f"remote port forwarding failed for listen port {port}"
                + ("" if isinstance(e, ForwardingError) else f": {e}")
            ) from None
        except BaseException:
            # The connection went away (ConnectionLostError) or we were cancelled.
            forward.state = ForwardState.FAILED
            if forward in self._forwards:
                self._forwards.remove(forward)
            raise
        forward.state = ForwardState.ACTIVE
        self._notify_forward(forward)
        return forward

    def cancel_forwarding(self, bind_address: str, port: int) -> Deferred[None]:
        """
        Ask the server to stop listening. ``port`` is the listening port (the allocated one
        when 0 was requested). Connections already open stay open.
        """
        return Deferred.fromCoroutine(self._cancel_forwarding(bind_address, port))

    async def _cancel_forwarding(self, bind_address: str, port: int) -> None:
        conn = self._require_conn()
        forward = next(
            (
                f
                for f in self._forwards
                if f.bind_address == bind_address and f.port == port and f.port
            ),
            None,
        )
        if forward is None:
            raise ForwardingError(f"No active forward on {bind_address!r} port {port}.")
        # Refuse new opens at once: opens that race the cancel are refused (B4).
        forward.state = ForwardState.CANCELLED
        self._forwards.remove(forward)
        try:
            await conn.send_global_request(
                b"cancel-tcpip-forward", _wire.encode_tcpip_forward(bind_address, port)
            )
        except ForwardingError:
            raise ForwardingError(
                f"The server refused to cancel the forward on {bind_address!r} port {port}."
            ) from None
        finally:
            self._notify_forward(forward)

    @property
    def forwards(self) -> list[Forward]:
        """The forwards requested on this connection (pending and active)."""
        return list(self._forwards)

    # -- channels

    @property
    def channels(self) -> list[ChannelInfo]:
        """A snapshot of the live (confirmed) channels, in the order they opened."""
        conn = self._conn
        if conn is None:
            return []
        return [c.info for c in conn.channels.values() if c.confirmed and not c.finished]

    def channel(self, channel_id: int) -> ChannelInfo:
        """One live channel by id; :class:`~rtunnel.errors.ChannelError` if there is none."""
        return self._channel(channel_id).info

    def send_channel_data(self, channel_id: int, data: bytes) -> None:
        """Send bytes on a channel (the reference's SendChannelData)."""
        self._channel(channel_id).write(data)

    def send_channel_eof(self, channel_id: int) -> None:
        """Half-close a channel: no more data will be sent on it."""
        self._channel(channel_id).loseWriteConnection()

    def close_channel(self, channel_id: int) -> None:
        """Close a channel (the reference's CloseChannel), after pending data is sent."""
        self._channel(channel_id).loseConnection()

    def _channel(self, channel_id: int) -> ForwardedChannel:
        conn = self._conn
        channel = conn.channels.get(channel_id) if conn is not None else None
        if channel is None or not channel.confirmed or channel.finished:
            raise ChannelError(f"No open channel with id {channel_id}.")
        return channel

    # -- observers

    def add_observer(self, observer: TunnelObserver) -> None:
        """Receive channel and connection events."""
        self._observers.append(observer)

    def remove_observer(self, observer: TunnelObserver) -> None:
        """Stop receiving events."""
        self._observers.remove(observer)

    # -- ChannelHost, for the connection

    def find_forward(self, address: str, port: int) -> Forward | None:
        """The active forward an inbound open names (see ARCHITECTURE.md step 2)."""
        candidates = [
            f for f in self._forwards if f.state is ForwardState.ACTIVE and f.port == port
        ]
        for forward in candidates:
            if forward.bind_address == address:
                return forward
        # Some servers report the address they bound rather than the string we sent
        # (e.g. "127.0.0.1" for "localhost"); the port alone is then unambiguous if only
        # one forward listens on it. The destination always comes from our forward.
        if len(candidates) == 1:
            return candidates[0]
        return None

    def open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> Deferred[IProtocol]:
        """Run the accept hook, then connect the target or build the app's protocol."""
        d = Deferred.fromCoroutine(self._open_target(forward, request, channel))
        return d.addTimeout(self.target_connect_timeout * 2, self._clock)

    async def _open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> IProtocol:
        if forward.accept is not None:
            try:
                answer = forward.accept(request)
                if isinstance(answer, Deferred) or inspect.isawaitable(answer):
                    answer = await _with_timeout(
                        cast(Awaitable[bool], answer), self.target_connect_timeout, self._clock
                    )
            except defer.TimeoutError:
                raise ChannelRefused(
                    OPEN_ADMINISTRATIVELY_PROHIBITED, "accept hook did not answer"
                ) from None
            except Exception:
                _log.failure("accept hook failed; refusing channel {id}", id=request.channel_id)
                raise ChannelRefused(
                    OPEN_ADMINISTRATIVELY_PROHIBITED, "accept hook failed"
                ) from None
            if not answer:
                raise ChannelRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, "refused by the application")
        if forward.factory is not None:
            protocol = forward.factory.buildProtocol(channel.getPeer())
            if protocol is None:
                raise ChannelRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, "refused by the factory")
            return protocol
        assert forward.host is not None and forward.host_port is not None
        target = TargetProtocol()
        endpoint = tcp_endpoint(
            self._reactor, forward.host, forward.host_port, self.target_connect_timeout
        )
        try:
            await endpoint.connect(TargetFactory(target))
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            _log.info(
                "connect to {host}:{port} failed for channel {id}: {reason}",
                host=forward.host,
                port=forward.host_port,
                id=request.channel_id,
                reason=_reason_text(e),
            )
            raise ChannelRefused(
                OPEN_CONNECT_FAILED,
                f"connect to {forward.host}:{forward.host_port} failed: {_reason_text(e)}",
            ) from None
        return Splice(target)

    def channel_event(self, name: str, info: ChannelInfo, data: bytes = b"") -> None:
        """Dispatch a channel event to observers."""
        if not self._observers:
            return
        for observer in list(self._observers):
            try:
                if name == "data":
                    observer.channel_data(info, data)
                elif name == "opened":
                    observer.channel_opened(info)
                elif name == "eof":
                    observer.channel_eof(info)
                elif name == "closed":
                    observer.channel_closed(info)
                elif name == "ready":
                    observer.channel_ready_to_send(info)
            except Exception:
                _log.failure("observer {observer!r} failed on {name}", observer=observer, name=name)

    # -- internals

    def _require_conn(self) -> ForwardingConnection:
        conn = self._conn
        if conn is None or conn.stopped:
            raise NotConnectedError("Not logged on: call logon() first.")
        return conn

    def _notify_forward(self, forward: Forward) -> None:
        for observer in list(self._observers):
            try:
                observer.forward_state_changed(forward)
            except Exception:
                _log.failure("observer {observer!r} failed", observer=observer)

    def _describe_loss(self, transport: ClientTransport, reason: Failure) -> RTunnelError:
        if transport.error is not None:
            return transport.error
        if transport.connection.protocol_error is not None:
            return transport.connection.protocol_error
        userauth = transport.userauth
        if userauth is not None and userauth.failure is not None and self._conn is None:
            return userauth.failure
        if self._logging_off:
            return ConnectionLostError("Logged off.")
        return ConnectionLostError(f"Connection to {self.host} closed by remote host.")

    def _connection_ended(self, transport: ClientTransport, failure: Failure) -> None:
        if transport is not self._transport and self._transport is not None:
            return
        was_connected = self._conn is not None
        clean = self._logging_off
        self._transport = None
        self._conn = None
        self._logging_off = False
        for forward in self._forwards:
            forward.state = ForwardState.FAILED
            self._notify_forward(forward)
        self._forwards.clear()
        if not was_connected:
            return
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for d in waiters:
            if clean:
                d.callback(None)
            else:
                d.errback(failure)
        for observer in list(self._observers):
            try:
                observer.disconnected(None if clean else cast(Exception, failure.value))
            except Exception:
                _log.failure("observer {observer!r} failed", observer=observer)


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "root")


def _reason_text(e: BaseException) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, error.TimeoutError):
        return "Connection timed out"
    if isinstance(e, error.DNSLookupError):
        return "Could not resolve hostname"
    text = str(e).strip()
    return text or type(e).__name__


def _abort_if_open(tcp: Any) -> None:
    if getattr(tcp, "connected", False):
        tcp.abortConnection()


async def _settle(
    waits: Sequence[Deferred[Any] | Awaitable[Any]], timeout: float, clock: IReactorTime
) -> None:
    """Wait for every one of ``waits`` to finish (success or failure), at most ``timeout`` s."""
    if not waits:
        return
    deferreds = [
        w if isinstance(w, Deferred) else Deferred.fromCoroutine(w)  # type: ignore[arg-type]
        for w in waits
    ]
    gathered = defer.DeferredList(deferreds, consumeErrors=True)
    gathered.addTimeout(timeout, clock)
    with contextlib.suppress(defer.TimeoutError):
        await gathered


async def _with_timeout(answer: Awaitable[bool], timeout: float, clock: IReactorTime) -> bool:
    d: Deferred[bool] = (
        answer if isinstance(answer, Deferred) else Deferred.fromCoroutine(answer)  # type: ignore[arg-type]
    )
    d.addTimeout(timeout, clock)
    return await d
