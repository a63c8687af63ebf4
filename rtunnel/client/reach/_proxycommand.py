"""
OpenSSH's ``ProxyCommand``: the SSH connection runs over the standard input and output of
a command (``ssh -W %h:%p jumphost``, ``nc -X 5 -x proxy:1080 %h %p``, ...) instead of a
TCP socket.

As ssh (sshconnect.c, ``ssh_proxy_connect``): the tokens are expanded, the command is run
as ``$SHELL -c "exec COMMAND"`` (``/bin/sh`` without ``SHELL``), its standard error is the
program's own, and when the connection ends the command gets SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProcessTransport,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorProcess,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel.errors import ConnectionLostError, SpecError

__all__ = ["ProxyCommandAddress", "ProxyCommandEndpoint", "expand_proxy_command"]


def expand_proxy_command(
    template: str, *, host: str, port: int, user: str, original_host: str | None = None
) -> str:
    """
    ``template`` with OpenSSH's ProxyCommand tokens replaced (ssh_config(5), TOKENS):
    ``%h`` the host, ``%p`` the port, ``%r`` the remote user, ``%n`` the host as given on
    the command line, ``%%`` a percent sign.

    :raises SpecError: for any other token, naming it (OpenSSH refuses those too).
    """
    values = {"h": host, "p": str(port), "r": user, "n": original_host or host, "%": "%"}
    out: list[str] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        token = template[i + 1 : i + 2]
        if token not in values:
            shown = f"%{token}" if token else "a lone % at the end"
            raise SpecError(
                f"ProxyCommand: unknown token {shown} in '{template}' (known: %h, %p, %r, %n, %%)."
            )
        out.append(values[token])
        i += 2
    return "".join(out)


@implementer(IAddress)
@dataclass(frozen=True)
class ProxyCommandAddress:
    """The address of a connection made through a ProxyCommand: the command itself."""

    command: str


@implementer(ITransport, IConsumer, IPushProducer)
class _CommandTransport:
    """
    The process's stdin and stdout as a stream transport for the SSH protocol.
    Writes go to stdin (paced by the process transport, which is an IConsumer);
    pausing stops reading stdout.
    """

    def __init__(self, process: IProcessTransport, command: str) -> None:
        # Twisted's process transports are consumers and producers without declaring it
        # (twisted.internet.endpoints uses them the same way).
        self._process: Any = process
        self._address = ProxyCommandAddress(command)
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self._process.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:  # noqa: N802 (ITransport)
        self._process.writeSequence(list(data))

    def loseConnection(self) -> None:  # noqa: N802 (ITransport)
        # ssh closes its end and sends SIGHUP (ssh.c: kill(proxy_command_pid, SIGHUP)).
        if self.disconnecting:
            return
        self.disconnecting = True
        self._process.closeStdin()
        self._signal("HUP")

    def abortConnection(self) -> None:  # noqa: N802 (ITCPTransport's, used by rtunnel)
        self.disconnecting = True
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        with contextlib.suppress(error.ProcessExitedAlready, OSError):
            self._process.signalProcess(name)

    def getPeer(self) -> ProxyCommandAddress:  # noqa: N802 (ITransport)
        return self._address

    def getHost(self) -> ProxyCommandAddress:  # noqa: N802 (ITransport)
        return self._address

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:  # noqa: N802
        self._process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802 (IConsumer)
        self._process.unregisterProducer()

    def pauseProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self._process.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self._process.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 (IPushProducer)
        self.abortConnection()


class _CommandProtocol(ProcessProtocol):
    """Feeds the command's stdout to the SSH protocol and reports how it ended."""

    def __init__(self, protocol: IProtocol, command: str) -> None:
        self.protocol = protocol
        self.command = command
        self._transport: _CommandTransport | None = None

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self._transport = _CommandTransport(self.transport, self.command)
        self.protocol.makeConnection(self._transport)

    @override
    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.protocol.dataReceived(data)

    @override
    def processEnded(self, reason: Failure) -> None:
        asked = self._transport is not None and self._transport.disconnecting
        status = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if asked or reason.check(error.ProcessDone):
            why: Failure = Failure(error.ConnectionDone())
        elif signal is not None:
            why = Failure(
                ConnectionLostError(
                    f"The ProxyCommand was killed by signal {signal}: {self.command}"
                )
            )
        else:
            why = Failure(
                ConnectionLostError(
                    f"The ProxyCommand exited with status {status} (its own message, if "
                    f"any, is above): {self.command}"
                )
            )
        self.protocol.connectionLost(why)


@implementer(IStreamClientEndpoint)
class ProxyCommandEndpoint:
    """
    A client endpoint that runs ``command`` through the shell and speaks over its stdin
    and stdout.

    :param reactor: spawns the process.
    :param command: the command line, tokens already expanded.
    :param environ: the command's environment (default: this process's).
    """

    def __init__(
        self, reactor: IReactorProcess, command: str, environ: Mapping[str, str] | None = None
    ) -> None:
        self._reactor = reactor
        self.command = command
        self._environ = dict(os.environ if environ is None else environ)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Start the command; fires with the protocol once it runs."""
        protocol = protocolFactory.buildProtocol(ProxyCommandAddress(self.command))
        if protocol is None:
            return defer.fail(error.ConnectError(string="the factory built no protocol"))
        shell = self._environ.get("SHELL") or "/bin/sh"
        try:
            self._reactor.spawnProcess(
                _CommandProtocol(protocol, self.command),
                shell,
                [shell, "-c", f"exec {self.command}"],
                env=self._environ,
                # stdin and stdout are ours; stderr stays the program's, as in ssh.
                childFDs={0: "w", 1: "r", 2: 2},
            )
        except OSError as e:
            return defer.fail(
                error.ConnectError(string=f"cannot run the ProxyCommand with {shell}: {e}")
            )
        return defer.succeed(protocol)
