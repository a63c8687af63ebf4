"""
Tests for :mod:`rtunnel.service`: the ``twistd rtunnel`` options and service, the plugin
file, and the helpers the ``rtunnel`` command shares with them.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IService, IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.plugin import IPlugin
from twisted.protocols.wire import Echo
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy
from zope.interface.verify import verifyObject

from rtunnel import service
from rtunnel.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    ForwardingError,
    HostKeyError,
    ProtocolError,
    RTunnelError,
)
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.openssh.forwards import RemoteForwardSpec
from rtunnel.service import Options, TunnelService, describe_error, makeService

REPO_ROOT = Path(__file__).resolve().parents[2]

#: twistd, run with the current directory on sys.path (as ``python -c`` puts it), so that
#: from the checkout Twisted finds twisted/plugins/rtunnel_plugin.py even in an
#: editable install.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


# --------------------------------------------------------------------------------------
# Options


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_options() -> None:
    """The ssh flags twistd takes mean what they mean to ssh."""
    options = parse(
        *["-p", "2222", "-l", "alice", "-i", "/k1", "--identity-file", "/k2"],
        *["-o", "StrictHostKeyChecking=accept-new", "--option", "ExitOnForwardFailure=yes"],
        *["-R", "0:127.0.0.1:80", "--remote-forward", "*:8080:localhost:8080"],
        "bob@example.com",
    )
    settings = options.client_options
    assert options.host == "example.com"
    assert (settings.port, settings.user) == (2222, "alice")
    assert settings.identity_files == ["/k1", "/k2"]
    assert settings.tunnel["host_key_policy"] == "accept-new"
    assert settings.exit_on_forward_failure is True
    assert settings.remote_forwards == [
        RemoteForwardSpec("localhost", 0, "127.0.0.1", 80),
        RemoteForwardSpec("", 8080, "localhost", 8080),
    ]


def test_destination_user_and_port() -> None:
    """An ssh:// destination gives the user and port when the flags do not."""
    options = parse("-R", "0:h:1", "ssh://carol@[::1]:2200")
    assert (options.host, options.client_options.user, options.client_options.port) == (
        "::1",
        "carol",
        2200,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-R", "8080:localhost", "h"], "Bad remote forwarding specification '8080:localhost'"),
        (["-o", "Foo=1", "-R", "0:h:1", "h"], "Bad configuration option: foo"),
        (["-p", "0", "-R", "0:h:1", "h"], "Bad port '0'"),
        (["-R", "0:h:1", "@h"], "Bad destination '@h'"),
        (["h"], "no remote forwards"),
        (["-R", "0:h:1"], "Wrong number of arguments"),
    ],
)
def test_options_errors(argv: list[str], message: str) -> None:
    """Mistakes are twistd usage errors carrying rtunnel's one-line message."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_help_mentions_ssh_syntax() -> None:
    """``twistd rtunnel --help`` documents every flag."""
    text = str(Options())
    for flag in ["--remote-forward=", "--identity-file=", "--option=", "--port=", "--login-name="]:
        assert flag in text


# --------------------------------------------------------------------------------------
# The plugin


def test_plugin_file() -> None:
    """
    The plugin module is a lazy ServiceMaker for rtunnel.tap (one tunnel from
    rtunnel.service's flags, or --config), and ``twisted/`` and
    ``twisted/plugins/`` have no ``__init__.py`` (which would hide Twisted's own).
    """
    assert not (REPO_ROOT / "twisted" / "__init__.py").exists()
    assert not (REPO_ROOT / "twisted" / "plugins" / "__init__.py").exists()
    path = REPO_ROOT / "twisted" / "plugins" / "rtunnel_plugin.py"
    spec = importlib.util.spec_from_file_location("rtunnel_plugin_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    maker = module.rtunnel
    assert verifyObject(IServiceMaker, maker)
    assert verifyObject(IPlugin, maker)
    assert maker.tapname == "rtunnel"
    import rtunnel.tap

    assert maker.options is rtunnel.tap.Options
    assert issubclass(maker.options, Options)
    assert maker.makeService is rtunnel.tap.makeService


# --------------------------------------------------------------------------------------
# describe_error


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (
            AuthenticationError("Permission denied (publickey).", ("publickey", "password")),
            "alice@example.com: Permission denied (publickey,password).",
        ),
        (AuthenticationError("no keys"), "rtunnel: no keys"),
        (
            HostKeyError("No key known. Host key verification failed."),
            "No key known. Host key verification failed.",
        ),
        (HostKeyError("Changed!"), "Changed!\nHost key verification failed."),
        (
            ConnectError("connect to host h port 1: Connection refused"),
            "rtunnel: connect to host h port 1: Connection refused",
        ),
        (
            ConnectionLostError("Connection to h closed by remote host."),
            "Connection to h closed by remote host.",
        ),
        (ConnectionLostError("The server disconnected."), "rtunnel: The server disconnected."),
        (
            ForwardingError("Error: remote port forwarding failed for listen port 80"),
            "Error: remote port forwarding failed for listen port 80",
        ),
        (ProtocolError("bad packet"), "rtunnel: bad packet"),
        (RTunnelError("something"), "rtunnel: something"),
    ],
)
def test_describe_error(error: RTunnelError, text: str) -> None:
    """Errors are worded as ssh words them where it has words for them."""
    assert describe_error(error, user="alice", host="example.com") == text


# --------------------------------------------------------------------------------------
# build_tunnel


def test_build_tunnel(tmp_path: Path) -> None:
    """The tunnel gets the options' settings; missing keys are skipped, not fatal."""
    key = tmp_path / "id_test"
    key.write_text("not read until log-on")
    key.chmod(0o600)  # as ssh wants a key file (a readable one is skipped, with its warning)
    options = ClientOptions(
        user="alice", port=2222, identity_files=[str(key), str(tmp_path / "missing")]
    )
    for text in [f"UserKnownHostsFile={tmp_path / 'kh'}", "StrictHostKeyChecking=no"]:
        options.apply_option(text)
    options.apply_option("ConnectTimeout=7")
    reported: list[tuple[str, str]] = []
    tunnel = service.build_tunnel(
        reactor, "example.com", options, report=lambda *a: reported.append(a)
    )
    assert tunnel.options.host_keys.host_key_policy == "accept-new"
    assert tunnel.options.reach.connect_timeout == 7
    assert reported == [("DEBUG1", f"no such identity: {tmp_path / 'missing'}")]


def test_build_tunnel_known_hosts_none(tmp_path: Path) -> None:
    """UserKnownHostsFile=none checks against (and records to) nothing."""
    options = ClientOptions()
    options.apply_option("UserKnownHostsFile=none")
    tunnel = service.build_tunnel(reactor, "h", options, report=lambda *a: None)
    assert [str(p) for p in tunnel.options.host_keys.known_hosts] == ["/dev/null"]


# --------------------------------------------------------------------------------------
# The service, against the bundled server


@pytest_twisted.async_yield_fixture
async def echo_port() -> AsyncIterator[int]:
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), interface="127.0.0.1"
    )
    try:
        yield listening.getHost().port  # type: ignore[attr-defined]
    finally:
        await listening.stopListening()


