"""
The public facade: :class:`ReverseTunnel` logs on to an SSH server, requests remote forwards
and keeps the table of live channels.

One logon is :class:`~rtunnel.client.reach.endpoint.SSHConnectionEndpoint`'s (its phases:
``CONNECTING -> SECURING -> AUTHENTICATING -> CONNECTED``); the life of the connection
around it (logon, reconnect, logoff) is the state machine of
:mod:`rtunnel._core.reconnect`, whose table holds every transition.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
)
from twisted.python.failure import Failure

from rtunnel._connection_host import _ConnectionHost
from rtunnel._core.forward_policy import ForwardGate, ForwardPolicy
from rtunnel._core.policy import connection_worked
from rtunnel._core.reconnect import Event, State
from rtunnel._core.text import printable
from rtunnel._forward_table import ForwardTable, check_policy, new_forward
from rtunnel._model import AcceptHook, ChannelInfo, Forward, TunnelObserver, TunnelStatistics
from rtunnel._observers import JumpProgress, Observers
from rtunnel._reconnect import LogonAbandoned, Reconnector, retryable
from rtunnel._session import (
    SessionParts,
    TunnelSide,
    auth_settings,
    close_session,
    host_key_verifier,
    local_address,
    stop_watching,
)
from rtunnel._statistics import CounterAlias, TunnelCounters
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import ForwardingConnection
from rtunnel.client.channels.idle import IdleChannelReaper
from rtunnel.client.channels.keepalive import Keepalive
from rtunnel.client.hostkeys.verify import HostKeyPolicy
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

    # The channel counters _ConnectionHost.channel_event adds to (rtunnel/_statistics.py).
    _channels_opened = CounterAlias("channels_opened")
    _closed_bytes_sent = CounterAlias("closed_bytes_sent")
    _closed_bytes_received = CounterAlias("closed_bytes_received")

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
        self._statistics = TunnelCounters()
        # The forwards, their retries and the request_forwarding() calls waiting for a
        # reconnect (rtunnel/_forward_table.py).
        self._table = ForwardTable(self._clock, _ForwardHost(self), host)
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

    async def _connect_and_authenticate(self) -> None:
        parts = SessionParts(
            self.options,
            self.user,
            self._clock,
            self._channel_host,
            self._host_key_verifier,
            self._auth_settings,
            self._server_version_seen,
            self._emit_log,
        )
        side = TunnelSide(
            self._observers,
            server_version=lambda: self.server_version,
            logged_on=lambda: self._conn is not None,
            logging_off=lambda: self._state is State.LOGGING_OFF,
            stream_connected=self._stream_connected,
            ended=self._connection_ended,
        )
        endpoint = parts.endpoint(self._reactor, self.host, self.port, side, self._jump_tunnel)
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
        where = f"{self.host} port {self.port} as {self.user!r}"
        self._observers.status(f"Authenticated to {where}.")
        self._statistics.session_started()
        self._observers.connection_status("authenticated", 0, f"Logged on to {where}.")
        self._observers.notify("connected")

    def _stream_connected(self, transport: ClientTransport, lost: Deferred[None]) -> None:
        self._transport, self._lost = transport, lost

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
        return local_address(self._transport, through_jump=bool(self.options.reach.proxy_jump))

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
            self._reconnector.give_up(None)
            return
        await close_session(
            conn,
            transport,
            lost,
            self._table.cancel_active,
            self.options.staying_up,
            self._clock,
        )

    def when_disconnected(self) -> Deferred[None]:
        """
        Fires with None when the SSH connection ends after :meth:`logoff`; fails with the
        reason (a :class:`~rtunnel.errors.RTunnelError`) when it ends any other way. Each
        call returns a new Deferred.
        """
        return self._reconnector.when_stopped()

    def statistics(self) -> TunnelStatistics:
        """A snapshot of the tunnel's counters (sessions, key exchanges, channels, bytes)."""
        return self._statistics.snapshot(
            self._conn, self._transport, self._keepalive, len(self._table.active())
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
        policy: ForwardPolicy | None = None,
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

        ``policy`` (a :class:`~rtunnel.ForwardPolicy`) decides who may come in through this
        forward (originator allow and deny lists), how many at once and how many new ones
        per second, caps its channels' bandwidth and sets their idle timeout (issue #15);
        refusals are counted in the forward's ``refused``.

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
                    bind_address,
                    port,
                    host,
                    host_port,
                    factory,
                    accept,
                    dynamic,
                    target_path,
                    policy=policy,
                )
            )
        )

    async def _request_forwarding(self, forward: Callable[[], Forward]) -> Forward:
        # Inside the coroutine, so that bad arguments (SpecError) fail the Deferred.
        return await self._table.request(forward())

    def request_socket_forwarding(
        self,
        listen_path: str,
        host: str | None = None,
        host_port: int | None = None,
        *,
        factory: IProtocolFactory | None = None,
        accept: AcceptHook | None = None,
        target_path: str | None = None,
        policy: ForwardPolicy | None = None,
    ) -> Deferred[Forward]:
        """
        Ask the server to listen on the Unix-domain socket ``listen_path`` on its side
        (``ssh -R /path/on/server:host:hostport``; OpenSSH's
        ``streamlocal-forward@openssh.com``, which sshd allows unless
        ``AllowStreamLocalForwarding no``; the socket must not exist yet unless sshd has
        ``StreamLocalBindUnlink yes``). Connections go to ``host:host_port``, the local
        socket ``target_path``, or ``factory``'s protocols, as for
        :meth:`request_forwarding`, with a ``policy`` as there (but no allow or deny
        lists: a socket forward's opens carry no originator). Fails with
        :class:`~rtunnel.errors.ForwardingError` if the server refuses.
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
                    policy=policy,
                )
            )
        )

    def cancel_socket_forwarding(self, listen_path: str) -> Deferred[None]:
        """Ask the server to stop listening on the socket ``listen_path``."""
        return Deferred.fromCoroutine(self._cancel_forwarding(listen_path, 0, listen_path))

    def cancel_forwarding(self, bind_address: str, port: int) -> Deferred[None]:
        """
        Ask the server to stop listening. ``port`` is the listening port (the allocated one
        when 0 was requested). Connections already open stay open. While the tunnel waits
        to reconnect, the forward is forgotten at once and not asked for again (the
        server's listener went with the lost session).
        """
        return Deferred.fromCoroutine(self._cancel_forwarding(bind_address, port))

    async def _cancel_forwarding(
        self, bind_address: str, port: int, listen_path: str | None = None
    ) -> None:
        await self._table.cancel(bind_address, port, listen_path)

    def _forget_forward(self, forward: Forward) -> None:
        """Forget ``forward`` while not connected, without a word to the server (a tunnel
        group moving forwards off a lost server: rtunnel/group.py)."""
        self._table.forget(forward)

    def set_forward_policy(self, forward: Forward, policy: ForwardPolicy | None) -> None:
        """
        Give one of :attr:`forwards` another policy (issue #15; None: none), without asking
        the server anything: it decides the connections that open from now on. Channels
        open under the old policy count against a new cap, keep their bandwidth pacing,
        and have the new idle timeout; the refusal counts carry on.

        :raises ForwardingError: ``forward`` is not one of this tunnel's.
        :raises SpecError: not a policy, or allow/deny lists for a socket forward.
        """
        if not any(f is forward for f in self._table.forwards):
            raise ForwardingError("That forward is not one of this tunnel's.")
        check_policy(policy, forward.listen_path)
        forward.policy = policy
        if policy is None:
            forward.gate = None
        elif forward.gate is None:
            forward.gate = ForwardGate(policy, forward.refused)
        else:
            forward.gate.change(policy)
        if self._conn is not None:
            self._conn.forward_policy_changed(forward)

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
        conn, clean = self._conn, self._state is State.LOGGING_OFF
        self._statistics.session_ended(transport)
        self._transport = self._conn = None
        stop_watching(self._keepalive, self._idle_reaper)
        self._keepalive, self._idle_reaper = None, None
        if conn is None:
            return  # a failed logon: logon() or the reconnect loop reports it
        where = f"{self.host} port {self.port}"
        if not clean:
            self._note_error(failure.value)
        self._observers.connection_ended(where, cast(Exception, failure.value), clean)
        self._reconnector.ended(failure, clean, lambda: self._worked(conn))

    def _worked(self, conn: ForwardingConnection) -> bool:
        """Whether the connection that just ended showed that reconnecting works."""
        lasted = self._clock.seconds() - self._connected_at
        reset_after = self.options.staying_up.reconnect.reset_after
        return connection_worked(
            lasted, reset_after, conn.packets_received, self._table.working_from
        )

    def _emit_log(self, level: int, message: str) -> None:
        """A log message at the reference's ``level`` (1 info, 2 verbose, 3 debug)."""
        self._observers.log(level, message)

    def _error(self, error: RTunnelError) -> None:
        """An error that fails no call of the user's (the reference's Error event)."""
        self._note_error(error)
        self._observers.error(error, self._conn)


#: connection_state's words for the states that are not STOPPED.
_SHOWN_STATES = {
    State.LOGGING_ON: "connecting",
    State.LOGON_WAIT: "waiting",
    State.CONNECTED: "connected",
    State.WAITING: "waiting",
    State.RECONNECTING: "connecting",
    State.LOGGING_OFF: "stopped",
}


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

    def lost(self) -> None:
        self._tunnel._table.lost()

    def stopped(self, failure: Failure | None) -> None:
        if failure is not None:
            self._tunnel._note_error(failure.value)
        # The request_forwarding() calls still waiting fail with the reason, or for a logoff:
        answer = failure or Failure(
            ConnectionLostError("Logged off before the server agreed to the forward.")
        )
        self._tunnel._table.stop(failure, answer)


class _ForwardHost:
    """The tunnel's side of its ForwardTable."""

    def __init__(self, tunnel: ReverseTunnel) -> None:
        self._tunnel = tunnel

    def connection(self) -> ForwardingConnection | None:
        conn = self._tunnel._conn
        return conn if conn is not None and not conn.stopped else None

    def waiting_to_reconnect(self) -> bool:
        return self._tunnel._reconnector.waiting()

    def next_retry(self, retry: int, error: Exception, port: int) -> float | None:
        return self._tunnel._next_retry("tunnel", retry, error, port)

    def refused_again(self, error: ForwardingError) -> bool:
        tunnel = self._tunnel
        if not tunnel.options.staying_up.exit_on_forward_failure:
            return False
        tunnel._reconnector.fail_with(error)
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
