"""
``twistd rtunnel``: a reverse tunnel as a Twisted service, and the pieces the ``rtunnel``
command shares with it (building a :class:`~rtunnel.ReverseTunnel` from OpenSSH-style
options, requesting the forwards, and wording errors as ``ssh`` does).

Run it with, for example::

    twistd -n rtunnel -i ~/.ssh/id_ed25519 -R 8080:localhost:80 tunnel@gateway.example.com

The service logs on when it starts and logs off when it stops (twistd waits for that).
When the connection is lost, the service reconnects by itself with backoff and requests
its forwards again (``-o AutoReconnect=always`` also retries the first logon). When the
first connection cannot be made, or with ``-o AutoReconnect=no`` when the connection is
lost, the error is logged and the reactor is stopped, so twistd exits and a supervisor
can start it again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from twisted.application.service import IService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from typing_extensions import override

from rtunnel._core.syntax import parse_destination
from rtunnel._front import (
    DEFAULT_IDENTITY_FILES,
    ReconnectReporter,
    Report,
    build_group,
    build_tunnel,
    describe_error,
    establish_forwards,
    group_members,
    local_user,
    tunnel_options,
)
from rtunnel.errors import (
    ConnectError,
    RTunnelError,
    SpecError,
)
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.config_files import expand_host_name
from rtunnel.openssh.forwards import parse_remote_forward
from rtunnel.openssh.keywords import twistd_summary
from rtunnel.openssh.values import parse_port

if TYPE_CHECKING:
    from rtunnel.group import GroupServerStatus, TunnelGroup
    from rtunnel.operations.observe import Observability
    from rtunnel.tunnel import ReverseTunnel

__all__ = [
    "DEFAULT_IDENTITY_FILES",
    "Options",
    "Report",
    "TunnelService",
    "build_tunnel",
    "describe_error",
    "establish_forwards",
    "local_user",
    "makeService",
    "tunnel_options",
]

_log = Logger()

_T = TypeVar("_T")

#: Seconds :meth:`TunnelService.stopService` lets the tunnel log off before giving up.
STOP_TIMEOUT = 3.0


# --------------------------------------------------------------------------------------
# twistd


class Options(usage.Options):
    """
    ``twistd rtunnel`` options: a subset of ``ssh``'s, with the same meaning.
    """

    synopsis = "[options] [user@]host"
    longdesc = (
        "Keep SSH reverse tunnels (ssh -R) open to host. Options follow OpenSSH's ssh: "
        "-R [bind_address:]port:host:hostport (repeatable), -i identity_file "
        "(repeatable), -p port, -l login_name, and -o Option=value (repeatable) with "
        "these options, by topic. "
        + twistd_summary()
        + " A lost connection is made again with backoff (up to a minute between tries) "
        "and the forwards requested again; AutoReconnect=always also retries the first "
        "logon. If the first connection fails, or the connection drops with "
        "AutoReconnect=no, the error is logged and twistd exits."
    )

    def __init__(self) -> None:
        super().__init__()
        self.client_options = ClientOptions()
        self.host = ""

    def opt_port(self, port: str) -> None:
        """Port to connect to on the remote host [default: 22]."""
        if self.client_options.port is None:
            self.client_options.port = _usage(parse_port, port)

    opt_p = opt_port

    def opt_login_name(self, user: str) -> None:
        """User to log in as on the remote host [default: the local user]."""
        self.client_options.set_default_user(user)

    opt_l = opt_login_name

    def opt_identity_file(self, path: str) -> None:
        """Private key file for public key authentication (repeatable)."""
        self.client_options.identity_files.append(os.path.expanduser(path))

    opt_i = opt_identity_file

    def opt_option(self, text: str) -> None:
        """An ssh_config option, Key=Value (repeatable)."""
        _usage(self.client_options.apply_option, text)

    opt_o = opt_option

    def opt_remote_forward(self, spec: str) -> None:
        """[bind_address:]port:host:hostport to forward (repeatable)."""
        self.client_options.add_remote_forward(_usage(parse_remote_forward, spec))

    opt_R = opt_remote_forward  # noqa: N815 (ssh's option letter is upper case)

    @override
    def parseArgs(self, destination: str) -> None:  # type: ignore[override]
        """The destination: [user@]host or ssh://[user@]host[:port]."""
        parsed = _usage(parse_destination, destination)
        self.client_options.set_default_user(parsed.user)
        self.client_options.set_default_port(parsed.port)
        self.host = parsed.host
        if self.client_options.host_name is not None:
            # -o HostName: the host connected to, its %h the destination's (readconf.c).
            self.host = _usage(
                lambda name: expand_host_name(name, parsed.host), self.client_options.host_name
            )

    @override
    def postOptions(self) -> None:
        if not self.client_options.remote_forwards:
            raise usage.UsageError("no remote forwards: give -R [bind_address:]port:host:hostport")
        _usage(lambda _text: self.client_options.attach_policies(), "")


