"""
:mod:`rtunnel.blocking` in real programs, run as subprocesses against a real sshd: a plain
script prints nothing on stderr, a threaded program serves several clients, and Ctrl-C
(SIGINT) while blocked in a call ends the program cleanly, logging off first.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sync_support import echo_through

from rtunnel.testing._openssh import OpenSSHServer

ROOT = Path(__file__).resolve().parents[2]

#: A plain script: forwarding mode to a local echo server of its own, and event mode served
#: by a handler thread per connection; it waits on stdin, or on accept() when told to.
SCRIPT = """
import socket, sys, threading
from rtunnel import PrivateKeyFile, ReconnectPolicy, TunnelOptions
from rtunnel.blocking import Tunnel

host, port, user, key, known_hosts, mode = sys.argv[1:7]

echo = socket.socket()
echo.bind(("127.0.0.1", 0))
echo.listen(8)

def serve_echo():
    while True:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

threading.Thread(target=serve_echo, daemon=True).start()

def shout(channel):
    while data := channel.recv():
        channel.sendall(data.upper())

options = TunnelOptions.create(
    user=user, auth=[PrivateKeyFile(key)], known_hosts=known_hosts,
    reconnect=ReconnectPolicy.off(),
)
try:
    with Tunnel(host, int(port), options=options, timeout=30) as tunnel:
        forward = tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo.getsockname()[1])
        listener = tunnel.listen("127.0.0.1", 0, handler=shout)
        print("ports", forward.port, listener.forward.port, flush=True)
        if mode == "accept":
            tunnel.listen("127.0.0.1", 0).accept()  # blocks until Ctrl-C
        else:
            sys.stdin.readline()
        print("channels opened", tunnel.statistics().channels_opened, flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("done", flush=True)
"""


def _start(tmp_path: Path, server: OpenSSHServer, key: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "tunnel_script.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            server.host,
            str(server.port),
            server.user,
            str(key),
            str(server.known_hosts_path),
            mode,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ports(child: subprocess.Popen[str]) -> tuple[int, int]:
    assert child.stdout is not None
    line = child.stdout.readline()
    words = line.split()
    assert words[:1] == ["ports"], (line, child.stderr.read() if child.stderr else "")
    return int(words[1]), int(words[2])


def test_a_plain_script_works_and_prints_nothing_on_stderr(
    tmp_path: Path, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    child = _start(tmp_path, openssh_server, openssh_client_key, "stdin")
    try:
        forward_port, event_port = _ports(child)
        assert echo_through(forward_port, b"through the echo" * 1000) == b"through the echo" * 1000
        # Several clients at once on the event-mode forward, each in a handler thread.
        import threading

        answers: dict[int, bytes] = {}
        clients = [
            threading.Thread(
                target=lambda i=i: answers.__setitem__(i, echo_through(event_port, b"abc%d" % i))
            )
            for i in range(5)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join(30)
        assert answers == {i: b"ABC%d" % i for i in range(5)}
        stdout, stderr = child.communicate("\n", timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, stderr
    assert stderr == ""
    assert stdout.splitlines() == ["channels opened 6", "done"]


def test_ctrl_c_while_blocked_logs_off_and_exits(
    tmp_path: Path, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    child = _start(tmp_path, openssh_server, openssh_client_key, "accept")
    try:
        forward_port, _ = _ports(child)
        assert echo_through(forward_port, b"up") == b"up"
        time.sleep(0.3)  # into accept()
        child.send_signal(signal.SIGINT)
        started = time.monotonic()
        stdout, stderr = child.communicate(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, stderr
    assert stderr == ""
    assert stdout.splitlines() == ["interrupted", "done"]
    assert elapsed < 5, elapsed
    # Logged off, not just gone: the forwards were cancelled (RFC 4254 §7.1) before the
    # connection closed.
    log = openssh_server.log_text()
    cancelled = re.findall(r"cancel-tcpip-forward addr 127\.0\.0\.1 port (\d+)", log)
    assert len(cancelled) == 3, log[-3000:]
    assert str(forward_port) in cancelled
    try:
        socket.create_connection(("127.0.0.1", forward_port), timeout=5).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("the server still listens after the program ended")


def _readme_example(
    heading_index: int, server: OpenSSHServer, key: Path, echo_port: int, tmp_path: Path
) -> subprocess.Popen[str]:
    from test_docs import README, _blocks, _text

    blocks = [
        code
        for heading, info, code in _blocks(_text(README))
        if heading == "From blocking code or asyncio" and info == "python"
    ]
    assert len(blocks) == 2
    code = blocks[heading_index]
    for old, new in {
        '"gateway.example.com", 22,': f'"127.0.0.1", {server.port},',
        'user="tunnel"': f"user={server.user!r}",
        'PrivateKeyFile("~/.ssh/id_ed25519")]': (
            f"PrivateKeyFile({str(key)!r})], known_hosts={str(server.known_hosts_path)!r}"
        ),
        '"127.0.0.1", 8000)': f'"127.0.0.1", {echo_port})',
    }.items():
        if heading_index == 1 and "8000" in old:
            continue
        assert old in code, old
        code = code.replace(old, new)
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _shout_through(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"quiet\n")
        return s.recv(100)


def test_readme_blocking_example_runs(
    tmp_path: Path, openssh_server: OpenSSHServer, openssh_client_key: Path, threaded_echo_port: int
) -> None:
    child = _readme_example(0, openssh_server, openssh_client_key, threaded_echo_port, tmp_path)
    try:
        assert child.stdout is not None
        first = child.stdout.readline().split()
        assert first[:2] == ["Allocated", "port"], first
        assert echo_through(int(first[2]), b"readme") == b"readme"
        second = child.stdout.readline().split()
        assert second[:3] == ["Listening", "on", "port"], second
        assert _shout_through(int(second[3])) == b"QUIET\n"
        stdout, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert (child.returncode, stdout, stderr) == (0, "", "")


def test_readme_asyncio_example_runs(
    tmp_path: Path, openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    child = _readme_example(1, openssh_server, openssh_client_key, 0, tmp_path)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line[:3] == ["Listening", "on", "port"], line
        assert _shout_through(int(line[3])) == b"QUIET\n"
        stdout, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert (child.returncode, stdout, stderr) == (0, "", "")