def settings(
    server: Any, user: str, key: Path, known_hosts: Path, *forwards: str, **extra: Any
) -> Options:
    return parse(
        *["-p", str(server.port), "-l", user, "-i", str(key)],
        *["-o", f"UserKnownHostsFile={known_hosts}"],
        *[arg for forward in forwards for arg in ("-R", forward)],
        *[arg for key_, value in extra.items() for arg in ("-o", f"{key_}={value}")],
        server.host,
    )


class _Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Protocol)
        self.received += data
        if not self.done.called:
            self.done.callback(self.received)


async def echo_through(port: int, payload: bytes) -> bytes:
    collect = _Collect()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    await connectProtocol(endpoint, collect)
    assert collect.transport is not None
    collect.transport.write(payload)
    received = await collect.done.addTimeout(20, reactor)
    collect.transport.loseConnection()
    return received


@pytest_twisted.ensureDeferred
async def test_service_start_and_stop(
    ssh_test_server: Any, ssh_user: str, ssh_client_key: Path, ssh_known_hosts: Path, echo_port: int
) -> None:
    """startService logs on and forwards; stopService logs off, and twistd can wait."""
    config = settings(
        ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, f"0:127.0.0.1:{echo_port}"
    )
    svc = makeService(config, reactor=reactor)
    assert verifyObject(IService, svc)
    assert svc.name == "rtunnel"
    svc.startService()
    port = await ssh_test_server.wait_for_forward("localhost").addTimeout(20, reactor)
    assert await echo_through(port, b"via twistd") == b"via twistd"
    stopped = svc.stopService()
    assert isinstance(stopped, Deferred)
    await stopped.addTimeout(10, reactor)
    assert ssh_test_server.forwards == []
    await ssh_test_server.wait_for_connections(0).addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_service_connection_lost(
    ssh_test_server: Any, ssh_user: str, ssh_client_key: Path, ssh_known_hosts: Path, echo_port: int
) -> None:
    """With AutoReconnect=no a dropped connection is reported to on_failure (twistd: the
    reactor stops)."""
    config = settings(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        f"0:127.0.0.1:{echo_port}",
        AutoReconnect="no",
    )
    failed: Deferred[RTunnelError] = Deferred()
    svc = TunnelService(reactor, config.host, config.client_options, on_failure=failed.callback)
    svc.startService()
    await ssh_test_server.wait_for_forward("localhost").addTimeout(20, reactor)
    await ssh_test_server.drop_connections()
    error = await failed.addTimeout(10, reactor)
    assert isinstance(error, ConnectionLostError)
    await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_service_reconnects_by_default_and_logs_it_once(
    ssh_test_server: Any, ssh_user: str, ssh_client_key: Path, ssh_known_hosts: Path, echo_port: int
) -> None:
    """
    Without AutoReconnect the service keeps the tunnel open: a dropped connection is made
    again and the forward requested again, and the log has one line for each attempt
    (the tunnel's; the service's reporter no longer repeats it) and one "Reconnected".
    """
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    from rtunnel import ForwardState

    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    config = settings(
        ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, f"0:127.0.0.1:{echo_port}"
    )
    failed: list[RTunnelError] = []
    svc = TunnelService(reactor, config.host, config.client_options, on_failure=failed.append)
    globalLogPublisher.addObserver(observe)
    try:
        svc.startService()
        await ssh_test_server.wait_for_forward("localhost").addTimeout(20, reactor)
        tunnel = svc.tunnel
        assert tunnel is not None

        async def active() -> None:
            for _ in range(200):
                if tunnel.connected and [f.state for f in tunnel.forwards] == [ForwardState.ACTIVE]:
                    return
                await deferLater(reactor, 0.05, lambda: None)
            raise AssertionError("the forward did not come back")

        await active()
        await ssh_test_server.drop_connections()
        await deferLater(reactor, 0.1, lambda: None)
        await active()
        port = tunnel.forwards[0].port
        assert await echo_through(port, b"reconnected") == b"reconnected"
        await svc.stopService()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failed == []
    attempts = [line for line in lines if "Reconnecting to" in line]
    assert len(attempts) == 1 and attempts[0].endswith("(attempt 1)."), lines
    assert [line for line in lines if "Reconnected to" in line] == [
        f"Reconnected to {config.host}."
    ], lines


