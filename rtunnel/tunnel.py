"""
The public facade: :class:`ReverseTunnel` logs on to an SSH server, requests remote forwards
and keeps the table of live channels.

One logon is :class:`~rtunnel.client.reach.endpoint.SSHConnectionEndpoint`'s (its phases:
``CONNECTING -> SECURING -> AUTHENTICATING -> CONNECTED``); the life of the connection
around it (logon, reconnect, logoff) is the state machine of
:mod:`rtunnel._core.reconnect`, whose table holds every transition.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from rtunnel._core.reconnect import Event, State
from rtunnel._core.text import printable
from rtunnel._forward_table import ForwardTable, new_forward
from rtunnel._model import (
    AcceptHook,
    ChannelInfo,
    ChannelOpenRequest,
    Forward,
    TunnelObserver,
    TunnelStatistics,
)
from rtunnel._observers import JumpProgress, Observers
from rtunnel._reconnect import LogonAbandoned, Reconnector, retryable
from rtunnel._session import (
    SessionParts,
    auth_settings,
    close_session,
    host_key_verifier,
)
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    ChannelRefused,
    ForwardingConnection,
)
from rtunnel.client.channels.idle import IdleChannelReaper
from rtunnel.client.channels.keepalive import Keepalive
from rtunnel.client.channels.targets import target_for
from rtunnel.client.hostkeys.verify import HostKeyPolicy
from rtunnel.client.reach._messages import ServerMessages
from rtunnel.client.reach.endpoint import (
    LogonHooks,
    SSHConnectionEndpoint,
    bind_address,
    choose_route,
)
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
from rtunnel.options import MAX_MAX_PACKET, TunnelOptions

if TYPE_CHECKING:
    from rtunnel.client.transport.client_transport import ClientTransport

__all__ = ["MAX_MAX_PACKET", "HostKeyPolicy", "ReverseTunnel"]


_log = Logger()


class ReverseTunnel:
    """
    A reverse tunnel over one SSH connection (``ssh -R``).

    :param reactor: the reactor (TCP and time) to use.
    :param host: the SSH server.
    :param port: its port.
    :param options: everything else: credentials, host keys, algorithms, how the server is
        reached, channel limits, reconnecting (a :class:`~rtunnel.TunnelOptions`; default:
        the defaults, which log on as the local user with no credentials). Make one with
        :meth:`TunnelOptions.create(user=..., auth=..., known_hosts=...)
        <rtunnel.TunnelOptions.create>`.
    :param clock: the clock for timeouts (default: ``reactor``).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str,
        port: int = 22,
        *,
        options: TunnelOptions | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if not host:
            raise SpecError("No SSH host given.")
        if not 0 < port <= 65535:
            raise SpecError(f"Bad SSH port {port}: give 1-65535.")
        options = options if options is not None else TunnelOptions()
        self._options = options
        self._reactor = reactor
        self._clock: IReactorTime = clock or cast(IReactorTime, reactor)
        self.host = host
        self.port = port
        #: The user logged on as: the options', else the local user.
        self.user = options.authentication.user or _local_user()
        self._auth_settings = auth_settings(options, host, reactor)
        self._host_key_verifier = host_key_verifier(options, host, port)
        self._idle_reaper: IdleChannelReaper | None = None
        #: The server's SSH version string (the reference's ServerSSHVersionString), once
        #: the handshake is done.
        self.server_version: str | None = None
        self._transport: ClientTransport | None = None
        self._conn: ForwardingConnection | None = None
        # The connection's callbacks, kept off the public API.
        self._channel_host = _ConnectionHost(self)
        self._observers = Observers(lambda: self.options.log_level)
        # The forwards, their retries and the request_forwarding() calls waiting for a
        # reconnect (rtunnel/_forward_table.py).
        self._table = ForwardTable(self._clock, _ForwardHost(self), host)
        self._disconnect_waiters: list[Deferred[None]] = []
        # Where the connection is: logon, reconnect and logoff as one state machine (its
        # transitions: rtunnel/_core/reconnect.py), driven with its timers on our clock.
        self._reconnector = Reconnector(
            self._clock,
            _ReconnectHost(self),
            lambda: self.options.staying_up.reconnect,
            f"{host} port {port}",
        )
        self._lost: Deferred[None] | None = None
        self._keepalive: Keepalive | None = None
        self._connected_at = 0.0
        # Counters for statistics(): sessions, and what ended sessions and closed
        # channels carried.
        self._sessions = 0
        self._past_key_exchanges = 0
        self._past_rekeys_by_us = 0
        self._past_rekeys_by_server = 0
        self._channels_opened = 0
        self._closed_bytes_sent = 0
        self._closed_bytes_received = 0
        self._fatal_error: RTunnelError | None = None
        # The last error's message and time, for status (issue #14).
        self._last_error: tuple[str, float] | None = None

    @property
    def options(self) -> TunnelOptions:
        """The tunnel's options (:meth:`set_window_size` replaces the channel window)."""
        return self._options

    # -- logon / logoff

    def logon(self) -> Deferred[None]:
        """
        Connect, verify the host key, authenticate. Fires when the tunnel is usable; fails
        with :class:`~rtunnel.errors.ConnectError`, :class:`~rtunnel.errors.HostKeyError`,
        :class:`~rtunnel.errors.AuthenticationError` or another
        :class:`~rtunnel.errors.RTunnelError`.
        """
        d = self._reconnector.logon()

        def failed(failure: Failure) -> Failure:
            if not failure.check(AlreadyConnectedError):
                self._note_error(failure.value)
            return failure

        return d.addErrback(failed)

    @property
    def _state(self) -> State:
        """Where the connection is (see rtunnel/_core/reconnect.py)."""
        return self._reconnector.state

    @property
    def _reconnect_call(self) -> IDelayedCall | None:
        """The wait before a reconnect (WAITING)."""
        return self._reconnector.call

    @_reconnect_call.setter
    def _reconnect_call(self, call: IDelayedCall | None) -> None:
        self._reconnector.call = call

    async def _connect_and_authenticate(self) -> None:
        options = self.options
        reach = options.reach

        parts = SessionParts(
            options,
            self.user,
            self._clock,
            self._channel_host,
            self._host_key_verifier,
            self._auth_settings,
            self._server_version_seen,
            self._emit_log,
        )

        def stream_connected(transport: ClientTransport, lost: Deferred[None]) -> None:
            self._transport, self._lost = transport, lost
            parts.apply_tcp_options(transport)

        def secured(transport: ClientTransport) -> None:
            for line in messages.handshake_done(transport, self.server_version):
                self._status(line)
            event = messages.handshake_event(self.server_version)
            self._connection_status("ssh-handshake-complete", 0, event)

        def describe_loss(transport: ClientTransport, reason: Failure) -> RTunnelError:
            logging_off = self._state is State.LOGGING_OFF
            return messages.loss(
                transport, reason, logged_on=self._conn is not None, logging_off=logging_off
            )

        timeout = options.authentication.auth_timeout
        messages = ServerMessages(self.host, self.port, reach.connect_timeout, timeout)
        hooks = LogonHooks(
            new_connection=parts.new_connection,
            new_transport=parts.new_transport,
            status=self._status,
            connection_status=self._connection_status,
            stream_connected=stream_connected,
            secured=secured,
            describe_loss=describe_loss,
            ended=self._connection_ended,
            timeout_text=messages.timeout,
        )
        route = choose_route(
            self._reactor, self.host, self.port, self.user, reach, self._jump_tunnel
        )
        endpoint = SSHConnectionEndpoint(
            self._clock,
            self.host,
            self.port,
            route,
            hooks,
            connect_timeout=reach.connect_timeout,
            auth_timeout=timeout,
            bind=bind_address(reach),
        )
        try:
            session = await endpoint.connect()
        except defer.CancelledError:
            # logoff() was called meanwhile.
            raise self._abandoned() from None
        conn, transport = session.connection, session.transport
        self._conn = conn
        self._reconnector.move(Event.LOGGED_ON)
        self._connected_at = self._clock.seconds()
        self._table.working_from = None
        self._keepalive, self._idle_reaper = parts.watch(conn, transport, self.host)
        self._status(f"Authenticated to {self.host} port {self.port} as {self.user!r}.")
        self._sessions += 1
        self._connection_status(
            "authenticated", 0, f"Logged on to {self.host} port {self.port} as {self.user!r}."
        )
        self._notify("connected")

    def _jump_tunnel(self) -> ReverseTunnel:
        """A tunnel to the last jump host (through the hops before it), with the options
        :meth:`TunnelOptions.for_jump_host` derives from this tunnel's."""
        *before, hop = self.options.reach.proxy_jump
        jump = ReverseTunnel(
            self._reactor,
            hop.host,
            hop.port,
            options=self.options.for_jump_host(hop, before),
            clock=self._clock,
        )
        jump.add_observer(JumpProgress(self._observers, hop.where))
        return jump

    def open_direct_tcpip(
        self, host: str, port: int, protocol: IProtocol
    ) -> Deferred[ForwardedChannel]:
        """
        Ask the server to connect to ``host:port`` (a ``direct-tcpip`` channel, RFC 4254
        §7.2, as ``ssh -W``) and run ``protocol`` over the channel. Fires with the channel
        once the server confirms; fails with
        :class:`~rtunnel.client.channels.connection.ChannelRefused` (the server's reason) or
        :class:`~rtunnel.errors.NotConnectedError`.
        """
        if not self.connected:
            return defer.fail(NotConnectedError("Not logged on."))
        return self._require_conn().open_direct_tcpip(host, port, protocol)

    @property
    def local_address(self) -> tuple[str, int] | None:
        """
        The local address and port of the connection to the server (or to the proxy), while
        connected (the reference's LocalHost and LocalPort once connected); else None.
        """
        transport = self._transport
        tcp = getattr(transport, "transport", None)
        if self.options.reach.proxy_jump:
            return None  # the jump host's socket, not ours
        try:
            host = tcp.getHost()  # type: ignore[union-attr]
        except AttributeError:
            return None
        return (host.host, host.port) if hasattr(host, "port") else None

    def _next_retry(
        self, kind: str, retry: int, error: Exception, remote_port: int | None = None
    ) -> float | None:
        """The delay before retry ``retry``, after telling observers; None to give up."""
        self._note_error(error)
        return self._observers.next_retry(
            self.options.staying_up.reconnect,
            (self.host, self.port),
            kind,
            retry,
            error,
            remote_port,
        )

    def _abandoned(self) -> ConnectError:
        return LogonAbandoned(
            f"Logon to {self.host} port {self.port} abandoned: logoff() was called."
        )

    def _server_version_seen(self, version: str) -> None:
        # On arrival, so that a handshake that fails still says which server it was.
        self.server_version = version

    def set_window_size(self, window_size: int) -> None:
        """
        Grow the channel window (the reference's MaxWindowSize, which may only increase
        on a live connection): channels opened from now on get ``window_size``, and each
        open channel is granted the difference at once (RFC 4254 5.2 WINDOW_ADJUST). It
        also holds after a reconnect.

        :raises SpecError: for a smaller window or one of 2^32 bytes or more.
        """
        channels = self.options.channels
        if not channels.window_size <= window_size <= 0xFFFFFFFF:
            raise SpecError(
                f"The window can only grow, up to 2^32 - 1: {window_size} is not between "
                f"{channels.window_size} and 4294967295."
            )
        self._options = replace(self.options, channels=replace(channels, window_size=window_size))
        if self._conn is not None:
            self._conn.grow_window(window_size)

    def rekey(self) -> Deferred[None]:
        """
        Exchange new keys now (the seed's ExchangeKeys). Fires once the new keys are in use
        both ways; fails with :class:`~rtunnel.errors.NotConnectedError` when not logged on,
        or :class:`~rtunnel.errors.ConnectionLostError` if the connection ends first.
        """
        if self._transport is None or not self.connected:
            return defer.fail(NotConnectedError("Not logged on."))
        return self._transport.rekey()

    def logoff(self) -> Deferred[None]:
        """
        Cancel every forward, close every channel, close the connection. Fires once the
        connection is closed. Logging off a tunnel that is not connected does nothing.
        """
        return Deferred.fromCoroutine(self._logoff())

    async def _logoff(self) -> None:
        try:
            await self._logoff_steps()
        finally:
            self._reconnector.stopped()

    async def _logoff_steps(self) -> None:
        self._table.cancel_retries()
        # Cancels a scheduled reconnect; a logon under way (or a reconnect's) is given up
        # at once, failing with ConnectError, and settles before we go on.
        await self._reconnector.stop()
        conn, transport, lost = self._conn, self._transport, self._lost
        if transport is None or lost is None:
            self._give_up(None)
            return
        await close_session(
            conn,
            transport,
            lost,
            lambda: [
                self.cancel_socket_forwarding(f.listen_path)
                if f.listen_path is not None
                else self.cancel_forwarding(f.bind_address, f.port)
                for f in self._table.active()
            ],
            self.options.staying_up,
            self._clock,
        )

    def when_disconnected(self) -> Deferred[None]:
        """
        Fires with None when the SSH connection ends after :meth:`logoff`; fails with the
        reason (a :class:`~rtunnel.errors.RTunnelError`) when it ends any other way. Each
        call returns a new Deferred.
        """
        d: Deferred[None] = Deferred()
        self._disconnect_waiters.append(d)
        return d

    def statistics(self) -> TunnelStatistics:
        """A snapshot of the tunnel's counters (sessions, key exchanges, channels, bytes)."""
        conn, transport = self._conn, self._transport
        live = list(conn.channels.values()) if conn is not None and not conn.stopped else []
        current = transport.key_exchanges if transport is not None else 0
        by_us = transport.rekeys_by_us if transport is not None else 0
        by_server = transport.rekeys_by_peer if transport is not None else 0
        return TunnelStatistics(
            connected=self.connected,
            sessions=self._sessions,
            key_exchanges=current,
            rekeys_by_us=by_us,
            rekeys_by_server=by_server,
            total_key_exchanges=self._past_key_exchanges + current,
            total_rekeys_by_us=self._past_rekeys_by_us + by_us,
            total_rekeys_by_server=self._past_rekeys_by_server + by_server,
            keepalives_sent=self._keepalive.sent if self._keepalive is not None else 0,
            channels_open=len(live),
            channels_opened=self._channels_opened,
            bytes_sent=self._closed_bytes_sent + sum(c.info.bytes_sent for c in live),
            bytes_received=self._closed_bytes_received + sum(c.info.bytes_received for c in live),
            forwards_active=len(self._table.active()),
        )

    @property
    def connected(self) -> bool:
        """True while logged on."""
        return self._conn is not None and not self._conn.stopped

    @property
    def connection_state(self) -> str:
        """
        Where the connection is, in an operator's words: ``"connecting"`` (a logon or
        reconnect under way), ``"connected"``, ``"waiting"`` (to retry), ``"stopped"``
        (not started, logged off or logging off) or ``"failed"`` (stopped by an error).
        """
        state = self._state
        if state is State.STOPPED:
            return "failed" if self._reconnector.failed else "stopped"
        return _SHOWN_STATES[state]

    @property
    def state_since(self) -> float:
        """When :attr:`connection_state` was entered (the clock's seconds)."""
        return self._reconnector.since

    @property
    def last_error(self) -> tuple[str, float] | None:
        """The last error's message (printable) and when it happened; None if none yet."""
        return self._last_error

    def _note_error(self, error: BaseException | None) -> None:
        if error is None:
            return
        self._last_error = (printable(str(error)), self._clock.seconds())

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
        dynamic: bool = False,
        target_path: str | None = None,
    ) -> Deferred[Forward]:
        """
        Ask the server to listen on ``bind_address:port`` (``port`` 0: server's choice).

        ``bind_address`` follows RFC 4254 §7.1 as OpenSSH reads it: ``""`` all addresses
        (IPv4 and IPv6), ``"0.0.0.0"`` all IPv4, ``"::"`` all IPv6, ``"localhost"`` the
        loopback addresses, a literal address only that one (the server may restrict this;
        OpenSSH needs ``GatewayPorts clientspecified`` for non-loopback binds).

        Give ``host`` and ``host_port`` for forwarding mode, ``factory`` for event mode, or
        ``dynamic=True`` for a remote dynamic forward (``ssh -R [bind_address:]port``): each
        connection speaks SOCKS4, SOCKS4A or SOCKS5 (CONNECT, no authentication) and is
        connected from this machine to where it asks, within ``permit_remote_open``; or
        ``target_path`` to splice each connection to a local Unix-domain socket
        (``ssh -R port:/path/to/socket``).
        Fires with the :class:`Forward` (whose ``port`` is the listening port) once the
        server agreed; fails with :class:`~rtunnel.errors.ForwardingError` if it refused.

        When the connection is lost before the server answers, or is being made again
        when this is called, the forward stays requested: the reconnect loop asks for it
        on the next connection, as for an established one (a refusal there is retried
        on its own schedule, since a stale session of ours may hold the port), and this
        fires once the server agrees. It fails with the reason when the tunnel stops
        instead (reconnect off or given up, or :meth:`logoff`). Not logged on and not
        reconnecting: :class:`~rtunnel.errors.NotConnectedError`.
        """
        return Deferred.fromCoroutine(
            self._request_forwarding(
                lambda: new_forward(
                    bind_address, port, host, host_port, factory, accept, dynamic, target_path
                )
            )
        )

    async def _request_forwarding(self, forward: Callable[[], Forward]) -> Forward:
        # Inside the coroutine, so that bad arguments (SpecError) fail the Deferred.
        return await self._table.request(forward())

    def _waiting_to_reconnect(self) -> bool:
        """Between connections, with a reconnect scheduled or its logon under way."""
        return self._reconnect_call is not None or self._state is State.RECONNECTING

    def request_socket_forwarding(
        self,
        listen_path: str,
        host: str | None = None,
        host_port: int | None = None,
        *,
        factory: IProtocolFactory | None = None,
        accept: AcceptHook | None = None,
        target_path: str | None = None,
    ) -> Deferred[Forward]:
        """
        Ask the server to listen on the Unix-domain socket ``listen_path`` on its side
        (``ssh -R /path/on/server:host:hostport``; OpenSSH's
        ``streamlocal-forward@openssh.com``, which sshd allows unless
        ``AllowStreamLocalForwarding no``; the socket must not exist yet unless sshd has
        ``StreamLocalBindUnlink yes``). Connections go to ``host:host_port``, the local
        socket ``target_path``, or ``factory``'s protocols, as for
        :meth:`request_forwarding`. Fails with :class:`~rtunnel.errors.ForwardingError`
        if the server refuses.
        """
        if not listen_path:
            return defer.fail(SpecError("The socket path to listen on is empty."))
        return Deferred.fromCoroutine(
            self._request_forwarding(
                lambda: new_forward(
                    listen_path,
                    0,
                    host,
                    host_port,
                    factory,
                    accept,
                    False,
                    target_path,
                    listen_path,
                )
            )
        )

    def cancel_socket_forwarding(self, listen_path: str) -> Deferred[None]:
        """Ask the server to stop listening on the socket ``listen_path``."""
        return Deferred.fromCoroutine(self._cancel_forwarding(listen_path, 0, listen_path))

    def cancel_forwarding(self, bind_address: str, port: int) -> Deferred[None]:
        """
        Ask the server to stop listening. ``port`` is the listening port (the allocated one
        when 0 was requested). Connections already open stay open.
        """
        return Deferred.fromCoroutine(self._cancel_forwarding(bind_address, port))

    async def _cancel_forwarding(
        self, bind_address: str, port: int, listen_path: str | None = None
    ) -> None:
        await self._table.cancel(bind_address, port, listen_path)

    @property
    def forwards(self) -> list[Forward]:
        """The forwards requested on this connection (pending and active)."""
        return list(self._table.forwards)

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
        self._observers.add(observer)

    def remove_observer(self, observer: TunnelObserver) -> None:
        """Stop receiving events."""
        self._observers.remove(observer)

    # -- internals

    def _require_conn(self) -> ForwardingConnection:
        conn = self._conn
        if conn is None or conn.stopped:
            raise NotConnectedError("Not logged on: call logon() first.")
        return conn

    def _connection_ended(self, transport: ClientTransport, failure: Failure) -> None:
        if transport is not self._transport and self._transport is not None:
            return
        conn = self._conn
        was_connected = conn is not None
        clean = self._state is State.LOGGING_OFF
        self._past_key_exchanges += transport.key_exchanges
        self._past_rekeys_by_us += transport.rekeys_by_us
        self._past_rekeys_by_server += transport.rekeys_by_peer
        self._transport = None
        self._conn = None
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
        if self._idle_reaper is not None:
            self._idle_reaper.stop()
            self._idle_reaper = None
        if not was_connected:
            return  # a failed logon: logon() or the reconnect loop reports it
        error = cast(Exception, failure.value)
        if clean:
            self._connection_status(
                "disconnected", 0, f"Logged off from {self.host} port {self.port}."
            )
        else:
            code = error.code if isinstance(error, RTunnelError) else ConnectionLostError.code
            self._connection_status("broken", code, str(error))
            self._note_error(error)
            self._emit_log(1, f"Connection to {self.host} port {self.port} lost: {error}")
        self._notify("disconnected", None if clean else error)
        if self._state is State.LOGGING_OFF:
            # Logged off, or an observer of "disconnected" called logoff().
            self._give_up(None if clean else failure)
            return
        if self._reconnector.lost(error):
            if self._worked(conn):
                # This outage starts from the first step again (issue #12).
                self._reconnector.retry = 0
            self._table.lost()
            self._reconnector.schedule(error)
            return
        self._give_up(failure)

    def _worked(self, conn: ForwardingConnection | None) -> bool:
        """
        Whether the connection that just ended showed that reconnecting works: every
        forward was re-established on it and the server sent something after that, or
        it lasted ``reset_after`` seconds. Logging on and getting the forward replies
        alone is not enough: a server that drops each session right after them must
        still meet a growing backoff.
        """
        if (
            self._clock.seconds() - self._connected_at
            >= self.options.staying_up.reconnect.reset_after
        ):
            return True
        mark = self._table.working_from
        return conn is not None and mark is not None and conn.packets_received > mark

    def _give_up(self, failure: Failure | None) -> None:
        """The tunnel stops for good: tell the forwards and when_disconnected() waiters."""
        if self._fatal_error is not None:
            failure, self._fatal_error = Failure(self._fatal_error), None
        if failure is not None:
            self._note_error(failure.value)
            self._reconnector.failed = True
        self._reconnector.retry = 0
        stopped = failure or Failure(
            ConnectionLostError("Logged off before the server agreed to the forward.")
        )
        self._table.stop(failure, stopped)
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    def _emit_log(self, level: int, message: str) -> None:
        """A log message at the reference's ``level`` (1 info, 2 verbose, 3 debug)."""
        self._observers.log(level, message)

    def _status(self, message: str) -> None:
        """Progress of the SSH connection (the reference's SSHStatus), also logged."""
        self._observers.status(message)

    def _connection_status(self, event: str, code: int, description: str) -> None:
        self._observers.connection_status(event, code, description)

    def _error(self, error: RTunnelError) -> None:
        """An error that fails no call of the user's (the reference's Error event)."""
        self._note_error(error)
        self._observers.error(error, self._conn)

    def _notify(self, event: str, *args: object) -> None:
        self._observers.notify(event, *args)


