"""
The ``rtunnel`` command as a child of the test's reactor, against the bundled server
running in that reactor (tests/test_hostile_server.py, tests/test_hardening.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
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
        if text in self.stderr:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        return d.addTimeout(timeout, reactor)

    async def stop(self) -> int | None:
        self.transport.signalProcess("TERM")  # type: ignore[union-attr]
        return await self.ended.addTimeout(10, reactor)


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
