"""
What an operator sees of running tunnels: one snapshot type that the control socket
(``rtunnel status``), the health and metrics listener and systemd's ``STATUS=`` line all
read, so that they never disagree. A :class:`StatusSource` gives snapshots; the runner of
a configuration file is one, a single tunnel of the command is another.

Plain data, no reactor: a snapshot is made on the reactor thread and may be shown
anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ForwardStatus", "StatusSource", "TunnelStatus"]


@dataclass(frozen=True)
class ForwardStatus:
    """
    One forward of a tunnel.

    :ivar name: how the configuration names it (``-R`` syntax, e.g.
        ``"8080:127.0.0.1:80"``, or the name given in the file).
    :ivar state: ``"pending"``, ``"active"``, ``"retrying"``, ``"failed"`` or
        ``"cancelled"`` (:class:`rtunnel.ForwardState`'s values).
    :ivar listen: where the server listens: ``"ADDRESS:PORT"`` with the allocated port,
        or the socket path.
    :ivar allocated_port: the port the server listens on (the allocated one for port 0);
        None while pending or for a socket.
    :ivar channels_open: connections through it now.
    :ivar channels_total: connections through it since the tunnel started.
    :ivar bytes_in: bytes that came from the server's side (from connecting clients).
    :ivar bytes_out: bytes that went to the server's side.
    """

    name: str
    state: str
    listen: str
    allocated_port: int | None
    channels_open: int
    channels_total: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class TunnelStatus:
    """
    One tunnel: one SSH server and its forwards.

    :ivar name: its name in the configuration (the destination for the command).
    :ivar server: ``user@host:port``.
    :ivar state: ``"connecting"``, ``"connected"``, ``"waiting"`` (to reconnect),
        ``"stopped"`` or ``"failed"``.
    :ivar since: when it entered that state (seconds since the epoch, the reactor's
        clock).
    :ivar reconnects: sessions after the first.
    :ivar key_exchanges: key exchanges over its life.
    :ivar last_error: the last error's message, escaped; None if none.
    :ivar last_error_time: when it happened; None if none.
    :ivar forwards: its forwards, in configuration order.
    """

    name: str
    server: str
    state: str
    since: float
    reconnects: int
    key_exchanges: int
    last_error: str | None
    last_error_time: float | None
    forwards: tuple[ForwardStatus, ...]

    @property
    def ready(self) -> bool:
        """Connected, with every forward active (what ``/readyz`` asks of each tunnel)."""
        return self.state == "connected" and all(f.state == "active" for f in self.forwards)


class StatusSource(Protocol):
    """Something running tunnels that can say how they are."""

    def status(self) -> Sequence[TunnelStatus]:
        """A snapshot of every tunnel, in configuration order."""
        ...
