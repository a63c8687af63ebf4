"""
ReverseTunnel and the ``rtunnel`` command through real proxies (the reference's firewall):
Dante (SOCKS4, SOCKS5), OpenSSH's ``ssh -D`` (SOCKS4A), microsocks (SOCKS5 with a user name
and password) and tinyproxy (HTTP CONNECT, with and without Basic authentication), to the
bundled server and a real sshd; then ``proxy="auto"``, the exception list, and what a
refusing proxy does to the logon and to reconnecting.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import Server, _echo_once, command_argv
from twisted.internet.threads import deferToThread

from rtunnel import (
    ProxyAuthenticationError,
    ProxyError,
    ReconnectAttempt,
    ReconnectPolicy,
    TunnelObserver,
)
from rtunnel.client.reach.proxy import Proxy
from rtunnel.testing._openssh import OpenSSHServer
from rtunnel.testing._proxyservers import (
    DanteServer,
    MicroSocks,
    SSHDynamicForward,
    TinyProxy,
    find_program,
)


def _need(program: str) -> None:
    if find_program(program) is None:
        import os

        if os.environ.get("CI"):
            pytest.fail(f"{program} not found (scripts/test installs it)", pytrace=False)
        pytest.skip(f"{program} not found")


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DanteServer]:
    _need("danted")
    with DanteServer(tmp_path_factory.mktemp("dante")) as server:
        yield server


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    _need("tinyproxy")
    with TinyProxy(tmp_path_factory.mktemp("tinyproxy"), basic_auth=("carol", "pass4carol")) as s:
        yield s


@pytest.fixture(scope="module")
def microsocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MicroSocks]:
    _need("microsocks")
    with MicroSocks(tmp_path_factory.mktemp("microsocks"), user="alice", password="s3cr:t") as s:
        yield s


class _Events(TunnelObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def connection_status(self, event: str, code: int, description: str) -> None:
        self.events.append((event, description))


async def _forward_works(server: Server, proxy: Proxy | str, threaded_echo_port: int) -> list[str]:
    tunnel = server.tunnel(proxy=proxy)
    events = _Events()
    tunnel.add_observer(events)
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", threaded_echo_port)
        payload = b"through the proxy " * 20000
        assert await deferToThread(_echo_once, forward.port, payload) == payload
    finally:
        await tunnel.logoff()
    return [name for name, _ in events.events]


@pytest.mark.parametrize("kind", ["socks4", "socks5"])
@pytest_twisted.ensureDeferred
async def test_through_dante(
    server: Server, dante: DanteServer, kind: str, threaded_echo_port: int
) -> None:
    events = await _forward_works(server, f"{kind}://{dante.host}:{dante.port}", threaded_echo_port)
    # The reference's "Firewall connection complete", then the rest as usual.
    assert events[:2] == ["proxy-connected", "tcp-connected"]
    # Dante's own record of the connection it made: "... -> 127.0.0.1.<port> 127.0.0.1.<ssh port>".
    assert f" {server.host}.{server.port}\n" in dante.log_path.read_text()


@pytest.mark.parametrize("server", ["openssh"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_through_ssh_dynamic_forward_socks4a(
    server: Server, tmp_path: Path, threaded_echo_port: int
) -> None:
    # SOCKS4A sends the name: "localhost" is resolved by the proxy (ssh -D's sshd).
    sshd: OpenSSHServer = server.extra["server"]
    with SSHDynamicForward(tmp_path / "ssh-d", sshd, server.key) as socks:
        from rtunnel.client.reach.proxy import Proxy

        tunnel = server.tunnel(proxy=Proxy("socks4a", socks.host, socks.port))
        tunnel.host = "localhost"
        await tunnel.logon()
        await tunnel.logoff()
    assert f"localhost port {server.port}" in sshd.log_text()


@pytest_twisted.ensureDeferred
async def test_through_microsocks_with_a_password(
    server: Server, microsocks: MicroSocks, threaded_echo_port: int
) -> None:
    proxy = Proxy("socks5", microsocks.host, microsocks.port, user="alice", password="s3cr:t")
    await _forward_works(server, proxy, threaded_echo_port)
    wrong = Proxy("socks5", microsocks.host, microsocks.port, user="alice", password="nope")
    tunnel = server.tunnel(proxy=wrong, reconnect=ReconnectPolicy(mode="always"))
    with pytest.raises(ProxyAuthenticationError, match="socks5 proxy"):
        # Never retried: the same credentials would be refused again.
        await tunnel.logon()


@pytest_twisted.ensureDeferred
async def test_through_tinyproxy_http_connect_with_basic_auth(
    server: Server, tinyproxy: TinyProxy, threaded_echo_port: int
) -> None:
    url = f"http://carol:pass%34carol@{tinyproxy.host}:{tinyproxy.port}"
    await _forward_works(server, url, threaded_echo_port)
    tunnel = server.tunnel(proxy=f"http://{tinyproxy.host}:{tinyproxy.port}")
    with pytest.raises(ProxyAuthenticationError, match="407"):
        await tunnel.logon()


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_auto_reads_all_proxy_and_no_proxy(
    server: Server, dante: DanteServer, threaded_echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_before = dante.log_path.read_text()
    monkeypatch.setenv("ALL_PROXY", f"socks5://{dante.host}:{dante.port}")
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    events = await _forward_works(server, "auto", threaded_echo_port)
    assert "proxy-connected" in events
    assert len(dante.log_path.read_text()) > len(log_before)
    monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
    events = await _forward_works(server, "auto", threaded_echo_port)
    assert "proxy-connected" not in events


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_exceptions_bypass_a_proxy_and_a_dead_proxy_is_a_proxy_error(
    server: Server, threaded_echo_port: int
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    proxy = f"socks5://127.0.0.1:{dead}"
    tunnel = server.tunnel(proxy=proxy)
    with pytest.raises(ProxyError, match=f"connect to socks5 proxy 127.0.0.1 port {dead}"):
        await tunnel.logon()
    tunnel = server.tunnel(proxy=proxy, proxy_exceptions="example.com;127.0.0.1")
    await tunnel.logon()
    await tunnel.logoff()


@pytest.mark.parametrize("server", ["openssh"], indirect=True)
def test_the_command_through_a_socks5_proxy(
    server: Server, dante: DanteServer, tmp_path: Path
) -> None:
    """rtunnel -o Proxy=socks5://... through Dante to sshd: the Allocated port line."""
    argv = [
        sys.executable,
        "-m",
        "rtunnel.cli",
        *command_argv(
            server,
            *["-o", f"Proxy=socks5://{dante.host}:{dante.port}", "-o", "ExitOnForwardFailure=yes"],
            *["-R", "0:127.0.0.1:9"],
        ),
    ]
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        assert line.startswith("Allocated port "), line
    finally:
        child.terminate()
        child.wait(10)
    argv[argv.index(f"Proxy=socks5://{dante.host}:{dante.port}")] = "Proxy=socks9://x"
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert done.returncode == 255
    assert "Bad Proxy 'socks9://x'" in done.stderr
    assert "Traceback" not in done.stderr