#: connection_state's words for the states that are not STOPPED.
_SHOWN_STATES = {
    State.LOGGING_ON: "connecting",
    State.LOGON_WAIT: "waiting",
    State.CONNECTED: "connected",
    State.WAITING: "waiting",
    State.RECONNECTING: "connecting",
    State.LOGGING_OFF: "stopped",
}


class _ConnectionHost:
    """
    What the connection asks of the tunnel (``ChannelHost``): which forward an inbound
    open names, its target, and the channel events for observers. A private object, so
    that these callbacks are not part of :class:`ReverseTunnel`'s public API (issue #16).
    """

    def __init__(self, tunnel: ReverseTunnel) -> None:
        self._tunnel = tunnel
        # The channels counted in their forward's channels_open (id of their ChannelInfo).
        self._counted: set[int] = set()

    def find_socket_forward(self, path: str) -> Forward | None:
        """The active socket forward a ``forwarded-streamlocal@openssh.com`` open names."""
        return self._tunnel._table.find_socket(path)

    def find_forward(self, address: str, port: int) -> Forward | None:
        """The active forward an inbound open names (see ARCHITECTURE.md step 2)."""
        return self._tunnel._table.find(address, port)

    def open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> Deferred[IProtocol]:
        """Run the accept hook, then connect the target or build the app's protocol."""
        tunnel = self._tunnel
        d = Deferred.fromCoroutine(self._open_target(forward, request, channel))
        return d.addTimeout(tunnel.options.channels.target_connect_timeout * 2, tunnel._clock)

    async def _open_target(
        self, forward: Forward, request: ChannelOpenRequest, channel: ForwardedChannel
    ) -> IProtocol:
        tunnel = self._tunnel
        if forward.accept is not None:
            try:
                answer = forward.accept(request)
                if isinstance(answer, Deferred) or inspect.isawaitable(answer):
                    answer = await _with_timeout(
                        cast(Awaitable[bool], answer),
                        tunnel.options.channels.target_connect_timeout,
                        tunnel._clock,
                    )
            except defer.TimeoutError:
                raise ChannelRefused(
                    OPEN_ADMINISTRATIVELY_PROHIBITED, "accept hook did not answer"
                ) from None
            except Exception as e:
                _log.failure("accept hook failed; refusing channel {id}", id=request.channel_id)
                tunnel._error(
                    ChannelError(f"Channel {request.channel_id}: the accept hook failed: {e!r}")
                )
                raise ChannelRefused(
                    OPEN_ADMINISTRATIVELY_PROHIBITED, "accept hook failed"
                ) from None
            if not answer:
                raise ChannelRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, "refused by the application")
        channels = tunnel.options.channels
        bind = (channels.forwarding_local_host, 0) if channels.forwarding_local_host else None
        target = target_for(
            forward,
            tunnel._reactor,
            timeout=channels.target_connect_timeout,
            bind_address=bind,
            permitted=channels.permit_remote_open,
            on_error=tunnel._error,
            log=tunnel._emit_log,
        )
        return await target.open(channel)

    def channel_event(self, name: str, info: ChannelInfo, data: bytes = b"") -> None:
        """Dispatch a channel event to observers."""
        tunnel = self._tunnel
        forward = info.forward
        if name == "opened":
            tunnel._channels_opened += 1
            if forward is not None:
                forward.channels_open += 1
                forward.channels_total += 1
                self._counted.add(id(info))
        elif name == "closed":
            tunnel._closed_bytes_sent += info.bytes_sent
            tunnel._closed_bytes_received += info.bytes_received
            if forward is not None:
                forward.bytes_in += info.bytes_received
                forward.bytes_out += info.bytes_sent
                # A channel that ended while its protocol started was never "opened".
                if id(info) in self._counted:
                    self._counted.discard(id(info))
                    forward.channels_open -= 1
        if tunnel.options.log_level >= 2 and name in ("opened", "closed"):
            tunnel._emit_log(
                2,
                f"Channel {info.channel_id} {name}: from {info.origin_address} port "
                f"{info.origin_port} to listen port {info.connected_port} "
                f"({info.bytes_received} bytes in, {info.bytes_sent} out).",
            )
        if not tunnel._observers:
            return
        for observer in list(tunnel._observers):
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


