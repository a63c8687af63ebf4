"""
The public facade: :class:`ReverseTunnel` logs on to an SSH server, requests remote forwards
and keeps the table of live channels.

One logon is :class:`~rtunnel.client.reach.endpoint.SSHConnectionEndpoint`'s (its phases:
``CONNECTING -> SECURING -> AUTHENTICATING -> CONNECTED``); the life of the connection
around it (logon, reconnect, logoff) is the state machine of
:mod:`rtunnel._core.reconnect`, whose table holds every transition.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core import wire
from rtunnel._core.forwards import (
    ForwardEvent,
    allows,
    match_forward,
    match_socket_forward,
    next_state,
)
from rtunnel._core.policy import TokenBucket
from rtunnel._core.reconnect import Event, State
from rtunnel._core.text import printable
from rtunnel._model import (
    AcceptHook,
    ChannelInfo,
    ChannelOpenRequest,
    Forward,
    ForwardState,
    ReconnectAttempt,
    TunnelObserver,
    TunnelStatistics,
)
from rtunnel._reconnect import Reconnector
from rtunnel.client.auth.credentials import UserAuthSettings
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    ChannelRefused,
    ForwardingConnection,
)
from rtunnel.client.channels.forwarder import (
    abort_with_reset,
)
from rtunnel.client.channels.idle import IdleChannelReaper
from rtunnel.client.channels.keepalive import Keepalive
from rtunnel.client.channels.targets import target_for
from rtunnel.client.hostkeys.verify import HostKeyPolicy, HostKeyVerifier
from rtunnel.client.reach._proxycommand import expand_proxy_command
from rtunnel.client.reach.endpoint import (
    DirectRoute,
    JumpRoute,
    LogonHooks,
    LostHook,
    ProxyCommandRoute,
    ProxyRoute,
    SecureHook,
    ServerRoute,
    SSHConnectionEndpoint,
)
from rtunnel.client.transport._kex import shown_mac
from rtunnel.client.transport._sockopts import apply_tcp_options
from rtunnel.errors import (
    AlreadyConnectedError,
    AuthenticationError,
    ChannelError,
    ConnectError,
    ConnectionLostError,
    CredentialError,
    ForwardingError,
    ForwardRetryLimitError,
    HostKeyError,
    KeepaliveError,
    NotConnectedError,
    ProxyAuthenticationError,
    ReconnectLimitError,
    RTunnelError,
    SpecError,
)
from rtunnel.options import MAX_MAX_PACKET, TunnelOptions

if TYPE_CHECKING:
    from rtunnel.client.reach.proxy import Proxy
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
        auth = options.authentication
        self._auth_settings = UserAuthSettings(
            credentials=auth.auth,
            preferred=auth.preferred_authentications,
            try_all_methods=auth.try_all_auth_methods,
            password_prompt=auth.password_prompt,
            number_of_password_prompts=auth.number_of_password_prompts,
            password_change=auth.password_change,
            pubkey_accepted_algorithms=auth.pubkey_accepted_algorithms,
            host=host,
            reactor=reactor,
        )
        host_keys = options.host_keys
        self._host_key_verifier = HostKeyVerifier(
            self.host,
            self.port,
            host_keys.known_hosts,
            host_keys.host_key_policy,
            global_known_hosts=host_keys.global_known_hosts,
            accepted_keys=host_keys.accepted_host_keys,
            accepted_fingerprints=host_keys.accepted_fingerprints,
            accepted_ca_keys=host_keys.accepted_ca_keys,
            callback=host_keys.host_key_callback,
            fingerprint_hash=host_keys.fingerprint_hash,
            hash_known_hosts=host_keys.hash_known_hosts,
        )
        self._idle_reaper: IdleChannelReaper | None = None
        #: The server's SSH version string (the reference's ServerSSHVersionString), once
        #: the handshake is done.
        self.server_version: str | None = None
        self._transport: ClientTransport | None = None
        self._conn: ForwardingConnection | None = None
        self._forwards: list[Forward] = []
        # The connection's callbacks, kept off the public API.
        self._channel_host = _ConnectionHost(self)
        self._observers: list[TunnelObserver] = []
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
        # conn.packets_received once every forward was re-established after a reconnect;
        # any packet after that shows the reconnect worked (see _connection_ended).
        self._working_from: int | None = None
        # Counters for statistics(): sessions, and what ended sessions and closed
        # channels carried.
        self._sessions = 0
        self._past_key_exchanges = 0
        self._past_rekeys_by_us = 0
        self._past_rekeys_by_server = 0
        self._channels_opened = 0
        self._closed_bytes_sent = 0
        self._closed_bytes_received = 0
        # request_forwarding() calls waiting for a reconnect to establish their forward
        # (the connection was lost before the server answered, or was being made again
        # when they were called), by id(forward).
        self._first_answers: dict[int, Deferred[Forward]] = {}
        self._forward_retries: dict[int, tuple[int, IDelayedCall | None]] = {}
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

    def _move(self, event: Event) -> None:
        """Take the transition ``event`` leads to (IllegalTransition: a bug here)."""
        self._reconnector.move(event)

    @property
    def _reconnecting(self) -> bool:
        """A reconnect's logon is under way (the wait before it is _reconnect_call)."""
        return self._state is State.RECONNECTING

    @property
    def _reconnect_call(self) -> IDelayedCall | None:
        """The wait before a reconnect (WAITING)."""
        return self._reconnector.call

    @_reconnect_call.setter
    def _reconnect_call(self, call: IDelayedCall | None) -> None:
        self._reconnector.call = call

    async def _connect_and_authenticate(self) -> None:
        # Imported here: Conch's userauth imports the global reactor, and importing
        # rtunnel must not install one (the pytest plugin is loaded before the reactor
        # the user asked for is installed).
        from rtunnel.client.auth.userauth import load_credentials
        from rtunnel.client.transport.client_transport import ClientTransport

        options = self.options
        channels, algorithms, reach = options.channels, options.algorithms, options.reach
        loaded_keys, passwords = load_credentials(options.authentication.auth)

        def new_connection(
            on_started: Callable[[ForwardingConnection], None],
        ) -> ForwardingConnection:
            conn = ForwardingConnection(
                self._channel_host,
                window_size=channels.window_size,
                max_packet=channels.max_packet,
                max_channels=channels.max_channels,
                on_started=on_started,
                on_stopped=lambda _conn: None,
                clock=self._clock,
            )
            if channels.max_transfer_rate:
                conn.rate_limit = TokenBucket(channels.max_transfer_rate, self._clock.seconds())
            return conn

        def new_transport(
            conn: ForwardingConnection, on_lost: LostHook, on_secure: SecureHook
        ) -> ClientTransport:
            transport = ClientTransport(
                user=self.user,
                keys_to_try=loaded_keys,
                passwords=passwords,
                verify_host_key=self._host_key_verifier.verify,
                connection=conn,
                on_lost=on_lost,
                auth_options=self._auth_settings,
                ciphers=algorithms.ciphers,
                macs=algorithms.macs,
                kex_algorithms=algorithms.kex_algorithms,
                host_key_algorithms=self._host_key_verifier.host_key_algorithms(
                    algorithms.host_key_algorithms,
                    follow_known_hosts=algorithms.order_host_key_algorithms is not False,
                ),
                require_strict_kex=algorithms.require_strict_kex,
                rekey_bytes=algorithms.rekey_bytes,
                rekey_seconds=algorithms.rekey_seconds,
                clock=self._clock,
                compression=algorithms.compression,
                on_secure=on_secure,
                preferred_dh_group_bits=algorithms.preferred_dh_group_bits,
                client_version=algorithms.client_version,
                server_version_pattern=algorithms.server_version_pattern,
                on_server_version=self._server_version_seen,
            )
            transport.kex_timeout = algorithms.kex_timeout
            return transport

        def stream_connected(transport: ClientTransport, lost: Deferred[None]) -> None:
            self._transport, self._lost = transport, lost
            self._apply_tcp_options(transport)

        hooks = LogonHooks(
            new_connection=new_connection,
            new_transport=new_transport,
            status=self._status,
            connection_status=self._connection_status,
            stream_connected=stream_connected,
            secured=self._handshake_done,
            describe_loss=self._describe_loss,
            ended=self._connection_ended,
            timeout_text=self._timeout_text,
        )
        endpoint = SSHConnectionEndpoint(
            self._clock,
            self.host,
            self.port,
            self._route(),
            hooks,
            connect_timeout=reach.connect_timeout,
            auth_timeout=options.authentication.auth_timeout,
            bind=self._bind_address(),
        )
        try:
            session = await endpoint.connect()
        except defer.CancelledError:
            # logoff() was called meanwhile.
            raise self._abandoned() from None
        conn, transport = session.connection, session.transport
        self._conn = conn
        self._move(Event.LOGGED_ON)
        self._connected_at = self._clock.seconds()
        self._working_from = None
        self._keepalive = Keepalive(
            conn,
            self._clock,
            options.staying_up.keepalive_interval,
            options.staying_up.keepalive_count_max,
            lambda: self._keepalive_expired(transport),
        )
        self._keepalive.start()
        self._idle_reaper = IdleChannelReaper(
            conn,
            self._clock,
            channels.channel_idle_timeout,
            channels.absolute_timeout,
            self._channel_idle,
        )
        self._idle_reaper.start()
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
        jump.add_observer(_JumpProgress(self, hop.where))
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

    def _route(self) -> ServerRoute:
        """How this connect reaches the server: ProxyCommand, jump host, proxy or TCP."""
        reach = self.options.reach
        if reach.proxy_command is not None:
            command = expand_proxy_command(
                reach.proxy_command, host=self.host, port=self.port, user=self.user
            )
            return ProxyCommandRoute(cast(IReactorProcess, self._reactor), command)
        if reach.proxy_jump:
            return JumpRoute(self._jump_tunnel, reach.proxy_jump[-1], self.host, self.port)
        timeout = reach.connect_timeout or 30
        bind = self._bind_address()
        proxy = self._proxy_for_connection()
        if proxy is None:
            return DirectRoute(self._reactor, self.host, self.port, timeout, bind)
        return ProxyRoute(self._reactor, proxy, self.host, self.port, timeout, bind)

    def _bind_address(self) -> tuple[str, int] | None:
        reach = self.options.reach
        if reach.local_host is None and not reach.local_port:
            return None
        return (reach.local_host or "", reach.local_port)

    def _proxy_for_connection(self) -> Proxy | None:
        reach = self.options.reach
        if reach.proxy is None:
            return None
        from rtunnel.client.reach.proxy import Proxy, bypasses

        proxy: Proxy | None
        if reach.proxy == "auto":
            # FirewallAutoDetect: what the environment says now, as curl reads it.
            proxy = Proxy.from_environment(os.environ, self.host)
        else:
            proxy = reach.proxy
        if proxy is None or bypasses(reach.proxy_exceptions, self.host):
            return None
        return proxy

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

    def _apply_tcp_options(self, transport: ClientTransport) -> None:
        tcp = transport.transport
        try:
            apply_tcp_options(tcp.getHandle(), self.options.reach.tcp_options)  # type: ignore[union-attr]
        except (AttributeError, OSError) as e:
            # Not a TCP socket (a test transport), or the kernel refused an option: the
            # connection works without it.
            self._emit_log(2, f"Could not set TCP options on the SSH connection: {e}")

    def _handshake_done(self, transport: ClientTransport) -> None:
        version = self.server_version  # set on arrival, already made printable
        kex = printable(getattr(transport, "kexAlg", b""))
        host_key = printable(getattr(transport, "keyAlg", b""))
        ciphers = getattr(transport, "nextEncryptions", None)
        cipher = printable(getattr(ciphers, "outCipType", b""))
        mac = printable(shown_mac(ciphers.outCipType, ciphers.outMACType) if ciphers else b"")
        self._status(f"Server version: {version}")
        self._status(f"Keys exchanged: kex {kex}, host key {host_key}, cipher {cipher}, MAC {mac}.")
        self._connection_status(
            "ssh-handshake-complete",
            0,
            f"SSH handshake with {self.host} port {self.port} complete ({version}).",
        )

    def _timeout_text(self, phase: str, transport: ClientTransport) -> str:
        where = f"Connection to {self.host} port {self.port} timed out"
        if phase == "auth":
            timeout = self.options.authentication.auth_timeout
            return f"{where} during authentication (after {timeout} s)."
        if not getattr(transport, "otherVersionString", b""):
            why = "the server sent no SSH version banner"
        else:
            why = "the key exchange did not finish"
        timeout = self.options.reach.connect_timeout
        return f"{where} during the SSH handshake (after {timeout} s): {why}."

    def _channel_idle(self, channel: ForwardedChannel) -> None:
        channels = self.options.channels
        kind = "open" if channels.absolute_timeout else "idle"
        self._emit_log(
            1,
            f"Channel {channel.local_id} ({channel.info.origin_address} port "
            f"{channel.info.origin_port}) was {kind} for {channels.channel_idle_timeout} s: "
            "closing it.",
        )

    def _keepalive_expired(self, transport: ClientTransport) -> None:
        # OpenSSH's words (clientloop.c, server_alive_check).
        transport.error = KeepaliveError(f"Timeout, server {self.host} not responding.")
        tcp = transport.transport
        if tcp is not None:
            abort_with_reset(tcp)

    def _next_retry(
        self, kind: str, retry: int, error: Exception, remote_port: int | None = None
    ) -> float | None:
        """The delay before retry ``retry``, after telling observers; None to give up."""
        self._note_error(error)
        policy = self.options.staying_up.reconnect
        if policy.exhausted(retry):
            return None
        delay = policy.delay(retry)
        attempt = ReconnectAttempt(
            host=self.host,
            port=self.port,
            retry_count=retry,
            retries_remaining=policy.retries_remaining(retry),
            max_retry_count=policy.max_retries,
            retry_interval=delay,
            retry_type=kind,
            remote_port=remote_port,
            error=error,
        )
        # The one log line per attempt (the command prints the same text itself and
        # skips this event by its reconnect_attempt key).
        _log.info(attempt.LOG_FORMAT, reconnect_attempt=attempt, **attempt.fields())
        for observer in list(self._observers):
            try:
                observer.reconnect_attempt(attempt)
            except Exception:
                _log.failure("observer {observer!r} failed", observer=observer)
        return None if attempt.cancelled else delay

    def _abandoned(self) -> ConnectError:
        return _LogonAbandoned(
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
        delta = window_size - channels.window_size
        self._options = replace(self.options, channels=replace(channels, window_size=window_size))
        conn = self._conn
        if conn is None or delta == 0:
            return
        conn.window_size = window_size
        for channel in list(conn.channels.values()):
            if channel.confirmed and not channel.finished and not channel.close_received:
                channel.window_size += delta
                channel.local_window_left += delta
                conn.send_window_adjust(channel, delta)

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
        staying_up = self.options.staying_up
        self._cancel_retries()
        # Cancels a scheduled reconnect; a logon under way (or a reconnect's) is given up
        # at once, failing with ConnectError, and settles before we go on.
        await self._reconnector.stop()
        conn, transport, lost = self._conn, self._transport, self._lost
        if transport is None or lost is None:
            self._give_up(None)
            return
        if conn is not None and not conn.stopped:
            cancels = [
                self.cancel_socket_forwarding(f.listen_path)
                if f.listen_path is not None
                else self.cancel_forwarding(f.bind_address, f.port)
                for f in list(self._forwards)
                if f.state is ForwardState.ACTIVE
            ]
            await _settle(cancels, staying_up.logoff_timeout, self._clock)
            for channel in list(conn.channels.values()):
                if channel.confirmed:
                    channel.loseConnection()
            if staying_up.wait_for_channel_close:
                await _settle([conn.when_idle()], staying_up.logoff_timeout, self._clock)
            if not conn.stopped:
                # DISCONNECT by application; not Conch's sendDisconnect, which logs a
                # clean logoff as "Disconnecting with error".
                transport.announce_disconnect("logoff")
                tcp = transport.transport
                if not staying_up.wait_for_server_disconnect and tcp is not None:
                    tcp.loseConnection()
        if not lost.called:
            # DISCONNECT was sent, and the TCP close started unless the server is to close
            # it; past logoff_timeout we drop it ourselves.
            tcp = transport.transport
            fallback = (
                self._clock.callLater(staying_up.logoff_timeout, _abort_if_open, tcp)
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
            forwards_active=sum(f.state is ForwardState.ACTIVE for f in self._forwards),
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
                bind_address, port, host, host_port, factory, accept, dynamic, target_path
            )
        )

    async def _request_forwarding(
        self,
        bind_address: str,
        port: int,
        host: str | None,
        host_port: int | None,
        factory: IProtocolFactory | None,
        accept: AcceptHook | None,
        dynamic: bool = False,
        target_path: str | None = None,
        listen_path: str | None = None,
    ) -> Forward:
        if not 0 <= port <= 65535:
            raise SpecError(f"Bad listen port {port}: give 0-65535 (0: the server chooses).")
        if factory is not None and host is not None:
            raise SpecError("Give either a local host:port (forwarding) or a factory (event).")
        if dynamic and (factory is not None or host is not None or host_port is not None):
            raise SpecError("A dynamic forward takes no local host:port or factory.")
        if target_path is not None:
            if dynamic or factory is not None or host is not None or host_port is not None:
                raise SpecError("A Unix-socket target takes no local host:port or factory.")
            if not target_path:
                raise SpecError("The target socket path is empty.")
        elif factory is None and not dynamic:
            if not host or host_port is None:
                raise SpecError(
                    "Forwarding mode needs a local host and port; event mode needs a factory."
                )
            if not 0 < host_port <= 65535:
                raise SpecError(f"Bad local port {host_port}: give 1-65535.")
        conn = self._conn
        if conn is None or conn.stopped:
            if not self._waiting_to_reconnect():
                raise NotConnectedError("Not logged on: call logon() first.")
            conn = None
        forward = Forward(
            bind_address,
            port,
            host,
            host_port,
            factory,
            accept,
            dynamic=dynamic,
            target_path=target_path,
            listen_path=listen_path,
        )
        self._forwards.append(forward)
        if conn is not None:
            try:
                await self._establish(forward, conn)
                return forward
            except ConnectionLostError:
                # The connection went first. What happens next is decided when the
                # tunnel hears of the loss, just after this: a reconnect, which asks for
                # the forward again, or the end of the tunnel.
                pass
            except BaseException:
                # Refused (ForwardingError) or cancelled: a forward that never worked is
                # not kept for reconnects.
                self._drop_unanswered(forward, ForwardEvent.REFUSED)
                raise
        if forward not in self._forwards:
            # The tunnel has stopped already (it forgets its forwards when it does).
            raise ConnectionLostError(
                f"The connection to {self.host} was lost before the server agreed to the forward."
            )
        answer: Deferred[Forward] = Deferred()
        self._first_answers[id(forward)] = answer
        try:
            return await answer
        except defer.CancelledError:
            self._first_answers.pop(id(forward), None)
            self._drop_unanswered(forward, ForwardEvent.ABANDON)
            raise

    def _drop_unanswered(self, forward: Forward, event: ForwardEvent) -> None:
        """Forget a forward whose request was refused or given up by its caller."""
        if forward not in self._forwards:
            return  # settled already: cancelled, or the tunnel stopped and said so
        self._move_forward(forward, event)
        self._forwards.remove(forward)
        self._notify_forward(forward)

    @staticmethod
    def _move_forward(forward: Forward, event: ForwardEvent) -> None:
        """Move ``forward`` by ``event``, as the table in rtunnel/_core/forwards.py allows
        (else ForwardTransitionError: a bug, not a user mistake)."""
        forward.state = next_state(forward.state, event)

    def _waiting_to_reconnect(self) -> bool:
        """Between connections, with a reconnect scheduled or its logon under way."""
        return self._reconnect_call is not None or self._reconnecting

    def _answer_first(self, forward: Forward, failure: Failure | None = None) -> None:
        """The forward a request_forwarding() call waits for is active, or failed."""
        answer = self._first_answers.pop(id(forward), None)
        if answer is None:
            return
        if failure is None:
            answer.callback(forward)
        else:
            answer.errback(failure)

    async def _establish(self, forward: Forward, conn: ForwardingConnection) -> None:
        """Send ``tcpip-forward`` for ``forward``; mark it active or raise."""
        self._move_forward(forward, ForwardEvent.REQUEST)
        requested = forward.requested_port
        port = forward.port
        try:
            if forward.listen_path is not None:
                await conn.send_global_request(
                    b"streamlocal-forward@openssh.com",
                    wire.encode_string(forward.listen_path.encode("utf-8")),
                )
            else:
                reply = await conn.send_global_request(
                    b"tcpip-forward", wire.encode_tcpip_forward(forward.bind_address, requested)
                )
                port = wire.decode_tcpip_forward_reply(requested, reply)
        except (ForwardingError, wire.WireError) as e:
            # OpenSSH's words (ssh.c), so operators recognise it.
            what = (
                f"path {forward.listen_path}"
                if forward.listen_path is not None
                else f"port {requested}"
            )
            raise ForwardingError(
                f"remote port forwarding failed for listen {what}"
                + ("" if isinstance(e, ForwardingError) else f": {e}")
            ) from None
        if not allows(forward.state, ForwardEvent.AGREED):
            # Cancelled while the request was on its way (a re-request after a
            # reconnect): the cancel won, and the late agreement changes nothing.
            return
        forward.port = port
        self._move_forward(forward, ForwardEvent.AGREED)
        self._emit_log(
            2,
            f"Remote forward of {forward.bind_address or '*'} port {forward.port} active "
            f"(to {forward.describe_target()}).",
        )
        self._notify_forward(forward)
        self._answer_first(forward)

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
                listen_path,
                0,
                host,
                host_port,
                factory,
                accept,
                False,
                target_path,
                listen_path=listen_path,
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
        conn = self._require_conn()
        where = (
            f"socket {listen_path}" if listen_path is not None else f"{bind_address!r} port {port}"
        )
        forward = next(
            (
                f
                for f in self._forwards
                if (
                    f.listen_path == listen_path
                    if listen_path is not None
                    else f.listen_path is None
                    and f.bind_address == bind_address
                    and f.port == port
                    and f.port
                )
                and allows(f.state, ForwardEvent.CANCEL)
            ),
            None,
        )
        if forward is None:
            raise ForwardingError(f"No active forward on {where}.")
        # Refuse new opens at once: opens that race the cancel are refused (B4).
        self._move_forward(forward, ForwardEvent.CANCEL)
        self._forwards.remove(forward)
        try:
            if listen_path is not None:
                await conn.send_global_request(
                    b"cancel-streamlocal-forward@openssh.com",
                    wire.encode_string(listen_path.encode("utf-8")),
                )
            else:
                await conn.send_global_request(
                    b"cancel-tcpip-forward", wire.encode_tcpip_forward(bind_address, port)
                )
        except ForwardingError:
            raise ForwardingError(f"The server refused to cancel the forward on {where}.") from None
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
        if self._state is State.LOGGING_OFF:
            return ConnectionLostError("Logged off.")
        if isinstance(reason.value, RTunnelError):
            # Said by the transport underneath (a ProxyCommand that exited).
            return reason.value
        return ConnectionLostError(f"Connection to {self.host} closed by remote host.")

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
            self._cancel_retries()
            for forward in self._forwards:
                self._move_forward(forward, ForwardEvent.LOST)
                self._notify_forward(forward)
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
        mark = self._working_from
        return conn is not None and mark is not None and conn.packets_received > mark

    def _note_if_working(self) -> None:
        """Every forward is active on this connection: from now on, any packet from the
        server shows that the reconnect worked."""
        conn = self._conn
        if (
            conn is not None
            and self._working_from is None
            and all(f.state is ForwardState.ACTIVE for f in self._forwards)
        ):
            self._working_from = conn.packets_received

    def _give_up(self, failure: Failure | None) -> None:
        """The tunnel stops for good: tell the forwards and when_disconnected() waiters."""
        if self._fatal_error is not None:
            failure, self._fatal_error = Failure(self._fatal_error), None
        if failure is not None:
            self._note_error(failure.value)
            self._reconnector.failed = True
        self._cancel_retries()
        self._reconnector.retry = 0
        stopped = failure or Failure(
            ConnectionLostError("Logged off before the server agreed to the forward.")
        )
        stop = ForwardEvent.STOPPED if failure is None else ForwardEvent.STOPPED_FAILING
        for forward in self._forwards:
            if allows(forward.state, stop):  # not one already final
                self._move_forward(forward, stop)
            self._notify_forward(forward)
            self._answer_first(forward, stopped)
        self._forwards.clear()
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for d in waiters:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    async def _reestablish(self) -> None:
        """A reconnect logged on: ask for every forward the lost connection had."""
        for forward in list(self._forwards):
            if forward.state is ForwardState.PENDING:
                await self._retry_forward(forward)
        self._note_if_working()

    async def _retry_forward(self, forward: Forward) -> None:
        conn = self._conn
        if conn is None or conn.stopped or forward not in self._forwards:
            return
        try:
            await self._establish(forward, conn)
        except ForwardingError as e:
            if forward not in self._forwards:
                return  # cancelled meanwhile: the refusal changes nothing
            if self.options.staying_up.exit_on_forward_failure:
                self._fatal_error = e
                self.logoff()
            else:
                self._schedule_forward_retry(forward, e)
            return
        except ConnectionLostError:
            return  # _connection_ended takes it from here
        self._forward_retries.pop(id(forward), None)
        self._note_if_working()

    def _schedule_forward_retry(self, forward: Forward, error: ForwardingError) -> None:
        # A server that still holds the port for a stale session of ours refuses it until
        # it notices (RELIABILITY.md A9); retry this forward alone on its own schedule.
        count = self._forward_retries.get(id(forward), (0, None))[0] + 1
        delay = self._next_retry("tunnel", count, error, forward.requested_port)
        if delay is None:
            self._move_forward(forward, ForwardEvent.REFUSED)
            self._forwards.remove(forward)
            self._forward_retries.pop(id(forward), None)
            limit = ForwardRetryLimitError(
                f"Gave up re-establishing the forward of listen port "
                f"{forward.requested_port} after {count - 1} retries: {error}"
            )
            self._error(limit)
            self._notify_forward(forward)
            self._answer_first(forward, Failure(limit))
            return
        self._move_forward(forward, ForwardEvent.RETRY_LATER)
        self._notify_forward(forward)

        def retry() -> None:
            d = Deferred.fromCoroutine(self._retry_forward(forward))
            d.addErrback(lambda f: _log.failure("retrying a forward failed unexpectedly", f))

        self._forward_retries[id(forward)] = (count, self._clock.callLater(delay, retry))

    def _cancel_retries(self) -> None:
        for _count, call in self._forward_retries.values():
            if call is not None and call.active():
                call.cancel()
        self._forward_retries.clear()

    def _emit_log(self, level: int, message: str) -> None:
        """A log message at the reference's ``level`` (1 info, 2 verbose, 3 debug)."""
        if level > self.options.log_level:
            return
        if level <= 1:
            _log.info("{message}", message=message)
        else:
            _log.debug("{message}", message=message)
        self._notify("log", level, message)

    def _status(self, message: str) -> None:
        """Progress of the SSH connection (the reference's SSHStatus), also logged."""
        self._notify("ssh_status", message)
        self._emit_log(1, message)

    def _connection_status(self, event: str, code: int, description: str) -> None:
        self._notify("connection_status", event, code, description)

    def _error(self, error: RTunnelError) -> None:
        """An error that fails no call of the user's (the reference's Error event)."""
        self._note_error(error)
        conn = self._conn
        if isinstance(error, ChannelError) and conn is not None:
            # One per channel, which remote clients open at will: rate-limited (D18).
            conn.warn_limited("channel-error", str(error), LogLevel.error)
        else:
            _log.error("{error}", error=error)
        self._notify("error", error)

    def _notify(self, event: str, *args: object) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                _log.failure(
                    "observer {observer!r} failed on {event}", observer=observer, event=event
                )


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
        return match_socket_forward(self._tunnel._forwards, path)

    def find_forward(self, address: str, port: int) -> Forward | None:
        """The active forward an inbound open names (see ARCHITECTURE.md step 2)."""
        return match_forward(self._tunnel._forwards, address, port)

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
        return _retryable(error)

    def abandoned(self) -> Exception:
        return self._tunnel._abandoned()

    def reconnected(self) -> Coroutine[Any, Any, None]:
        return self._tunnel._reestablish()

    def give_up(self, failure: Failure) -> None:
        self._tunnel._give_up(failure)


