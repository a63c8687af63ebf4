"""
``twistd rtunnel``: the plugin's module (``twisted/plugins/rtunnel_plugin.py`` names it).
One tunnel from ssh-style flags (:mod:`rtunnel.service`), or every tunnel of a
configuration file with ``--config FILE`` (:mod:`rtunnel.operations.runner`)::

    twistd -n rtunnel -i ~/.ssh/id_ed25519 -R 8080:localhost:80 tunnel@gateway.example.com
    twistd -n rtunnel --config /etc/rtunnel/tunnels.toml

What twistd itself does not do for a long-lived tunnel, this module does:

- SIGHUP reloads the configuration file (without ``--config``: logged and ignored).
  twistd installs no SIGHUP handler, so the signal's default action used to end the
  process with nothing logged and ``twistd.pid`` left behind.
- Giving up (the first logon fails, reconnecting gives up, every tunnel of the file has
  failed) stops the reactor and makes twistd exit with status 255, as the command does,
  so that systemd's ``Restart=on-failure`` sees a failure: twistd's own exit status is
  always 0.
- The control socket and the HTTP listener (``-o ControlSocket``, ``-o HttpListen``,
  or the configuration file's ``[process]`` table, ``-o`` winning) and systemd's
  notifications, as for the command (:mod:`rtunnel.operations.observe`). ``LogFormat``
  is the command's: twistd writes its log as its own options say.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTCP, IReactorThreads
from twisted.logger import Logger
from twisted.python import usage
from typing_extensions import override

from rtunnel.errors import RTunnelError, SpecError
from rtunnel.openssh.options import parse_keyword
from rtunnel.operations.config import (
    PROCESS_KEYS,
    Config,
    ConfigError,
    ProcessConfig,
    load_config,
)
from rtunnel.operations.runner import Runner
from rtunnel.service import Options as TunnelOptions
from rtunnel.service import TunnelService

if TYPE_CHECKING:
    from rtunnel.operations.observe import Observability

__all__ = ["FAILURE", "Options", "makeService"]

_log = Logger()

#: The exit status after giving up: the command's (ssh's) 255.
FAILURE = 255


class Options(TunnelOptions):
    """``twistd rtunnel`` options: ssh's flags for one tunnel, or ``--config FILE``."""

    synopsis = "[options] [user@]host | --config FILE"
    longdesc = (
        TunnelOptions.longdesc
        + " With --config FILE, run every tunnel of that configuration file instead (see "
        "docs/operations.md); SIGHUP reloads it; -o then takes only "
        + ", ".join(PROCESS_KEYS)
        + ", over the file's [process] table. Giving up exits with status 255."
    )

    def __init__(self) -> None:
        super().__init__()
        self.config_file: str | None = None
        self.config: Config | None = None
        #: The keyword of each -o given, as the table names it.
        self.options_given: list[str] = []

    @override
    def opt_option(self, text: str) -> None:
        """An ssh_config option, Key=Value (repeatable)."""
        try:
            parsed = parse_keyword(text)
        except SpecError as error:
            raise usage.UsageError(error.message) from None
        if parsed is not None:
            self.options_given.append(parsed[0].name)
            self.client_options.apply(*parsed)

    opt_o = opt_option

    def opt_config(self, path: str) -> None:
        """Run the tunnels of this configuration file (TOML); SIGHUP reloads it."""
        self.config_file = path

    @override
    def parseArgs(self, destination: str | None = None) -> None:  # type: ignore[override]
        """The destination: [user@]host or ssh://[user@]host[:port] (none with --config)."""
        if destination is not None:
            super().parseArgs(destination)

    @override
    def postOptions(self) -> None:
        if self.config_file is None:
            if not self.host:
                raise usage.UsageError("give a destination, [user@]host, or --config FILE")
            super().postOptions()
            return
        if self.host or self.client_options.remote_forwards:
            raise usage.UsageError(
                "--config runs the file's tunnels: give no destination or -R with it"
            )
        tunnel_options = [name for name in self.options_given if name not in PROCESS_KEYS]
        if tunnel_options:
            raise usage.UsageError(
                f"-o {tunnel_options[0]} with --config: a tunnel's options go in the file; "
                f"-o takes only {', '.join(PROCESS_KEYS)} here"
            )
        try:
            # Absolute: twistd may change directory (--rundir) before a reload.
            self.config = load_config(os.path.abspath(self.config_file))
        except ConfigError as error:
            raise usage.UsageError(error.message) from None


