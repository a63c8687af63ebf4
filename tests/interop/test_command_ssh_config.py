"""
The ``rtunnel`` command with OpenSSH client configuration (issue #14): ``rtunnel -G``
next to the real ``ssh -G`` on the same files, a real sshd reached through nothing but a
``Host gw`` block (``-F FILE``, and ``$HOME/.ssh/config``), and ``-f``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_support import Server, openssh_only

PYTHON_CLI = [sys.executable, "-m", "rtunnel.cli"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_") and k != "DISPLAY"}
    env["HOME"] = str(home)
    return env


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _by_keyword(text: str) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for line in text.splitlines():
        keyword, _, value = line.partition(" ")
        grouped.setdefault(keyword.lower(), []).append(value)
    return grouped


# --------------------------------------------------------------------------------------
# rtunnel -G next to ssh -G


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    #: The keywords rtunnel -G must print besides host, user, hostname and port.
    shown: frozenset[str]
    args: tuple[str, ...] = ()
    destination: str = "gw"
    includes: dict[str, str] = field(default_factory=dict)


CASES = [
    Case(
        "host patterns",
        "Host * !other\n  User u1\nHost gw\n  HostName Real.Example\n  Port 2200\n"
        "  IdentityFile ~/.ssh/id_%h\n  IdentityFile /k2\nHost *.example\n  Port 1\n",
        frozenset({"identityfile"}),
    ),
    Case(
        "match",
        "Host gw\n  HostName real.example\nMatch originalhost gw\n  ServerAliveInterval 30\n"
        "  ServerAliveCountMax 4\nMatch host real.example user bob\n  Compression yes\n"
        "Match final host real.example\n  ConnectTimeout 7\n",
        frozenset({"serveraliveinterval", "serveralivecountmax", "compression", "connecttimeout"}),
        destination="bob@gw",
    ),
    Case(
        "include",
        "Include conf.d/*.conf\nHost *\n  ExitOnForwardFailure yes\n",
        frozenset({"remoteforward", "ciphers", "exitonforwardfailure", "stricthostkeychecking"}),
        includes={
            ".ssh/conf.d/a.conf": "Host gw\n  RemoteForward 8080 localhost:80\n"
            "  RemoteForward [::1]:0 /tmp/app.sock\n  Ciphers aes128-ctr,aes256-ctr\n",
            ".ssh/conf.d/b.conf": "StrictHostKeyChecking accept-new\nRemoteForward 9000\n",
        },
    ),
    Case(
        "tokens",
        "Host gw\n  HostName %h.example.org\n  UserKnownHostsFile /kh/%h_%p_%r /kh2\n"
        "  CertificateFile /c-%r\n  IdentityAgent /agent-%h\n  ProxyCommand nc %h %p\n",
        frozenset({"userknownhostsfile", "certificatefile", "identityagent", "proxycommand"}),
    ),
    Case(
        "command line first",
        "Port 3\nUser fromfile\nCompression no\nBindAddress 127.0.0.9\nMACs hmac-sha2-256\n"
        "RemoteForward 7000 localhost:7\n",
        frozenset({"compression", "bindaddress", "macs", "remoteforward", "identitiesonly"}),
        args=(
            *["-o", "Port=2", "-p", "5", "-l", "cli", "-C", "-b", "127.0.0.2"],
            *["-m", "hmac-sha2-512", "-R", "0:localhost:22", "-o", "IdentitiesOnly=yes"],
        ),
    ),
    Case(
        "jump flag over the file",
        "Host gw\n  ProxyJump other\nProxyCommand nc %h %p\nIdentityFile ~/.ssh/id_%r\n",
        frozenset({"proxyjump", "identityfile"}),
        args=("-J", "u@j:2222,ssh://v@j2:2200"),
    ),
    Case(
        "keywords rtunnel does not use",
        "ForwardAgent yes\nLocalForward 5000 db:5432\nSendEnv LANG\nProxyJump j1,u@j2:2222\n"
        "KexAlgorithms curve25519-sha256\nHostKeyAlgorithms ssh-ed25519\nRekeyLimit 1G 1h\n"
        "PubkeyAcceptedAlgorithms ssh-ed25519\nBatchMode yes\nLogLevel VERBOSE\n",
        # ssh -G also prints serveraliveinterval 300, its default under BatchMode
        # (readconf.c fill_default_options); rtunnel sets no keepalive for it.
        frozenset(
            {
                "proxyjump",
                "kexalgorithms",
                "hostkeyalgorithms",
                "rekeylimit",
                "pubkeyacceptedalgorithms",
                "batchmode",
                "loglevel",
            }
        ),
    ),
]


@pytest.mark.openssh
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rtunnel_G_prints_what_ssh_G_prints(  # noqa: N802 - ssh's flag
    openssh_ssh: str, tmp_path: Path, case: Case
) -> None:
    """For every keyword rtunnel -G prints, ssh -G on the same files and arguments
    prints the same values; and rtunnel prints exactly the keywords it uses that the
    case sets (both bounds)."""
    version = subprocess.run([openssh_ssh, "-V"], capture_output=True, text=True).stderr
    if not version.startswith("OpenSSH_9.2p1"):
        pytest.skip(f"the reader follows OpenSSH 9.2p1; this ssh is {version.strip()}")
    for name, text in case.includes.items():
        _write(tmp_path / name, text)
    path = _write(tmp_path / "config", case.text)
    argv = ["-G", "-F", str(path), *case.args, case.destination]
    env = _env(tmp_path)
    ours = subprocess.run([*PYTHON_CLI, *argv], capture_output=True, text=True, env=env)
    theirs = subprocess.run(
        [openssh_ssh, *argv], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    assert (ours.returncode, theirs.returncode) == (0, 0), (ours.stderr, theirs.stderr)
    mine, ssh = _by_keyword(ours.stdout), _by_keyword(theirs.stdout)
    assert set(mine) == {"host", "user", "hostname", "port"} | case.shown, ours.stdout
    differing = {k: (v, ssh.get(k)) for k, v in mine.items() if ssh.get(k) != v}
    assert differing == {}, "(rtunnel's, ssh's)"


@pytest.mark.openssh
@pytest.mark.parametrize(
    "args",
    [
        ("-J", "a", "-J", "b"),
        ("-o", "ProxyJump=a,b", "-J", "c"),
        ("-o", "ProxyJump=none", "-J", "c"),
        ("-o", "ProxyCommand=nc %h %p", "-J", "c"),
        ("-o", "ProxyCommand=none", "-J", "c"),
    ],
)
def test_j_after_a_proxy_option_is_refused_as_ssh_refuses_it(
    openssh_ssh: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    argv = ["-G", "-F", "none", *args, "gw"]
    env = _env(tmp_path)
    ours = subprocess.run([*PYTHON_CLI, *argv], capture_output=True, text=True, env=env)
    theirs = subprocess.run(
        [openssh_ssh, *argv], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    assert (ours.returncode, theirs.returncode) == (255, 255)
    assert ours.stdout == theirs.stdout == ""
    assert ours.stderr.splitlines() == theirs.stderr.splitlines()[-1:], theirs.stderr


# --------------------------------------------------------------------------------------
# A real sshd through a Host block


def _host_block(server: Server) -> str:
    return (
        "Host gw\n"
        f"  HostName {server.host}\n  Port {server.port}\n  User {server.user}\n"
        f"  IdentityFile {server.key}\n  UserKnownHostsFile {server.known_hosts}\n"
        # ssh's keywords rtunnel does not use do not stop it.
        "Host *\n  ForwardAgent yes\n  SendEnv LANG\n"
    )


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _run_until_allocated(argv: list[str], env: dict[str, str], echo: int) -> None:
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stderr is not None
        line = child.stderr.readline().strip()
        expected = f"for remote forward to 127.0.0.1:{echo}"
        assert line.startswith("Allocated port ") and line.endswith(expected), line
        port = int(line.split()[2])
        assert _exchange(port, b"through the Host block") == b"through the Host block"
    finally:
        child.terminate()
        status = child.wait(10)
    assert status == 0, child.stderr.read() if child.stderr else ""


@openssh_only
def test_a_host_block_given_with_dash_f_is_all_it_needs(
    server: Server, tmp_path: Path, threaded_echo_port: int
) -> None:
    config = _write(tmp_path / "tunnels.conf", _host_block(server))
    argv = [*PYTHON_CLI, "-N", "-o", "BatchMode=yes", "-F", str(config)]
    argv += ["-R", f"0:127.0.0.1:{threaded_echo_port}", "gw"]
    _run_until_allocated(argv, _env(tmp_path / "empty-home"), threaded_echo_port)


@openssh_only
def test_a_host_block_in_home_ssh_config_is_read_without_dash_f(
    server: Server, tmp_path: Path, threaded_echo_port: int
) -> None:
    home = tmp_path / "home"
    _write(home / ".ssh" / "config", _host_block(server))
    argv = [*PYTHON_CLI, "-N", "-o", "BatchMode=yes"]
    argv += ["-R", f"0:127.0.0.1:{threaded_echo_port}", "gw"]
    _run_until_allocated(argv, _env(home), threaded_echo_port)


# --------------------------------------------------------------------------------------
# -f


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline and "rtunnel.cli" in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@openssh_only
def test_f_goes_to_the_background_once_the_forwards_are_up(
    server: Server, tmp_path: Path, threaded_echo_port: int
) -> None:
    config = _write(tmp_path / "f-test.conf", _host_block(server))
    argv = [*PYTHON_CLI, "-f", "-N", "-o", "BatchMode=yes", "-F", str(config)]
    argv += ["-R", f"0:127.0.0.1:{threaded_echo_port}", "gw"]
    started = time.monotonic()
    parent = subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    children = _processes_with(str(config))
    try:
        assert parent.returncode == 0, parent.stderr
        assert len(children) == 1, children
        (child,) = children
        # Its forward is up: the parent printed the line before it exited.
        line = parent.stderr.strip().splitlines()[-1]
        assert line.endswith(f"for remote forward to 127.0.0.1:{threaded_echo_port}"), line
        port = int(line.split()[2])
        assert _exchange(port, b"from the background") == b"from the background"
        # Detached: its own session, stdio on /dev/null.
        assert os.getsid(child) == child
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{child}/fd/{fd}") == os.devnull
        assert time.monotonic() - started < 60
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
    assert all(_gone(pid, 10) for pid in children)


@openssh_only
def test_f_exits_255_when_a_forward_fails_and_leaves_nothing_behind(
    server: Server, tmp_path: Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    config = _write(tmp_path / "f-fail.conf", _host_block(server))
    argv = [*PYTHON_CLI, "-f", "-N", "-o", "BatchMode=yes", "-F", str(config)]
    argv += ["-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{busy}:127.0.0.1:9", "gw"]
    try:
        parent = subprocess.run(
            argv, capture_output=True, text=True, env=_env(tmp_path), timeout=60
        )
    finally:
        taken.close()
    assert parent.returncode == 255, parent.stderr
    assert f"Error: remote port forwarding failed for listen port {busy}" in parent.stderr
    assert [pid for pid in _processes_with(str(config)) if not _gone(pid, 5)] == []
