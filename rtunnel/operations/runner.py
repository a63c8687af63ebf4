"""
Runs every tunnel of a configuration file (:mod:`rtunnel.operations.config`), says how
they are (:class:`Runner` is a :class:`~rtunnel.operations.status.StatusSource`), and
reloads a new configuration without disturbing what did not change.

Reload (:meth:`Runner.reload`), by tunnel name and forward:

- a tunnel whose server and forwards are the same: untouched, its connections carry on;
- a tunnel whose server is the same but forwards differ: added forwards are requested,
  removed ones cancelled (the server stops listening; connections already open through
  them carry on until they close: ``cancel-tcpip-forward`` stops only new ones);
- a tunnel whose server changed (host, port, user, credentials, any option): logged off
  and started again with the new settings, alone;
- a new tunnel starts, a removed one logs off; a tunnel that had given up starts again;
- a file with a mistake is refused with its message, and the running set stays.

A tunnel that gives up (its first logon fails, a changed host key, ``MaxRetryCount``)
is shown as ``failed`` and the others carry on; :meth:`Runner.when_all_failed` fires when
none is left running, for the command to exit with ssh's status 255.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    FirstError,
    gatherResults,
)
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core.forwards import ForwardState
from rtunnel._core.text import printable
from rtunnel._front import (
    ReconnectReporter,
    Report,
    build_group,
    describe_error,
    establish_forwards,
    local_user,
    tunnel_options,
)
from rtunnel._model import ChannelInfo, Forward, ReconnectAttempt, TunnelObserver
from rtunnel.errors import RTunnelError, SpecError
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.options import parse_keyword
from rtunnel.operations.config import (
    PROCESS_KEYS,
    Config,
    ConfigError,
    ProcessConfig,
    TunnelConfig,
    load_config,
)
from rtunnel.operations.status import ForwardStatus, TunnelStatus, policy_status

if TYPE_CHECKING:
    from twisted.logger import ILogObserver

    from rtunnel.group import GroupObserver, GroupServerStatus, TunnelGroup
    from rtunnel.openssh.forwards import RemoteForwardSpec
    from rtunnel.tunnel import ReverseTunnel

__all__ = ["ReloadResult", "Runner", "main"]

_log = Logger()

#: Seconds each tunnel is given to log off when stopped or replaced.
LOGOFF_TIMEOUT = 3.0


def _log_report(level: str, text: str) -> None:
    """The default report: through ``twisted.logger`` at the matching level."""
    if level.startswith("DEBUG"):
        _log.debug("{text}", text=text)
    elif level in ("FATAL", "ERROR"):
        _log.error("{text}", text=text)
    elif text.startswith("Warning:"):
        _log.warn("{text}", text=text)
    else:
        _log.info("{text}", text=text)


@dataclass(frozen=True)
class ReloadResult:
    """
    What a reload did, by tunnel name (and ``"tunnel: forward"`` for forwards).

    :ivar unchanged: tunnels left alone.
    :ivar started: tunnels started (new ones, and failed ones started again).
    :ivar restarted: tunnels whose server changed, started again.
    :ivar stopped: tunnels no longer in the file, logged off.
    :ivar forwards_added: forwards requested on a running tunnel.
    :ivar forwards_removed: forwards cancelled on a running tunnel.
    :ivar policies_changed: forwards of a running tunnel given their new policy in place
        (issue #15; the server is not asked anything).
    """

    unchanged: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    forwards_added: tuple[str, ...] = ()
    forwards_removed: tuple[str, ...] = ()
    policies_changed: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the log."""
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("started", self.started),
                ("restarted", self.restarted),
                ("stopped", self.stopped),
                ("added forwards", self.forwards_added),
                ("removed forwards", self.forwards_removed),
                ("changed policies", self.policies_changed),
            )
            if names
        ]
        return "; ".join(parts) if parts else "nothing changed"


class _Counters:
    """Per forward: channels since it started, and what closed channels carried."""

    def __init__(self) -> None:
        self.total = 0
        self.closed_in = 0
        self.closed_out = 0


