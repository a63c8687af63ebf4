"""
Every file in ``examples/`` runs: the two programs as subprocesses against the bundled
test server (``ssh_test_server``), given its port, a key and its known_hosts on the
command line as a user would; the example test file through pytest itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess, IReactorTCP, IReactorTime
from twisted.internet.protocol import ProcessProtocol, Protocol, ServerFactory
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from typing_extensions import override

from rtunnel.testing import SSHTestServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT = 30.0
ALLOCATED = re.compile(rb"^Allocated port (\d+) for remote forward to ([^\s]+):(\d+)$", re.M)

_clock = cast(IReactorTime, reactor)


class Example(ProcessProtocol):
    """An example program running as a subprocess: its output, line waits and its end."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()
        self._waits: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    @override
    def outReceived(self, data: bytes) -> None:
        self.out += data
        waits, self._waits = self._waits, []
        for pattern, d in waits:
            match = pattern.search(self.out)
            if match is not None:
                d.callback(match)
            else:
                self._waits.append((pattern, d))

    @override
    def errReceived(self, data: bytes) -> None:
        self.err += data

    @override
    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else cast(ProcessTerminated, reason.value).exitCode
        waits, self._waits = self._waits, []
        for _pattern, d in waits:
            d.errback(AssertionError(f"exited without printing {_pattern.pattern!r}"))
        self.ended.callback(code if code is not None else -1)

    def wait_for(
        self, pattern: re.Pattern[bytes], timeout: float = TIMEOUT
    ) -> Deferred[re.Match[bytes]]:
        """Fires with the match once the output matches ``pattern`` (fails after ``timeout`` s)."""
        match = pattern.search(self.out)
        d: Deferred[re.Match[bytes]] = Deferred()
        if match is not None:
            d.callback(match)
        else:
            self._waits.append((pattern, d))

        def explain(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                raise AssertionError(
                    f"no {pattern.pattern!r} within {timeout:g} s; {self.describe()}"
                )
            return failure

        return d.addTimeout(timeout, _clock).addErrback(explain)

    def describe(self) -> str:
        """The output, for assertion messages."""
        return f"stdout:\n{self.out.decode()}\nstderr:\n{self.err.decode()}"


def spawn(script: str, *args: str) -> Example:
    """Run ``examples/<script>`` with ``args`` under this Python."""
    example = Example()
    argv = [sys.executable, str(EXAMPLES / script), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    cast(IReactorProcess, reactor).spawnProcess(
        example, sys.executable, argv, env=env, path=str(ROOT)
    )
    return example


async def finish(example: Example) -> int:
    """Wait for the example to exit by itself (killing it after :data:`TIMEOUT`)."""
    if not example.ended.called:
        example.ended.addTimeout(TIMEOUT, _clock)
    try:
        return await example.ended
    except Exception:
        example.transport.signalProcess("KILL")  # type: ignore[union-attr]
        raise


def server_args(server: SSHTestServer, key: Path, known_hosts: Path, user: str) -> list[str]:
    """The example's command line for the test server."""
    return [
        server.host,
        "-p",
        str(server.port),
        "-l",
        user,
        "-i",
        str(key),
        "--known-hosts",
        str(known_hosts),
    ]


class Collect(Protocol):
    """A TCP client that records what it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._want: tuple[int, Deferred[bytes]] | None = None

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._want is not None and len(self.received) >= self._want[0]:
            d = self._want[1]
            self._want = None
            d.callback(self.received)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> Deferred[bytes]:
        """Fires once ``count`` bytes have arrived (fails after ``timeout`` s)."""
        d: Deferred[bytes] = Deferred()
        if len(self.received) >= count:
            d.callback(self.received)
        else:
            self._want = (count, d)

        def explain(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                raise AssertionError(
                    f"{len(self.received)} bytes after {timeout:g} s, not {count}: "
                    f"{self.received[:200]!r}"
                )
            return failure

        return d.addTimeout(timeout, _clock).addErrback(explain)


async def http_get(url: str) -> tuple[int, bytes]:
    """GET ``url``; the status and the body."""
    import warnings

    response = await Agent(reactor).request(b"GET", url.encode()).addTimeout(TIMEOUT, _clock)
    with warnings.catch_warnings():
        # Twisted 26.10's Agent gives readBody a transport without abortConnection.
        warnings.simplefilter("ignore", DeprecationWarning)
        body = readBody(response)
    return response.code, await body.addTimeout(TIMEOUT, _clock)


# expose_web_server.py -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_expose_web_server_builtin_site(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, ssh_known_hosts: Path, ssh_user: str
) -> None:
    example = spawn(
        "expose_web_server.py",
        *server_args(ssh_test_server, ssh_client_key, ssh_known_hosts, ssh_user),
        "--once",
        "--timeout",
        str(TIMEOUT),
    )
    try:
        match = await example.wait_for(ALLOCATED)
        port = int(match.group(1))
        assert (await ssh_test_server.wait_for_forward("localhost", port)) == port
        code, body = await http_get(f"http://127.0.0.1:{port}/")
        assert code == 200
        assert b"served through rtunnel" in body
    finally:
        status = await finish(example)
    assert status == 0, example.describe()
    out = example.out.decode()
    assert re.search(
        r"^channel 0: connection from 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+$", out, re.M
    )
    assert re.search(r"^channel 0: closed, \d+ bytes in, \d+ bytes out$", out, re.M), out
    assert "logged off" in out
    assert ssh_test_server.forwards == []


class _Page(Resource):
    isLeaf = True  # noqa: N815 (Twisted attribute)

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (twisted.web dispatch)
        return b"an existing web server\n"


@pytest_twisted.ensureDeferred
async def test_expose_web_server_existing_target_fixed_port(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, ssh_known_hosts: Path, ssh_user: str
) -> None:
    web = cast(IReactorTCP, reactor).listenTCP(
        0, cast(ServerFactory, Site(_Page())), interface="127.0.0.1"
    )
    web_port = web.getHost().port  # type: ignore[attr-defined]
    # A fixed remote port: pick a free one the way a user would not, but a test must.
    probe = cast(IReactorTCP, reactor).listenTCP(0, ServerFactory(), interface="127.0.0.1")
    remote_port = probe.getHost().port  # type: ignore[attr-defined]
    await maybeDeferred(probe.stopListening)
    example = spawn(
        "expose_web_server.py",
        *server_args(ssh_test_server, ssh_client_key, ssh_known_hosts, ssh_user),
        "--bind-address",
        "127.0.0.1",
        "-R",
        str(remote_port),
        "--target",
        f"127.0.0.1:{web_port}",
        "--once",
        "--timeout",
        str(TIMEOUT),
    )
    try:
        line = re.compile(rb"^forwarding 127\.0\.0\.1:(\d+) on .* to 127\.0\.0\.1:(\d+)$", re.M)
        match = await example.wait_for(line)
        assert int(match.group(1)) == remote_port
        assert int(match.group(2)) == web_port
        code, body = await http_get(f"http://127.0.0.1:{remote_port}/")
        assert (code, body) == (200, b"an existing web server\n")
    finally:
        status = await finish(example)
        await maybeDeferred(web.stopListening)
    assert status == 0, example.describe()


@pytest_twisted.ensureDeferred
async def test_expose_web_server_unknown_host_key(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, tmp_path: Path, ssh_user: str
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    example = spawn(
        "expose_web_server.py", *server_args(ssh_test_server, ssh_client_key, empty, ssh_user)
    )
    status = await finish(example)
    assert status == 1, example.describe()
    assert b"error 1030: " in example.err
    assert b"Host key verification failed." in example.err


# event_echo.py ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_event_echo(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, ssh_known_hosts: Path, ssh_user: str
) -> None:
    example = spawn(
        "event_echo.py",
        *server_args(ssh_test_server, ssh_client_key, ssh_known_hosts, ssh_user),
        "--allow",
        "127.0.0.0/8",
        "--once",
        "--timeout",
        str(TIMEOUT),
    )
    try:
        line = re.compile(rb"^echo service listening on localhost:(\d+) at ", re.M)
        port = int((await example.wait_for(line)).group(1))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = Collect()
        await connectProtocol(endpoint, client)
        message = b"hello, echo behind an SSH server\n"
        assert client.transport is not None
        client.transport.write(message)
        assert await client.wait_for(len(message)) == message
        client.transport.loseConnection()
        await client.closed
    finally:
        status = await finish(example)
    assert status == 0, example.describe()
    out = example.out.decode()
    assert re.search(
        rf"^accepting channel 0 from 127\.0\.0\.1:\d+ \(arrived on localhost:{port}\)$",
        out,
        re.M,
    ), out
    assert re.search(rf"^echo: 127\.0\.0\.1:\d+ done, {len(message)} bytes echoed$", out, re.M)
    assert "logged off" in out


@pytest_twisted.ensureDeferred
async def test_event_echo_accept_hook_refuses(
    ssh_test_server: SSHTestServer, ssh_client_key: Path, ssh_known_hosts: Path, ssh_user: str
) -> None:
    example = spawn(
        "event_echo.py",
        *server_args(ssh_test_server, ssh_client_key, ssh_known_hosts, ssh_user),
        "--allow",
        "192.0.2.0/24",
        "--once",
        # Nothing will be served, so --once gives up after this; long enough for the
        # client below to connect and be refused first.
        "--timeout",
        "2",
    )
    try:
        line = re.compile(rb"^echo service listening on localhost:(\d+) at ", re.M)
        port = int((await example.wait_for(line)).group(1))
        client = Collect()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        # Refused: the server closes the connection without a byte.
        await client.closed.addTimeout(TIMEOUT, _clock)
        assert client.received == b""
    finally:
        status = await finish(example)
    assert status == 1, example.describe()
    assert re.search(rb"^refusing channel 0 from 127\.0\.0\.1:\d+ ", example.out, re.M)
    assert b"no connection was served" in example.err


# test_with_fixtures.py ----------------------------------------------------------------


def test_example_test_file_passes() -> None:
    """``pytest examples/test_with_fixtures.py`` passes, as a user would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "examples/test_with_fixtures.py"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\d+ passed", result.stdout.splitlines()[-1]), result.stdout


def test_example_test_file_is_not_collected_by_default() -> None:
    """Our own suite (``testpaths``) does not pick up the examples."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
    )
    assert "examples/" not in result.stdout, result.stdout


@pytest.mark.parametrize("script", ["expose_web_server.py", "event_echo.py"])
def test_example_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--once" in result.stdout
