"""
Tests for the ``rtunnel`` command: its argument parsing (in process and through the real
command), its messages next to OpenSSH's ``ssh``, and whole runs against the bundled
test server and a real OpenSSH ``sshd``, with the command as a child process of the
test's reactor.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from command_support import (
    ALLOCATED,
    PYTHON_CLI,
    START_TIMEOUT,
    STOP_WITHIN,
    RTunnelProcess,
    _clean_env,
    _Collect,
    exchange,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel
from twisted.protocols.wire import Echo
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface.verify import verifyObject

from rtunnel.cli import (
    HELP,
    USAGE,
    CommandLineExit,
    _Console,
    _either,
    _Once,
    _StderrLogObserver,
    parse_command_line,
)
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forwards import RemoteForwardSpec

# --------------------------------------------------------------------------------------
# Parsing, in process


def test_parse_command_line() -> None:
    """Flags before and after the destination, clustered and attached values."""
    invocation = parse_command_line(
        [
            "-Nv",
            "-p2222",
            "-R",
            "0:127.0.0.1:8080",
            "alice@example.com",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R[::1]:9000:[::1]:80",
            "-q",
        ]
    )
    options = invocation.options
    assert invocation.host == "example.com"
    assert options.user == "alice"
    assert options.port == 2222
    assert options.exit_on_forward_failure is True
    assert options.effective_log_level == "QUIET"
    assert options.remote_forwards == [
        RemoteForwardSpec("localhost", 0, "127.0.0.1", 8080),
        RemoteForwardSpec("::1", 9000, "::1", 80),
    ]


def test_first_user_and_port_win() -> None:
    """As in ssh.c: ``-l`` beats ``user@``, the first ``-p`` beats the rest and the URI."""
    invocation = parse_command_line(
        ["-l", "bob", "-p", "1", "-p", "not-checked", "-R", "0:h:1", "ssh://alice@host:3"]
    )
    assert (invocation.options.user, invocation.options.port) == ("bob", 1)
    invocation = parse_command_line(["-R", "0:h:1", "ssh://alice@host:3"])
    assert (invocation.options.user, invocation.options.port) == ("alice", 3)


def test_remote_forward_option() -> None:
    """``-o RemoteForward`` adds a forward like ``-R``."""
    invocation = parse_command_line(["-o", "RemoteForward 0 localhost:22", "host"])
    assert invocation.options.remote_forwards == [
        RemoteForwardSpec("localhost", 0, "localhost", 22)
    ]


def test_double_dash() -> None:
    """``--`` ends the options; the destination may follow it (a host starting with
    ``-`` is refused after it, as by ssh)."""
    invocation = parse_command_line(["-R", "0:h:1", "--", "host"])
    assert invocation.host == "host"
    with pytest.raises(CommandLineExit, match="hostname contains invalid characters"):
        parse_command_line(["-R", "0:h:1", "--", "-host"])


def test_missing_identity_file_warns(tmp_path: Path) -> None:
    """ssh.c warns about an ``-i`` file it cannot stat and goes on without it."""
    present = tmp_path / "id"
    present.write_text("")
    missing = tmp_path / "missing"
    invocation = parse_command_line(["-i", str(missing), "-i", str(present), "-R", "0:h:1", "h"])
    assert invocation.options.identity_files == [str(present)]
    assert invocation.warnings == [
        f"Warning: Identity file {missing} not accessible: No such file or directory."
    ]


@pytest.mark.parametrize(
    ("argv", "status", "text"),
    [
        (["--help"], 0, HELP),
        (["-h"], 0, HELP),
        (["-R", "0:h:1", "host", "--help"], 0, HELP),
        ([], 255, USAGE),
        (["-R", "0:h:1"], 255, USAGE),
        (["-Z", "host"], 255, "unknown option -- Z\n"),
        (["-vZ", "host"], 255, "unknown option -- Z\n"),
        (["-R"], 255, "option requires an argument -- R\n"),
        (["-p", "x", "host"], 255, "Bad port 'x'\n"),
        (["-o", "Foo=1", "host"], 255, "command-line: line 0: Bad configuration option: foo\n"),
        (
            ["-R", "0:h:1", "host", "uptime"],
            255,
            "rtunnel: unexpected argument 'uptime': rtunnel runs no remote command "
            "(it always works as ssh -N)\n",
        ),
        (["-R", "0:h:1", "user@"], 255, "rtunnel: Bad destination 'user@': missing host\n"),
    ],
)
def test_parse_command_line_exits(argv: list[str], status: int, text: str) -> None:
    """Help, usage and mistakes end the command before it connects."""
    with pytest.raises(CommandLineExit) as caught:
        parse_command_line(argv)
    assert (caught.value.status, caught.value.text) == (status, text)
    assert caught.value.to_stdout == (status == 0)


def test_version() -> None:
    """``-V`` prints the version (on stderr, as ssh does) and exits 0."""
    with pytest.raises(CommandLineExit) as caught:
        parse_command_line(["-V"])
    assert caught.value.status == 0
    assert re.fullmatch(r"rtunnel \S+, Twisted \S+\n", caught.value.text)
    assert not caught.value.to_stdout


# --------------------------------------------------------------------------------------
# Output and plumbing, in process


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("QUIET", []),
        ("ERROR", ["fatal", "error"]),
        ("INFO", ["fatal", "error", "info"]),
        ("DEBUG1", ["fatal", "error", "info", "verbose", "debug1: debug"]),
    ],
)
def test_console(level: str, shown: list[str]) -> None:
    """ssh's messages are filtered by level; debug ones carry ssh's prefix."""
    stream = io.StringIO()
    console = _Console(ClientOptions(log_level=level), stream)
    for message_level in ["FATAL", "ERROR", "INFO", "VERBOSE", "DEBUG1", "DEBUG2"]:
        console.say(message_level, message_level.lower().rstrip("12"))
    assert stream.getvalue().splitlines() == shown


def test_log_observer() -> None:
    """Library log events: one line each; a traceback only for a crash or at -vv."""
    stream = io.StringIO()
    observer = _StderrLogObserver(stream, tracebacks=False)
    assert verifyObject(ILogObserver, observer)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    observer({"log_format": "plain {x}", "x": 1, "log_level": LogLevel.warn})
    observer({"log_format": "failed", "log_failure": failure, "log_level": LogLevel.error})
    observer({"log_format": "detail", "log_level": LogLevel.debug})
    assert stream.getvalue().splitlines() == [
        "plain 1",
        "failed: division by zero",
        "debug2: detail",
    ]
    observer({"log_format": "crash", "log_failure": failure, "log_level": LogLevel.critical})
    assert "Traceback" in stream.getvalue()


def test_either() -> None:
    """The first Deferred to finish wins, failure or not; the other is cancelled."""
    first: Deferred[int] = Deferred()
    second: Deferred[str] = Deferred()
    outcome = _either(first, second)
    first.errback(Failure(ValueError("no")))
    results: list[Any] = []
    outcome.addCallback(results.append)
    index, value = results[0]
    assert index == 0 and isinstance(value, Failure) and value.check(ValueError)
    assert second.called  # cancelled, and its CancelledError consumed
    third: Deferred[int] = Deferred()
    fourth: Deferred[int] = Deferred()
    outcome = _either(third, fourth)
    fourth.callback(4)
    outcome.addCallback(results.append)
    assert results[1] == (1, 4)


def test_once() -> None:
    """Every wait sees the value; cancelling one wait leaves the others."""
    once: _Once[int] = _Once()
    waits = [once.wait(), once.wait()]
    waits[0].cancel()
    waits[0].addErrback(lambda _: None)
    once.fire(1)
    once.fire(2)
    seen: list[int] = []
    waits[1].addCallback(seen.append)
    once.wait().addCallback(seen.append)
    assert seen == [1, 1]


# --------------------------------------------------------------------------------------
# Argument errors through the real command


def _commands() -> list[list[str]]:
    commands = [PYTHON_CLI]
    script = shutil.which("rtunnel")
    if script is not None:
        commands.append([script])
    return commands


@pytest.fixture(params=_commands(), ids=lambda command: Path(command[-1]).name)
def command(request: pytest.FixtureRequest) -> list[str]:
    """``python -m rtunnel.cli`` and, when installed, the ``rtunnel`` script."""
    return list(request.param)


def run(command: Sequence[str], *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["-o", "NoSuchOption=yes", "host"],
            "command-line: line 0: Bad configuration option: nosuchoption",
        ),
        (["-Q", "host"], "unknown option -- Q"),
        (
            ["-R", "8080:localhost", "host"],
            "Bad remote forwarding specification '8080:localhost': bad listen port 'localhost'",
        ),
        (
            ["-R", "0:localhost:0", "host"],
            "Bad remote forwarding specification '0:localhost:0': bad target port '0'",
        ),
    ],
)
def test_errors_are_one_line(command: list[str], args: list[str], line: str) -> None:
    """A mistake is one line on stderr, nothing on stdout, status 255, no traceback."""
    result = run(command, *args)
    assert (result.returncode, result.stdout, result.stderr) == (255, "", line + "\n")


def test_missing_destination_prints_usage(command: list[str]) -> None:
    """Without a destination: ssh's usage synopsis, status 255."""
    result = run(command, "-R", "0:localhost:80")
    assert (result.returncode, result.stdout, result.stderr) == (255, "", USAGE)


