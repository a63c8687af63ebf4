"""
What an operator sees of running tunnels: one snapshot type that the control socket
(``rtunnel status``), the health and metrics listener and systemd's ``STATUS=`` line all
read, so that they never disagree. A :class:`StatusSource` gives snapshots; the runner of
a configuration file is one, a single tunnel of the command is another.

Plain data, no reactor: a snapshot is made on the reactor thread and may be shown
anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from rtunnel._core.forward_policy import REASONS

if TYPE_CHECKING:
    from rtunnel._core.forward_policy import ForwardPolicy
    from rtunnel._model import Forward
    from rtunnel.group import TunnelGroup
    from rtunnel.openssh.forwards import RemoteForwardSpec
    from rtunnel.tunnel import ReverseTunnel

__all__ = [
    "ForwardStatus",
    "GroupMember",
    "GroupStatus",
    "OneGroup",
    "OneTunnel",
    "StatusSource",
    "TunnelStatus",
    "forward_name",
    "group_tunnel_status",
    "policy_status",
    "spec_name",
    "tunnel_status",
]


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
    :ivar policy: its policy in ``-o ForwardPolicy``'s words (issue #15; ``""``: none).
    :ivar refused: connections its policy refused, by reason (``"denied"``,
        ``"not-allowed"``, ``"max-channels"``, ``"rate"``); empty without a policy.
    :ivar servers: a tunnel group's forward (issue #15): the servers it is active on
        (``failover``: the serving one; ``all``: each that holds it); empty otherwise.
    """

    name: str
    state: str
    listen: str
    allocated_port: int | None
    channels_open: int
    channels_total: int
    bytes_in: int
    bytes_out: int
    policy: str = ""
    refused: dict[str, int] = field(default_factory=dict, hash=False)
    servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupMember:
    """
    One server of a tunnel group (issue #15).

    :ivar name: its name in the group.
    :ivar server: ``user@host:port``.
    :ivar role: ``"serving"``, ``"standby"`` (``failover``: logged on, no forwards),
        ``"down"`` (being logged on again) or ``"failed"`` (stopped for good).
    :ivar state: its connection's state (as :attr:`TunnelStatus.state`).
    :ivar since: when it entered that state.
    :ivar reconnects: its sessions after the first.
    :ivar last_error: its last error, escaped; None if none.
    :ivar forwards: the names of the group's forwards active on it.
    """

    name: str
    server: str
    role: str
    state: str
    since: float
    reconnects: int
    last_error: str | None
    forwards: tuple[str, ...]


@dataclass(frozen=True)
class GroupStatus:
    """
    What a tunnel group adds to its :class:`TunnelStatus`.

    :ivar mode: ``"failover"`` or ``"all"``.
    :ivar serving: ``failover``: the server that holds the forwards (None: none).
    :ivar ready: ``failover``: the serving server has every forward active; ``all``:
        every forward is active on at least one server.
    :ivar members: its servers, in order.
    """

    mode: str
    serving: str | None
    ready: bool
    members: tuple[GroupMember, ...]


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
    :ivar group: a tunnel group's servers (issue #15); None for one server.
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
    group: GroupStatus | None = None

    @property
    def ready(self) -> bool:
        """Connected, with every forward active (what ``/readyz`` asks of each tunnel); a
        group: its mode's condition (:attr:`GroupStatus.ready`)."""
        if self.group is not None:
            return self.group.ready
        return self.state == "connected" and all(f.state == "active" for f in self.forwards)


class StatusSource(Protocol):
    """Something running tunnels that can say how they are."""

    def status(self) -> Sequence[TunnelStatus]:
        """A snapshot of every tunnel, in configuration order."""
        ...


class OneTunnel:
    """
    The :class:`StatusSource` of the plain command: one tunnel and the forwards its
    command line asked for.

    :param name: the tunnel's name (the destination as typed).
    :param tunnel: the tunnel.
    :param forwards: the forwards configured, in order (``-R``).
    """

    def __init__(
        self, name: str, tunnel: ReverseTunnel, forwards: Sequence[RemoteForwardSpec]
    ) -> None:
        self._name = name
        self._tunnel = tunnel
        self._forwards = tuple(forwards)

    def status(self) -> Sequence[TunnelStatus]:
        """This one tunnel's snapshot."""
        return (tunnel_status(self._name, self._tunnel, self._forwards),)


class OneGroup:
    """
    The :class:`StatusSource` of the command with ``-o GroupServer`` (issue #15): one
    tunnel group and the forwards its command line asked for.
    """

    def __init__(
        self, name: str, group: TunnelGroup, forwards: Sequence[RemoteForwardSpec]
    ) -> None:
        self._name = name
        self._group = group
        self._names = [spec_name(f) for f in forwards]

    def status(self) -> Sequence[TunnelStatus]:
        """The group's snapshot."""
        return (group_tunnel_status(self._name, self._group, self._names),)


