"""
One SSH session of a tunnel, from the options: what a logon builds (the connection
service and the SSH transport, :class:`SessionParts`) and how a logoff closes it
(:func:`close_session`: cancel the forwards, close the channels, DISCONNECT, wait for the
close within ``logoff_timeout``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from rtunnel._core.policy import TokenBucket
from rtunnel.client.auth.credentials import UserAuthSettings
from rtunnel.client.channels.connection import ChannelHost, ForwardingConnection
from rtunnel.client.hostkeys.verify import HostKeyVerifier
from rtunnel.client.reach.endpoint import LostHook, SecureHook
from rtunnel.options import StayingUpOptions, TunnelOptions

if TYPE_CHECKING:
    from rtunnel.client.transport.client_transport import ClientTransport

__all__ = ["SessionParts", "close_session"]


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