class _ReconnectHost:
    """The tunnel's side of its Reconnector (private methods, not public callbacks)."""

    def __init__(self, tunnel: ReverseTunnel) -> None:
        self._tunnel = tunnel

    def connect(self) -> Coroutine[Any, Any, None]:
        return self._tunnel._connect_and_authenticate()

    def announce(self, retry: int, error: Exception) -> float | None:
        return self._tunnel._next_retry("ssh", retry, error)

    def retryable(self, error: Exception) -> bool:
        return retryable(error)

    def abandoned(self) -> Exception:
        return self._tunnel._abandoned()

    def reconnected(self) -> Coroutine[Any, Any, None]:
        return self._tunnel._table.reestablish()

    def give_up(self, failure: Failure) -> None:
        self._tunnel._give_up(failure)


class _ForwardHost:
    """The tunnel's side of its ForwardTable."""

    def __init__(self, tunnel: ReverseTunnel) -> None:
        self._tunnel = tunnel

    def connection(self) -> ForwardingConnection | None:
        conn = self._tunnel._conn
        return conn if conn is not None and not conn.stopped else None

    def waiting_to_reconnect(self) -> bool:
        return self._tunnel._waiting_to_reconnect()

    def next_retry(self, retry: int, error: Exception, port: int) -> float | None:
        return self._tunnel._next_retry("tunnel", retry, error, port)

    def refused_again(self, error: ForwardingError) -> bool:
        tunnel = self._tunnel
        if not tunnel.options.staying_up.exit_on_forward_failure:
            return False
        tunnel._fatal_error = error
        tunnel.logoff()
        return True

    def changed(self, forward: Forward) -> None:
        self._tunnel._observers.forward_changed(forward)

    def error(self, error: RTunnelError) -> None:
        self._tunnel._error(error)

    def log(self, level: int, message: str) -> None:
        self._tunnel._emit_log(level, message)


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "root")


async def _with_timeout(answer: Awaitable[bool], timeout: float, clock: IReactorTime) -> bool:
    d: Deferred[bool] = (
        answer if isinstance(answer, Deferred) else Deferred.fromCoroutine(answer)  # type: ignore[arg-type]
    )
    d.addTimeout(timeout, clock)
    return await d
