"""
The plain records rtunnel hands to applications: forwards, channels, open requests, and the
observer interface for the reference's channel events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory

from rtunnel._core.forward_policy import ForwardGate, ForwardPolicy

# The states and their transitions are pure data, in the core (issue #16).
from rtunnel._core.forwards import ForwardState

__all__ = [
    "AcceptHook",
    "ChannelInfo",
    "ChannelOpenRequest",
    "Forward",
    "ForwardState",
    "ReconnectAttempt",
    "TunnelObserver",
    "TunnelStatistics",
]


@dataclass(frozen=True)
class ChannelOpenRequest:
    """
    What the server told us about an inbound connection, shown to an accept hook (the
    reference's SSHChannelOpenRequest event).

    :ivar channel_id: the id this channel will have if accepted.
    :ivar service: the channel type, always ``"forwarded-tcpip"`` here.
    :ivar connected_address: the address the server says the connection arrived on.
    :ivar connected_port: the port it arrived on.
    :ivar origin_address: the address of the client that connected to the server.
    :ivar origin_port: that client's port.
    """

    channel_id: int
    service: str
    connected_address: str
    connected_port: int
    origin_address: str
    origin_port: int


#: An accept hook answers ``True`` to accept an inbound connection and ``False`` to refuse
#: it, directly or later through a Deferred or coroutine.
AcceptHook = Callable[[ChannelOpenRequest], "bool | Deferred[bool] | Awaitable[bool]"]


@dataclass
class Forward:
    """
    One remote forward requested on the server.

    :ivar bind_address: the address string sent in ``tcpip-forward`` (and in cancel).
    :ivar requested_port: the port asked for; 0 lets the server choose.
    :ivar port: the port the server listens on (the allocated one when 0 was asked for),
        or 0 while the request is pending.
    :ivar host: in forwarding mode, the local host each connection is spliced to.
    :ivar host_port: in forwarding mode, the local port.
    :ivar factory: in event mode, the factory that builds a protocol for each connection.
    :ivar accept: an optional hook that sees each open request first.
    :ivar state: pending, active, failed or cancelled.
    :ivar dynamic: a remote dynamic forward (``ssh -R [bind_address:]port``): each
        connection speaks SOCKS4/4A/5 and says where to connect from this machine.
    :ivar target_path: in forwarding mode, a local Unix-domain socket each connection is
        spliced to instead of ``host:host_port`` (``ssh -R port:/path/to/socket``).
    :ivar listen_path: a Unix-domain socket the server listens on instead of a port
        (``ssh -R /path/on/server:...``, OpenSSH's ``streamlocal-forward@openssh.com``);
        ``bind_address`` then holds it too, and the ports are 0.
    :ivar channels_open: connections through it now (issue #14: status and metrics).
    :ivar channels_total: connections through it since it was requested.
    :ivar bytes_in: bytes that came from the server on its channels that have closed
        (those still open count on their :class:`ChannelInfo`).
    :ivar bytes_out: bytes sent to the server on its channels that have closed.
    :ivar policy: what it lets in, and how much (issue #15; None: no policy, and no
        work at all at open or on the data path).
    :ivar refused: inbound connections its policy refused, by reason (``"denied"``,
        ``"not-allowed"``, ``"max-channels"``, ``"rate"``).
    """

    bind_address: str
    requested_port: int
    host: str | None = None
    host_port: int | None = None
    factory: IProtocolFactory | None = None
    accept: AcceptHook | None = None
    port: int = 0
    state: ForwardState = ForwardState.PENDING
    dynamic: bool = False
    target_path: str | None = None
    listen_path: str | None = None
    # Counters, not identity: two forwards alike compare equal whatever they carried.
    channels_open: int = field(default=0, compare=False)
    channels_total: int = field(default=0, compare=False)
    bytes_in: int = field(default=0, compare=False)
    bytes_out: int = field(default=0, compare=False)
    policy: ForwardPolicy | None = None
    refused: dict[str, int] = field(default_factory=dict, compare=False)
    # The policy at work (open channels, buckets), made with the forward when it has a
    # policy that decides anything; the connection consults it.
    gate: ForwardGate | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.policy is not None:
            self.gate = ForwardGate(self.policy, self.refused)

    @property
    def is_event_mode(self) -> bool:
        """True when connections go to an application protocol, not a local address."""
        return self.factory is not None

    def describe_target(self) -> str:
        """
        The target as OpenSSH prints it: ``host:port``, ``socks:0`` for a dynamic forward
        (ssh's own words), or the factory for event mode.
        """
        if self.dynamic:
            return "socks:0"
        if self.target_path is not None:
            return self.target_path
        if self.host is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{host}:{self.host_port}"
        return repr(self.factory)


@dataclass
class ChannelInfo:
    """
    One live channel (a row of the reference's channel table).

    :ivar channel_id: our channel number, unique on the connection.
    :ivar service: the channel type (``"forwarded-tcpip"``).
    :ivar connected_address: the address the connection arrived on at the server.
    :ivar connected_port: the port it arrived on.
    :ivar origin_address: the remote client's address.
    :ivar origin_port: the remote client's port.
    :ivar forwarding_host: the local target host (forwarding mode), else ``""``.
    :ivar forwarding_port: the local target port (forwarding mode), else 0.
    :ivar bytes_sent: bytes sent to the server on this channel.
    :ivar bytes_received: bytes received from the server on this channel.
    """

    channel_id: int
    service: str
    connected_address: str
    connected_port: int
    origin_address: str
    origin_port: int
    forwarding_host: str = ""
    forwarding_port: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    forward: Forward | None = field(default=None, repr=False, compare=False)


@dataclass
class ReconnectAttempt:
    """
    A retry about to be scheduled (the reference's ReconnectAttempt event). Call
    :meth:`cancel` from the observer to stop retrying.

    :ivar host: the SSH server.
    :ivar port: its port.
    :ivar retry_count: this retry's number (1 for the first).
    :ivar retries_remaining: retries left after this one (-1: unlimited).
    :ivar max_retry_count: the limit (0: unlimited).
    :ivar retry_interval: seconds until this retry.
    :ivar retry_type: ``"ssh"`` (the SSH connection) or ``"tunnel"`` (one forward).
    :ivar remote_port: for a tunnel retry, the forward's requested port.
    :ivar error: what failed last.
    """

    host: str
    port: int
    retry_count: int
    retries_remaining: int
    max_retry_count: int
    retry_interval: float
    retry_type: str
    remote_port: int | None = None
    error: Exception | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Make no further attempts."""
        self.cancelled = True

    #: :meth:`describe`'s line as a ``twisted.logger`` format over :meth:`fields`.
    LOG_FORMAT = "{why} {what} in {delay:.1f} s (attempt {retry}{limit})."

    def fields(self) -> dict[str, object]:
        """The values :data:`LOG_FORMAT` names."""
        if self.retry_type == "ssh":
            what = f"Reconnecting to {self.host} port {self.port}"
        else:
            what = f"Retrying the remote forward of listen port {self.remote_port}"
        why = str(self.error) if self.error is not None else "unknown error"
        if not why.endswith((".", "!", "?")):
            # ssh's own words often have no full stop ("remote port forwarding failed
            # for listen port 8080"); the next sentence follows on the same line.
            why += "."
        return {
            "why": why,
            "what": what,
            "delay": self.retry_interval,
            "retry": self.retry_count,
            "limit": f" of {self.max_retry_count}" if self.max_retry_count else "",
        }

    def describe(self) -> str:
        """One line for the operator: why, what is retried, when, which attempt."""
        return self.LOG_FORMAT.format(**self.fields())


@dataclass(frozen=True)
class TunnelStatistics:
    """
    Counters of a tunnel, from :meth:`ReverseTunnel.statistics` (a snapshot).

    :ivar connected: logged on now.
    :ivar sessions: SSH sessions that logged on, the first one included.
    :ivar key_exchanges: key exchanges completed on the current session (its first one
        included; 0 when not connected).
    :ivar rekeys_by_us: of those after the first, the ones rtunnel started.
    :ivar rekeys_by_server: of those after the first, the ones the server started.
    :ivar total_key_exchanges: key exchanges completed on all sessions.
    :ivar total_rekeys_by_us: rekeys rtunnel started, on all sessions.
    :ivar total_rekeys_by_server: rekeys the server started, on all sessions.
    :ivar keepalives_sent: ``keepalive@openssh.com`` requests sent on the current session.
    :ivar channels_open: channels in the table now (pending ones included).
    :ivar channels_opened: channels confirmed on all sessions.
    :ivar bytes_sent: channel data sent to the server, all sessions.
    :ivar bytes_received: channel data received from the server, all sessions.
    :ivar forwards_active: forwards the server is listening for now.
    """

    connected: bool
    sessions: int
    key_exchanges: int
    rekeys_by_us: int
    rekeys_by_server: int
    total_key_exchanges: int
    total_rekeys_by_us: int
    total_rekeys_by_server: int
    keepalives_sent: int
    channels_open: int
    channels_opened: int
    bytes_sent: int
    bytes_received: int
    forwards_active: int

    @property
    def reconnects(self) -> int:
        """Sessions after the first."""
        return max(0, self.sessions - 1)


class TunnelObserver:
    """
    Receives the reference's channel events. Subclass it and override what you need; every
    method does nothing by default. Register with :meth:`ReverseTunnel.add_observer`.

    Observers must not raise; an exception is logged and otherwise ignored.
    """

    def channel_opened(self, info: ChannelInfo) -> None:
        """A channel was confirmed (SSHChannelOpened)."""

    def channel_data(self, info: ChannelInfo, data: bytes) -> None:
        """Bytes arrived from the server on a channel (SSHChannelData)."""

    def channel_eof(self, info: ChannelInfo) -> None:
        """The server will send no more data on a channel (SSHChannelEOF)."""

    def channel_closed(self, info: ChannelInfo) -> None:
        """A channel is closed on both sides (SSHChannelClosed)."""

    def channel_ready_to_send(self, info: ChannelInfo) -> None:
        """
        The server's window opened again after writes had been held back
        (SSHChannelReadyToSend).
        """

    def forward_state_changed(self, forward: Forward) -> None:
        """A forward became active, failed or was cancelled."""

    def connected(self) -> None:
        """The SSH connection is up and authenticated (also after each reconnect)."""

    def disconnected(self, reason: Exception | None) -> None:
        """The SSH connection ended; ``reason`` is None after a clean logoff."""

    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        """A retry is about to be scheduled; ``attempt.cancel()`` stops retrying."""

    def connection_status(self, event: str, status_code: int, description: str) -> None:
        """
        The connection's state changed (the reference's ConnectionStatus): ``event`` is
        ``"tcp-connected"``, ``"ssh-handshake-complete"``, ``"authenticated"``,
        ``"disconnected"`` (after a logoff) or ``"broken"`` (lost; ``status_code`` is the
        error's code and ``description`` its message); otherwise ``status_code`` is 0.
        """

    def ssh_status(self, message: str) -> None:
        """Progress of the SSH handshake and logon, in words (the reference's SSHStatus)."""

    def log(self, level: int, message: str) -> None:
        """
        A log message (the reference's Log event): ``level`` 1 info, 2 verbose, 3 debug;
        only levels up to the tunnel's ``log_level`` arrive. The same messages go to
        ``twisted.logger``.
        """

    def error(self, error: Exception) -> None:
        """
        Something failed that no call of yours is waiting on (the reference's Error
        event): a local target that could not be reached, an accept hook that raised, a
        forward given up after its retries. ``error.code`` is its code.
        """
