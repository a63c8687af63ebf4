"""
One service through several SSH servers (issue #15): a :class:`TunnelGroup` holds one set
of forwards on a list of servers, each server a :class:`~rtunnel.ReverseTunnel` of its own
(its own credentials, host keys and reconnect loop). Which server should hold the forwards,
when to fail back and when the group is ready are decided by the pure functions of
:mod:`rtunnel._core.group`; this module feeds them what the tunnels report and does what
they say.

``failover`` keeps every server logged on (hot standby): the serving one holds the
forwards, the others none. When the serving server is lost (the connection breaks, or its
keepalive gives up) the forwards are requested on the first server in the list that is
logged on: one round of ``tcpip-forward`` requests, no logon, so the gap is the time to
notice the loss plus one round trip. The lost server's forwards are forgotten (its
reconnect does not ask for them again). Failing back (``failback_after``) requests the
forwards on the earlier server first and cancels them on the later one only once they
are active (make before break).

``all`` requests every forward on every server; each server's tunnel reconnects and
requests them again on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core.forward_policy import ForwardPolicy
from rtunnel._core.group import (
    GroupMode,
    ServerHealth,
    choose_server,
    failback_due,
    group_ready,
    parse_mode,
    server_role,
)
from rtunnel._core.text import printable
from rtunnel._model import AcceptHook, Forward, ForwardState, ReconnectAttempt, TunnelObserver
from rtunnel.errors import (
    AlreadyConnectedError,
    ConnectError,
    ConnectionLostError,
    RTunnelError,
    SpecError,
)
from rtunnel.options import TunnelOptions
from rtunnel.tunnel import ReverseTunnel

__all__ = [
    "GroupForward",
    "GroupObserver",
    "GroupReporter",
    "GroupServer",
    "GroupServerStatus",
    "TunnelGroup",
]

_log = Logger()


@dataclass(frozen=True)
class GroupServer:
    """
    One SSH server of a group.

    :ivar host: the server.
    :ivar port: its port.
    :ivar options: how to log on to it (credentials, host keys, keepalives...), as for
        :class:`~rtunnel.ReverseTunnel`. Its reconnect policy's delays are used, with the
        mode ``"always"``: a server of a group is logged on again whatever happened,
        until it refuses for good (authentication, host key) or its ``max_retries`` run
        out.
    :ivar name: what status, metrics and events call it (default ``HOST:PORT``).
    """

    host: str
    port: int = 22
    options: TunnelOptions | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """:attr:`name`, else ``HOST:PORT``."""
        if self.name:
            return self.name
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class GroupForward:
    """
    One forward of a group: the arguments of
    :meth:`ReverseTunnel.request_forwarding <rtunnel.ReverseTunnel.request_forwarding>`
    (or, with ``listen_path``, of ``request_socket_forwarding``), asked of each server
    that should hold it.
    """

    bind_address: str
    port: int
    host: str | None = None
    host_port: int | None = None
    factory: IProtocolFactory | None = None
    accept: AcceptHook | None = None
    dynamic: bool = False
    target_path: str | None = None
    listen_path: str | None = None
    policy: ForwardPolicy | None = None


@dataclass(frozen=True)
class GroupServerStatus:
    """
    One server of a group, now.

    :ivar name: its label (:attr:`GroupServer.label`).
    :ivar index: its place in the list (0: first).
    :ivar role: ``"serving"`` (holds the forwards), ``"standby"`` (``failover``: logged
        on without forwards), ``"down"`` (being logged on again) or ``"failed"``
        (stopped for good).
    :ivar connection_state: its tunnel's :attr:`~rtunnel.ReverseTunnel.connection_state`.
    :ivar up: logged on.
    :ivar forwards: for each forward of the group (in order), the library's
        :class:`~rtunnel.Forward` on this server; None where this server holds none.
    """

    name: str
    index: int
    role: str
    connection_state: str
    up: bool
    forwards: tuple[Forward | None, ...]

    @property
    def active(self) -> tuple[bool, ...]:
        """For each forward of the group: active on this server."""
        return tuple(f is not None and f.state is ForwardState.ACTIVE for f in self.forwards)


class GroupObserver:
    """
    Events of a :class:`TunnelGroup` (subclass and override what you need). Each server's
    own tunnel events go to the observers given to :meth:`TunnelGroup.add_tunnel_observer`.
    """

    def server_changed(self, server: GroupServerStatus) -> None:
        """A server's role changed (serving, standby, down, failed)."""

    def serving_changed(self, previous: str | None, serving: str | None) -> None:
        """``failover``: the forwards moved from the server ``previous`` to ``serving``
        (names; None: none)."""

    def ready_changed(self, ready: bool) -> None:
        """The group became ready, or stopped being ready (see :attr:`TunnelGroup.ready`)."""