def test_help(command: list[str]) -> None:
    """``--help`` prints the help on stdout and exits 0."""
    result = run(command, "--help")
    assert (result.returncode, result.stdout, result.stderr) == (0, HELP, "")
    assert "SIGTERM" in result.stdout


def test_unreachable_server(command: list[str], tmp_path: Path) -> None:
    """A refused TCP connection is one line, status 255."""
    env = _clean_env(tmp_path)
    result = run(
        command,
        *["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(_unused_port())],
        *["-R", "0:127.0.0.1:1", "127.0.0.1"],
        env=env,
    )
    assert result.returncode == 255
    assert result.stdout == ""
    assert re.fullmatch(
        r"rtunnel: connect to host 127\.0\.0\.1 port \d+: Connection refused\n", result.stderr
    ), result.stderr


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------
# The same mistakes, side by side with OpenSSH's ssh


@pytest.mark.parametrize(
    ("args", "exact"),
    [
        (["-o", "Foo=bar", "h"], True),
        (["-o", "Port=0", "h"], True),
        (["-o", "Port", "h"], True),
        (["-o", "=22", "h"], True),
        (["-o", "Port 22 23", "h"], True),
        (["-o", 'User "a', "h"], True),
        (["-o", "BatchMode=maybe", "h"], True),
        (["-o", "StrictHostKeyChecking=sometimes", "h"], True),
        (["-o", "LogLevel=LOUD", "h"], True),
        (["-o", "ConnectTimeout=soon", "h"], True),
        (["-o", "UserKnownHostsFile none /k", "h"], True),
        (["-p", "x", "h"], True),
        (["-p", "0", "h"], True),
        (["-Z", "h"], True),
        (["-p"], True),
        # rtunnel says what is wrong after ssh's line.
        (["-R", "8080:localhost", "h"], False),
        (["-R", "1:h:0", "h"], False),
        (["-R", "[::1:80:h:1", "h"], False),
        (["-R", "", "h"], False),
    ],
)
def test_same_words_as_ssh(openssh_ssh: str, args: list[str], exact: bool, tmp_path: Path) -> None:
    """
    For each mistake, rtunnel's message is ssh's first line (exactly, or followed by a
    reason), and both exit 255.
    """
    env = _clean_env(tmp_path)
    ssh = run([openssh_ssh], *args, env=env)
    ours = run(PYTHON_CLI, *args, env=env)
    ssh_line = ssh.stderr.splitlines()[0]
    our_lines = ours.stderr.splitlines()
    assert (ssh.returncode, ours.returncode) == (255, 255)
    assert len(our_lines) == 1, ours.stderr
    if exact:
        assert our_lines[0] == ssh_line
    else:
        assert our_lines[0].startswith(ssh_line + ": ")


# --------------------------------------------------------------------------------------
# Whole runs


@dataclass
class Target:
    """What a test needs to run rtunnel against one server."""

    kind: str
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    wait_closed: Callable[[int], Deferred[None]]
    server: Any = None
    children: list[RTunnelProcess] = field(default_factory=list)


@pytest.fixture(params=["bundled", pytest.param("openssh", marks=pytest.mark.openssh)])
def target(request: pytest.FixtureRequest) -> Target:
    """The bundled test server or a real sshd."""
    if request.param == "bundled":
        server = request.getfixturevalue("ssh_test_server")
        result = Target(
            "bundled",
            server.host,
            server.port,
            request.getfixturevalue("ssh_user"),
            request.getfixturevalue("ssh_client_key"),
            request.getfixturevalue("ssh_known_hosts"),
            lambda port: server.wait_for_forward_closed("localhost", port),
            server,
        )
    else:
        server = request.getfixturevalue("openssh_server")
        result = Target(
            "openssh",
            server.host,
            server.port,
            server.user,
            request.getfixturevalue("openssh_client_key"),
            server.known_hosts_path,
            lambda port: Deferred.fromCoroutine(_until_refused(port)),
            server,
        )
    return result


@pytest_twisted.async_yield_fixture
async def echo_port() -> AsyncIterator[int]:
    """A local echo server: the forwards' target."""
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), interface="127.0.0.1"
    )
    try:
        yield listening.getHost().port  # type: ignore[attr-defined]
    finally:
        await listening.stopListening()


