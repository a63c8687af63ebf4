"""
The decisions of a tunnel group (issue #15): which SSH server should hold the forwards,
when to fail back, and when the group is ready. All of them live here, as plain functions
of what the group knows now and the time it is; :class:`rtunnel.group.TunnelGroup` feeds
them what its servers' tunnels report and does what they say. Pure: no reactor, no clock.

Two modes:

- ``failover``: one server serves every forward at a time. The others stay logged on
  without forwards (hot standby), so that moving the forwards is one round of
  ``tcpip-forward`` requests, not a logon. When the serving server is lost, the forwards
  move at once to the first server in the list that is logged on. With ``failback_after``
  set, they move back to a server earlier in the list once it has been logged on for that
  many seconds without a break; without it (the default) they stay where they are until
  that server is lost.
- ``all``: every server holds every forward; each server reconnects on its own.

Ready (``/readyz``, systemd ``READY=1``): ``failover``: the serving server has every
forward active; ``all``: every forward is active on at least one server.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "GroupMode",
    "ServerHealth",
    "choose_server",
    "failback_due",
    "group_ready",
    "parse_mode",
    "server_role",
]


class GroupMode(enum.Enum):
    """How a group uses its servers."""

    FAILOVER = "failover"  # one at a time, in order
    ALL = "all"  # every server holds every forward


def parse_mode(text: str) -> GroupMode:
    """``"failover"`` or ``"all"`` (any case); ValueError naming both otherwise."""
    try:
        return GroupMode(text.lower())
    except ValueError:
        raise ValueError(f"unknown group mode {text!r}: give failover or all") from None


@dataclass(frozen=True)
class ServerHealth:
    """
    What the group knows of one server now.

    :ivar up: logged on (the keepalive, when configured, has not given up on it).
    :ivar up_since: when it last logged on (the clock's seconds); None while down.
    :ivar failed: stopped for good (refused authentication, a changed host key, its
        retry limit): never chosen again until the group starts again.
    :ivar tried: its first logon has succeeded or failed once (at start, a server is not
        passed over before it has had its chance).
    """

    up: bool
    up_since: float | None = None
    failed: bool = False
    tried: bool = True


def choose_server(
    servers: Sequence[ServerHealth],
    current: int | None,
    now: float,
    failback_after: float | None,
) -> int | None:
    """
    ``failover``: the index of the server that should serve now; None if none can.

    The current server keeps serving while it is up, unless ``failback_after`` is set and
    a server earlier in the list has been up for at least that long (then the first such
    server). A server that is down is left at once for the first server in the list that
    is up. At start (``current`` None) the servers are taken in order, and one whose first
    logon is still under way is waited for: the first server serves if it can, not
    whichever answered first.
    """
    if current is None:
        for index, server in enumerate(servers):
            if _usable(server):
                return index
            if not server.tried and not server.failed:
                return None
        return None
    if current is not None and 0 <= current < len(servers) and _usable(servers[current]):
        if failback_after is not None:
            for index in range(current):
                if _settled(servers[index], now, failback_after):
                    return index
        return current
    return next((i for i, server in enumerate(servers) if _usable(server)), None)


def failback_due(
    servers: Sequence[ServerHealth],
    current: int | None,
    now: float,
    failback_after: float | None,
) -> float | None:
    """
    ``failover``: when :func:`choose_server` may next change its answer by time alone
    (a server earlier than ``current`` becoming settled); None if no time will. The
    group sets a timer for it.
    """
    if failback_after is None or current is None:
        return None
    later = [
        server.up_since + failback_after
        for server in servers[:current]
        if _usable(server)
        and server.up_since is not None
        and server.up_since + failback_after > now
    ]
    return min(later) if later else None


def group_ready(
    mode: GroupMode,
    serving: int | None,
    up: Sequence[bool],
    active: Sequence[Sequence[bool]],
) -> bool:
    """
    Whether the group serves what it should: ``failover``: the serving server has every
    forward active; ``all``: every forward is active on at least one server. A group
    without forwards is ready when a server serves (``failover``) or any is up (``all``).

    :param serving: ``failover``: the server that serves (None: none).
    :param up: ``up[server]``: that server is logged on.
    :param active: ``active[server][forward]``: that forward is active on that server.
    """
    if mode is GroupMode.FAILOVER:
        return serving is not None and up[serving] and all(active[serving])
    forwards = len(active[0]) if active else 0
    if forwards == 0:
        return any(up)
    return all(any(row[f] for row in active) for f in range(forwards))


def server_role(mode: GroupMode, index: int, serving: int | None, health: ServerHealth) -> str:
    """
    One server's role in operators' words: ``"serving"`` (holds the forwards),
    ``"standby"`` (``failover``: logged on, without forwards), ``"down"`` (being logged on
    again) or ``"failed"`` (stopped for good).
    """
    if health.failed:
        return "failed"
    if not health.up:
        return "down"
    if mode is GroupMode.ALL or index == serving:
        return "serving"
    return "standby"


def _usable(server: ServerHealth) -> bool:
    return server.up and not server.failed


def _settled(server: ServerHealth, now: float, failback_after: float) -> bool:
    return (
        _usable(server)
        and server.up_since is not None
        and now - server.up_since >= (failback_after)
    )
