"""
Everything that shows a :class:`~rtunnel.operations.status.StatusSource` to operators,
started and stopped together: the control socket, the HTTP listener and systemd
notifications (issue #14). The command starts it for its one tunnel, the runner of a
configuration file for its many, and ``twistd rtunnel`` for either
(:func:`start_operations`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from typing_extensions import override

from rtunnel._model import TunnelObserver
from rtunnel.errors import SpecError
from rtunnel.operations.control import listen_control, resolve_socket_path
from rtunnel.operations.status import StatusSource
from rtunnel.operations.systemd import SystemdNotifier

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from rtunnel._model import Forward, ReconnectAttempt

__all__ = ["Changes", "Observability", "split_listen", "start_operations"]


def split_listen(value: str) -> tuple[str, int]:
    """``-o HttpListen``'s ``ADDRESS:PORT`` (``[IPV6]:PORT``) as address and port."""
    address, _, port = value.rpartition(":")
    if address.startswith("["):
        address = address[1:-1]
    return address, int(port)


class Observability:
    """
    The control socket, the HTTP listener and systemd notifications of ``source``.

    :param reactor: a reactor with TCP, Unix sockets and a clock.
    :param source: the tunnels.
    :param control_socket: ``-o ControlSocket``: ``"auto"``, a path, or None/``"none"``.
    :param http_listen: ``-o HttpListen``: ``"ADDRESS:PORT"``, or None/``"none"``.
    :param environ: where systemd's variables are read (default: ``os.environ``).
    """

    def __init__(
        self,
        reactor: Any,
        source: StatusSource,
        *,
        control_socket: str | None = None,
        http_listen: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._reactor = reactor
        self._source = source
        self._control_setting = control_socket
        self._http_setting = http_listen
        self.notifier = SystemdNotifier(reactor, source, environ)
        #: The control socket's path once listening.
        self.control_path: Path | None = None
        #: The HTTP listener's port once listening (the one bound, for port 0).
        self.http_port: IListeningPort | None = None
        self._control_port: IListeningPort | None = None

    def start(self) -> None:
        """
        Listen where asked and start notifying systemd.

        :raises ControlError: the control socket cannot be used (the message says why).
        :raises twisted.internet.error.CannotListenError: the HTTP address is taken.
        """
        setting = self._control_setting
        path = resolve_socket_path(setting) if setting is not None else None
        if path is not None:
            self._control_port = listen_control(self._reactor, path, self._source)
            self.control_path = path
        if self._http_setting is not None and self._http_setting != "none":
            from rtunnel.operations.http import listen_http

            address, port = split_listen(self._http_setting)
            try:
                self.http_port = listen_http(self._reactor, self._source, address, port)
            except Exception:
                self._stop_listening()
                raise
        self.notifier.start()

    def _stop_listening(self) -> Deferred[Any]:
        ports = [p for p in (self._control_port, self.http_port) if p is not None]
        self._control_port = self.http_port = None
        return DeferredList([maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)

    def stopping(self) -> None:
        """The shutdown begins: ``STOPPING=1`` to systemd; status stays readable."""
        self.notifier.stop()

    def stop(self) -> Deferred[Any]:
        """The shutdown is over: stop listening (the socket file is removed)."""
        self.notifier.stop()
        return self._stop_listening()


def start_operations(
    reactor: Any,
    source: StatusSource,
    *,
    control_socket: str | None,
    http_listen: str | None,
    report: Callable[[str, str], None],
    environ: Mapping[str, str] | None = None,
) -> Observability:
    """
    Start the :class:`Observability` of ``source`` and say where it listens (at
    ``DEBUG1``, through ``report(level, text)``).

    :raises SpecError: it cannot start; the message says why (and what to do).
    """
    from twisted.internet.error import CannotListenError

    from rtunnel.operations.control import ControlError

    operations = Observability(
        reactor, source, control_socket=control_socket, http_listen=http_listen, environ=environ
    )
    try:
        operations.start()
    except ControlError as error:
        raise SpecError(str(error)) from None
    except CannotListenError as error:
        raise SpecError(
            f"cannot listen on {error.interface or '*'}:{error.port} for HttpListen: "
            f"{error.socketError}"
        ) from None
    if operations.control_path is not None:
        report("DEBUG1", f"Control socket: {operations.control_path}")
    if operations.http_port is not None:
        bound: Any = operations.http_port.getHost()
        host = f"[{bound.host}]" if ":" in bound.host else bound.host
        report("DEBUG1", f"Health and metrics on http://{host}:{bound.port}/")
    return operations


class Changes(TunnelObserver):
    """
    Calls ``changed`` (:meth:`SystemdNotifier.changed`) at once when a tunnel or one of
    its forwards changes state, rather than at the notifier's next look. One can watch
    any number of tunnels.
    """

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed

    @override
    def forward_state_changed(self, forward: Forward) -> None:
        self._changed()

    @override
    def connected(self) -> None:
        self._changed()

    @override
    def disconnected(self, reason: Exception | None) -> None:
        self._changed()

    @override
    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self._changed()
