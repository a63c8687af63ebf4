"""
Hardening where text and files meet the user (issue 13; RELIABILITY.md G1-G4): no
traceback for any argument, files under ``~/.ssh`` private and written atomically
whatever the umask, private keys readable by others refused as ``ssh`` refuses them,
identity problems said at the default level, messages that say what happened.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from command_support import spawn_command
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo

from rtunnel.openssh.options import SUPPORTED_OPTIONS
from rtunnel.testing import SSHTestServer

SUPPORT = Path(__file__).resolve().parents[1] / "support"
PYTHON_CLI = [sys.executable, "-m", "rtunnel.cli"]


# -- G3: no traceback for any destination, port or -o value -----------------------------


def _isolated() -> bool:
    """Whether ``unshare -n`` works here (a network namespace with nothing in it)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return done.returncode == 0


ISOLATED = _isolated()


class Driver:
    """tests/support/cli_driver.py: the command, forked per run, name lookups failing."""

    def __init__(self) -> None:
        prefix = ["unshare", "-n"] if ISOLATED else []
        self._process = subprocess.Popen(
            [*prefix, sys.executable, str(SUPPORT / "cli_driver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "HOME": os.environ.get("HOME", "/nonexistent")},
        )

    def run(self, *argv: str) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(list(argv)) + "\n")
        self._process.stdin.flush()
        result: dict[str, Any] = json.loads(self._process.stdout.readline())
        return result

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(30)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        d = Driver()
    finally:
        if saved is not None:
            os.environ["HOME"] = saved
    yield d
    d.close()


#: What every run starts with: no prompts, errors only, a bounded connect, no retries.
BASE = [
    *["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"],
    *["-o", "AutoReconnect=no"],
]


def _one_clear_line(result: dict[str, Any], argv: list[str]) -> None:
    output: str = result["output"]
    assert result["status"] == 255, (argv, result)
    # The user's own text may say anything, "internal error" too (hypothesis found -R
    # 'internal error', echoed in "Bad remote forwarding specification ..."): not counted.
    for words in ("Traceback", "internal error"):
        assert words not in output or any(words in arg for arg in argv), (argv, output)
    assert all(c == "\n" or c.isprintable() for c in output), (argv, output)
    # ssh's own error lines about an identity file ("Load key ...: Is a directory",
    # "Warning: Identity file ... not accessible", and for a file of ours others may read,
    # "/" when run as root, its UNPROTECTED PRIVATE KEY FILE block) may come before the
    # one that ends it.
    lines = [
        line
        for line in output.splitlines()
        if not line.startswith(("Load key ", "Warning: Identity file "))
        and not (line.startswith("@") and line.endswith("@"))
        and not re.fullmatch(r"Permissions 0[0-7]{3} for '.*' are too open\.", line)
        and line not in _UNPROTECTED
    ]
    assert len(lines) == 1, (argv, output)


_UNPROTECTED = (
    "It is required that your private key files are NOT accessible by others.",
    "This private key will be ignored.",
)


def _no_address(text: str) -> None:
    # Without a network namespace, an IP literal would be connected to for real.
    if not ISOLATED:
        try:
            ipaddress.ip_address(text.strip("[]").split("%")[0])
        except ValueError:
            return
        assume(False)


#: What a command line can hold: any text but NUL (execve(2) cannot pass it), and the
#: lone surrogates Python decodes bytes that are not UTF-8 to (os.fsdecode).
ARGUMENT = st.text(
    st.one_of(
        st.characters(blacklist_characters="\x00"),
        st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)]),
    )
)

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(ARGUMENT.filter(bool))
def test_any_destination(driver: Driver, destination: str) -> None:
    _no_address(destination.rpartition("@")[2])
    argv = [*BASE, "-R", "0:localhost:1", "--", destination]
    _one_clear_line(driver.run(*argv), argv)


@PROPERTY
@given(ARGUMENT)
def test_any_port(driver: Driver, port: str) -> None:
    argv = [*BASE, "-p", port, "-R", "0:localhost:1", "--", "host.invalid"]
    _one_clear_line(driver.run(*argv), argv)


