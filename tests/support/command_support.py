"""
The ``rtunnel`` command as a child of the test's reactor: ``RunningCommand`` and
``spawn_command`` against the bundled server running in that reactor (the hostile-server
and hardening tests), ``RTunnelProcess`` with its stderr in lines (the command's tests and
the files after them), and a client that exchanges bytes with a forwarded port.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python.failure import Failure

from rtunnel.testing import SSHTestServer


class RunningCommand(ProcessProtocol):
    """``rtunnel`` as a child of the test's reactor; its stderr kept as bytes."""

    def __init__(self) -> None:
        self.stderr = b""
        self.ended: Deferred[int | None] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (ProcessProtocol)
        self.stderr += data
        for entry in list(self._waiting):
            if entry[0] in self.stderr:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (ProcessProtocol)
        value = reason.value
        assert isinstance(value, ProcessDone | ProcessTerminated)
        self.ended.callback(value.exitCode)
        for _, d in self._waiting:
            d.errback(AssertionError(f"rtunnel ended; stderr:\n{self.stderr!r}"))

    def wait_for(self, text: bytes, timeout: float = 30) -> Deferred[None]:
        """
        Fires once the command's stderr holds ``text``.

        :raises AssertionError: (the Deferred fails) not there after ``timeout`` seconds;
            the message names the text and shows stderr so far.
        """
        if text in self.stderr:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))

        def explain(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                self._waiting = [entry for entry in self._waiting if entry[1] is not d]
                raise AssertionError(
                    f"rtunnel printed no {text!r} within {timeout:g} s; stderr:\n{self.stderr!r}"
                )
            return failure

        return d.addTimeout(timeout, reactor).addErrback(explain)

    async def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, and the exit status; fails if it has not exited after ``timeout`` s."""
        self.transport.signalProcess("TERM")  # type: ignore[union-attr]
        try:
            return await self.ended.addTimeout(timeout, reactor)
        except defer.TimeoutError:
            raise AssertionError(
                f"rtunnel did not exit within {timeout:g} s of SIGTERM; stderr:\n{self.stderr!r}"
            ) from None


def spawn_command(
    server: SSHTestServer,
    user: str,
    key: Path,
    known_hosts: Path | None,
    home: Path,
    *args: str,
    umask: int | None = None,
) -> RunningCommand:
    """
    ``rtunnel -N -o BatchMode=yes [-o UserKnownHostsFile=known_hosts] -i key -p PORT
    ARGS user@host`` with ``HOME`` set to ``home`` (created), under ``umask`` if given.
    """
    home.mkdir(exist_ok=True)
    command = RunningCommand()
    argv = [
        *[sys.executable, "-m", "rtunnel.cli", "-N", "-o", "BatchMode=yes"],
        *(["-o", f"UserKnownHostsFile={known_hosts}"] if known_hosts is not None else []),
        *["-i", str(key), "-p", str(server.port)],
        *args,
        f"{user}@{server.host}",
    ]
    if umask is not None:
        argv = ["/bin/sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *argv]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    reactor.spawnProcess(command, argv[0], argv, env=env)  # type: ignore[attr-defined]
    return command


# The command as test_cli.py and the files after it run it: stderr in lines.

#: How long a run may take to get going (log on, request forwards) in these tests.
START_TIMEOUT = 30.0
#: How long the command may take to stop after SIGTERM: "within a few seconds".
STOP_WITHIN = 5.0

PYTHON_CLI = [sys.executable, "-m", "rtunnel.cli"]

ALLOCATED = r"^Allocated port (\d+) for remote forward to 127\.0\.0\.1:{}$"


def _clean_env(home: Path) -> dict[str, str]:
    """This environment without an agent or askpass, with ``HOME`` in ``home``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SSH_") and name != "DISPLAY"
    }
    env["HOME"] = str(home)
    return env


class RTunnelProcess(ProcessProtocol):
    """The ``rtunnel`` command as a child of the test's reactor, its stderr in lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stdout = b""
        self._partial = b""
        self._waiting: list[tuple[re.Pattern[str], Deferred[re.Match[str]]]] = []
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()
        self.running = False

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def connectionMade(self) -> None:  # noqa: N802 (ProcessProtocol)
        self.running = True

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (ProcessProtocol)
        self.stdout += data

    def errReceived(self, data: bytes) -> None:  # noqa: N802 (ProcessProtocol)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.lines.append(line)
            for entry in list(self._waiting):
                pattern, d = entry
                match = pattern.search(line)
                if match is not None:
                    self._waiting.remove(entry)
                    d.callback(match)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (ProcessProtocol)
        self.running = False
        if self._partial:
            self.errReceived(b"\n")
        value = reason.value
        assert isinstance(value, ProcessDone | ProcessTerminated)
        self.ended.callback((value.exitCode, value.signal))
        for _, d in self._waiting:
            d.errback(AssertionError(f"rtunnel ended; stderr:\n{self.stderr}"))
        self._waiting.clear()

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> Deferred[re.Match[str]]:
        """The first stderr line matching ``pattern`` (seen already or to come)."""
        compiled = re.compile(pattern)
        for line in self.lines:
            match = compiled.search(line)
            if match is not None:
                return succeed(match)
        d: Deferred[re.Match[str]] = Deferred()
        self._waiting.append((compiled, d))
        return d.addTimeout(timeout, reactor).addErrback(self._explain, pattern)

    def _explain(self, failure: Failure, pattern: str) -> Failure:
        failure.value.args = (
            *failure.value.args,
            f"waiting for {pattern!r}; stderr:\n{self.stderr}",
        )
        return failure


class _Collect(Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Protocol)
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(self.received)

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 (Protocol)
        if not self.done.called:
            self.done.callback(self.received)


async def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` to 127.0.0.1:``port`` and read back as many bytes."""
    collect = _Collect(len(payload))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    await connectProtocol(endpoint, collect)
    assert collect.transport is not None
    collect.transport.write(payload)
    received = await collect.done.addTimeout(20, reactor)
    collect.transport.loseConnection()
    return received


def spawn_with_env(
    server: SSHTestServer,
    user: str,
    known: Path,
    tmp_path: Path,
    env_extra: dict[str, str],
    *options: str,
) -> RTunnelProcess:
    """
    ``rtunnel -N -o UserKnownHostsFile=known -p PORT -R 0:127.0.0.1:9 OPTIONS user@host``
    against ``server``, in ``tmp_path`` with this environment cleaned and ``env_extra``.
    """
    protocol = RTunnelProcess()
    argv = [
        *PYTHON_CLI,
        "-N",
        *["-o", f"UserKnownHostsFile={known}"],
        *["-p", str(server.port)],
        *["-R", "0:127.0.0.1:9"],
        *options,
        f"{user}@{server.host}",
    ]
    env = {**_clean_env(tmp_path), **env_extra}
    reactor.spawnProcess(protocol, argv[0], argv, env=env, path=str(tmp_path))  # type: ignore[attr-defined]
    return protocol