@pytest_twisted.ensureDeferred
async def test_service_exit_on_forward_failure(
    ssh_test_server: Any, ssh_user: str, ssh_client_key: Path, ssh_known_hosts: Path, echo_port: int
) -> None:
    """With ExitOnForwardFailure=yes a refused forward is a failure of the service."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        config = settings(
            ssh_test_server,
            ssh_user,
            ssh_client_key,
            ssh_known_hosts,
            f"127.0.0.1:{taken}:127.0.0.1:{echo_port}",
            ExitOnForwardFailure="yes",
        )
        failed: Deferred[RTunnelError] = Deferred()
        svc = TunnelService(reactor, config.host, config.client_options, on_failure=failed.callback)
        svc.startService()
        error = await failed.addTimeout(20, reactor)
    assert isinstance(error, ForwardingError)
    assert str(error) == f"Error: remote port forwarding failed for listen port {taken}"
    await svc.stopService()


class _StopRecorder:
    """The real reactor, except that ``stop`` is only recorded."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.stops = 0
        directlyProvides(self, *providedBy(real))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def stop(self) -> None:
        self.stops += 1


@pytest_twisted.ensureDeferred
async def test_make_service_stops_reactor_on_failure(tmp_path: Path) -> None:
    """twistd's service stops the reactor when the tunnel cannot be set up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    config = parse("-p", str(free), "-o", "BatchMode=yes", "-R", "0:h:1", "127.0.0.1")
    recorder = _StopRecorder(reactor)
    svc = makeService(config, reactor=recorder)  # type: ignore[arg-type]
    svc.startService()
    for _ in range(200):
        if recorder.stops:
            break
        await Deferred.fromCoroutine(_sleep(0.05))
    assert recorder.stops == 1
    await svc.stopService()


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


# --------------------------------------------------------------------------------------
# establish_forwards, with a fake tunnel


class _FakeTunnel:
    """Answers forward requests from a script; ``connected`` as set."""

    def __init__(self, answers: list[int | None]) -> None:
        self.answers = answers
        self.connected = True
        self.requests: list[tuple[str, int, str | None, int | None]] = []

    def request_forwarding(
        self, bind_address: str, port: int, host: str | None = None, host_port: int | None = None
    ) -> Deferred[Any]:
        from rtunnel._model import Forward

        self.requests.append((bind_address, port, host, host_port))
        answer = self.answers.pop(0)
        d: Deferred[Any] = Deferred()
        if answer is None:
            d.errback(Failure(ForwardingError("refused")))
        elif answer < 0:
            d.errback(Failure(ConnectionLostError("lost")))
        else:
            d.callback(Forward(bind_address, port, host, host_port, port=answer))
        return d


def _establish(tunnel: _FakeTunnel, specs: list[str], exit_on_failure: bool) -> Any:
    from rtunnel.openssh.forwards import parse_remote_forward

    clock = Clock()
    reported: list[tuple[str, str]] = []
    d = Deferred.fromCoroutine(
        service.establish_forwards(
            tunnel,  # type: ignore[arg-type]
            [parse_remote_forward(s) for s in specs],
            exit_on_failure=exit_on_failure,
            report=lambda *a: reported.append(a),
        )
    )
    clock.advance(0)
    clock.advance(0)
    return d, reported


def test_establish_forwards_reports_like_ssh() -> None:
    """Allocated ports and refusals are reported in ssh's words, in order."""
    tunnel = _FakeTunnel([40000, None, 8080])
    d, reported = _establish(tunnel, ["0:h:1", "8080:h:2", "8080:h:3"], exit_on_failure=False)
    results: list[Any] = []
    d.addCallback(results.append)
    assert [f.port for f in results[0]] == [40000, 8080]
    assert [text for level, text in reported if level == "INFO"] == [
        "Allocated port 40000 for remote forward to h:1",
        "Warning: remote port forwarding failed for listen port 8080",
    ]
    assert tunnel.requests == [
        ("localhost", 0, "h", 1),
        ("localhost", 8080, "h", 2),
        ("localhost", 8080, "h", 3),
    ]


