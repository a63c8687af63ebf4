"""
Real proxy servers for the proxy tests, each started on ``127.0.0.1`` with its own
configuration and a free port in a directory of its own, and stopped again:

- :class:`DanteServer`: Dante's ``danted`` (Debian ``dante-server``), SOCKS4 and SOCKS5,
  optionally with RFC 1929 username/password checked against the system's accounts.
  Dante 1.4.2 does not implement SOCKS4A: it connects to the literal ``0.0.0.1``.
- :class:`TinyProxy`: ``tinyproxy`` (Debian ``tinyproxy``), HTTP CONNECT, optionally with
  Basic authentication and a ``ConnectPort`` restriction.
- :class:`MicroSocks`: ``microsocks`` (Debian ``microsocks``), SOCKS5 with an optional
  user and password of its own.
- :class:`SSHDynamicForward`: OpenSSH's ``ssh -D``, a SOCKS4, SOCKS4A and SOCKS5 server
  (channels.c) that connects through a real ``sshd``.

Synchronous (``subprocess``, no reactor), like :mod:`rtunnel.testing._openssh`. Each is a
context manager; :attr:`_Daemon.host` and :attr:`_Daemon.port` say where it listens, and
:meth:`_Daemon.log_text` what it logged. :func:`throwaway_account` makes the local
account Dante's username method needs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from typing_extensions import override

from rtunnel.testing._listening import StartedInWith
from rtunnel.testing._openssh import OpenSSHServer

__all__ = [
    "DanteServer",
    "LocalAccount",
    "MicroSocks",
    "ProxyServerError",
    "SSHDynamicForward",
    "TinyProxy",
    "find_program",
    "throwaway_account",
]


class ProxyServerError(Exception):
    """A proxy server could not be started; the message includes its log."""


def find_program(name: str) -> str | None:
    """
    :param name: a program's name.
    :return: its path, looking in the sbin directories too (``danted`` is in ``/usr/sbin``,
        which a non-root ``PATH`` often lacks), or ``None``.
    """
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _free_port(host: str) -> int:
    # Another process may take it before the daemon binds; start() retries then.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class _Daemon(StartedInWith):
    """
    A proxy daemon run in the foreground as our child, in its own process group (so that
    :meth:`stop` ends the processes it forked too).

    :ivar directory: where its configuration and log live.
    :ivar startup_timeout: seconds :meth:`start` waits for the port to accept connections.
    """

    #: The program, as :func:`find_program` looks it up.
    program: ClassVar[str] = ""
    #: The Debian package that installs it.
    package: ClassVar[str] = ""
    host: ClassVar[str] = "127.0.0.1"
    startup_timeout: float = 10.0
    stop_timeout: float = 5.0

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()
        self.log_path = self.directory / f"{self.program}.log"
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @override
    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self._port} in {str(self.directory)!r}>"

    @property
    def port(self) -> int:
        """The port it listens on (picked by :meth:`start`)."""
        if self._port is None:
            raise ProxyServerError(f"{self!r} has no port until start() is called")
        return self._port

    @property
    def path(self) -> str:
        """The program's path; :class:`ProxyServerError` naming the package if missing."""
        path = find_program(self.program)
        if path is None:
            raise ProxyServerError(
                f"{self.program} not found: install it with `apt-get install -y "
                f"--no-install-recommends {self.package}` (scripts/test does, as root)"
            )
        return path

    def log_text(self) -> str:
        """Everything it logged (its log file and its output)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @override
    def start(self) -> None:
        """
        Write the configuration and start the daemon on a free port; wait until the port
        accepts connections.

        :raises ProxyServerError: if it exits or does not listen within
            :attr:`startup_timeout` seconds (with its log).
        """
        program = self.path
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            port = _free_port(self.host)
            command = self._prepare(program, port)
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            deadline = time.monotonic() + self.startup_timeout
            while self._process.poll() is None and time.monotonic() < deadline:
                if _accepts(self.host, port):
                    self._port = port
                    return
                time.sleep(0.02)
            exited = self._process.poll()
            self.stop()
            if exited is not None and attempt < 2 and "in use" in self.log_text():
                continue
            what = (
                f"exited with status {exited}"
                if exited is not None
                else f"did not listen within {self.startup_timeout} s"
            )
            raise ProxyServerError(
                f"{' '.join(command)} {what} (port {port}); {self.log_path}:\n"
                f"{self.log_text()[-4000:]}"
            )

    @override
    def stop(self) -> None:
        """``SIGTERM`` to its process group, ``SIGKILL`` after :attr:`stop_timeout`."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            try:
                process.wait(self.stop_timeout)
                break
            except subprocess.TimeoutExpired:
                continue

    def _prepare(self, program: str, port: int) -> list[str]:
        """Write the configuration for ``port``; :return: the command line."""
        raise NotImplementedError