Spawn = Callable[..., RTunnelProcess]


@pytest_twisted.async_yield_fixture
async def spawn(target: Target, tmp_path: Path) -> AsyncIterator[Spawn]:
    """
    A function starting ``rtunnel -N -o BatchMode=yes ... ARGS user@host`` against
    ``target``; children still running after the test are killed.
    """
    yield lambda *args: _spawn(target, tmp_path, *args)
    for child in target.children:
        if child.running:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await child.ended


def _spawn(target: Target, tmp_path: Path, *args: str) -> RTunnelProcess:
    protocol = RTunnelProcess()
    argv = [
        *PYTHON_CLI,
        "-N",
        *["-o", "BatchMode=yes"],
        *["-o", f"UserKnownHostsFile={target.known_hosts}"],
        *["-i", str(target.key)],
        *["-p", str(target.port)],
        *args,
        f"{target.user}@{target.host}",
    ]
    reactor.spawnProcess(  # type: ignore[attr-defined]
        protocol, argv[0], argv, env=_clean_env(tmp_path), path=str(tmp_path)
    )
    target.children.append(protocol)
    return protocol


async def refused(port: int) -> bool:
    """Whether a connection to 127.0.0.1:``port`` is refused."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    try:
        protocol = await connectProtocol(endpoint, Protocol())
    except ConnectionRefusedError:
        return True
    assert protocol.transport is not None
    protocol.transport.loseConnection()
    return False


async def allocated_ports(child: RTunnelProcess, echo_port: int, count: int) -> list[int]:
    """The ports of the first ``count`` Allocated lines, waiting for them."""
    pattern = re.compile(ALLOCATED.format(echo_port))
    for _ in range(int(START_TIMEOUT / 0.05)):
        ports = [int(m.group(1)) for line in child.lines if (m := pattern.match(line))]
        if len(ports) >= count:
            return ports[:count]
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"fewer than {count} Allocated lines; stderr:\n{child.stderr}")


async def _until_refused(port: int, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await refused(port):
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"port {port} still accepts connections")


@pytest_twisted.ensureDeferred
async def test_forward_echo_and_sigterm(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """
    The whole path: rtunnel prints the allocated port, a connection to it reaches the
    local echo server, and SIGTERM stops rtunnel within seconds with status 0 (ssh -N's
    status for SIGTERM) and the server's listener gone.
    """
    child = spawn("-R", f"0:127.0.0.1:{echo_port}")
    match = await child.wait_for(ALLOCATED.format(echo_port))
    port = int(match.group(1))
    assert await exchange(port, b"hello through rtunnel\n") == b"hello through rtunnel\n"
    started = reactor.seconds()  # type: ignore[attr-defined]
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    status = await child.ended.addTimeout(STOP_WITHIN, reactor)
    assert reactor.seconds() - started < STOP_WITHIN  # type: ignore[attr-defined]
    assert status == (0, None), child.stderr
    await target.wait_closed(port).addTimeout(10, reactor)
    assert await refused(port)
    assert child.lines == [match.group(0)], child.stderr


@pytest_twisted.ensureDeferred
async def test_sigint_exits_255(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """SIGINT also stops cleanly, with ssh's status 255 (clientloop.c)."""
    child = spawn("-R", f"0:127.0.0.1:{echo_port}")
    match = await child.wait_for(ALLOCATED.format(echo_port))
    child.transport.signalProcess("INT")  # type: ignore[union-attr]
    status = await child.ended.addTimeout(STOP_WITHIN, reactor)
    assert status == (255, None), child.stderr
    await target.wait_closed(int(match.group(1))).addTimeout(10, reactor)


