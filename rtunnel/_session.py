"""
One SSH session of a tunnel, from the options: what a logon builds (the connection
service, the SSH transport and the endpoint with its hooks wired to the tunnel,
:class:`SessionParts`) and how a logoff closes it (:func:`close_session`: cancel the
forwards, close the channels, DISCONNECT, wait for the close within ``logoff_timeout``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from rtunnel._core.policy import TokenBucket
from rtunnel._observers import Observers
from rtunnel.client.auth.credentials import UserAuthSettings
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import ChannelHost, ForwardingConnection
from rtunnel.client.channels.forwarder import abort_with_reset
from rtunnel.client.channels.idle import IdleChannelReaper
from rtunnel.client.channels.keepalive import Keepalive
from rtunnel.client.hostkeys.verify import HostKeyVerifier
from rtunnel.client.reach._messages import ServerMessages
from rtunnel.client.reach.endpoint import (
    LogonHooks,
    LostHook,
    SecureHook,
    SSHConnectionEndpoint,
    bind_address,
    choose_route,
)
from rtunnel.client.transport._sockopts import apply_tcp_options
from rtunnel.errors import KeepaliveError, RTunnelError
from rtunnel.options import StayingUpOptions, TunnelOptions

if TYPE_CHECKING:
    from rtunnel.client.reach.jump import JumpTunnel
    from rtunnel.client.transport.client_transport import ClientTransport

__all__ = ["SessionParts", "TunnelSide", "close_session", "local_address", "stop_watching"]


@dataclass(frozen=True)
class TunnelSide:
    """
    What a logon's hooks tell and ask the tunnel.

    :ivar observers: hear the progress lines and connection events.
    :ivar server_version: the server's version string, once seen.
    :ivar logged_on: whether the connection that ends was logged on.
    :ivar logging_off: whether a logoff is under way.
    :ivar stream_connected: the route connected this transport (``lost`` fires at its end).
    :ivar ended: the connection ended (after a logon or during one).
    """

    observers: Observers
    server_version: Callable[[], str | None]
    logged_on: Callable[[], bool]
    logging_off: Callable[[], bool]
    stream_connected: Callable[[ClientTransport, Deferred[None]], None]
    ended: Callable[[ClientTransport, Failure], None]


class SessionParts:
    """
    Builds the connection service and the SSH transport of one logon (the endpoint's
    ``new_connection`` and ``new_transport`` hooks). Key files are loaded when this is
    made, before connecting, so that a bad one is a ``CredentialError`` up front.
    """

    def __init__(
        self,
        options: TunnelOptions,
        user: str,
        clock: IReactorTime,
        channel_host: ChannelHost,
        verifier: HostKeyVerifier,
        auth_settings: UserAuthSettings,
        on_server_version: Callable[[str], None],
        log: Callable[[int, str], None],
    ) -> None:
        # Imported here: Conch's userauth imports the global reactor, and importing
        # rtunnel must not install one (the pytest plugin is loaded before the reactor
        # the user asked for is installed).
        from rtunnel.client.auth.userauth import load_credentials

        self._options = options
        self._user = user
        self._clock = clock
        self._channel_host = channel_host
        self._verifier = verifier
        self._auth_settings = auth_settings
        self._on_server_version = on_server_version
        self._log = log
        self._keys, self._passwords = load_credentials(options.authentication.auth)

    def new_connection(
        self, on_started: Callable[[ForwardingConnection], None]
    ) -> ForwardingConnection:
        channels = self._options.channels
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
        self, conn: ForwardingConnection, on_lost: LostHook, on_secure: SecureHook
    ) -> ClientTransport:
        from rtunnel.client.transport.client_transport import ClientTransport

        algorithms = self._options.algorithms
        transport = ClientTransport(
            user=self._user,
            keys_to_try=self._keys,
            passwords=self._passwords,
            verify_host_key=self._verifier.verify,
            connection=conn,
            on_lost=on_lost,
            auth_options=self._auth_settings,
            ciphers=algorithms.ciphers,
            macs=algorithms.macs,
            kex_algorithms=algorithms.kex_algorithms,
            host_key_algorithms=self._verifier.host_key_algorithms(
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
            on_server_version=self._on_server_version,
        )
        transport.kex_timeout = algorithms.kex_timeout
        return transport

    def endpoint(
        self,
        reactor: IReactorTCP,
        host: str,
        port: int,
        side: TunnelSide,
        jump_tunnel: Callable[[], JumpTunnel],
    ) -> SSHConnectionEndpoint:
        """The endpoint of this logon to ``host:port``, over the route the reach options
        pick now, its hooks wired to the tunnel's ``side``."""
        reach = self._options.reach
        timeout = self._options.authentication.auth_timeout
        messages = ServerMessages(host, port, reach.connect_timeout, timeout)
        observers = side.observers

        def stream_connected(transport: ClientTransport, lost: Deferred[None]) -> None:
            side.stream_connected(transport, lost)
            self.apply_tcp_options(transport)

        def secured(transport: ClientTransport) -> None:
            for line in messages.handshake_done(transport, side.server_version()):
                observers.status(line)
            event = messages.handshake_event(side.server_version())
            observers.connection_status("ssh-handshake-complete", 0, event)

        def describe_loss(transport: ClientTransport, reason: Failure) -> RTunnelError:
            return messages.loss(
                transport, reason, logged_on=side.logged_on(), logging_off=side.logging_off()
            )

        hooks = LogonHooks(
            new_connection=self.new_connection,
            new_transport=self.new_transport,
            status=observers.status,
            connection_status=observers.connection_status,
            stream_connected=stream_connected,
            secured=secured,
            describe_loss=describe_loss,
            ended=side.ended,
            timeout_text=messages.timeout,
        )
        route = choose_route(reactor, host, port, self._user, reach, jump_tunnel)
        return SSHConnectionEndpoint(
            self._clock,
            host,
            port,
            route,
            hooks,
            connect_timeout=reach.connect_timeout,
            auth_timeout=timeout,
            bind=bind_address(reach),
        )

    def apply_tcp_options(self, transport: ClientTransport) -> None:
        """Set the socket options (``TCP_NODELAY``, keep-alive) once connected."""
        tcp = transport.transport
        try:
            apply_tcp_options(tcp.getHandle(), self._options.reach.tcp_options)  # type: ignore[union-attr]
        except (AttributeError, OSError) as e:
            # Not a TCP socket (a test transport), or the kernel refused an option: the
            # connection works without it.
            self._log(2, f"Could not set TCP options on the SSH connection: {e}")

    def watch(
        self, conn: ForwardingConnection, transport: ClientTransport, host: str
    ) -> tuple[Keepalive, IdleChannelReaper]:
        """Start the keepalives and the idle-channel reaper of a logged-on session."""
        staying_up, channels = self._options.staying_up, self._options.channels

        def expired() -> None:
            # OpenSSH's words (clientloop.c, server_alive_check).
            transport.error = KeepaliveError(f"Timeout, server {host} not responding.")
            tcp = transport.transport
            if tcp is not None:
                abort_with_reset(tcp)

        def idle(channel: ForwardedChannel) -> None:
            kind = "open" if channels.absolute_timeout else "idle"
            self._log(
                1,
                f"Channel {channel.local_id} ({channel.info.origin_address} port "
                f"{channel.info.origin_port}) was {kind} for "
                f"{channels.channel_idle_timeout} s: closing it.",
            )

        keepalive = Keepalive(
            conn,
            self._clock,
            staying_up.keepalive_interval,
            staying_up.keepalive_count_max,
            expired,
        )
        keepalive.start()
        reaper = IdleChannelReaper(
            conn,
            self._clock,
            channels.channel_idle_timeout,
            channels.absolute_timeout,
            idle,
        )
        reaper.start()
        return keepalive, reaper