# ProxyCommand runs its value with /bin/sh: not with arbitrary text.
_KEYS = sorted(set(SUPPORTED_OPTIONS.values()) - {"ProxyCommand"})


@PROPERTY
@given(st.sampled_from(_KEYS), st.sampled_from(["=", " "]), ARGUMENT)
@example("CertificateFile", "=", "0\n0")  # once two lines: "Certificate file 0", "0 not found."
@example("HostName", "=", "0\n0")  # once "connect to host 0", "0 port 22: ..."
@example("IdentityFile", "=", "/")  # as root: ssh's UNPROTECTED PRIVATE KEY FILE block
@example("MaxRetryCount", "=", "\u00b9")  # a superscript one: str.isdigit() but not int()
@example("ServerAliveCountMax", "=", "\u0663")  # an Arabic-Indic three, likewise
@example("PermitRemoteOpen", "=", "h:\u00b9")  # a port of such digits
def test_any_option_value(driver: Driver, key: str, separator: str, value: str) -> None:
    argv = [*BASE, "-o", f"{key}{separator}{value}", "-R", "0:localhost:1", "--", "host.invalid"]
    _one_clear_line(driver.run(*argv), argv)


@pytest.mark.parametrize(
    "path",
    ["\ud800", "a\x00b", "~0", "~no-such-user-here/key", "~"],
    ids=["lone surrogate", "NUL", "~0", "unknown user", "home directory"],
)
def test_an_identity_file_no_file_can_be_named_is_skipped(driver: Driver, path: str) -> None:
    """
    Found by test_any_option_value: a key path no file system call takes (a lone
    surrogate, which an in-process caller can pass, or a NUL) or "~user" for no such
    user (Path.expanduser raises) ended in "main function encountered error" and a
    traceback. It is skipped as a missing key is, and ``-i`` warns about it as about
    any file it cannot access; a directory is reported as ssh reports it.
    """
    argv = [*BASE, "-o", f"IdentityFile={path}", "-R", "0:localhost:1", "--", "host.invalid"]
    _one_clear_line(driver.run(*argv), argv)
    argv = [*BASE, "-i", path, "-R", "0:localhost:1", "--", "host.invalid"]
    result = driver.run(*argv)
    assert result["status"] == 255, (argv, result)
    lines = result["output"].splitlines()
    assert len(lines) == 2 and "Traceback" not in result["output"], (argv, result)
    if path == "~":
        # A directory: ssh's load_identity_file says so ("Load key ...: Is a directory").
        assert lines[0].startswith("Load key ") and "Is a directory" in lines[0]
    else:
        assert lines[0].startswith("Warning: Identity file ") and "not accessible" in lines[0]
    assert all(line.isprintable() for line in lines), lines


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "CertificateFile=0\n0"],
        ["-o", "CertificateFile=/\x1b[31m"],
        ["-i", "a\nb"],
        ["-i", "~/key\r"],
        ["-o", "CertificateFile=\ud800"],
        ["-o", "ProxyJump=a\nb"],
        ["-J", "u\x1b@jump"],
    ],
    ids=[
        "CertificateFile LF",
        "CertificateFile ESC",
        "-i LF",
        "-i CR",
        "CertificateFile surrogate",
        "ProxyJump LF",
        "-J ESC user",
    ],
)
def test_a_name_given_with_a_control_character_is_one_clear_line(
    driver: Driver, argv: list[str]
) -> None:
    """
    Found by test_any_option_value: ``-o CertificateFile=0<LF>0`` printed "Certificate
    file 0", then "0 not found." on a line of its own. A name the user gave is shown
    escaped, as ssh's log does (vis(3)), so the message stays one line. A certificate
    name no file can have is not found (it was a traceback); a jump host's names are
    checked as the destination's, in ssh's words (it tried to look "a<LF>b" up).
    """
    argv = [*BASE, *argv, "-R", "0:localhost:1", "--", "host.invalid"]
    result = driver.run(*argv)
    _one_clear_line(result, argv)
    given = argv[-5]  # the value of the option under test
    if "ProxyJump" in given or "-J" in argv:
        name = "remote username" if "@" in given else "hostname"
        assert result["output"] == f"{name} contains invalid characters\n", result