class GroupReporter(GroupObserver):
    """
    Says in a line each where a group's forwards are and what its servers do, through
    ``report(level, text)`` (the command's and the runner's reporters; ``level`` is
    ``"INFO"``).
    """

    def __init__(self, report: Callable[[str, str], object]) -> None:
        self._report = report

    @override
    def serving_changed(self, previous: str | None, serving: str | None) -> None:
        if previous is None:
            self._report("INFO", f"Serving the forwards through {serving}.")
        else:
            self._report("INFO", f"Moving the forwards from {previous} to {serving}.")

    @override
    def server_changed(self, server: GroupServerStatus) -> None:
        self._report("INFO", f"Server {server.name} is {server.role}.")

    @override
    def ready_changed(self, ready: bool) -> None:
        self._report("INFO", "The group is ready." if ready else "The group is not ready.")


class TunnelGroup:
    """
    One set of forwards through several SSH servers.

    :param reactor: the reactor (TCP and time).
    :param servers: the servers, in order of preference (at least one).
    :param forwards: the forwards (more with :meth:`add_forward` before :meth:`start`).
    :param mode: ``"failover"`` (one server at a time, in order) or ``"all"`` (every
        server holds every forward).
    :param failback_after: ``failover``: move the forwards back to a server earlier in
        the list once it has been logged on this many seconds without a break; None (the
        default): stay on the server that serves until it is lost.
    :param clock: the clock for timers (default: ``reactor``).
    :param retry_first_logon: True (the default): a server whose first logon fails is
        retried, whatever the others do. False: when no server has logged on yet and every
        one's first logon has failed, the group stops and :meth:`start` fails with the
        last error (as a single tunnel does without reconnect mode ``"always"``); once one
        server has logged on, the others are retried.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        servers: Sequence[GroupServer],
        forwards: Sequence[GroupForward] = (),
        *,
        mode: str | GroupMode = GroupMode.FAILOVER,
        failback_after: float | None = None,
        clock: IReactorTime | None = None,
        retry_first_logon: bool = True,
    ) -> None:
        if not servers:
            raise SpecError("A tunnel group needs at least one server.")
        try:
            self.mode = mode if isinstance(mode, GroupMode) else parse_mode(mode)
        except ValueError as error:
            raise SpecError(f"Bad group mode: {error}.") from None
        if failback_after is not None and failback_after < 0:
            raise SpecError(f"Bad failback delay {failback_after}: give 0 or more seconds.")
        names = [s.label for s in servers]
        if len(set(names)) != len(names):
            raise SpecError(f"Two servers of the group have the same name: {', '.join(names)}.")
        self.failback_after = failback_after
        self._clock: IReactorTime = clock or cast(IReactorTime, reactor)
        self._forwards: list[GroupForward] = list(forwards)
        self._members = [_Member(self, i, s, reactor, self._clock) for i, s in enumerate(servers)]
        self._observers: list[GroupObserver] = []
        self._serving: int | None = None
        self._roles = ["down"] * len(self._members)
        self._ready = False
        self._ready_waiters: list[Deferred[None]] = []
        self._failback: IDelayedCall | None = None
        # failover: the earlier server the forwards are moving back to (make before break).
        self._failing_back: int | None = None
        self._started = False
        self._stopping = False
        self.retry_first_logon = retry_first_logon
        # Some server has logged on since start (retry_first_logon=False no longer applies).
        self._ever_up = False

    # -- setting up

    def add_forward(
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
        listen_path: str | None = None,
        policy: ForwardPolicy | None = None,
    ) -> GroupForward:
        """Add a forward (the arguments of ``request_forwarding``); it is requested on the
        servers that should hold it, now if the group runs. Its ``policy`` holds on each
        server apart (a channel cap of 10 is 10 per server)."""
        forward = GroupForward(
            bind_address,
            port,
            host,
            host_port,
            factory,
            accept,
            dynamic,
            target_path,
            listen_path,
            policy,
        )
        self._forwards.append(forward)
        for member in self._members:
            member.held.append(None)
        self._decide()
        return forward

    def add_observer(self, observer: GroupObserver) -> None:
        """Receive the group's events."""
        self._observers.append(observer)

    def remove_observer(self, observer: GroupObserver) -> None:
        """Stop receiving them."""
        self._observers.remove(observer)

    def add_tunnel_observer(self, observer: TunnelObserver) -> None:
        """Watch every server's tunnel with ``observer`` (channels, logons, forwards)."""
        for member in self._members:
            member.tunnel.add_observer(observer)

    # -- running

    def start(self) -> Deferred[None]:
        """
        Log on to every server (each retries on its own). Fires once the group is ready
        (see :attr:`ready`); fails with the last server's error if every server stops for
        good first.
        """
        if self._started:
            return fail(AlreadyConnectedError("The tunnel group has been started already."))
        self._started = True
        waiting = self.when_ready()
        for member in self._members:
            member.start()
        return waiting

    def when_ready(self) -> Deferred[None]:
        """Fires when the group is next ready (at once if it is)."""
        d: Deferred[None] = Deferred()
        if self._ready:
            d.callback(None)
        else:
            self._ready_waiters.append(d)
        return d

    def stop(self) -> Deferred[None]:
        """Log off from every server; fires when all have."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._failback is not None and self._failback.active():
            self._failback.cancel()
        self._failback = None
        await gatherResults([m.tunnel.logoff() for m in self._members], consumeErrors=True)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if not d.called:  # a caller may have cancelled its wait
                d.errback(
                    Failure(
                        ConnectionLostError("The tunnel group was stopped before it was ready.")
                    )
                )

    # -- what it looks like

    @property
    def tunnels(self) -> list[ReverseTunnel]:
        """Each server's tunnel, in the servers' order."""
        return [m.tunnel for m in self._members]

    @property
    def forwards(self) -> list[GroupForward]:
        """The group's forwards, in order."""
        return list(self._forwards)

    @property
    def serving(self) -> str | None:
        """``failover``: the name of the server that holds the forwards (None: none)."""
        return self._members[self._serving].server.label if self._serving is not None else None

    @property
    def ready(self) -> bool:
        """``failover``: the serving server has every forward active; ``all``: every
        forward is active on at least one server."""
        return self._ready

    def servers(self) -> list[GroupServerStatus]:
        """Every server, now, in order."""
        return [m.status() for m in self._members]

    def serving_servers(self, forward: int) -> list[str]:
        """The names of the servers on which forward number ``forward`` is active."""
        return [m.server.label for m in self._members if m.is_up and m.active(forward)]

    # -- deciding

    def _health(self) -> list[ServerHealth]:
        return [m.health() for m in self._members]

    def _decide(self) -> None:
        """Take what the servers report now to where the forwards should be."""
        if not self._started or self._stopping:
            return
        if self.mode is GroupMode.ALL:
            for member in self._members:
                if member.is_up:
                    member.hold_all()
        else:
            self._decide_failover()
        self._update()

    def _decide_failover(self) -> None:
        now = self._clock.seconds()
        health = self._health()
        previous = self._serving
        if self._failing_back is not None:
            # A failback under way: the old server serves until the new one holds the
            # forwards, unless it is lost meanwhile (then the move completes now).
            if previous is not None and self._members[previous].is_up:
                return
            self._switch(self._failing_back)
            previous = self._serving
        target = choose_server(health, previous, now, self.failback_after)
        if target is None:
            # Nobody is up: the forwards stay where they were; that server's reconnect
            # asks for them again if it comes back first.
            target = previous
        if target != previous and target is not None:
            if previous is not None and self._members[previous].is_up:
                # Failing back, make before break: ask the earlier server first; the
                # later one serves, and lets go, once it holds them (or was refused).
                self._failing_back = target
                moving = self._members[target].hold_all()
                moving.addBoth(lambda _: self._failback_done(target))
                return
            self._members[target].hold_all()
            self._switch(target)
        elif target is not None and self._members[target].is_up:
            self._members[target].hold_all()
        for index, member in enumerate(self._members):
            if index != self._serving and member.holds_any():
                # Only the serving server holds forwards (a lost one's are forgotten,
                # so that its reconnect does not ask for them again).
                member.release_all()
        self._schedule_failback(now)

    def _switch(self, target: int) -> None:
        """The forwards are ``target``'s now: say so; the others let go (in _decide)."""
        previous, self._serving = self._serving, target
        self._failing_back = None
        self._tell(
            "serving_changed",
            self._members[previous].server.label if previous is not None else None,
            self.serving,
        )

    def _failback_done(self, target: int) -> None:
        if self._failing_back != target or self._stopping:
            return
        self._switch(target)
        self._decide()

    def _schedule_failback(self, now: float) -> None:
        if self._failback is not None and self._failback.active():
            self._failback.cancel()
        self._failback = None
        due = failback_due(self._health(), self._serving, now, self.failback_after)
        if due is not None:
            self._failback = self._clock.callLater(max(0.0, due - now), self._failback_now)

    def _failback_now(self) -> None:
        self._failback = None
        self._decide()

    def _update(self) -> None:
        """Tell observers of changed roles and readiness."""
        health = self._health()
        for index, member in enumerate(self._members):
            role = server_role(self.mode, index, self._serving, health[index])
            if role != self._roles[index]:
                self._roles[index] = role
                self._tell("server_changed", member.status())
        ready = group_ready(
            self.mode,
            self._serving,
            [h.up for h in health],
            [[m.is_up and m.active(f) for f in range(len(self._forwards))] for m in self._members],
        )
        if ready != self._ready:
            self._ready = ready
            self._tell("ready_changed", ready)
            if ready:
                waiters, self._ready_waiters = self._ready_waiters, []
                for d in waiters:
                    if not d.called:
                        d.callback(None)
        if (
            not self.retry_first_logon
            and not self._ever_up
            and all(h.tried or h.failed for h in health)
            and not any(h.up for h in health)
        ):
            # No server could be logged on at its first try: stop, as one tunnel would.
            failure = next(
                (m.failure for m in reversed(self._members) if m.failure is not None), None
            )
            waiters, self._ready_waiters = self._ready_waiters, []
            self._stopping = True
            Deferred.fromCoroutine(self._stop()).addErrback(
                lambda f: _log.failure("stopping the group failed", f)
            )
            for d in waiters:
                if not d.called:
                    d.errback(failure or Failure(ConnectError("No server of the group answered.")))
            return
        if all(h.failed for h in health) and self._ready_waiters:
            error = self._members[-1].failure
            waiters, self._ready_waiters = self._ready_waiters, []
            for d in waiters:
                if not d.called:
                    d.errback(error or Failure(ConnectError("Every server of the group gave up.")))

    def role(self, index: int) -> str:
        """The role of server number ``index`` (see :class:`GroupServerStatus`)."""
        return server_role(self.mode, index, self._serving, self._members[index].health())

    def _tell(self, event: str, *args: object) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, event)(*args)
            except Exception:
                _log.failure(
                    "group observer {observer!r} failed on {event}", observer=observer, event=event
                )


