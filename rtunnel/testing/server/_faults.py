"""
The test server's fault controls: the ways an :class:`SSHTestServer` misbehaves on
demand, as a broken, slow or hostile sshd would (RELIABILITY.md). Each switch is read by
the protocol piece it affects: the transport holds a frozen connection's packets, the
user-auth service refuses or sends a banner, the connection service delays replies and
refuses forwards, held ports keep a dead session's listeners.
"""

from __future__ import annotations

import struct

from twisted.conch import error as conch_error
from twisted.conch.ssh import common, transport
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTCP
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel.testing._waiting import DEFAULT_TIMEOUT, Waiters
from rtunnel.testing.server._forwarding import _MAX_PACKET, _WINDOW, _ForwardingConnection
from rtunnel.testing.server._ports import _Forward, _Hold, _StaleFactory, listen_addresses
from rtunnel.testing.server._transport import _ServerTransport


class FaultControls:
    """
    The fault and hostile-server controls of :class:`SSHTestServer` (a mixin: the server
    keeps the connections and the reactor they act on).
    """

    # Kept by the server.
    _reactor: IReactorTCP
    _transports: set[_ServerTransport]
    _waiters: Waiters

    def __init__(self) -> None:
        self._accepted = 0
        self._refuse_auth = False
        self._refuse_all_forwards = False
        self._refused_ports: set[int] = set()
        self._holds: dict[int, _Hold] = {}
        self._global_request_delay = 0.0
        self._channel_open_delay = 0.0
        self._banner: bytes | None = None
        self._version: bytes | None = None

    def drop_connections(
        self,
        description: str | bytes = b"rtunnel test server dropped you",
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Deferred[None]:
        """
        Disconnect every SSH client (``SSH_MSG_DISCONNECT``, by application) while still
        accepting new ones: the server-side failure a reconnecting client must survive.
        Their forwards close with them. Frozen connections are thawed first.

        :param description: the DISCONNECT message's text, sent as it is (str as UTF-8).
        :param timeout: seconds to wait for the connections to go; None: no limit.
        :return: a Deferred that fires once the connections are gone, or fails with
            :class:`~rtunnel.testing.WaitTimeoutError` after ``timeout`` seconds.
        """
        text = description.encode("utf-8") if isinstance(description, str) else description
        for ssh_transport in list(self._transports):
            ssh_transport.thaw()
            ssh_transport.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, text)
        return self._waiters.when(
            lambda: not self._transports,
            timeout=timeout,
            what="SSHTestServer.drop_connections()",
            seen=lambda: f"{len(self._transports)} SSH connections still live",
        )

    # Fault controls --------------------------------------------------------------------

    def freeze(self) -> None:
        """
        Freeze every live SSH connection, as a stopped (``SIGSTOP``) sshd session: it stops
        reading, and whatever it would send is held, while the TCP connection stays open.
        Keepalives go unanswered, so a client with keepalives notices. Connections made
        later are not frozen.

        A frozen connection does not notice that its client went away until it is thawed.
        """
        for ssh_transport in self._transports:
            ssh_transport.freeze()

    def thaw(self) -> None:
        """Undo :meth:`freeze`: held packets are sent, in order, and reading resumes."""
        for ssh_transport in list(self._transports):
            ssh_transport.thaw()

    def refuse_authentication(self, refuse: bool = True) -> None:
        """
        Refuse every authentication request, correct or not (``SSH_MSG_USERAUTH_FAILURE``),
        as sshd does for a locked account; or, with ``refuse=False``, stop refusing.
        Requests are still listed in :attr:`auth_attempts`.

        :param refuse: whether to refuse.
        """
        self._refuse_auth = refuse

    def refuse_forwards(self, port: int | None = None) -> None:
        """
        Answer ``tcpip-forward`` requests with ``SSH_MSG_REQUEST_FAILURE``: all of them, or
        those that ask for ``port`` (matched on the requested port, so ``0`` refuses the
        requests for an allocated port). Forwards already listening are not touched.

        :param port: the requested port to refuse, or ``None`` for every request.
        """
        if port is None:
            self._refuse_all_forwards = True
        else:
            self._refused_ports.add(port)

    def allow_forwards(self, port: int | None = None) -> None:
        """
        Undo :meth:`refuse_forwards`: for ``port``, or (``None``) entirely.

        :param port: the requested port to allow again, or ``None`` for all.
        """
        if port is None:
            self._refuse_all_forwards = False
            self._refused_ports.clear()
        else:
            self._refused_ports.discard(port)

    def hold_port(self, port: int, bind_address: str = "127.0.0.1") -> None:
        """
        Hold ``port`` as a stale session would: sshd keeps a dead session's forward
        listening until it notices the session is gone, so a new session's
        ``tcpip-forward`` for the same port is refused meanwhile. If a forward listens on
        ``port`` now, its listener outlives its connection (dropped, or cancelled);
        otherwise the port is bound now. Connections accepted on a held port are left
        hanging. Held until :meth:`release_port` (or :meth:`stop`).

        :param port: the port.
        :param bind_address: the interface to bind, when the port is bound now.
        :raises twisted.internet.error.CannotListenError: the port could not be bound.
        """
        if port in self._holds:
            return
        hold = _Hold(port)
        for conn in self._ssh_connections():
            for forward in conn.forwards.values():
                if forward.port == port:
                    hold.forward = forward
        if hold.forward is None:
            addresses = listen_addresses(bind_address) or [bind_address]
            hold.ports.append(
                self._reactor.listenTCP(port, _StaleFactory(hold), interface=addresses[0])
            )
        self._holds[port] = hold

    def release_port(self, port: int) -> Deferred[None]:
        """
        Stop holding a port (:meth:`hold_port`): its held listener closes, and connections
        accepted on it are aborted. A live forward on it is not touched.

        :param port: the port.
        :return: a Deferred that fires once the listener is closed.
        """
        hold = self._holds.pop(port, None)
        if hold is None:
            return defer.succeed(None)
        return hold.release()

    @property
    def held_ports(self) -> list[int]:
        """The ports held with :meth:`hold_port`, in no particular order."""
        return list(self._holds)

    def delay_replies(self, global_requests: float = 0.0, channel_opens: float = 0.0) -> None:
        """
        Answer slowly, as a loaded server: every global request (``tcpip-forward``,
        ``cancel-tcpip-forward``, keepalives) is handled ``global_requests`` seconds after
        it arrives, in order; the answer to a channel open the client sends (always a
        refusal here) comes ``channel_opens`` seconds late. 0 answers at once again.

        :param global_requests: seconds.
        :param channel_opens: seconds.
        """
        if global_requests < 0 or channel_opens < 0:
            raise ValueError("delays must not be negative")
        self._global_request_delay = global_requests
        self._channel_open_delay = channel_opens

    # A hostile server (RELIABILITY.md D17, D18): text a client must escape, and channels
    # nobody asked for.

    def set_banner(self, banner: str | bytes | None) -> None:
        """
        Send ``banner`` (``SSH_MSG_USERAUTH_BANNER``, RFC 4252 section 5.4) to each client
        that starts authenticating from now on, byte for byte: control characters,
        terminal escapes and all (str as UTF-8). None sends none again.

        :param banner: the text.
        """
        self._banner = banner.encode("utf-8") if isinstance(banner, str) else banner

    def set_version(self, version: str | bytes | None) -> None:
        """
        Identify as ``version`` (the whole line, e.g. ``"SSH-2.0-Evil\x1b[31m"``, without
        the CR LF) to clients that connect from now on, byte for byte. None restores the
        default.

        :param version: the version line.
        """
        self._version = version.encode("utf-8") if isinstance(version, str) else version

    def send_debug(self, message: str | bytes, always_display: bool = True) -> None:
        """
        Send ``SSH_MSG_DEBUG`` (RFC 4253 section 11.3) with ``message``, byte for byte, to
        every connected client.

        :param message: the text.
        :param always_display: the message's flag.
        """
        text = message.encode("utf-8") if isinstance(message, str) else message
        for ssh_transport in list(self._transports):
            ssh_transport.sendDebug(text, always_display)

    def open_unrequested(
        self,
        connected_address: str | bytes,
        connected_port: int,
        *,
        origin_address: str | bytes = "127.0.0.1",
        origin_port: int = 0,
        count: int = 1,
        channel_type: str = "forwarded-tcpip",
    ) -> Deferred[list[str | None]]:
        """
        Open ``count`` channels to every authenticated client that nobody connected for:
        ``forwarded-tcpip`` naming any address and port (whether the client asked for
        it or not; bytes sent as they are), or another ``channel_type`` with the same
        data. A confirmed channel is closed again at once.

        :param connected_address: the address the open names as connected.
        :param connected_port: the port.
        :param origin_address: the originator address.
        :param origin_port: the originator port.
        :param count: channels per client.
        :param channel_type: the channel type.
        :return: a Deferred firing with the client's answers, in order: None for each
            confirmation, the description of each ``CHANNEL_OPEN_FAILURE``.
        """

        def raw(value: str | bytes) -> bytes:
            return value.encode("utf-8") if isinstance(value, str) else value

        data = (
            common.NS(raw(connected_address))
            + struct.pack(">L", connected_port)
            + common.NS(raw(origin_address))
            + struct.pack(">L", origin_port)
        )
        answers: list[Deferred[str | None]] = []
        for conn in self._ssh_connections():
            for _ in range(count):
                channel = _ProbeChannel(channel_type.encode("ascii"), conn)
                conn.openChannel(channel, data)
                answers.append(channel.answered)
        return defer.gatherResults(answers)

    # Called by the protocol pieces and the server ----------------------------------------

    def _ssh_connections(self) -> list[_ForwardingConnection]:
        return [
            service
            for t in self._transports
            if isinstance(service := t.service, _ForwardingConnection)
            and hasattr(service, "forwards")
        ]

    def _forward_refused(self, port: int) -> bool:
        return self._refuse_all_forwards or port in self._refused_ports

    def _keep_if_held(self, forward: _Forward) -> bool:
        """
        A forward was cancelled or lost its connection: keep its listeners if its port is
        held (:meth:`hold_port`).

        :return: whether they were kept.
        """
        hold = self._holds.get(forward.port)
        return hold is not None and hold.take_over(forward)


class _ProbeChannel(SSHChannel):
    """
    A channel the server opens on its own (SSHTestServer.open_unrequested): it records the
    client's answer and closes again if confirmed.
    """

    def __init__(self, name: bytes, conn: _ForwardingConnection) -> None:
        super().__init__(localWindow=_WINDOW, localMaxPacket=_MAX_PACKET, conn=conn)
        self.name = name
        self.answered: Deferred[str | None] = Deferred()

    @override
    def channelOpen(self, specificData: bytes) -> None:
        self.loseConnection()
        if not self.answered.called:
            self.answered.callback(None)

    @override
    def openFailed(self, reason: Failure) -> None:
        if not self.answered.called:
            value = reason.value
            text = value.args[0] if isinstance(value, conch_error.ConchError) else value
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            self.answered.callback(str(text))