def tunnel_status(
    name: str, tunnel: ReverseTunnel, expected: Sequence[RemoteForwardSpec] = ()
) -> TunnelStatus:
    """
    A snapshot of ``tunnel``: its state machine's state and since when, its counters and
    its forwards'.

    :param name: what to call it.
    :param tunnel: the tunnel.
    :param expected: the forwards it was configured with, in order, matched to the
        tunnel's by name (:func:`spec_name`, :func:`forward_name`): one the tunnel no
        longer has (refused, given up) shows as ``"failed"``, or ``"pending"`` before
        the first logon, so that ``/readyz`` says no.
        The tunnel's other forwards (asked for through the API) follow them.
    """
    stats = tunnel.statistics()
    state = tunnel.connection_state
    error = tunnel.last_error
    live: dict[int, tuple[int, int]] = {}
    for info in tunnel.channels:
        if info.forward is not None:
            bytes_in, bytes_out = live.get(id(info.forward), (0, 0))
            live[id(info.forward)] = (bytes_in + info.bytes_received, bytes_out + info.bytes_sent)
    have = {forward_name(f): f for f in tunnel.forwards}
    forwards: list[ForwardStatus] = []
    for spec in expected:
        wanted = spec_name(spec)
        forward = have.pop(wanted, None)
        if forward is None:
            gone = "pending" if stats.sessions == 0 and state != "failed" else "failed"
            listen = spec.listen_path or f"{_address(spec.bind_address or '*')}:{spec.port}"
            forwards.append(ForwardStatus(wanted, gone, listen, None, 0, 0, 0, 0))
        else:
            forwards.append(_forward_status(wanted, forward, live))
    forwards.extend(_forward_status(key, f, live) for key, f in have.items())
    host = f"[{tunnel.host}]" if ":" in tunnel.host else tunnel.host
    return TunnelStatus(
        name=name,
        server=f"{tunnel.user}@{host}:{tunnel.port}",
        state=state,
        since=tunnel.state_since,
        reconnects=stats.reconnects,
        key_exchanges=stats.total_key_exchanges,
        last_error=error[0] if error is not None else None,
        last_error_time=error[1] if error is not None else None,
        forwards=tuple(forwards),
    )


def group_tunnel_status(
    name: str, group: TunnelGroup, names: Sequence[str] = (), *, finished: bool = False
) -> TunnelStatus:
    """
    A snapshot of a tunnel group (issue #15): one :class:`TunnelStatus` whose forwards
    are the group's (each ``"active"`` while active on a server it should be on, with
    that server's port: ``failover``: the serving one; ``all``: the first that holds
    it) and whose :attr:`~TunnelStatus.group` lists the servers.

    :param names: the forwards' names, in the group's order (default: as
        :func:`forward_name` writes them).
    :param finished: the group was stopped (or gave up): forwards show ``"cancelled"``.
    """
    members = group.servers()
    tunnels = group.tunnels
    serving = group.serving
    live: dict[int, tuple[int, int]] = {}
    for tunnel in tunnels:
        for info in tunnel.channels:
            if info.forward is not None:
                bytes_in, bytes_out = live.get(id(info.forward), (0, 0))
                live[id(info.forward)] = (
                    bytes_in + info.bytes_received,
                    bytes_out + info.bytes_sent,
                )
    forwards: list[ForwardStatus] = []
    for index, spec in enumerate(group.forwards):
        held = [(m, m.forwards[index]) for m in members if m.forwards[index] is not None]
        on = tuple(m.name for m in members if m.up and m.active[index])
        wanted = names[index] if index < len(names) else None
        shown = next((f for m, f in held if m.name in on), None)
        if shown is None and held:
            shown = held[0][1]
        parts = [_forward_status(wanted or forward_name(f), f, live) for _, f in held if f]
        if shown is not None:
            first = _forward_status(wanted or forward_name(shown), shown, live)
            state = "active" if on else first.state
            forwards.append(
                replace(
                    first,
                    state=state,
                    allocated_port=first.allocated_port if on else None,
                    channels_open=sum(p.channels_open for p in parts),
                    channels_total=sum(p.channels_total for p in parts),
                    bytes_in=sum(p.bytes_in for p in parts),
                    bytes_out=sum(p.bytes_out for p in parts),
                    servers=on,
                    refused=_summed_refusals(parts),
                )
            )
        else:
            if spec.listen_path is not None:
                listen = spec.listen_path
            else:
                listen = f"{_address(spec.bind_address or '*')}:{spec.port}"
            state = "cancelled" if finished else "pending"
            forwards.append(
                ForwardStatus(wanted or listen, state, listen, None, 0, 0, 0, 0, servers=())
            )
    shown_members = []
    for member, tunnel in zip(members, tunnels, strict=True):
        stats = tunnel.statistics()
        error = tunnel.last_error
        host = f"[{tunnel.host}]" if ":" in tunnel.host else tunnel.host
        shown_members.append(
            GroupMember(
                name=member.name,
                server=f"{tunnel.user}@{host}:{tunnel.port}",
                role=member.role,
                state=tunnel.connection_state,
                since=tunnel.state_since,
                reconnects=stats.reconnects,
                last_error=error[0] if error is not None else None,
                forwards=tuple(
                    forwards[i].name for i, active in enumerate(member.active) if active
                ),
            )
        )
    states = [m.state for m in shown_members]
    if "connected" in states:
        state = "connected"
    elif finished:
        state = "failed" if all(m.role == "failed" for m in members) else "stopped"
    elif all(m.role == "failed" for m in members):
        state = "failed"
    elif "connecting" in states:
        state = "connecting"
    else:
        state = "waiting"
    errors = [t.last_error for t in tunnels if t.last_error is not None]
    last = max(errors, key=lambda e: e[1]) if errors else None
    first_server = shown_members[0].server
    return TunnelStatus(
        name=name,
        server=next((m.server for m in shown_members if m.name == serving), first_server),
        state=state,
        since=min(m.since for m in shown_members),
        reconnects=sum(m.reconnects for m in shown_members),
        key_exchanges=sum(t.statistics().total_key_exchanges for t in tunnels),
        last_error=last[0] if last is not None else None,
        last_error_time=last[1] if last is not None else None,
        forwards=tuple(forwards),
        group=GroupStatus(group.mode.value, serving, group.ready, tuple(shown_members)),
    )