class DanteServer(_Daemon):
    """
    Dante's ``danted``: SOCKS4 and SOCKS5 on ``127.0.0.1``, connecting out from
    ``127.0.0.1``, for clients on the loopback network.

    :param directory: where to put ``danted.conf`` and ``danted.log``.
    :param socks_methods: Dante's ``socksmethod`` list, in order of preference: ``"none"``,
        ``"username"`` (RFC 1929, checked against the system's password database, so it
        needs a real account and ``danted`` running as root).
    :param blocked_ports: destination ports on ``127.0.0.1`` a ``socks block`` rule refuses
        (SOCKS5 reply 2, SOCKS4 reply 91).
    """

    program = "danted"
    package = "dante-server"

    def __init__(
        self,
        directory: Path,
        *,
        socks_methods: Sequence[str] = ("none",),
        blocked_ports: Sequence[int] = (),
    ) -> None:
        super().__init__(directory)
        self.socks_methods = tuple(socks_methods)
        self.blocked_ports = tuple(blocked_ports)
        self.config_path = self.directory / "danted.conf"

    @override
    def _prepare(self, program: str, port: int) -> list[str]:
        lines = [
            f"logoutput: {self.log_path}",
            f"internal: {self.host} port = {port}",
            f"external: {self.host}",
            "clientmethod: none",
            f"socksmethod: {' '.join(self.socks_methods)}",
            # The username method reads the shadow passwords as the privileged user.
            "user.privileged: root",
            "user.unprivileged: nobody",
            "client pass {",
            "    from: 127.0.0.0/8 to: 0.0.0.0/0",
            "}",
        ]
        for blocked in self.blocked_ports:
            lines += [
                "socks block {",
                f"    from: 0.0.0.0/0 to: 127.0.0.1/32 port = {blocked}",
                "    log: error connect",
                "}",
            ]
        lines += [
            "socks pass {",
            "    from: 127.0.0.0/8 to: 0.0.0.0/0",
            "    command: connect",
            "    log: error connect disconnect",
            "}",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        return [program, "-f", str(self.config_path)]


class TinyProxy(_Daemon):
    """
    ``tinyproxy`` in the foreground (``-d -c FILE``): an HTTP proxy for ``127.0.0.1``.

    :param directory: where to put ``tinyproxy.conf``, the pid file and ``tinyproxy.log``.
    :param connect_ports: the ports CONNECT may reach (``ConnectPort``; others are refused
        with 403); empty for any port.
    :param basic_auth: ``(user, password)`` for ``BasicAuth``. tinyproxy 1.11.1 answers a
        request without credentials with 407 and one with wrong credentials with 401.
    """

    program = "tinyproxy"
    package = "tinyproxy"

    def __init__(
        self,
        directory: Path,
        *,
        connect_ports: Sequence[int] = (),
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(directory)
        self.connect_ports = tuple(connect_ports)
        self.basic_auth = basic_auth
        self.config_path = self.directory / "tinyproxy.conf"

    @override
    def _prepare(self, program: str, port: int) -> list[str]:
        lines = [
            f"Port {port}",
            f"Listen {self.host}",
            "Timeout 30",
            f"Allow {self.host}",
            f'PidFile "{self.directory / "tinyproxy.pid"}"',
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 50",
            *(f"ConnectPort {p}" for p in self.connect_ports),
        ]
        if self.basic_auth is not None:
            lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
        self.config_path.write_text("\n".join(lines) + "\n")
        return [program, "-d", "-c", str(self.config_path)]


class MicroSocks(_Daemon):
    """
    ``microsocks -i 127.0.0.1 -p PORT [-u USER -P PASSWORD]``: SOCKS5, requiring RFC 1929
    username/password authentication when a user is given (it answers 0xFF to a client
    offering only "no authentication").
    """

    program = "microsocks"
    package = "microsocks"

    def __init__(
        self, directory: Path, *, user: str | None = None, password: str | None = None
    ) -> None:
        super().__init__(directory)
        self.user = user
        self.password = password

    @override
    def _prepare(self, program: str, port: int) -> list[str]:
        command = [program, "-i", self.host, "-p", str(port)]
        if self.user is not None:
            command += ["-u", self.user, "-P", self.password or ""]
        return command


class SSHDynamicForward(_Daemon):
    """
    OpenSSH's ``ssh -N -D 127.0.0.1:PORT`` logged in to ``server``: a SOCKS4, SOCKS4A and
    SOCKS5 proxy (no authentication) whose connections leave from ``server``'s side.

    :param directory: where to put its log.
    :param server: a started :class:`~rtunnel.testing._openssh.OpenSSHServer` that
        authorizes ``key``.
    :param key: an unencrypted private key file.
    """

    program = "ssh"
    package = "openssh-client"

    def __init__(self, directory: Path, server: OpenSSHServer, key: Path) -> None:
        super().__init__(directory)
        self.server = server
        self.key = key

    @override
    def _prepare(self, program: str, port: int) -> list[str]:
        return [
            program,
            "-F",
            "none",
            "-N",
            "-D",
            f"{self.host}:{port}",
            "-p",
            str(self.server.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            f"UserKnownHostsFile={self.server.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-E",
            str(self.log_path),
            f"{self.server.user}@{self.server.host}",
        ]


@dataclass(frozen=True)
class LocalAccount:
    """A local account made by :func:`throwaway_account`."""

    name: str
    password: str


@contextlib.contextmanager
def throwaway_account(
    prefix: str = "rtp", shell: str = "/usr/sbin/nologin"
) -> Iterator[LocalAccount]:
    """
    A new local account (``prefix`` and random hex) with a random password (``useradd``,
    ``chpasswd``) and the login shell ``shell``, deleted on exit.

    :raises ProxyServerError: when not root or ``useradd``/``chpasswd`` are missing.
    """
    if os.geteuid() != 0 or not find_program("useradd") or not find_program("chpasswd"):
        raise ProxyServerError("a throwaway account needs root and useradd/chpasswd")
    name = prefix + secrets.token_hex(4)
    password = "Pw-" + secrets.token_hex(8)
    subprocess.run(["useradd", "-M", "-s", shell, name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True
        )
        yield LocalAccount(name, password)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
