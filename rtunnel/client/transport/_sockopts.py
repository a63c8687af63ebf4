"""
Socket options for the SSH connection's TCP socket: TCP_NODELAY and TCP keep-alive (the
reference's TcpNoDelay, TCPKeepAlive, KeepAliveTime and KeepAliveInterval settings).

No reactor here: :func:`apply_tcp_options` takes the socket (a transport's
``getHandle()``), so it is tested on a plain socket pair.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Any

from rtunnel.errors import SpecError

__all__ = ["TCPOptions", "acknowledge_now", "apply_tcp_options"]

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


@dataclass(frozen=True)
class TCPOptions:
    """
    :ivar nodelay: disable Nagle's algorithm. On by default: the SSH connection carries
        many small packets (channel opens, confirmations, echoes) whose latency matters
        more than the few bytes of header a coalesced segment would save; OpenSSH sets it
        for interactive sessions for the same reason.
    :ivar keepalive: send TCP keep-alive probes (OpenSSH ``TCPKeepAlive``, default yes).
    :ivar keepalive_time: seconds of idleness before the first probe (the reference's
        KeepAliveTime, which it gives in milliseconds; None: the system's, usually 2 h).
        Setting it turns ``keepalive`` on.
    :ivar keepalive_interval: seconds between unanswered probes (KeepAliveInterval;
        None: the system's). Setting it turns ``keepalive`` on.
    :ivar keepalive_count: unanswered probes before the kernel drops the connection
        (None: the system's, usually 9).
    """

    nodelay: bool = True
    keepalive: bool = True
    keepalive_time: float | None = None
    keepalive_interval: float | None = None
    keepalive_count: int | None = None

    def __post_init__(self) -> None:
        for name in ("keepalive_time", "keepalive_interval"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 32767:
                raise SpecError(
                    f"TCP {name.replace('_', ' ')} {value!r} is out of range: give 1 to "
                    "32767 seconds, or None for the system's default."
                )
        if self.keepalive_count is not None and not 1 <= self.keepalive_count <= 127:
            raise SpecError(
                f"TCP keepalive count {self.keepalive_count!r} is out of range: give 1 to "
                "127, or None for the system's default."
            )

    @property
    def keepalive_enabled(self) -> bool:
        """Keep-alive is on when asked for, or when any of its timings is given."""
        return self.keepalive or any(
            v is not None
            for v in (self.keepalive_time, self.keepalive_interval, self.keepalive_count)
        )


def apply_tcp_options(sock: socket.socket, options: TCPOptions) -> None:
    """
    Set ``options`` on a connected TCP socket. Timings the platform lacks (macOS has no
    ``TCP_KEEPINTVL`` on old Pythons) are skipped; an ``OSError`` from the kernel is
    raised, as it means the socket is unusable.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if options.nodelay else 0)
    enabled = options.keepalive_enabled
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if enabled else 0)
    if not enabled:
        return
    # Linux names the idle time TCP_KEEPIDLE; macOS TCP_KEEPALIVE.
    idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in (
        (idle_option, options.keepalive_time),
        (getattr(socket, "TCP_KEEPINTVL", None), options.keepalive_interval),
        (getattr(socket, "TCP_KEEPCNT", None), options.keepalive_count),
    ):
        if option is not None and value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(value)))


def acknowledge_now(tcp: Any) -> None:
    """
    Send the ACK for what the peer sent so far now, not after Linux's delayed-ACK timer
    (up to 40 ms): for a packet from the server that no packet of ours answers soon.

    OpenSSH's sshd sets no TCP_NODELAY on a connection without a session (ssh -N), so
    Nagle holds its next small packet until the previous one is acknowledged. After
    USERAUTH_SUCCESS, sshd 9.2 sends hostkeys-00@openssh.com (no reply wanted) and then
    the answers to our tcpip-forward requests: without this ACK the first "Allocated
    port" waited 42 ms for the timer. ``TCP_QUICKACK`` acknowledges at once (tcp(7);
    Linux only, best effort: nothing happens elsewhere or on a transport with no socket).

    :param tcp: the SSH connection's Twisted TCP transport (anything with ``getHandle``).
    """
    handle = getattr(tcp, "getHandle", None)
    if _TCP_QUICKACK is None or handle is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        handle().setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