def _usage(parse: Callable[[str], _T], text: str) -> _T:
    """Call ``parse(text)``, turning a SpecError into twistd's UsageError."""
    try:
        return parse(text)
    except SpecError as error:
        raise usage.UsageError(error.message) from None


class TunnelService(Service):
    """
    A service that keeps one reverse tunnel for as long as it runs: it logs on and
    requests the forwards when started, and logs off when stopped. It shows the tunnel
    on the control socket and the HTTP listener the options ask for (``ControlSocket``,
    ``HttpListen``), and to systemd when ``$NOTIFY_SOCKET`` is set.

    :param reactor: the reactor.
    :param host: the SSH server.
    :param options: the settings (user, port, keys, host key checking, forwards, ...).
    :param on_failure: called with the error when the tunnel cannot be set up or its
        connection is lost (after it was logged); :func:`makeService` stops the reactor.
    """

    name = "rtunnel"

    def __init__(
        self,
        reactor: IReactorTCP,
        host: str,
        options: ClientOptions,
        *,
        on_failure: Callable[[RTunnelError], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._clock = cast(IReactorTime, reactor)
        self._host = host
        self._options = options
        self._on_failure = on_failure
        self._user = options.user if options.user is not None else local_user()
        self._tunnel: ReverseTunnel | None = None
        self._group: TunnelGroup | None = None
        self._running: Deferred[None] | None = None
        self._operations: Observability | None = None

    @property
    def tunnel(self) -> ReverseTunnel | None:
        """The tunnel, while the service runs."""
        return self._tunnel

    def _report(self, level: str, text: str) -> None:
        if level.startswith("DEBUG"):
            _log.debug("{text}", text=text)
        elif level in ("FATAL", "ERROR"):
            _log.error("{text}", text=text)
        elif text.startswith("Warning:"):
            _log.warn("{text}", text=text)
        else:
            _log.info("{text}", text=text)

    @override
    def startService(self) -> None:
        super().startService()
        self._running = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        options = self._options
        if options.group_servers:
            await self._run_group()
            return
        try:
            self._tunnel = tunnel = build_tunnel(
                self._reactor, self._host, options, report=self._report
            )
            self._start_operations(tunnel)
            if tunnel.options.staying_up.reconnect.mode != "off":
                # The tunnel logs each attempt itself, once.
                tunnel.add_observer(ReconnectReporter(self._host, self._report, attempts=False))
            await tunnel.logon()
            _log.info(
                "Logged on to {host} port {port} as {user}.",
                host=self._host,
                port=options.port if options.port is not None else 22,
                user=self._user,
            )
            lost = tunnel.when_disconnected()
            try:
                await establish_forwards(
                    tunnel,
                    options.remote_forwards,
                    exit_on_failure=bool(options.exit_on_forward_failure),
                    report=self._report,
                )
            except BaseException:
                # Nobody will wait for it now; don't leave its failure unhandled.
                lost.addErrback(lambda _: None)
                lost.cancel()
                raise
            await lost
        except CancelledError:
            return  # stopService
        except RTunnelError as error:
            if not self.running:
                return  # stopService abandoned the logon: no failure
            _log.error("{message}", message=describe_error(error, user=self._user, host=self._host))
            if self._on_failure is not None:
                self._on_failure(error)

    async def _run_group(self) -> None:
        """``-o GroupServer`` (issue #15): the destination and those servers as a group."""
        from rtunnel.group import GroupObserver
        from rtunnel.operations.observe import Changes, start_operations
        from rtunnel.operations.status import OneGroup

        options = self._options
        service = self

        class GivesUp(GroupObserver):
            @override
            def server_changed(self, server: GroupServerStatus) -> None:
                group = service._group
                if group is None or not all(s.role == "failed" for s in group.servers()):
                    return
                _log.error("rtunnel: every server of the group has given up.")
                if service._on_failure is not None and service.running:
                    service._on_failure(ConnectError("Every server of the group has given up."))

        try:
            self._group = group = build_group(
                self._reactor,
                group_members(self._host, options),
                options.remote_forwards,
                mode=options.group_mode,
                failback_after=options.failback_after,
                report=self._report,
                retry_first_logon=options.auto_reconnect == "always",
            )
            self._operations = operations = start_operations(
                self._reactor,
                OneGroup(self._host, group, options.remote_forwards),
                control_socket=options.control_socket,
                http_listen=options.http_listen,
                report=self._report,
            )
        except SpecError as error:
            _log.error("rtunnel: {message}", message=error.message)
            if self._on_failure is not None:
                self._on_failure(error)
            return
        group.add_tunnel_observer(Changes(operations.notifier.changed))
        group.add_observer(GivesUp())
        try:
            await group.start()
        except CancelledError:
            return
        except RTunnelError as error:
            if not self.running:
                return  # stopService abandoned it
            # No server could be logged on (the first logon is not retried without
            # AutoReconnect=always), or every one gave up.
            _log.error("{message}", message=describe_error(error, user=self._user, host=self._host))
            if self._on_failure is not None:
                self._on_failure(error)

    def _start_operations(self, tunnel: ReverseTunnel) -> None:
        """:raises SpecError: the control socket or HTTP listener cannot start."""
        from rtunnel.operations.observe import Changes, start_operations
        from rtunnel.operations.status import OneTunnel

        options = self._options
        self._operations = operations = start_operations(
            self._reactor,
            OneTunnel(self._host, tunnel, options.remote_forwards),
            control_socket=options.control_socket,
            http_listen=options.http_listen,
            report=self._report,
        )
        tunnel.add_observer(Changes(operations.notifier.changed))

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        running, self._running = self._running, None
        operations = self._operations
        if operations is not None:
            operations.stopping()
        if running is not None and not running.called:
            running.cancel()
        tunnel = self._tunnel
        group, self._group = self._group, None
        if group is not None:
            stopping = group.stop()
            stopping.addTimeout(STOP_TIMEOUT, self._clock)
            try:
                await stopping
            except Exception:
                _log.failure("Logging off did not finish cleanly.")
        if tunnel is not None:
            logoff = tunnel.logoff()
            logoff.addTimeout(STOP_TIMEOUT, self._clock)
            try:
                await logoff
            except Exception:
                _log.failure("Logging off did not finish cleanly.")
        if operations is not None:
            self._operations = None
            await operations.stop()


def makeService(config: Options, reactor: IReactorTCP | None = None) -> IService:  # noqa: N802 (twistd)
    """
    The ``twistd rtunnel`` service for parsed :class:`Options`.

    :param config: the parsed options.
    :param reactor: the reactor (default: the global one).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IReactorTCP, global_reactor)
    core = cast(IReactorCore, reactor)

    def stop(error: RTunnelError) -> None:
        if core.running:
            core.stop()

    return TunnelService(reactor, config.host, config.client_options, on_failure=stop)