def test_establish_forwards_exit_on_failure() -> None:
    """
    With exit_on_failure the first refusal is a ForwardingError with ssh's Error line.
    Every request went out at once, as ssh sends them (ssh.c, ssh_init_forwarding); what
    is answered after the refusal is not reported (ssh has exited by then).
    """
    tunnel = _FakeTunnel([None, 1])
    d, reported = _establish(tunnel, ["8080:h:2", "0:h:1"], exit_on_failure=True)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert str(failures[0].value) == "Error: remote port forwarding failed for listen port 8080"
    assert len(tunnel.requests) == 2
    assert [text for level, text in reported if level == "INFO"] == []


def test_establish_forwards_connection_lost() -> None:
    """A request failing because the connection went is not reported as a refusal."""
    tunnel = _FakeTunnel([-1])
    tunnel.connected = False
    d, reported = _establish(tunnel, ["8080:h:2"], exit_on_failure=False)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures[0].check(ConnectionLostError)
    assert not any("Warning" in text for _, text in reported)


# --------------------------------------------------------------------------------------
# twistd itself


class _Twistd(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (ProcessProtocol)
        self.output += data

    errReceived = outReceived  # noqa: N815 (ProcessProtocol)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (ProcessProtocol)
        value = reason.value
        self.ended.callback((getattr(value, "exitCode", None), getattr(value, "signal", None)))


@pytest_twisted.ensureDeferred
async def test_twistd_runs_the_service(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    echo_port: int,
    tmp_path: Path,
) -> None:
    """
    ``twistd -n rtunnel ...`` (run from the checkout, where Twisted finds the plugin)
    forwards, logs the allocated port, and on SIGTERM logs off before exiting.
    """
    twistd = _Twistd()
    argv = [
        *TWISTD,
        *["-n", "--pidfile=", "--logfile=-"],
        "rtunnel",
        *["-p", str(ssh_test_server.port), "-l", ssh_user, "-i", str(ssh_client_key)],
        *["-o", f"UserKnownHostsFile={ssh_known_hosts}"],
        *["-R", f"0:127.0.0.1:{echo_port}"],
        "127.0.0.1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(tmp_path)
    reactor.spawnProcess(  # type: ignore[attr-defined]
        twistd, sys.executable, argv, env=env, path=str(REPO_ROOT)
    )
    try:
        waiting = ssh_test_server.wait_for_forward("localhost").addTimeout(30, reactor)
        try:
            port = await waiting
        except Exception:
            raise AssertionError(twistd.output.decode("utf-8", "replace")) from None
        assert await echo_through(port, b"twistd") == b"twistd"
        twistd.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await twistd.ended.addTimeout(10, reactor)
    finally:
        if not twistd.ended.called:
            twistd.transport.signalProcess("KILL")  # type: ignore[union-attr]
            await twistd.ended
    output = twistd.output.decode("utf-8", "replace")
    assert f"Allocated port {port} for remote forward to 127.0.0.1:{echo_port}" in output
    assert "Traceback" not in output, output
    await ssh_test_server.wait_for_connections(0).addTimeout(10, reactor)
    assert ssh_test_server.forwards == []


@pytest_twisted.ensureDeferred
async def test_service_shows_its_tunnel_on_the_control_socket(
    ssh_test_server: Any,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    echo_port: int,
    tmp_path: Path,
) -> None:
    """twistd rtunnel -o ControlSocket=PATH (one tunnel): rtunnel status reads it while it
    runs; the socket goes when the service stops."""
    from sockets import in_thread

    from rtunnel.operations.control import query

    control_dir = tmp_path / "control"
    control_dir.mkdir(mode=0o700)
    control = control_dir / "one.sock"
    spec = f"0:127.0.0.1:{echo_port}"
    config = settings(
        ssh_test_server, ssh_user, ssh_client_key, ssh_known_hosts, spec, ControlSocket=control
    )
    svc = makeService(config, reactor=reactor)
    svc.startService()
    try:
        port = await ssh_test_server.wait_for_forward("localhost").addTimeout(20, reactor)
        assert await echo_through(port, b"seen") == b"seen"
        answer = await in_thread(query, control)
        (tunnel,) = answer["tunnels"]
        (forward,) = tunnel["forwards"]
        assert (tunnel["name"], tunnel["state"]) == (ssh_test_server.host, "connected")
        assert (forward["name"], forward["state"], forward["allocated_port"]) == (
            spec,
            "active",
            port,
        )
    finally:
        await svc.stopService().addTimeout(10, reactor)
    assert not control.exists()


def test_twistd_config_takes_only_the_process_options(tmp_path: Path) -> None:
    from rtunnel.tap import Options as TapOptions

    file = tmp_path / "t.toml"
    file.write_text(
        '[process]\nControlSocket = "none"\n[tunnel.a]\nhost = "h"\nforwards = ["1:h:2"]\n'
    )
    options = TapOptions()
    options.parseOptions(["-o", "HttpListen=9100", "--config", str(file)])
    assert options.config is not None and options.config.process.control_socket == "none"
    assert options.client_options.http_listen == "127.0.0.1:9100"
    with pytest.raises(usage.UsageError) as caught:
        TapOptions().parseOptions(["-o", "User=x", "--config", str(file)])
    assert str(caught.value) == (
        "-o User with --config: a tunnel's options go in the file; -o takes only "
        "LogFormat, ControlSocket, HttpListen here"
    )