def stop_watching(keepalive: Keepalive | None, reaper: IdleChannelReaper | None) -> None:
    """Stop what :meth:`SessionParts.watch` started, once the session has ended."""
    if keepalive is not None:
        keepalive.stop()
    if reaper is not None:
        reaper.stop()


def local_address(
    transport: ClientTransport | None, *, through_jump: bool
) -> tuple[str, int] | None:
    """The local address and port of the session's TCP connection (to the server or the
    proxy); None between sessions, over a jump host, or not over TCP."""
    tcp = getattr(transport, "transport", None)
    if through_jump:
        return None  # the jump host's socket, not ours
    try:
        host = tcp.getHost()  # type: ignore[union-attr]
    except AttributeError:
        return None
    return (host.host, host.port) if hasattr(host, "port") else None


def auth_settings(options: TunnelOptions, host: str, reactor: object) -> UserAuthSettings:
    """How the tunnel authenticates, from its options (one per tunnel)."""
    auth = options.authentication
    return UserAuthSettings(
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


def host_key_verifier(options: TunnelOptions, host: str, port: int) -> HostKeyVerifier:
    """The tunnel's host-key check, from its options (one per tunnel: every key exchange
    is checked against the first key)."""
    host_keys = options.host_keys
    return HostKeyVerifier(
        host,
        port,
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


async def close_session(
    conn: ForwardingConnection | None,
    transport: ClientTransport,
    lost: Deferred[None],
    cancel_forwards: Callable[[], Sequence[Deferred[None]]],
    staying_up: StayingUpOptions,
    clock: IReactorTime,
) -> None:
    """
    A logoff's steps on a live session: cancel the active forwards (``cancel_forwards``),
    close the channels (and wait for them with ``wait_for_channel_close``), send
    DISCONNECT, close the TCP connection unless the server is to, and past
    ``logoff_timeout`` drop it; returns once the session has ended.
    """
    if conn is not None and not conn.stopped:
        await _settle(cancel_forwards(), staying_up.logoff_timeout, clock)
        for channel in list(conn.channels.values()):
            if channel.confirmed:
                channel.loseConnection()
        if staying_up.wait_for_channel_close:
            await _settle([conn.when_idle()], staying_up.logoff_timeout, clock)
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
            clock.callLater(staying_up.logoff_timeout, _abort_if_open, tcp)
            if tcp is not None
            else None
        )
        await lost
        if fallback is not None and fallback.active():
            fallback.cancel()


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