@PROPERTY
@given(ARGUMENT)
@example("internal error")  # the user's words, echoed: not an internal error
def test_any_remote_forward(driver: Driver, spec: str) -> None:
    argv = [*BASE, "-R", spec, "--", "host.invalid"]
    _one_clear_line(driver.run(*argv), argv)


@pytest.mark.parametrize(
    ("destination", "line"),
    [
        ("a" * 64 + ".example.com", "connect to host {} port 22: Could not resolve hostname"),
        ("b" * 3000, "connect to host {} port 22: Could not resolve hostname"),
        ("a..b", "connect to host {} port 22: Could not resolve hostname"),
        ("ho\x1bst", "hostname contains invalid characters"),
        ("a\r\nb", "hostname contains invalid characters"),
        ("-", "hostname contains invalid characters"),
        ("a b", "hostname contains invalid characters"),
        ("u\x07@h", "remote username contains invalid characters"),
    ],
)
def test_malformed_host_names(destination: str, line: str, tmp_path: Path) -> None:
    """Issue 13, defect 4: each was "rtunnel: internal error" and a traceback."""
    argv = [*PYTHON_CLI, *BASE, "-R", "0:localhost:1", "--", destination]
    done = subprocess.run(
        ["unshare", "-n", *argv] if ISOLATED else argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    expected = line.format(destination)
    if expected.startswith("connect"):
        expected = "rtunnel: " + expected
    assert (done.returncode, done.stdout, done.stderr) == (255, "", expected + "\n")


def test_invalid_utf8_host_name(tmp_path: Path) -> None:
    argv = [*PYTHON_CLI, *BASE, "-R", "0:localhost:1", "--"]
    done = subprocess.run(
        [*(["unshare", "-n"] if ISOLATED else []), *(a.encode() for a in argv), b"h\xffx"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    assert (done.returncode, done.stderr) == (255, b"hostname contains invalid characters\n")


# -- G1: files under ~/.ssh -------------------------------------------------------------


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_known_hosts_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    from rtunnel.client.hostkeys.verify import append_private

    home = tmp_path / "home"
    home.mkdir()
    path = home / ".ssh" / "known_hosts"
    append_private(path, "one\n")
    assert (_mode(home / ".ssh"), _mode(path)) == (0o700, 0o600)
    append_private(path, "two\n")
    assert _mode(path) == 0o600 and path.read_text() == "one\ntwo\n"
    # A file made by someone else with the umask's mode becomes private when written.
    path.chmod(0o666)
    append_private(path, "three")
    assert _mode(path) == 0o600 and path.read_text() == "one\ntwo\nthree"
    append_private(path, "four\n")  # a last line without its newline gets one
    assert path.read_text() == "one\ntwo\nthree\nfour\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["known_hosts"]


def test_known_hosts_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rtunnel.client.hostkeys.verify import append_private

    path = tmp_path / "known_hosts"
    path.write_text("old\n")
    inode = path.stat().st_ino

    def crash(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="No space left"):
        append_private(path, "new\n")
    # The old file, whole, and no temporary file left behind.
    assert path.read_text() == "old\n" and path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["known_hosts"]
    monkeypatch.undo()
    append_private(path, "new\n")
    assert path.read_text() == "old\nnew\n" and path.stat().st_ino != inode


def test_known_hosts_symlink_is_kept(tmp_path: Path) -> None:
    from rtunnel.client.hostkeys.verify import append_private

    real = tmp_path / "dotfiles" / "known_hosts"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "known_hosts"
    link.symlink_to(real)
    append_private(link, "new\n")
    assert link.is_symlink() and real.read_text() == "old\nnew\n"


def test_known_hosts_that_is_not_a_file_is_appended_to(tmp_path: Path) -> None:
    # UserKnownHostsFile=none writes to /dev/null: never replaced. A FIFO stands in.
    from rtunnel.client.hostkeys.verify import append_private

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        append_private(fifo, "line\n")
        assert os.read(reader, 100) == b"line\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_known_hosts_writers_take_turns(tmp_path: Path) -> None:
    from rtunnel.client.hostkeys.verify import append_private

    path = tmp_path / ".ssh" / "known_hosts"

    def write(n: int) -> None:
        for i in range(25):
            append_private(path, f"{n}-{i}\n")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert sorted(lines) == sorted(f"{n}-{i}" for n in range(4) for i in range(25))


def test_accept_new_writes_privately_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """G1 through the verifier: ``~/.ssh`` 0700 and known_hosts 0600 (were 0755/0777
    and 0644/0666 with the umask's modes)."""
    from rtunnel.client.hostkeys.verify import HostKeyVerifier
    from rtunnel.testing import host_key

    home = tmp_path / "home"
    home.mkdir()
    path = home / ".ssh" / "known_hosts"
    blob = host_key("ed25519").public().blob()
    HostKeyVerifier("example.test", 2222, [path], "accept-new", global_known_hosts=[]).check(blob)
    assert (_mode(home / ".ssh"), _mode(path)) == (0o700, 0o600)
    assert path.read_text().startswith("[example.test]:2222 ssh-ed25519 ")


# -- through the command, against the bundled server ------------------------------------


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


@pytest_twisted.ensureDeferred
async def test_the_command_makes_ssh_private_under_umask_000(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_client_key: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        None,
        home,
        *["-o", "StrictHostKeyChecking=accept-new", "-R", "0:127.0.0.1:9"],
        umask=0o000,
    )
    await child.wait_for(b"Allocated port ")
    assert await child.stop() == 0
    lines = child.stderr.decode().splitlines()
    name = f"[{ssh_test_server.host}]:{ssh_test_server.port}"
    assert (
        lines[0] == f"Warning: Permanently added '{name}' (ssh-ed25519) to the list of known hosts."
    )
    ssh_dir = home / ".ssh"
    assert (_mode(ssh_dir), _mode(ssh_dir / "known_hosts")) == (0o700, 0o600)
    assert [p.name for p in ssh_dir.iterdir()] == ["known_hosts"]


@pytest_twisted.ensureDeferred
async def test_a_known_hosts_directory_is_named_as_such(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_client_key: Path, tmp_path: Path
) -> None:
    """Issue 13, defect 6: it was "connect to host ... [Errno 21] Is a directory"."""
    directory = tmp_path / "known_hosts.d"
    directory.mkdir()
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        directory,
        tmp_path / "home",
        "-R",
        "0:127.0.0.1:9",
    )
    assert await child.ended.addTimeout(30, reactor) == 255
    (line,) = child.stderr.decode().splitlines()
    where = re.escape(str(directory))
    assert re.fullmatch(
        rf"No ssh-ed25519 host key is known for \[127\.0\.0\.1\]:\d+ \(fingerprint "
        rf"SHA256:\S+\) in {where} \({where}: Is a directory\)\. If you trust this key, "
        r"add it there or allow new keys \(-o StrictHostKeyChecking=accept-new\)\. Host key "
        r"verification "
        r"failed\.",
        line,
    ), line
    # With accept-new, ssh's warning, and on it goes, as ssh does.
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        directory,
        tmp_path / "home",
        *["-o", "StrictHostKeyChecking=accept-new", "-R", "0:127.0.0.1:9"],
    )
    await child.wait_for(b"Allocated port ")
    assert await child.stop() == 0
    lines = child.stderr.decode().splitlines()
    assert lines[0] == (
        f"Failed to add the host to the list of known hosts ({directory}): Is a directory."
    ), lines


@pytest_twisted.ensureDeferred
async def test_a_dynamic_forward_says_it_is_an_open_proxy(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    """Issue 13, defect 8: one line when it starts, none with PermitRemoteOpen."""
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        tmp_path / "home",
        "-R",
        "0",
    )
    await child.wait_for(b"open proxy")
    assert await child.stop() == 0
    allocated, warning = child.stderr.decode().splitlines()
    port = int(allocated.split()[2])
    assert allocated == f"Allocated port {port} for remote forward to socks:0"
    assert warning == (
        f"Warning: the dynamic forward on listen port {port} is an open proxy: whoever "
        "reaches it connects anywhere this machine can (limit it with -o PermitRemoteOpen)."
    )
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        tmp_path / "home",
        *["-o", "PermitRemoteOpen=localhost:80", "-R", "0"],
    )
    await child.wait_for(b"Allocated port ")
    assert await child.stop() == 0
    assert len(child.stderr.decode().splitlines()) == 1