def _summed_refusals(parts: list[ForwardStatus]) -> dict[str, int]:
    """A group forward's policy refusals (issue #15): the counts of every server's."""
    total: dict[str, int] = {}
    for part in parts:
        for reason, count in part.refused.items():
            total[reason] = total.get(reason, 0) + count
    return total


def _forward_status(name: str, forward: Forward, live: dict[int, tuple[int, int]]) -> ForwardStatus:
    bytes_in, bytes_out = live.get(id(forward), (0, 0))
    if forward.listen_path is not None:
        listen, port = forward.listen_path, None
    else:
        port = forward.port or None
        listen = f"{_address(forward.bind_address or '*')}:{forward.port or forward.requested_port}"
    return ForwardStatus(
        name=name,
        state=forward.state.value,
        listen=listen,
        allocated_port=port,
        channels_open=forward.channels_open,
        channels_total=forward.channels_total,
        bytes_in=forward.bytes_in + bytes_in,
        bytes_out=forward.bytes_out + bytes_out,
        **policy_status(forward.policy, forward.refused),
    )


def policy_status(policy: ForwardPolicy | None, refused: Mapping[str, int]) -> dict[str, Any]:
    """A forward's ``policy`` and ``refused`` fields of :class:`ForwardStatus` (issue #15):
    every reason counted (zeros too) once it has a policy; nothing without."""
    if policy is None:
        return {}
    counts = {reason: refused.get(reason, 0) for reason in REASONS}
    return {"policy": policy.describe(), "refused": counts}


def _address(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _name(
    bind_address: str,
    port: int,
    listen_path: str | None,
    target: str | None,
) -> str:
    if listen_path is not None:
        listen = listen_path
    elif bind_address == "localhost":
        listen = str(port)  # ssh's default bind address, not written
    else:
        listen = f"{_address(bind_address or '*')}:{port}"
    return listen if target is None else f"{listen}:{target}"


def spec_name(spec: RemoteForwardSpec) -> str:
    """A configured forward's name: its ``-R`` argument, written out the same way each
    time (``8080:127.0.0.1:80``, ``*:9000:localhost:22``, ``1080`` for a dynamic one)."""
    if spec.dynamic:
        target = None
    elif spec.target_path is not None:
        target = spec.target_path
    else:
        target = f"{_address(spec.host)}:{spec.host_port}"
    return _name(spec.bind_address, spec.port, spec.listen_path, target)


def forward_name(forward: Forward) -> str:
    """A forward's name, as :func:`spec_name` writes the spec it came from (the requested
    port, not the allocated one)."""
    if forward.dynamic:
        target = None
    elif forward.target_path is not None:
        target = forward.target_path
    elif forward.host is not None:
        target = f"{_address(forward.host)}:{forward.host_port}"
    else:
        target = "app"  # event mode: an application protocol
    return _name(forward.bind_address, forward.requested_port, forward.listen_path, target)