class _Running(TunnelObserver):
    """One tunnel of the runner, and the observer that keeps its status."""

    def __init__(self, runner: Runner, config: TunnelConfig) -> None:
        self.runner = runner
        self.config = config
        self.clock = runner.clock
        self.tunnel: ReverseTunnel | None = None
        self.state = "connecting"
        self.since = self.clock.seconds()
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        # Forwards by spec: the library's Forward once granted; None while asked for or
        # after a refusal (self.refused).
        self.forwards: dict[RemoteForwardSpec, Forward | None] = {
            f.spec: None for f in config.forwards
        }
        self.refused: set[RemoteForwardSpec] = set()
        self.counters: dict[RemoteForwardSpec, _Counters] = {
            f.spec: _Counters() for f in config.forwards
        }
        self.task: Deferred[None] | None = None
        self.finished = False

    # -- status

    def _enter(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, self.clock.seconds()

    def _error_seen(self, message: str) -> None:
        self.last_error = printable(message, 500)
        self.last_error_time = self.clock.seconds()

    def _spec_of(self, forward: Forward | None) -> RemoteForwardSpec | None:
        if forward is None:
            return None
        return next((s for s, f in self.forwards.items() if f is forward), None)

    @override
    def connected(self) -> None:
        self._enter("connected")

    @override
    def disconnected(self, reason: Exception | None) -> None:
        if reason is not None:
            self._error_seen(str(reason))

    @override
    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        if attempt.error is not None:
            self._error_seen(str(attempt.error))
        if attempt.retry_type == "ssh":
            self._enter("waiting")

    @override
    def connection_status(self, event: str, status_code: int, description: str) -> None:
        if event == "tcp-connected" and self.state == "waiting":
            self._enter("connecting")
        elif event == "broken":
            self._error_seen(description)
            self._enter("waiting")

    @override
    def error(self, error: Exception) -> None:
        self._error_seen(str(error))

    @override
    def channel_opened(self, info: ChannelInfo) -> None:
        spec = self._spec_of(info.forward)
        if spec is not None:
            self.counters[spec].total += 1

    @override
    def channel_closed(self, info: ChannelInfo) -> None:
        spec = self._spec_of(info.forward)
        if spec is not None:
            self.counters[spec].closed_in += info.bytes_received
            self.counters[spec].closed_out += info.bytes_sent

    def status(self) -> TunnelStatus:
        config = self.config
        user = config.user or local_user()
        tunnel = self.tunnel
        stats = tunnel.statistics() if tunnel is not None else None
        live = tunnel.channels if tunnel is not None else []
        forwards = []
        for forward_config in config.forwards:
            spec = forward_config.spec
            forward = self.forwards.get(spec)
            counters = self.counters.get(spec) or _Counters()
            mine = [c for c in live if forward is not None and c.forward is forward]
            if forward is not None:
                state = forward.state.value
            elif spec in self.refused:
                state = ForwardState.FAILED.value
            elif self.finished:
                state = ForwardState.CANCELLED.value
            else:
                state = ForwardState.PENDING.value
            port = forward.port if forward is not None and forward.port else None
            if spec.listen_path is not None:
                listen, port = spec.listen_path, None
            else:
                bind = spec.bind_address or "*"
                listen = f"{bind}:{port if port is not None else spec.port}"
            forwards.append(
                ForwardStatus(
                    name=forward_config.name,
                    state=state,
                    listen=listen,
                    allocated_port=port if state == "active" else None,
                    channels_open=len(mine),
                    channels_total=counters.total,
                    bytes_in=counters.closed_in + sum(c.bytes_received for c in mine),
                    bytes_out=counters.closed_out + sum(c.bytes_sent for c in mine),
                    **policy_status(
                        spec.policy if forward is None else forward.policy,
                        {} if forward is None else forward.refused,
                    ),
                )
            )
        return TunnelStatus(
            name=config.name,
            server=f"{user}@{config.host}:{config.port}",
            state=self.state,
            since=self.since,
            reconnects=stats.reconnects if stats is not None else 0,
            key_exchanges=stats.total_key_exchanges if stats is not None else 0,
            last_error=self.last_error,
            last_error_time=self.last_error_time,
            forwards=tuple(forwards),
        )

    # -- running

    def report(self, level: str, text: str) -> None:
        self.runner.tunnel_report(self.config.name, level, text)

    def start(self) -> None:
        self.task = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        config = self.config
        options = config.client_options()
        user = config.user or local_user()
        try:
            from rtunnel.client.auth.credentials import Password
            from rtunnel.options import TunnelOptions
            from rtunnel.tunnel import ReverseTunnel

            built = tunnel_options(options, report=self.report)
            if config.password is not None:
                auth = (*built.authentication.auth, Password(config.password))
                built = TunnelOptions.create(base=built, auth=auth)
            self.tunnel = tunnel = ReverseTunnel(
                self.runner.reactor, config.host, config.port, options=built
            )
        except SpecError as error:
            self._failed(f"rtunnel: {error.message}")
            return
        tunnel.add_observer(self)
        for observer in self.runner.observers:
            tunnel.add_observer(observer)
        if tunnel.options.staying_up.reconnect.mode != "off":
            tunnel.add_observer(ReconnectReporter(config.host, self.report, attempts=True))
        try:
            await tunnel.logon()
            self.report("INFO", f"Logged on to {config.host} port {config.port} as {user}.")
            lost = tunnel.when_disconnected()
            try:
                await self.add_forwards(list(self.forwards))
            except BaseException:
                lost.addErrback(lambda _: None)
                lost.cancel()
                raise
            await lost
            self._enter("stopped")
        except CancelledError:
            return
        except RTunnelError as error:
            self._failed(describe_error(error, user=user, host=config.host))
            if tunnel.connected:
                # A refused forward with ExitOnForwardFailure=yes: log off, as the
                # command exits.
                logoff = tunnel.logoff()
                logoff.addTimeout(LOGOFF_TIMEOUT, self.clock)
                try:
                    await logoff
                except Exception as problem:
                    _log.debug("Logging off did not finish cleanly: {why}", why=str(problem))

    def _failed(self, message: str) -> None:
        self.report("ERROR", message)
        self._error_seen(message)
        self._enter("failed")
        self.finished = True
        self.runner.tunnel_failed(self)

    def apply_policies(self) -> list[str]:
        """Give each granted forward the policy the configuration now says (a reload);
        the names of those that changed."""
        tunnel = self.tunnel
        changed: list[str] = []
        if tunnel is None:
            return changed
        for forward_config in self.config.forwards:
            forward = self.forwards.get(forward_config.spec)
            wanted = forward_config.spec.policy
            if forward is None or forward.policy == wanted or forward not in tunnel.forwards:
                continue
            tunnel.set_forward_policy(forward, wanted)
            changed.append(f"{self.config.name}: {forward_config.name}")
        return changed

    async def add_forwards(self, specs: Sequence[RemoteForwardSpec]) -> None:
        tunnel = self.tunnel
        assert tunnel is not None
        exit_on_failure = self.config.client_options().exit_on_forward_failure

        async def one(spec: RemoteForwardSpec) -> None:
            self.forwards[spec] = None
            self.counters.setdefault(spec, _Counters())
            self.refused.discard(spec)
            granted = await establish_forwards(
                tunnel, [spec], exit_on_failure=exit_on_failure, report=self.report
            )
            if spec not in self.forwards:
                return  # removed by a reload meanwhile
            if granted:
                self.forwards[spec] = granted[0]
                # A reload may have changed its policy while it was asked for.
                self.apply_policies()
            else:
                self.refused.add(spec)

        try:
            await gatherResults([Deferred.fromCoroutine(one(s)) for s in specs], consumeErrors=True)
        except FirstError as error:
            error.subFailure.raiseException()

    async def remove_forward(self, spec: RemoteForwardSpec) -> bool:
        """Cancel one forward; False if the tunnel must start again instead (the forward
        is still being asked for, or the connection is being made again)."""
        tunnel = self.tunnel
        forward = self.forwards.get(spec)
        if spec in self.refused:
            self.forwards.pop(spec, None)
            self.refused.discard(spec)
            return True
        if tunnel is None or forward is None or not tunnel.connected:
            return False
        if forward not in tunnel.forwards:
            self.forwards.pop(spec, None)
            return True
        try:
            if spec.listen_path is not None:
                await tunnel.cancel_socket_forwarding(spec.listen_path)
            else:
                await tunnel.cancel_forwarding(forward.bind_address, forward.port)
        except RTunnelError as error:
            if forward in tunnel.forwards:
                self.report("ERROR", f"Cancelling the forward {spec}: {error.message}")
                return False
        self.forwards.pop(spec, None)
        self.report("INFO", f"Cancelled the remote forward of listen port {forward.port}.")
        return True

    async def stop(self) -> None:
        task, tunnel = self.task, self.tunnel
        self.finished = True
        if task is not None and not task.called:
            task.cancel()
        if tunnel is not None:
            logoff = tunnel.logoff()
            logoff.addTimeout(LOGOFF_TIMEOUT, self.clock)
            try:
                await logoff
            except Exception as error:
                _log.debug("Logging off did not finish cleanly: {why}", why=str(error))
        self._enter("stopped")


class _RunningGroup:
    """One tunnel group of the runner (issue #15): a unit, started and stopped whole."""

    def __init__(self, runner: Runner, config: TunnelConfig) -> None:
        self.runner = runner
        self.config = config
        self.clock = runner.clock
        self.group: TunnelGroup | None = None
        #: A group has no one tunnel (Runner.add_observer watches each server's).
        self.tunnel: ReverseTunnel | None = None
        self.finished = False
        self.error: str | None = None

    def report(self, level: str, text: str) -> None:
        self.runner.tunnel_report(self.config.name, level, text)

    def start(self) -> None:
        config = self.config
        options = config.client_options()
        servers = []
        for server in config.servers:
            server_options = server.client_options()
            servers.append((server.name, server.host, server_options, server.password))
        try:
            self.group = group = build_group(
                self.runner.reactor,
                servers,
                [f.spec for f in config.forwards],
                mode=options.group_mode,
                failback_after=options.failback_after,
                report=self.report,
                retry_first_logon=options.auto_reconnect == "always",
            )
        except SpecError as error:
            self._failed(f"rtunnel: {error.message}")
            return
        group.add_observer(_gives_up(self))
        for observer in self.runner.observers:
            group.add_tunnel_observer(observer)
        names = ", ".join(s.name for s in config.servers)
        self.report("INFO", f"Starting the {group.mode.value} group of {names}.")
        group.start().addErrback(self._not_started)

    def _not_started(self, failure: Failure) -> None:
        # No server could be logged on at first (without AutoReconnect=always), or every
        # one gave up: the group has failed, as a tunnel whose first logon fails.
        if self.finished:
            return
        error = failure.value
        if isinstance(error, RTunnelError):
            user = self.config.servers[0].user or local_user()
            self._failed(describe_error(error, user=user, host=self.config.servers[0].host))
        else:
            self._failed(f"rtunnel: {failure.getErrorMessage()}")

    def add_observer(self, observer: TunnelObserver) -> None:
        if self.group is not None:
            self.group.add_tunnel_observer(observer)

    def all_failed(self) -> None:
        if not self.finished:
            self._failed("rtunnel: every server of the group has given up.")

    def _failed(self, message: str) -> None:
        self.report("ERROR", message)
        self.error = message
        self.finished = True
        self.runner.tunnel_failed(self)

    def status(self) -> TunnelStatus:
        from rtunnel.operations.status import group_tunnel_status

        group = self.group
        if group is None:
            return TunnelStatus(
                self.config.name,
                self.config.servers[0].name,
                "failed",
                self.clock.seconds(),
                0,
                0,
                self.error,
                None,
                (),
            )
        return group_tunnel_status(
            self.config.name,
            group,
            [f.name for f in self.config.forwards],
            finished=self.finished,
        )

    async def stop(self) -> None:
        self.finished = True
        group = self.group
        if group is None:
            return
        stopping = group.stop()
        stopping.addTimeout(LOGOFF_TIMEOUT, self.clock)
        try:
            await stopping
        except Exception as error:
            _log.debug("Logging off did not finish cleanly: {why}", why=str(error))


def _gives_up(running: _RunningGroup) -> GroupObserver:
    """An observer that tells ``running`` when every server of its group has given up."""
    # rtunnel.group (and the tunnel under it) is imported once a group starts, not
    # whenever the runner is (issue #17: start time).
    from rtunnel.group import GroupObserver

    class GivesUp(GroupObserver):
        @override
        def server_changed(self, server: GroupServerStatus) -> None:
            group = running.group
            if group is not None and all(s.role == "failed" for s in group.servers()):
                running.all_failed()

    return GivesUp()


def _policies(config: TunnelConfig) -> tuple[object, ...]:
    """Its forwards' policies, in order (a forward's identity leaves its policy out)."""
    return tuple(f.spec.policy for f in config.forwards)


class Runner:
    """
    Runs the tunnels of a :class:`~rtunnel.operations.config.Config`.

    :param reactor: the reactor (TCP and time).
    :param config: the checked configuration.
    :param report: where messages go, ``report(level, text)`` with ssh's levels
        (default: ``twisted.logger``).
    :param tunnel_report: where a tunnel's messages go, ``tunnel_report(name, level,
        text)`` (default: to ``report``, as ``[name] text``).
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        config: Config,
        *,
        report: Report | None = None,
        tunnel_report: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = cast(IReactorTime, reactor)
        self.config = config
        self.report: Report = report or _log_report
        self._tunnel_report = tunnel_report
        #: What every tunnel started from now on is also watched by (add_observer).
        self.observers: list[TunnelObserver] = []
        self._running: dict[str, _Running | _RunningGroup] = {}
        self._all_failed: list[Deferred[None]] = []
        self._reload_lock = DeferredLock()

    def tunnel_report(self, name: str, level: str, text: str) -> None:
        """Report a message of the tunnel called ``name``."""
        if self._tunnel_report is not None:
            self._tunnel_report(name, level, text)
        else:
            self.report(level, f"[{name}] {text}")

    def add_observer(self, observer: TunnelObserver) -> None:
        """Watch every tunnel with ``observer``: those running, and each one started later
        (a new tunnel, or one started again by a reload)."""
        self.observers.append(observer)
        for running in self._running.values():
            if isinstance(running, _RunningGroup):
                running.add_observer(observer)
            elif running.tunnel is not None:
                running.tunnel.add_observer(observer)

    def start(self) -> None:
        """Start every tunnel (each logs on and requests its forwards by itself)."""
        for tunnel in self.config.tunnels:
            self._start(tunnel)

    def _start(self, config: TunnelConfig) -> None:
        running = _RunningGroup(self, config) if config.servers else _Running(self, config)
        self._running[config.name] = running
        running.start()

    def status(self) -> Sequence[TunnelStatus]:
        """A snapshot of every tunnel started, in configuration order (none before
        :meth:`start`: the control socket and systemd may ask before it)."""
        running = (self._running.get(t.name) for t in self.config.tunnels)
        return [r.status() for r in running if r is not None]

    def tunnel(self, name: str) -> ReverseTunnel | None:
        """The library's tunnel for the tunnel called ``name`` (for tests and tools)."""
        running = self._running.get(name)
        return running.tunnel if running is not None else None

    def group(self, name: str) -> TunnelGroup | None:
        """The tunnel group called ``name`` (issue #15), for tests and tools."""
        running = self._running.get(name)
        return running.group if isinstance(running, _RunningGroup) else None

    def tunnel_failed(self, running: _Running | _RunningGroup) -> None:
        if all(r.finished for r in self._running.values()):
            waiting, self._all_failed = self._all_failed, []
            for d in waiting:
                d.callback(None)

    def when_all_failed(self) -> Deferred[None]:
        """Fires when every tunnel has given up (none is left running)."""
        d: Deferred[None] = Deferred(lambda d: self._all_failed.remove(d))
        self._all_failed.append(d)
        return d

    def reload(self, config: Config) -> Deferred[ReloadResult]:
        """
        Change to ``config`` (see the module's description); fires once added forwards
        were answered, removed ones cancelled and changed tunnels started again
        (not logged on: that goes on by itself).
        """
        return Deferred.fromCoroutine(self._reload(config))

    async def _reload(self, config: Config) -> ReloadResult:
        old = {t.name: t for t in self.config.tunnels}
        if config.process != self.config.process:
            # The control socket and the HTTP listener stay where they are: moving them
            # under the feet of a supervisor that probes them would look like a failure.
            self.report(
                "INFO",
                f"Warning: the [process] settings of {config.file} changed; they take "
                "effect when rtunnel is started again.",
            )
            config = replace(config, process=self.config.process)
        self.config = config
        unchanged: list[str] = []
        started: list[str] = []
        restarted: list[str] = []
        added: list[str] = []
        removed: list[str] = []
        policies: list[str] = []
        work: list[Deferred[Any]] = []
        for name in [n for n in old if config.tunnel(n) is None]:
            work.append(Deferred.fromCoroutine(self._running.pop(name).stop()))
        stopped = [n for n in old if config.tunnel(n) is None]
        for new in config.tunnels:
            running = self._running.get(new.name)
            before = old.get(new.name)
            if running is None or before is None or running.finished:
                self._start(new)
                started.append(new.name)
            elif not before.same_server(new):
                work.append(Deferred.fromCoroutine(self._restart(running, new)))
                restarted.append(new.name)
            elif before.forwards == new.forwards and not (
                isinstance(running, _RunningGroup) and _policies(before) != _policies(new)
            ):
                running.config = new
                unchanged.append(new.name)
                if isinstance(running, _Running):
                    policies += running.apply_policies()
            elif isinstance(running, _RunningGroup):
                # A group is a unit: other forwards, the whole group again.
                work.append(Deferred.fromCoroutine(self._restart(running, new)))
                restarted.append(new.name)
            else:
                work.append(Deferred.fromCoroutine(self._change_forwards(running, before, new)))
                old_specs = {f.spec for f in before.forwards}
                new_specs = {f.spec for f in new.forwards}
                added += [f"{new.name}: {f.name}" for f in new.forwards if f.spec not in old_specs]
                removed += [
                    f"{new.name}: {f.name}" for f in before.forwards if f.spec not in new_specs
                ]
                had = {f.spec: f.spec.policy for f in before.forwards}
                policies += [
                    f"{new.name}: {f.name}"
                    for f in new.forwards
                    if f.spec in had and had[f.spec] != f.spec.policy
                ]
        await gatherResults(work, consumeErrors=True)
        result = ReloadResult(
            tuple(unchanged),
            tuple(started),
            tuple(restarted),
            tuple(stopped),
            tuple(added),
            tuple(removed),
            tuple(policies),
        )
        self.report("INFO", f"Reloaded {config.file}: {result.describe()}.")
        return result

    async def _restart(self, running: _Running | _RunningGroup, new: TunnelConfig) -> None:
        await running.stop()
        if self._running.get(new.name) is running:
            self._start(new)

    async def _change_forwards(
        self, running: _Running, before: TunnelConfig, new: TunnelConfig
    ) -> None:
        old_specs = {f.spec for f in before.forwards}
        new_specs = {f.spec for f in new.forwards}
        running.config = new
        for spec in [s for s in old_specs if s not in new_specs]:
            if not await running.remove_forward(spec):
                # Not cancellable now (the connection is being made again, or the request
                # is unanswered): start this tunnel again with the new forwards.
                await self._restart(running, new)
                return
        for spec in [s for s in old_specs if s not in new_specs]:
            running.counters.pop(spec, None)
        running.apply_policies()
        adding = [f.spec for f in new.forwards if f.spec not in old_specs]
        if adding:
            try:
                await running.add_forwards(adding)
            except RTunnelError as error:
                running.report("ERROR", error.message)

    def reload_file(self, file: str | None = None) -> Deferred[ReloadResult | None]:
        """
        Read the configuration file again (or ``file``) and :meth:`reload` it; a file with
        a mistake is reported (each problem at ``ERROR``) and changes nothing: fires with
        None then. A reload asked for while one is under way waits for it.
        """
        return Deferred.fromCoroutine(self._reload_file(file or self.config.file))

    async def _reload_file(self, file: str) -> ReloadResult | None:
        # One reload at a time: a second SIGHUP waits for the first to finish.
        await self._reload_lock.acquire()
        try:
            try:
                config = load_config(file)
            except ConfigError as error:
                for problem in error.problems:
                    self.report("ERROR", problem)
                self.report(
                    "ERROR", f"Not reloaded: {file} has mistakes; the tunnels run as before."
                )
                return None
            return await self.reload(config)
        finally:
            self._reload_lock.release()

    def stop(self) -> Deferred[None]:
        """Log every tunnel off (each for at most a few seconds)."""
        running = list(self._running.values())
        return Deferred.fromCoroutine(self._stop(running))

    async def _stop(self, running: list[_Running | _RunningGroup]) -> None:
        await gatherResults([Deferred.fromCoroutine(r.stop()) for r in running], consumeErrors=True)


# --------------------------------------------------------------------------------------
# rtunnel --config FILE [--check]

#: ssh's exit status for every failure; ``sshd -t`` and ``ssh -G`` also exit 255 for a
#: bad configuration file.
FAILURE = 255

USAGE = "usage: rtunnel --config FILE [--check] [-q] [-v] [-o option]\n"


@dataclass(frozen=True)
class _Arguments:
    file: str
    check: bool
    verbosity: int
    #: The [process] settings given with -o (they win over the file's).
    process: ProcessConfig


def _parse(argv: Sequence[str]) -> _Arguments:
    file: str | None = None
    check = False
    verbosity = 0
    options = ClientOptions()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config":
            file = args.pop(0) if args else None
        elif arg.startswith("--config="):
            file = arg.removeprefix("--config=")
        elif arg == "--check":
            check = True
        elif arg == "-q":
            verbosity = -1
        elif arg.startswith("-v") and set(arg[1:]) == {"v"}:
            verbosity = max(verbosity, 0) + len(arg) - 1
        elif arg.startswith("-o"):
            text = arg[2:] or (args.pop(0) if args else "")
            if not text:
                raise SpecError(f"rtunnel: option requires an argument -- o\n{USAGE}")
            _process_option(options, text)
        else:
            raise SpecError(
                f"rtunnel: unexpected argument {printable(arg, 100)!r} with --config\n{USAGE}"
            )
    if not file:
        raise SpecError(f"rtunnel: --config needs a FILE\n{USAGE}")
    return _Arguments(file, check, verbosity, ProcessConfig.from_options(options))


def _process_option(options: ClientOptions, text: str) -> None:
    """One ``-o``: only the settings of the process (a tunnel's go in the file)."""
    parsed = parse_keyword(text)
    if parsed is None:
        return
    row, value = parsed
    if row.name not in PROCESS_KEYS:
        raise SpecError(
            f"rtunnel: -o {row.name} with --config: a tunnel's options go in the file; "
            f"-o takes only {', '.join(PROCESS_KEYS)} here\n{USAGE}"
        )
    options.apply(row, value)


def main(
    argv: Sequence[str],
    *,
    start_logging: Callable[[ClientOptions, TextIO, ILogObserver | None], None],
) -> NoReturn:
    """
    ``rtunnel --config FILE [--check] [-o option]``: check the file; with ``--check``
    print nothing and exit 0 if it is good, else print every problem and exit 255 (as
    ``sshd -t``). Without ``--check``, run its tunnels until SIGTERM (exit 0) or SIGINT
    (255), or until every tunnel has given up (255); SIGHUP reloads the file. ``-o``
    gives the ``[process]`` settings (``ControlSocket``, ``HttpListen``, ``LogFormat``),
    over the file's.

    :param start_logging: starts ``twisted.logger`` output on stderr at the options' log
        level, in JSON lines through the observer if one is given, as the command does
        (``rtunnel.cli`` passes its own).
    """
    try:
        arguments = _parse(argv)
    except SpecError as error:
        # What was typed is quoted: escaped, line by line.
        sys.stderr.write(
            "".join(f"{printable(line, None)}\n" for line in error.message.splitlines())
        )
        sys.exit(FAILURE)
    file = arguments.file
    try:
        # Absolute: a reload reads the same file wherever the process is then.
        config = load_config(file if arguments.check else os.path.abspath(file))
    except ConfigError as error:
        for problem in error.problems:
            sys.stderr.write(printable(problem, None) + "\n")
        sys.exit(FAILURE)
    if arguments.check:
        sys.exit(0)
    from twisted.internet.task import react

    process = config.process.overridden_by(arguments.process)
    levels = ClientOptions()
    if arguments.verbosity < 0:
        levels.quiet()
    for _ in range(arguments.verbosity):
        levels.more_verbose()
    json_lines = None
    if process.log_format == "json":
        from rtunnel.operations.logs import JsonLinesObserver

        json_lines = JsonLinesObserver(
            sys.stderr, tracebacks=levels.effective_log_level in ("DEBUG2", "DEBUG3")
        )
    start_logging(levels, sys.stderr, json_lines)

    def say_for(tunnel: str | None, level: str, text: str) -> None:
        if not levels.logs(level):
            return
        if json_lines is not None:
            from rtunnel.operations.logs import SSH_LEVELS

            json_lines.write(time.time(), SSH_LEVELS[level], tunnel, text)
            return
        prefix = f"{level.lower()}: " if level.startswith("DEBUG") else ""
        named = f"[{tunnel}] " if tunnel is not None else ""
        sys.stderr.write(f"{prefix}{named}{printable(text, None)}\n")
        sys.stderr.flush()

    react(_run, (config, process, say_for))


async def _run(
    reactor: IReactorCore,
    config: Config,
    process: ProcessConfig,
    say_for: Callable[[str | None, str, str], None],
) -> NoReturn:
    from rtunnel.operations.observe import Changes, start_operations

    def say(level: str, text: str) -> None:
        say_for(None, level, text)

    runner = Runner(cast(IReactorTCP, reactor), config, report=say, tunnel_report=say_for)
    try:
        operations = start_operations(
            reactor,
            runner,
            control_socket=process.control_socket,
            http_listen=process.http_listen,
            report=say,
        )
    except SpecError as error:
        say("FATAL", f"rtunnel: {error.message}")
        raise SystemExit(FAILURE) from None
    runner.add_observer(Changes(operations.notifier.changed))
    stop: Deferred[int] = Deferred()

    def handle(signum: int, frame: FrameType | None) -> None:
        threads = cast(IReactorThreads, reactor)
        if signum == signal.SIGHUP:
            threads.callFromThread(_reload, runner)
        elif not stop.called:
            # clientloop.c: SIGTERM without a session is a clean stop (0); others 255.
            status = 0 if signum == signal.SIGTERM else FAILURE
            threads.callFromThread(_fire_once, stop, status)

    def install() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, handle)

    reactor.callWhenRunning(install)
    runner.start()

    def all_failed(_: None) -> None:
        if not stop.called:
            say("ERROR", "rtunnel: every tunnel has given up.")
            stop.callback(FAILURE)

    runner.when_all_failed().addCallback(all_failed)
    status = await stop
    operations.stopping()
    await runner.stop()
    await operations.stop()
    raise SystemExit(status)


def _fire_once(d: Deferred[int], status: int) -> None:
    if not d.called:
        d.callback(status)


def _reload(runner: Runner) -> None:
    runner.report("INFO", f"SIGHUP: reloading {runner.config.file}.")
    d = runner.reload_file()
    d.addErrback(lambda f: _log.failure("Reloading failed unexpectedly", f))