class _RunnerService(Service):
    """The runner as a twistd service: started and stopped with it, with its control
    socket, HTTP listener and systemd notifications."""

    name = "rtunnel"

    def __init__(
        self, reactor: Any, runner: Runner, process: ProcessConfig, on_failure: Any
    ) -> None:
        self._reactor = reactor
        self.runner = runner
        self._process = process
        self._on_failure = on_failure
        self._operations: Observability | None = None

    @override
    def startService(self) -> None:
        from rtunnel.operations.observe import Changes, start_operations

        super().startService()
        try:
            self._operations = operations = start_operations(
                self._reactor,
                self.runner,
                control_socket=self._process.control_socket,
                http_listen=self._process.http_listen,
                report=self.runner.report,
            )
        except SpecError as error:
            _log.error("rtunnel: {message}", message=error.message)
            self._on_failure()
            return
        self.runner.add_observer(Changes(operations.notifier.changed))
        self.runner.start()

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        operations, self._operations = self._operations, None
        if operations is None:
            return  # never started: nothing runs
        operations.stopping()
        await self.runner.stop()
        await operations.stop()


class _HangUp(MultiService):
    """Holds the tunnel service; handles SIGHUP while it runs."""

    def __init__(self, reactor: IReactorThreads, on_hangup: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self._on_hangup = on_hangup
        self._previous: Any = None

    @override
    def startService(self) -> None:
        super().startService()

        def handle(signum: int, frame: FrameType | None) -> None:
            # A signal handler runs between bytecodes: hand over to the reactor's thread.
            self._reactor.callFromThread(self._on_hangup)

        self._previous = signal.signal(signal.SIGHUP, handle)

    @override
    def stopService(self) -> Deferred[None]:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return cast("Deferred[None]", super().stopService())


def _exit_status_at_exit(status: int) -> None:
    """
    Make the process exit with ``status`` once twistd has finished (pid file removed,
    logs closed): twistd has no exit status of its own to set, so the last step of
    interpreter shutdown ends the process with it.
    """

    def exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(exit_now)


def makeService(config: Options, reactor: IReactorTCP | None = None) -> IService:  # noqa: N802 (twistd)
    """
    The ``twistd rtunnel`` service for parsed :class:`Options`.

    :param config: the parsed options.
    :param reactor: the reactor (default: the global one, as twistd runs it).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IReactorTCP, global_reactor)
    core = cast(IReactorCore, reactor)

    def give_up() -> None:
        _log.error("rtunnel: giving up; twistd exits with status {status}.", status=FAILURE)
        _exit_status_at_exit(FAILURE)
        if core.running:
            core.stop()
        else:
            # Failed while twistd starts its services, before the reactor runs.
            core.callWhenRunning(core.stop)

    process = ProcessConfig.from_options(config.client_options)
    if config.config is not None:
        process = config.config.process.overridden_by(process)
    if process.log_format == "json":
        _log.warn(
            "LogFormat=json is for the rtunnel command; twistd writes its log as its own "
            "options say (--logfile, --logger)."
        )
    if config.config is not None:
        runner = Runner(reactor, config.config)
        runner.when_all_failed().addCallback(lambda _: give_up())

        def reload() -> None:
            _log.info("SIGHUP: reloading {file}.", file=runner.config.file)
            d = runner.reload_file()
            d.addErrback(lambda f: _log.failure("Reloading failed unexpectedly", f))

        parent = _HangUp(cast(IReactorThreads, reactor), reload)
        _RunnerService(reactor, runner, process, give_up).setServiceParent(parent)
        return parent

    def failed(error: RTunnelError) -> None:
        give_up()

    def not_reloadable() -> None:
        _log.info("SIGHUP: no configuration file to reload (use --config FILE); carrying on.")

    parent = _HangUp(cast(IReactorThreads, reactor), not_reloadable)
    TunnelService(reactor, config.host, config.client_options, on_failure=failed).setServiceParent(
        parent
    )
    return parent