class _Member(TunnelObserver):
    """One server of a group: its tunnel, and the forwards it holds for the group."""

    def __init__(
        self,
        group: TunnelGroup,
        index: int,
        server: GroupServer,
        reactor: IReactorTCP,
        clock: IReactorTime,
    ) -> None:
        self.group = group
        self.index = index
        self.server = server
        options = server.options or TunnelOptions()
        policy = options.staying_up.reconnect
        options = replace(
            options,
            staying_up=replace(options.staying_up, reconnect=replace(policy, mode="always")),
        )
        self.tunnel = ReverseTunnel(reactor, server.host, server.port, options=options, clock=clock)
        self.tunnel.add_observer(self)
        self.clock = clock
        self.up_since: float | None = None
        self.tried = False
        self.failed = False
        self.failure: Failure | None = None
        self.releasing = False
        #: For each forward of the group, the tunnel's Forward while this server holds it.
        self.held: list[Forward | None] = [None] * len(group.forwards)

    @property
    def is_up(self) -> bool:
        return self.tunnel.connected

    def health(self) -> ServerHealth:
        return ServerHealth(self.tunnel.connected, self.up_since, self.failed, self.tried)

    def active(self, forward: int) -> bool:
        held = self.held[forward]
        return held is not None and held.state is ForwardState.ACTIVE

    def holds_any(self) -> bool:
        return any(f is not None for f in self.held)

    def status(self) -> GroupServerStatus:
        return GroupServerStatus(
            self.server.label,
            self.index,
            self.group.role(self.index),
            self.tunnel.connection_state,
            self.tunnel.connected,
            tuple(self.held),
        )

    def start(self) -> None:
        d = self.tunnel.logon()
        d.addErrback(self._gave_up)
        self.tunnel.when_disconnected().addErrback(self._gave_up)

    def _gave_up(self, failure: Failure) -> None:
        if self.group._stopping:
            return
        self.failed = self.tried = True
        self.failure = failure
        self.up_since = None
        message = printable(str(failure.value))
        _log.error(
            "Server {server} of the group gave up: {why}", server=self.server.label, why=message
        )
        self.group._decide()

    # -- holding forwards

    def hold_all(self) -> Deferred[None]:
        """Request every forward this server does not hold yet; fires once each is
        answered (agreed or refused)."""
        asked = [self._hold(i) for i in range(len(self.group.forwards)) if self.held[i] is None]
        self.releasing = False
        return gatherResults(asked, consumeErrors=True).addBoth(lambda _: None)

    def _hold(self, index: int) -> Deferred[None]:
        spec = self.group.forwards[index]
        tunnel = self.tunnel
        before = {id(f) for f in tunnel.forwards}
        if spec.listen_path is not None:
            d = tunnel.request_socket_forwarding(
                spec.listen_path,
                spec.host,
                spec.host_port,
                factory=spec.factory,
                accept=spec.accept,
                target_path=spec.target_path,
                policy=spec.policy,
            )
        else:
            d = tunnel.request_forwarding(
                spec.bind_address,
                spec.port,
                spec.host,
                spec.host_port,
                factory=spec.factory,
                accept=spec.accept,
                dynamic=spec.dynamic,
                target_path=spec.target_path,
                policy=spec.policy,
            )
        # The table keeps the new Forward from the call on (before the server answers).
        made = next((f for f in tunnel.forwards if id(f) not in before), None)
        self.held[index] = made

        def agreed(forward: Forward) -> None:
            self.group._update()

        def refused(failure: Failure) -> None:
            if self.held[index] is made and made not in tunnel.forwards:
                self.held[index] = None
            if not self.group._stopping and not self.releasing:
                why = failure.value
                message = why.message if isinstance(why, RTunnelError) else str(why)
                _log.warn(
                    "{server}: the forward of port {port} was not set up: {why}",
                    server=self.server.label,
                    port=spec.port,
                    why=printable(message),
                )
            self.group._update()

        return d.addCallbacks(agreed, refused)

    def release_all(self) -> Deferred[None]:
        """Stop holding every forward: cancel them on a live connection, forget them on
        a lost one."""
        self.releasing = True
        work = []
        for index, forward in enumerate(self.held):
            if forward is None:
                continue
            self.held[index] = None
            if forward not in self.tunnel.forwards:
                continue
            if self.tunnel.connected and forward.state is ForwardState.ACTIVE:
                if forward.listen_path is not None:
                    d = self.tunnel.cancel_socket_forwarding(forward.listen_path)
                else:
                    d = self.tunnel.cancel_forwarding(forward.bind_address, forward.port)
                work.append(d.addErrback(lambda f: None))
            else:
                self.tunnel._forget_forward(forward)
        return gatherResults(work, consumeErrors=True).addBoth(lambda _: None)

    # -- the tunnel's events

    @override
    def connected(self) -> None:
        self.up_since = self.clock.seconds()
        self.failed = False
        self.tried = True
        self.group._ever_up = True
        self.group._decide()

    @override
    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        if attempt.retry_type == "ssh" and not self.tried:
            # The first logon failed and is retried: the group need not wait for it.
            self.tried = True
            if attempt.error is not None:
                self.failure = Failure(attempt.error)
            self.group._decide()

    @override
    def disconnected(self, reason: Exception | None) -> None:
        self.up_since = None
        # Heard before the tunnel marks its forwards lost; the decision below does not
        # see this server as up (its connection is gone already).
        self.group._decide()

    @override
    def forward_state_changed(self, forward: Forward) -> None:
        if any(f is forward for f in self.held):
            self.group._update()