# Only the bundled server tells which port it allocated without the Allocated line.
@pytest.mark.parametrize("target", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_quiet_prints_nothing(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """With -q there is no Allocated line; the forward works all the same."""
    child = spawn("-q", "-R", f"0:127.0.0.1:{echo_port}")
    port = await target.server.wait_for_forward("localhost").addTimeout(START_TIMEOUT, reactor)
    assert await exchange(port, b"quiet") == b"quiet"
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None)
    assert child.lines == []


@pytest_twisted.ensureDeferred
async def test_several_forwards(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """Forwards are requested in order, each reported, each working."""
    child = spawn(
        *["-R", f"0:127.0.0.1:{echo_port}"],
        *["-o", f"RemoteForward 127.0.0.1:0 127.0.0.1:{echo_port}"],
    )
    ports = await allocated_ports(child, echo_port, 2)
    assert ports[0] != ports[1], child.stderr
    for port in ports:
        assert await exchange(port, b"x" * 1000) == b"x" * 1000
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None)


async def _taken_forward_port(spawn: Spawn, echo_port: int) -> tuple[int, RTunnelProcess]:
    """A first rtunnel holding a server port, so a second one's request is refused."""
    holder = spawn("-R", f"127.0.0.1:0:127.0.0.1:{echo_port}")
    match = await holder.wait_for(ALLOCATED.format(echo_port))
    return int(match.group(1)), holder


@pytest_twisted.ensureDeferred
async def test_refused_forward_warns(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """A refused forward is ssh's Warning line, and the others still work."""
    taken, _ = await _taken_forward_port(spawn, echo_port)
    child = spawn(
        *["-R", f"127.0.0.1:{taken}:127.0.0.1:{echo_port}"],
        *["-R", f"0:127.0.0.1:{echo_port}"],
    )
    await child.wait_for(f"^Warning: remote port forwarding failed for listen port {taken}$")
    match = await child.wait_for(ALLOCATED.format(echo_port))
    assert await exchange(int(match.group(1)), b"still") == b"still"
    assert child.running
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None)


@pytest_twisted.ensureDeferred
async def test_refused_forward_with_exit_on_forward_failure(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """With ExitOnForwardFailure=yes a refused forward is ssh's Error line and 255."""
    taken, _ = await _taken_forward_port(spawn, echo_port)
    child = spawn(
        *["-o", "ExitOnForwardFailure=yes"],
        *["-R", f"127.0.0.1:{taken}:127.0.0.1:{echo_port}"],
    )
    status = await child.ended.addTimeout(START_TIMEOUT, reactor)
    assert status == (255, None), child.stderr
    assert child.lines == [f"Error: remote port forwarding failed for listen port {taken}"]


@pytest_twisted.ensureDeferred
async def test_unknown_host_key(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """An unknown host key ends the run with ssh's last words and 255."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    target.known_hosts = empty
    child = spawn("-R", f"0:127.0.0.1:{echo_port}")
    status = await child.ended.addTimeout(START_TIMEOUT, reactor)
    assert status == (255, None), child.stderr
    assert child.lines[-1].endswith("Host key verification failed."), child.stderr
    assert not any("Traceback" in line for line in child.lines)


@pytest_twisted.ensureDeferred
async def test_accept_new_records_the_key(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """StrictHostKeyChecking=accept-new trusts and records an unknown key."""
    recorded = tmp_path / "new_known_hosts"
    target.known_hosts = recorded
    child = spawn(
        # -F none: Debian's /etc/ssh/ssh_config says HashKnownHosts yes, which the
        # command now reads as ssh does, and the name would be recorded hashed.
        *["-F", "none", "-o", "StrictHostKeyChecking=accept-new"],
        *["-R", f"0:127.0.0.1:{echo_port}"],
    )
    await child.wait_for(ALLOCATED.format(echo_port))
    assert f"[127.0.0.1]:{target.port} " in recorded.read_text()
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None)


@pytest_twisted.ensureDeferred
async def test_permission_denied(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """A key the server does not know: ssh's ``user@host: Permission denied`` line."""
    from rtunnel.testing._keys import generate_client_key

    stranger = generate_client_key("ecdsa", tmp_path / "stranger")
    target.key = stranger
    child = spawn("-R", f"0:127.0.0.1:{echo_port}")
    status = await child.ended.addTimeout(START_TIMEOUT, reactor)
    assert status == (255, None), child.stderr
    denied = rf"{re.escape(target.user)}@127\.0\.0\.1: Permission denied \([a-z,-]*\)\."
    assert re.fullmatch(denied, child.lines[-1]), child.stderr
    assert "publickey" in child.lines[-1]


@pytest_twisted.ensureDeferred
async def test_connection_lost(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """-o AutoReconnect=no: when the server drops the connection, rtunnel says so and
    exits 255, as ssh does."""
    child = spawn("-o", "AutoReconnect=no", "-R", f"0:127.0.0.1:{echo_port}")
    await child.wait_for(ALLOCATED.format(echo_port))
    if target.kind == "bundled":
        await target.server.drop_connections()
    else:
        target.server.kill_sessions()
    status = await child.ended.addTimeout(START_TIMEOUT, reactor)
    assert status == (255, None), child.stderr
    assert len(child.lines) == 2, child.stderr
    assert not any("Traceback" in line for line in child.lines)


@pytest_twisted.ensureDeferred
async def test_auto_reconnect_prints_the_allocated_port_again(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """
    -o AutoReconnect=yes: when the server drops the session, rtunnel says why and when it
    retries, reconnects, asks for the port-0 forward again and prints the new
    "Allocated port" line; the new port reaches the target.
    """
    child = spawn(
        *["-o", "AutoReconnect=yes", "-o", "RetryInterval=1"],
        *["-R", f"0:127.0.0.1:{echo_port}"],
    )
    allocated = re.compile(ALLOCATED.format(echo_port))
    await child.wait_for(allocated.pattern)
    if target.kind == "bundled":
        await target.server.drop_connections()
    else:
        target.server.kill_sessions()
    for _ in range(int(START_TIMEOUT * 10)):
        matches = [m for m in map(allocated.search, child.lines) if m is not None]
        if len(matches) >= 2 or not child.running:
            break
        await deferLater(reactor, 0.1, lambda: None)
    assert child.running, child.stderr
    assert len(matches) == 2, child.stderr
    assert any("Reconnecting to 127.0.0.1 port" in line for line in child.lines), child.stderr
    assert any(line == "Reconnected to 127.0.0.1." for line in child.lines), child.stderr
    port = int(matches[1].group(1))
    assert await exchange(port, b"after the reconnect") == b"after the reconnect"
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None), child.stderr


@pytest_twisted.ensureDeferred
async def test_reconnects_by_default_and_says_so_once(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """
    Without -o AutoReconnect the command keeps the tunnel open (issue #12): each time the
    server drops the session it says so once (also at -v, where the tunnel's own log
    line would repeat it), reconnects from the first backoff step, prints the new
    allocated port; a clean stop logs no "Disconnecting with error" and no
    "Starting factory" lines.
    """
    child = spawn("-v", "-R", f"0:127.0.0.1:{echo_port}")
    allocated = re.compile(ALLOCATED.format(echo_port))
    await child.wait_for(allocated.pattern)
    for kill in range(1, 3):
        assert await exchange(_last_allocated(child, allocated), b"flowing") == b"flowing"
        if target.kind == "bundled":
            await target.server.drop_connections()
        else:
            target.server.kill_sessions()
        for _ in range(int(START_TIMEOUT * 10)):
            if len(_matches(child, allocated)) > kill or not child.running:
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert child.running, child.stderr
        assert len(_matches(child, allocated)) == kill + 1, child.stderr
    port = _last_allocated(child, allocated)
    assert await exchange(port, b"after the reconnects") == b"after the reconnects"
    reconnecting = [line for line in child.lines if "Reconnecting to 127.0.0.1 port" in line]
    assert len(reconnecting) == 2, child.stderr
    assert all(line.endswith("(attempt 1).") for line in reconnecting), child.stderr
    assert [line for line in child.lines if line == "Reconnected to 127.0.0.1."] == [
        "Reconnected to 127.0.0.1."
    ] * 2, child.stderr
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None), child.stderr
    for noise in ("Disconnecting with error", "Starting factory", "Stopping factory", "Trace"):
        assert noise not in child.stderr, child.stderr


def _matches(child: RTunnelProcess, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    return [m for m in map(pattern.search, child.lines) if m is not None]


def _last_allocated(child: RTunnelProcess, pattern: re.Pattern[str]) -> int:
    return int(_matches(child, pattern)[-1].group(1))


class _SayPeer(Protocol):
    def connectionMade(self) -> None:  # noqa: N802 (Protocol)
        assert self.transport is not None
        self.transport.write(f"{self.transport.getPeer().host}\n".encode())  # type: ignore[attr-defined]
        self.transport.loseConnection()


@pytest.mark.parametrize("target", ["openssh"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_bind_address_and_forwarding_local_host(
    target: Target, spawn: Spawn, tmp_path: Path
) -> None:
    """-b 127.0.0.2: sshd logs the connection from there; -o ForwardingLocalHost=127.0.0.3:
    the target sees its connections come from there."""
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(_SayPeer), interface="127.0.0.1"
    )
    target_port = listening.getHost().port  # type: ignore[attr-defined]
    try:
        child = spawn(
            *["-b", "127.0.0.2", "-o", "ForwardingLocalHost=127.0.0.3"],
            *["-R", f"0:127.0.0.1:{target_port}"],
        )
        port = int((await child.wait_for(ALLOCATED.format(target_port))).group(1))
        assert "Connection from 127.0.0.2 port" in target.server.log_text()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        collect = _Collect(len(b"127.0.0.3\n"))
        await connectProtocol(endpoint, collect)
        assert await collect.done.addTimeout(START_TIMEOUT, reactor) == b"127.0.0.3\n"
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None), child.stderr
    finally:
        await listening.stopListening()


@pytest.mark.parametrize("target", ["openssh"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_proxy_command_through_a_jump_host(
    target: Target,
    spawn: Spawn,
    echo_port: int,
    tmp_path: Path,
    openssh_sshd: str,
    openssh_client_key: Path,
) -> None:
    """-o ProxyCommand="ssh ... -W [%h]:%p jump": the session runs through a second real
    sshd, and the forward works."""
    from e2e_support import _jump_command

    from rtunnel.testing._openssh import OpenSSHServer

    pub = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text().strip()
    jump = OpenSSHServer(tmp_path / "jump", authorized_keys=[pub], sshd_path=openssh_sshd)
    jump.start()
    try:
        child = spawn(
            *["-o", f"ProxyCommand={_jump_command(jump, openssh_client_key)}"],
            *["-R", f"0:127.0.0.1:{echo_port}"],
        )
        port = int((await child.wait_for(ALLOCATED.format(echo_port))).group(1))
        assert await exchange(port, b"via the jump host") == b"via the jump host"
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None), child.stderr
        assert f"to {target.host} port {target.port}" in jump.log_text()
    finally:
        jump.stop()


@pytest.mark.parametrize("target", ["openssh"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_server_alive_notices_a_frozen_server(
    target: Target, spawn: Spawn, echo_port: int, tmp_path: Path
) -> None:
    """-o ServerAliveInterval=1 -o ServerAliveCountMax=1 -o AutoReconnect=no: a SIGSTOPped
    session is noticed within K*(N+1)+1 s, reported in ssh's words, exit 255."""
    child = spawn(
        "-o",
        "AutoReconnect=no",
        "-o",
        "ServerAliveInterval=1",
        "-o",
        "ServerAliveCountMax=1",
        "-R",
        f"0:127.0.0.1:{echo_port}",
    )
    await child.wait_for(ALLOCATED.format(echo_port))
    assert target.server.freeze_sessions()
    try:
        started = reactor.seconds()  # type: ignore[attr-defined]
        status = await child.ended.addTimeout(START_TIMEOUT, reactor)
        assert reactor.seconds() - started < 1 * (1 + 1) + 1 + 1  # type: ignore[attr-defined]
        assert status == (255, None), child.stderr
        assert any("not responding" in line for line in child.lines), child.stderr
    finally:
        target.server.kill_sessions()


class _Silent(Factory):
    """Accepts connections and never says a word; ``accepted`` fires at the first."""

    protocol = Protocol

    def __init__(self) -> None:
        self.accepted: Deferred[None] = Deferred()

    @override
    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        if not self.accepted.called:
            self.accepted.callback(None)
        return super().buildProtocol(addr)


@pytest_twisted.async_yield_fixture
async def silent_server() -> AsyncIterator[tuple[int, _Silent]]:
    """A TCP server that accepts connections and never says a word (a hung sshd)."""
    factory = _Silent()
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, factory, interface="127.0.0.1"
    )
    try:
        yield listening.getHost().port, factory  # type: ignore[attr-defined]
    finally:
        await listening.stopListening()


def _spawn_plain(tmp_path: Path, *args: str) -> RTunnelProcess:
    protocol = RTunnelProcess()
    argv = [*PYTHON_CLI, *args]
    reactor.spawnProcess(  # type: ignore[attr-defined]
        protocol, argv[0], argv, env=_clean_env(tmp_path), path=str(tmp_path)
    )
    return protocol


@pytest.mark.parametrize(("signals", "within"), [(["TERM"], STOP_WITHIN), (["TERM", "TERM"], 2.0)])
@pytest_twisted.ensureDeferred
async def test_signal_while_connecting(
    silent_server: tuple[int, _Silent], tmp_path: Path, signals: list[str], within: float
) -> None:
    """
    A signal while the SSH handshake hangs still stops rtunnel within a few seconds, and
    a second signal at once.
    """
    silent_port, factory = silent_server
    child = _spawn_plain(
        tmp_path, "-o", "BatchMode=yes", "-p", str(silent_port), "-R", "0:127.0.0.1:9", "127.0.0.1"
    )
    try:
        # Once it has connected its reactor runs, so its signal handlers are in place (a
        # fixed one-second wait was too short on a loaded machine: SIGTERM killed it).
        await factory.accepted.addTimeout(30, reactor)
        assert child.running, child.stderr
        started = reactor.seconds()  # type: ignore[attr-defined]
        for name in signals:
            if not child.running:  # the first signal may already have stopped it
                break
            child.transport.signalProcess(name)  # type: ignore[union-attr]
            await deferLater(reactor, 0.2, lambda: None)
        status = await child.ended.addTimeout(within + 1, reactor)
        assert reactor.seconds() - started < within  # type: ignore[attr-defined]
        assert status == (0, None), child.stderr
    finally:
        if child.running:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await child.ended


@pytest.mark.parametrize("target", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_verbose(target: Target, spawn: Spawn, echo_port: int, tmp_path: Path) -> None:
    """-v adds ssh's debug1 lines about the forwards."""
    child = spawn("-v", "-R", f"0:127.0.0.1:{echo_port}")
    await child.wait_for(ALLOCATED.format(echo_port))
    assert (
        f"debug1: Remote connections from localhost:0 forwarded to local address "
        f"127.0.0.1:{echo_port}"
    ) in child.lines, child.stderr
    child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    assert await child.ended.addTimeout(STOP_WITHIN, reactor) == (0, None)


# --------------------------------------------------------------------------------------
# twistd


def _plugin_installed(cwd: Path) -> bool:
    """
    Whether ``twisted/plugins/rtunnel_plugin.py`` is in a plugin directory Twisted searches
    from ``cwd`` (the installed one, not the checkout's).
    """
    probe = (
        "import os, twisted.plugins as p; "
        "print(any(os.path.exists(os.path.join(d, 'rtunnel_plugin.py')) for d in p.__path__))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    return result.stdout.strip() == "True"


REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "runner",
    [
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"],
        [sys.executable, "-m", "twisted"],
    ],
    ids=["twistd", "twist"],
)
def test_twistd_plugin_from_repo_root(runner: list[str]) -> None:
    """``twistd rtunnel --help`` (and twist's) from the checkout lists our options."""
    result = subprocess.run(
        [*runner, "rtunnel", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "--remote-forward=" in result.stdout
    assert "[user@]host" in result.stdout


def test_twistd_plugin_installed(tmp_path: Path) -> None:
    """
    The installed ``twistd`` finds the plugin from anywhere. In an editable install it
    cannot: setuptools maps packages with an import hook, and Twisted looks for plugins
    in ``twisted/plugins`` directories on ``sys.path``, where the checkout is not.
    """
    twistd = shutil.which("twistd")
    if twistd is None:
        pytest.skip("no twistd script on PATH")
    result = subprocess.run(
        [twistd, "rtunnel", "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    # scripts/test installs in editable_mode=compat so that this works from a checkout.
    assert result.returncode == 0, (result.stderr, _plugin_installed(tmp_path))
    assert "--remote-forward=" in result.stdout