# -- in memory ---------------------------------------------------------------------------


def test_a_key_exchange_we_timed_out_is_said_so(tmp_path: Path) -> None:
    """Issue 13, defect 6: not "closed by remote host", nor a protocol error of the server's."""
    from memory_stack import Stack, result_of

    from rtunnel import TunnelObserver

    stack = Stack(tmp_path)
    result_of(stack.connect())
    reasons: list[Exception | None] = []

    class Watch(TunnelObserver):
        def disconnected(self, reason: Exception | None) -> None:
            reasons.append(reason)

    stack.tunnel.add_observer(Watch())
    stack.tunnel.rekey()  # never pumped: the server never answers
    stack.reactor.advance(61)
    stack.pump.flush()
    assert [str(r) for r in reasons] == [
        "Timeout: key exchange not finished after 60 s (the server stopped answering); "
        "rtunnel closed the connection."
    ]


# -- G2 and identity problems: through the command against OpenSSH's sshd, beside ssh ---


def _ssh_and_rtunnel(
    openssh_server: Any, openssh_ssh: str, key: Path, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """ssh -F none and rtunnel with the same arguments and ``-i key``; both results."""
    args = [
        *["-N", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"],
        *["-o", f"UserKnownHostsFile={openssh_server.known_hosts_path}"],
        *["-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"],
        *["-i", key.name, "-p", str(openssh_server.port), "-R", "0:127.0.0.1:9"],
        f"{openssh_server.user}@{openssh_server.host}",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("DISPLAY", None)
    results = []
    for argv in ([openssh_ssh, "-F", "none", *args], [*PYTHON_CLI, *args]):
        results.append(
            subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=30,
                cwd=key.parent,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        )
    return results[0], results[1]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_may_read_is_refused_as_ssh_refuses_it(
    openssh_server: Any, openssh_ssh: str, openssh_client_key: Path, tmp_path: Path, mode: int
) -> None:
    """G2: ssh's warning with the permissions found, the key ignored, exit 255."""
    key = tmp_path / "keys" / "id_ed25519"
    key.parent.mkdir()
    shutil.copy(openssh_client_key, key)
    key.chmod(mode)
    ssh, ours = _ssh_and_rtunnel(openssh_server, openssh_ssh, key, tmp_path)
    assert f"Permissions {mode:04o} for 'id_ed25519' are too open." in ssh.stderr
    assert (ours.returncode, ours.stderr) == (ssh.returncode, ssh.stderr) == (255, ssh.stderr)
    # The same key, private, logs on.
    key.chmod(0o600)
    with subprocess.Popen(
        [
            *PYTHON_CLI,
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={openssh_server.known_hosts_path}",
            "-i",
            str(key),
            "-p",
            str(openssh_server.port),
            "-R",
            "0:127.0.0.1:9",
            f"{openssh_server.user}@{openssh_server.host}",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    ) as child:
        assert child.stderr is not None
        assert child.stderr.readline().startswith("Allocated port ")
        child.terminate()


def test_a_key_directory_is_said_as_ssh_says_it(
    openssh_server: Any, openssh_ssh: str, tmp_path: Path
) -> None:
    key = tmp_path / "keys" / "id_dir"
    key.mkdir(parents=True, mode=0o700)
    key.chmod(0o700)
    ssh, ours = _ssh_and_rtunnel(openssh_server, openssh_ssh, key, tmp_path)
    user = openssh_server.user
    expected = (
        f'Load key "id_dir": Is a directory\n{user}@127.0.0.1: Permission denied (publickey).\n'
    )
    assert (ssh.returncode, ssh.stderr) == (255, expected)
    assert (ours.returncode, ours.stderr) == (255, expected)


def test_a_fifo_and_an_encrypted_key_without_a_prompt_are_said(
    openssh_server: Any, openssh_client_key: Path, tmp_path: Path
) -> None:
    """Issue 13, defect 5: each gave only "Permission denied (publickey)" (ssh hangs on
    the FIFO, and says nothing at its default level about the encrypted key)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    fifo = keys / "id_fifo"
    os.mkfifo(fifo, 0o600)
    encrypted = keys / "id_encrypted"
    shutil.copy(openssh_client_key, encrypted)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", "secret", "-P", "", "-f", str(encrypted)],
        check=True,
        capture_output=True,
    )
    user = openssh_server.user
    denied = f"{user}@127.0.0.1: Permission denied (publickey)."
    for key, line in [
        (fifo, 'Load key "id_fifo": not a regular file'),
        (
            encrypted,
            'Load key "id_encrypted": it is encrypted, and nothing can ask for its '
            "passphrase (BatchMode=yes).",
        ),
    ]:
        _, ours = _ssh_and_rtunnel(openssh_server, "true", key, tmp_path)
        assert (ours.returncode, ours.stderr.splitlines()) == (255, [line, denied])


def test_the_api_refuses_a_key_others_may_read_unless_told(tmp_path: Path) -> None:
    from rtunnel import PrivateKeyFile
    from rtunnel.client.auth.userauth import load_credentials
    from rtunnel.errors import CredentialError
    from rtunnel.testing import generate_client_key

    key = generate_client_key("ed25519", tmp_path)
    key.chmod(0o644)
    with pytest.raises(CredentialError) as caught:
        load_credentials([PrivateKeyFile(key)])
    lines = str(caught.value).splitlines()
    assert lines[:6] == [
        "@" * 59,
        "@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @",
        "@" * 59,
        f"Permissions 0644 for '{key}' are too open.",
        "It is required that your private key files are NOT accessible by others.",
        "This private key will be ignored.",
    ]
    assert lines[6] == f'Load key "{key}": bad permissions'
    assert "check_permissions=False" in lines[7]
    loaded, _ = load_credentials([PrivateKeyFile(key, check_permissions=False)])
    assert loaded[0].key is not None
    key.chmod(0o600)
    loaded, _ = load_credentials([PrivateKeyFile(key)])
    assert loaded[0].key is not None


def test_a_default_identity_others_may_read_is_refused(
    openssh_server: Any, openssh_client_key: Path, tmp_path: Path
) -> None:
    """G2 for the default identities (no -i): ~/.ssh/id_ed25519 at 0644."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = home / ".ssh" / "id_ed25519"
    shutil.copy(openssh_client_key, key)
    key.chmod(0o644)
    done = subprocess.run(
        [
            *[*PYTHON_CLI, "-N", "-o", "BatchMode=yes", "-o", "IdentityAgent=none"],
            *["-o", f"UserKnownHostsFile={openssh_server.known_hosts_path}"],
            *["-p", str(openssh_server.port), "-R", "0:127.0.0.1:9"],
            f"{openssh_server.user}@{openssh_server.host}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": str(home)},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 255
    assert done.stderr.splitlines() == [
        "@" * 59,
        "@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @",
        "@" * 59,
        f"Permissions 0644 for '{key}' are too open.",
        "It is required that your private key files are NOT accessible by others.",
        "This private key will be ignored.",
        f'Load key "{key}": bad permissions',
        f"{openssh_server.user}@127.0.0.1: Permission denied (publickey).",
    ]