class _ScriptedProxy:
    """
    An HTTP CONNECT proxy that misbehaves on cue (RELIABILITY.md A19), in a thread with
    blocking sockets: each connection takes the next behaviour, the last one repeats.
    "502": refuses; "close": answers 200 and closes at once; "flood": sends header lines
    without end; "pass": connects to the destination and relays.
    """

    def __init__(self, behaviours: list[str]) -> None:
        self.behaviours = behaviours
        self.seen: list[str] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            behaviour = self.behaviours[min(len(self.seen), len(self.behaviours) - 1)]
            self.seen.append(behaviour)
            threading.Thread(target=self._serve, args=(conn, behaviour), daemon=True).start()

    def _serve(self, conn: socket.socket, behaviour: str) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            target = head.split(b" ")[1].decode()
            if behaviour == "502":
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            elif behaviour == "close":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            elif behaviour == "flood":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                with contextlib.suppress(OSError):
                    for _ in range(10_000):
                        conn.sendall(b"X-Flood: " + b"a" * 100 + b"\r\n")
            else:
                host, _, port = target.rpartition(":")
                with socket.create_connection((host, int(port))) as upstream:
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    _relay(conn, upstream)

    def close(self) -> None:
        self.listener.close()


def _relay(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join(30)


class _Attempts(TunnelObserver):
    def __init__(self) -> None:
        self.attempts: list[tuple[float, str]] = []
        self.messages: list[str] = []

    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self.attempts.append((attempt.retry_interval, type(attempt.error).__name__))
        self.messages.append(str(attempt.error))


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_proxy_faults_are_typed_bounded_and_retried_with_backoff(
    server: Server, threaded_echo_port: int
) -> None:
    """RELIABILITY.md A19: 502, a close right after CONNECT and a header flood each fail
    the attempt with a typed error, nothing grows without bound, and the "always" policy
    backs off and gets through once the proxy behaves."""
    proxy = _ScriptedProxy(["502", "close", "flood", "pass"])
    attempts = _Attempts()
    tunnel = server.tunnel(
        proxy=f"http://127.0.0.1:{proxy.port}",
        reconnect=ReconnectPolicy(mode="always", initial_delay=0.1, factor=2.0, jitter=0.0),
    )
    tunnel.add_observer(attempts)
    try:
        await tunnel.logon()
        forward = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", threaded_echo_port)
        assert await deferToThread(_echo_once, forward.port, b"past the faults") == (
            b"past the faults"
        )
    finally:
        await tunnel.logoff()
        proxy.close()
    assert proxy.seen == ["502", "close", "flood", "pass"]
    assert [name for _, name in attempts.attempts] == [
        "ProxyError",  # 502
        "ConnectionLostError",  # 200, then closed before any SSH byte
        "ProxyError",  # an HTTP head longer than 16 KiB
    ]
    assert "502 Bad Gateway" in attempts.messages[0]
    # Cut off at the bound, not read to the end or waited out.
    assert "longer than 16384 bytes" in attempts.messages[2], attempts.messages[2]
    delays = [delay for delay, _ in attempts.attempts]
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off