class _JumpProgress(TunnelObserver):
    """
    Passes a jump host's progress on to the observers of the tunnel it carries (its
    SSHStatus and connection events, named as the jump host's), so ``-v`` and observers
    see the whole way; twisted.logger already has the jump tunnel's own log lines.
    """

    def __init__(self, outer: ReverseTunnel, where: str) -> None:
        self._outer = outer
        self._where = where

    @override
    def ssh_status(self, message: str) -> None:
        self._outer._notify("ssh_status", f"{self._where}: {message}")

    @override
    def connection_status(self, event: str, status_code: int, description: str) -> None:
        self._outer._notify(
            "connection_status", f"jump-{event}", status_code, f"{self._where}: {description}"
        )


class _LogonAbandoned(ConnectError):
    """A logon given up because logoff() was called, or its Deferred cancelled."""


def _retryable(error: BaseException) -> bool:
    """
    Network faults, timeouts and server restarts are retried; refusals, and a logon the
    user gave up on, are final.
    """
    return isinstance(error, RTunnelError) and not isinstance(
        error,
        (
            _LogonAbandoned,
            HostKeyError,
            AuthenticationError,
            ProxyAuthenticationError,
            CredentialError,
            SpecError,
            AlreadyConnectedError,
            ReconnectLimitError,
        ),
    )


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "root")


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
