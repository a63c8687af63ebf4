"""
A real OpenSSH ``sshd`` for interop tests, started on ``127.0.0.1`` with its own
configuration, host keys, ``authorized_keys`` and port, all in one directory.

Synchronous on purpose (``subprocess``, no reactor): a test starts it in a fixture, points a
client (rtunnel, or OpenSSH's own ``ssh``) at :attr:`OpenSSHServer.host` and
:attr:`OpenSSHServer.port`, trusts :attr:`OpenSSHServer.known_hosts_path`, and reads
:meth:`OpenSSHServer.log_text` to see what the server did.

Notes on OpenSSH behaviour the harness relies on (checked against Debian's OpenSSH 9.2p1):

- ``sshd_config`` takes the *first* value of most keywords (``servconf.c``: "the first
  obtained value is used"), so ``extra_config`` lines are written before the defaults and
  override them. Keywords that accumulate (``HostKey``, ``ListenAddress``, ``AllowUsers``,
  ``AcceptEnv``, ...) add to the defaults instead. A ``Match`` line opens a block that runs
  to the end of the file, so ``extra_config`` from its first ``Match`` line on is written
  *after* the defaults.
- With ``UsePAM no`` (the harness default), ``sshd``'s ``allowed_user()`` (``auth.c``)
  refuses *every* authentication method, public keys included, for an account whose
  shadow password starts with ``!`` (``LOCKED_PASSWD_PREFIX`` on Linux): the log says
  "User root not allowed because account is locked". ``*`` (Debian's default for root)
  only disables passwords. :meth:`OpenSSHServer.start` checks this up front (``getent
  shadow``) and says how to fix it.
- Running as root, ``sshd`` needs its privilege separation directory ``/run/sshd`` (and the
  ``sshd`` account, which ``openssh-server`` creates); :meth:`OpenSSHServer.start` creates
  the directory when it is missing.
- ``PerSourcePenalties`` (OpenSSH 9.8) would slow down a client that a test makes fail
  repeatedly; it is turned off where ``sshd -t`` accepts the keyword, and left out where it
  does not (9.2 rejects it as a bad configuration option).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from typing_extensions import override

from rtunnel.testing._listening import StartedInWith

__all__ = ["OpenSSHServer", "OpenSSHServerError", "find_sshd"]

#: Where Debian's ``openssh-server`` installs the daemon.
_DEFAULT_SSHD = "/usr/sbin/sshd"

#: The privilege separation directory a root ``sshd`` chroots its pre-auth child into
#: (``_PATH_PRIVSEP_CHROOT_DIR`` in Debian's build).
_PRIVSEP_DIR = Path("/run/sshd")

#: Configuration lines only some OpenSSH versions know; each is kept when ``sshd -t`` accepts
#: it and dropped when it reports it as a bad option.
_OPTIONAL_DEFAULTS = ("PerSourcePenalties no",)

#: ``sshd`` path -> the optional lines that version accepts.
_accepted_optional: dict[str, tuple[str, ...]] = {}

#: Servers still running (strong references: a server a test forgot is still stopped), stopped
#: at interpreter exit so an aborted test run leaves no ``sshd`` listening behind it.
_running: set[OpenSSHServer] = set()


class OpenSSHServerError(Exception):
    """
    The OpenSSH server could not be configured or started. The message says why and
    includes the relevant part of ``sshd``'s output or log.
    """


class _BindFailed(OpenSSHServerError):
    """
    ``sshd`` could not bind its port (another process took it after it was picked).
    """


def find_sshd() -> str | None:
    """
    Find the ``sshd`` binary to test against.

    The ``RTUNNEL_SSHD`` environment variable wins (to test against another OpenSSH build);
    then Debian's ``/usr/sbin/sshd``; then ``sshd`` on ``PATH``.

    :return: an absolute path, or ``None`` when there is no ``sshd`` (or ``RTUNNEL_SSHD`` is
        not an executable file).
    """
    override = os.environ.get("RTUNNEL_SSHD")
    if override:
        return os.path.abspath(override) if os.access(override, os.X_OK) else None
    if os.access(_DEFAULT_SSHD, os.X_OK):
        return _DEFAULT_SSHD
    found = shutil.which("sshd")
    return os.path.abspath(found) if found is not None else None


def _pick_port(host: str) -> int:
    """
    Pick a free TCP port by binding port 0 and closing the socket again. Another process may
    take it before ``sshd`` binds it; :meth:`OpenSSHServer.start` retries when that happens.

    :param host: the address to bind.
    :return: the port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_children() -> dict[int, list[int]]:
    """
    Map each live (not zombie) process id to its children's ids, from ``/proc``.

    :return: parent pid -> child pids, empty where ``/proc`` is not available.
    """
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) < 2 or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _start_time(pid: int) -> str | None:
    """
    :param pid: a process id.
    :return: the process's start time (``/proc/PID/stat`` field 22), which tells it from a
        later process with the same id; ``None`` when it is gone or a zombie.
    """
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19]


def _alive(pid: int) -> bool:
    """
    :param pid: a process id.
    :return: whether the process exists and is not a zombie.
    """
    return _start_time(pid) is not None


def _signal(pid: int, sig: signal.Signals) -> None:
    """
    Send a signal, ignoring a process that is already gone.

    :param pid: the process id.
    :param sig: the signal.
    """
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _account_lock_problem(user: str) -> str | None:
    """
    Explain why ``sshd`` with ``UsePAM no`` would refuse every login as ``user``, if it would.

    Looks the account up the way ``sshd``'s ``getspnam()`` does, through NSS (``getent
    shadow``), not by reading ``/etc/shadow``: a non-root ``sshd`` cannot read that file, and
    then NSS modules answer instead (Debian 12's ``nss-systemd`` makes up ``nobody:!*``).

    :param user: the account the tests log in as.
    :return: an explanation with the fix, or ``None`` when the account is not locked (or
        cannot be looked up).
    """
    getent = shutil.which("getent")
    if getent is None:
        return None
    try:
        result = subprocess.run(
            [getent, "shadow", user],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    fields = result.stdout.strip().split(":")
    if result.returncode != 0 or len(fields) < 2 or fields[0] != user:
        return None
    if not fields[1].startswith("!"):
        return None
    return (
        f"The account {user!r} is locked: its shadow password field (getent shadow "
        f"{user}) starts with '!'. OpenSSH's sshd with 'UsePAM no' (auth.c allowed_user() -> "
        f'platform_locked_account(), LOCKED_PASSWD_PREFIX "!" on Linux) then refuses every '
        f"login as {user!r}, public keys included (log: 'User {user} not allowed because "
        f"account is locked'). Fix: set the field to '*' (no password, keys still allowed), "
        f"e.g. `usermod -p '*' {user}` as root, or pass extra_config=['UsePAM yes']."
    )


class OpenSSHServer(StartedInWith):
    """
    A real OpenSSH ``sshd`` on ``127.0.0.1``, configured for tunnel tests: public-key
    authentication as the local user, TCP forwarding allowed with ``GatewayPorts
    clientspecified``, ``LogLevel DEBUG3`` to :attr:`log_path`.

    Everything lives in ``directory``: ``sshd_config``, host keys, ``authorized_keys``,
    ``known_hosts``, the pid file and ``sshd.log``. The port is picked on the first
    :meth:`start` and kept by :meth:`restart`, as are the host keys.

    Usable as a context manager: ``with OpenSSHServer(path, authorized_keys=[key]) as s:``
    starts the server and stops it on exit.

    :ivar host: the address ``sshd`` listens on, always ``"127.0.0.1"``.
    :ivar user: the account clients log in as: the user running the tests (from the
        effective uid, not ``$USER``: ``sshd`` can only log a non-root caller in as itself).
    :ivar directory: the directory holding the server's files.
    :ivar config_path: the ``sshd_config`` written by :meth:`start`.
    :ivar known_hosts_path: a ``known_hosts`` file with a ``[127.0.0.1]:PORT`` line for every
        host key, written by :meth:`start`.
    :ivar authorized_keys_path: the ``authorized_keys`` file ``sshd`` reads.
    :ivar log_path: ``sshd``'s log, appended to by every (re)start.
    :ivar pid_path: ``sshd``'s ``PidFile``.
    :ivar host_key_paths: the private host key files, one per key type.
    :ivar startup_timeout: seconds :meth:`start` waits for ``sshd`` to listen.
    :ivar stop_timeout: seconds :meth:`stop` waits after ``SIGTERM`` before ``SIGKILL``.
    """

    host: ClassVar[str] = "127.0.0.1"
    startup_timeout: float = 15.0
    stop_timeout: float = 5.0

    def __init__(
        self,
        directory: Path,
        *,
        authorized_keys: Sequence[str] = (),
        extra_config: Sequence[str] = (),
        sshd_path: str | None = None,
        host_key_types: Sequence[str] = ("ed25519",),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """
        :param directory: where to put the server's files; created if missing.
        :param authorized_keys: ``authorized_keys`` lines: public keys in OpenSSH format
            (``ssh-ed25519 AAAA... comment``), optionally with options in front
            (``permitlisten="localhost:0" ssh-ed25519 ...``).
        :param extra_config: ``sshd_config`` lines. They come before the harness defaults, so
            they override them (``"PasswordAuthentication yes"``), except from the first
            ``Match`` line on, which comes after them.
        :param sshd_path: the ``sshd`` binary; default :func:`find_sshd`.
        :param host_key_types: ``ssh-keygen -t`` types of the host keys to generate
            (``"ed25519"``, ``"rsa"``, ``"ecdsa"``).
        :param env: environment variables for ``sshd``, over the test process's own
            (``KRB5_CONFIG``, ``KRB5_KTNAME`` for GSSAPI tests).
        """
        for name, value in [
            ("authorized_keys", authorized_keys),
            ("extra_config", extra_config),
            ("host_key_types", host_key_types),
        ]:
            if isinstance(value, str):
                raise TypeError(f"{name} must be a sequence of lines, not one string")
        if not host_key_types:
            raise ValueError("host_key_types must name at least one key type")
        self.directory = Path(directory).absolute()
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self._authorized_keys = list(authorized_keys)
        self._extra_config = list(extra_config)
        self._host_key_types = list(host_key_types)
        self._sshd_path = sshd_path
        self._env = dict(env) if env is not None else None
        self.config_path = self.directory / "sshd_config"
        self.known_hosts_path = self.directory / "known_hosts"
        self.authorized_keys_path = self.directory / "authorized_keys"
        self.log_path = self.directory / "sshd.log"
        self.pid_path = self.directory / "sshd.pid"
        self.host_key_paths = {
            key_type: self.directory / f"ssh_host_{key_type}_key"
            for key_type in self._host_key_types
        }
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        #: (pid, start time) of sessions left running by ``stop(kill_sessions=False)``.
        self._orphans: list[tuple[int, str]] = []
        self._log_file: int | None = None

    @override
    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid is not None else "stopped"
        return f"<OpenSSHServer {self.host}:{self._port} {state} in {str(self.directory)!r}>"

    # -- public API --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """
        The TCP port ``sshd`` listens on, picked by the first :meth:`start`.

        :raises OpenSSHServerError: if the server was never started.
        """
        if self._port is None:
            raise OpenSSHServerError("the server has no port until start() is called")
        return self._port

    @property
    def pid(self) -> int | None:
        """
        The listening ``sshd``'s process id, or ``None`` when it is not running.
        """
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def sshd_path(self) -> str:
        """
        The absolute path of the ``sshd`` binary this server runs.

        :raises OpenSSHServerError: if no ``sshd`` is installed.
        """
        path = self._sshd_path if self._sshd_path is not None else find_sshd()
        if path is None:
            raise OpenSSHServerError(
                "sshd not found: install OpenSSH's server (Debian: apt-get install "
                "openssh-server) or set RTUNNEL_SSHD to an sshd binary"
            )
        # sshd re-executes itself for every connection and insists on an absolute path.
        return os.path.abspath(path)

    @override
    def start(self) -> None:
        """
        Write the configuration, host keys, ``authorized_keys`` and ``known_hosts``, start
        ``sshd -D`` and wait until it listens.

        The first start picks a free port, and picks another if a different process takes
        that one first. A restart reuses the port.

        :raises OpenSSHServerError: if ``sshd -t`` rejects the configuration, the account
            cannot log in, or ``sshd`` exits or does not listen within
            :attr:`startup_timeout` seconds; the message includes ``sshd``'s output.
        """
        if self._process is not None:
            if self._process.poll() is None:
                raise OpenSSHServerError(f"{self!r} is already running")
            self._cleanup_process()
        sshd = self.sshd_path
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ensure_privsep_dir()
        self._ensure_host_keys()
        self.authorized_keys_path.write_text(
            "".join(line.rstrip("\n") + "\n" for line in self._authorized_keys)
        )
        self.log_path.touch()

        fixed_port = self._port is not None
        attempts = 3 if fixed_port else 5
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else _pick_port(self.host)
            self._write_config(sshd, port)
            if attempt == 1:
                self._check_account()
            try:
                self._launch(sshd, port)
            except _BindFailed:
                if attempt == attempts:
                    raise
                # A fixed port may still be held by the previous sshd's last breath.
                time.sleep(0.2 if fixed_port else 0)
                continue
            self._port = port
            self.known_hosts_path.write_text("".join(f"{x}\n" for x in self.known_hosts_lines()))
            _running.add(self)
            return

    @override
    def stop(self, *, kill_sessions: bool = True) -> None:
        """
        Stop ``sshd``: ``SIGTERM``, then ``SIGKILL`` after :attr:`stop_timeout` seconds.
        Does nothing when it is not running.

        :param kill_sessions: also end the processes serving connections (see
            :meth:`sshd_session_pids`; stopped ones are continued first), and those an earlier
            ``stop(kill_sessions=False)`` left running. A real ``sshd`` leaves them running
            when the listener stops, and so does ``False`` here: their connections survive
            (until a later ``stop()``).
        """
        process = self._process
        if process is None:
            if kill_sessions:
                self._kill(self._take_orphans())
            return
        try:
            if process.poll() is None:
                sessions = self.sshd_session_pids()
                if kill_sessions:
                    self._kill(sessions + self._take_orphans())
                else:
                    self._orphans += [
                        (pid, start) for pid in sessions if (start := _start_time(pid))
                    ]
            if process.poll() is None:
                _signal(process.pid, signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.stop_timeout)
        finally:
            self._cleanup_process()

    def restart(self, *, kill_sessions: bool = True, new_host_keys: bool = False) -> None:
        """
        :meth:`stop`, then :meth:`start` again on the same port with the same host keys.

        :param kill_sessions: passed to :meth:`stop`; ``False`` restarts only the listener,
            like ``systemctl restart ssh`` does, and open connections keep working.
        :param new_host_keys: generate new host keys first: a server whose key changed.
            :attr:`known_hosts_path` is rewritten with the new keys, so keep a copy of the
            old file to show a client the key it knew.
        """
        self.stop(kill_sessions=kill_sessions)
        if new_host_keys:
            for path in self.host_key_paths.values():
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".pub").unlink(missing_ok=True)
        self.start()

    def kill_sessions(self) -> list[int]:
        """
        ``SIGKILL`` every process serving a connection (:meth:`sshd_session_pids`), as a
        crash would: the clients see their connections reset or closed by the kernel,
        while the listener keeps accepting new ones.

        :return: the process ids signalled.
        """
        return self._signal_sessions(signal.SIGKILL)

    def freeze_sessions(self) -> list[int]:
        """
        ``SIGSTOP`` every process serving a connection: the server hangs without closing
        anything (keepalives go unanswered, forwarded ports stay bound), while the listener
        keeps accepting new connections. Undo with :meth:`thaw_sessions`; :meth:`stop`
        continues and ends them.

        :return: the process ids signalled.
        """
        return self._signal_sessions(signal.SIGSTOP)

    def thaw_sessions(self) -> list[int]:
        """
        ``SIGCONT`` every process serving a connection (after :meth:`freeze_sessions`).

        :return: the process ids signalled.
        """
        return self._signal_sessions(signal.SIGCONT)

    def _signal_sessions(self, sig: signal.Signals) -> list[int]:
        pids = self.sshd_session_pids()
        for pid in pids:
            _signal(pid, sig)
        return pids

    def sshd_session_pids(self) -> list[int]:
        """
        The processes serving connections: every live descendant of the listening ``sshd``
        (per connection: the privileged monitor, then its pre-auth or post-auth child),
        parents before children. Best effort, from ``/proc``; empty when the server is not
        running or ``/proc`` is not available.

        Sending ``SIGKILL`` to all of them drops every connection the way a crashed server
        would; ``SIGSTOP`` makes the server hang without closing anything.

        :return: process ids.
        """
        pid = self.pid
        if pid is None:
            return []
        children = _proc_children()
        found: list[int] = []
        queue = list(children.get(pid, []))
        while queue:
            child = queue.pop(0)
            found.append(child)
            queue.extend(children.get(child, []))
        return found

    def host_public_keys(self) -> list[str]:
        """
        The host public keys, one ``"TYPE BASE64"`` string per key type (comment dropped).

        :return: the keys, in ``host_key_types`` order.
        """
        keys = []
        for path in self.host_key_paths.values():
            fields = path.with_name(path.name + ".pub").read_text().split()
            keys.append(f"{fields[0]} {fields[1]}")
        return keys

    def known_hosts_lines(self) -> list[str]:
        """
        ``known_hosts`` lines for this server, one per host key: ``[127.0.0.1]:PORT TYPE
        BASE64`` (OpenSSH writes the bare address only for port 22).

        :return: the lines, without newlines.
        """
        port = self.port
        name = self.host if port == 22 else f"[{self.host}]:{port}"
        return [f"{name} {key}" for key in self.host_public_keys()]

    def known_hosts_line(self, key_type: str | None = None) -> str:
        """
        One ``known_hosts`` line.

        :param key_type: the ``ssh-keygen -t`` type of the host key; default the first.
        :return: the line, without a newline.
        """
        if key_type is None:
            return self.known_hosts_lines()[0]
        types = list(self.host_key_paths)
        if key_type not in types:
            raise KeyError(f"no {key_type!r} host key; this server has {types}")
        return self.known_hosts_lines()[types.index(key_type)]

    def log_text(self) -> str:
        """
        :return: everything ``sshd`` has logged, over all (re)starts; empty before the first.
        """
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 100) -> str:
        """
        :param lines: how many lines.
        :return: the last ``lines`` lines of :meth:`log_text`.
        """
        return "\n".join(self.log_text().splitlines()[-lines:])

    def effective_config(self) -> dict[str, list[str]]:
        """
        The configuration ``sshd`` actually uses, from ``sshd -T``: lowercase keyword -> its
        values (several for keywords that accumulate, like ``hostkey``).

        :return: the configuration.
        :raises OpenSSHServerError: if :meth:`start` has not written a configuration, or
            ``sshd -T`` fails.
        """
        if not self.config_path.exists():
            raise OpenSSHServerError("no configuration until start() is called")
        result = subprocess.run(
            [self.sshd_path, "-T", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise OpenSSHServerError(
                f"sshd -T -f {self.config_path} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        config: dict[str, list[str]] = {}
        for line in result.stdout.splitlines():
            keyword, _, value = line.partition(" ")
            if keyword:
                config.setdefault(keyword.lower(), []).append(value)
        return config

    # -- internals ---------------------------------------------------------------------------

    def _ensure_privsep_dir(self) -> None:
        """
        Create ``/run/sshd`` when running as root and it is missing (a fresh container has no
        ``/run/sshd``: only the ``ssh`` service's ``RuntimeDirectory`` creates it).
        """
        if os.geteuid() == 0 and not _PRIVSEP_DIR.is_dir():
            _PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)

    def _ensure_host_keys(self) -> None:
        """
        Generate the host keys that do not exist yet (a restart keeps the old ones).
        """
        for key_type, path in self.host_key_paths.items():
            if path.exists() and path.with_name(path.name + ".pub").exists():
                continue
            path.unlink(missing_ok=True)
            keygen = shutil.which("ssh-keygen")
            if keygen is None:
                raise OpenSSHServerError(
                    "ssh-keygen not found: install OpenSSH's client (Debian: apt-get install "
                    "openssh-client)"
                )
            command = [keygen, "-q", "-t", key_type, "-N", "", "-C", "rtunnel-test-host"]
            result = subprocess.run(
                [*command, "-f", str(path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if result.returncode != 0:
                raise OpenSSHServerError(
                    f"ssh-keygen -t {key_type} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )

    def _config_lines(self, port: int, optional: Sequence[str]) -> list[str]:
        """
        :param port: the port to listen on.
        :param optional: the optional default lines to include.
        :return: the ``sshd_config`` lines.
        """
        split = len(self._extra_config)
        for index, line in enumerate(self._extra_config):
            words = line.split()
            if words and words[0].lower() == "match":
                split = index
                break
        defaults = [
            f"ListenAddress {self.host}:{port}",
            "AddressFamily inet",
            *(f"HostKey {_quote(path)}" for path in self.host_key_paths.values()),
            f"PidFile {_quote(self.pid_path)}",
            # sshd expands %-tokens here, so a literal % is written %%.
            f"AuthorizedKeysFile {_quote(self.authorized_keys_path, tokens=True)}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The files are in a test's temporary directory, whatever its permissions.
            "StrictModes no",
            *(["PermitRootLogin yes"] if os.geteuid() == 0 else []),
            "AllowTcpForwarding yes",
            "GatewayPorts clientspecified",
            "LogLevel DEBUG3",
            "UseDNS no",
            # Tests open many connections at once; the default 10:30:100 drops some.
            "MaxStartups 1000",
            "MaxSessions 100",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            *optional,
        ]
        return [
            "# Written by rtunnel.testing.OpenSSHServer.",
            "# extra_config first: sshd_config takes the first value of a keyword.",
            *self._extra_config[:split],
            "# Harness defaults.",
            *defaults,
            *self._extra_config[split:],
        ]

    def _probe_optional(self, sshd: str) -> tuple[str, ...]:
        """
        Find out which of :data:`_OPTIONAL_DEFAULTS` this ``sshd`` accepts, by ``sshd -t`` on
        a minimal configuration with each (independent of ``extra_config``, whose own
        mistakes must not be taken for the version's).

        :param sshd: the ``sshd`` binary.
        :return: the accepted lines.
        """
        probe = self.directory / "sshd_config.probe"
        accepted = []
        try:
            for line in _OPTIONAL_DEFAULTS:
                probe.write_text(
                    f"HostKey {_quote(next(iter(self.host_key_paths.values())))}\n"
                    f"PidFile {_quote(self.pid_path)}\n{line}\n"
                )
                result = self._validate(sshd, probe)
                if result.returncode == 0:
                    accepted.append(line)
                elif (
                    f"option: {line.split()[0]}".lower()
                    not in (result.stdout + result.stderr).lower()
                ):
                    raise OpenSSHServerError(
                        f"sshd -t failed on a minimal configuration ({line!r}; exit "
                        f"{result.returncode}):\n{(result.stdout + result.stderr).strip()}"
                    )
        finally:
            probe.unlink(missing_ok=True)
        return tuple(accepted)

    def _validate(self, sshd: str, config: Path) -> subprocess.CompletedProcess[str]:
        """
        :param sshd: the ``sshd`` binary.
        :param config: a configuration file.
        :return: the result of ``sshd -t -f config``.
        """
        return subprocess.run(
            [sshd, "-t", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def _write_config(self, sshd: str, port: int) -> None:
        """
        Write ``sshd_config`` and check it with ``sshd -t``, first finding out which optional
        lines this ``sshd`` accepts.

        :param sshd: the ``sshd`` binary.
        :param port: the port to listen on.
        :raises OpenSSHServerError: if ``sshd -t`` rejects the configuration.
        """
        optional = _accepted_optional.get(sshd)
        if optional is None:
            optional = _accepted_optional[sshd] = self._probe_optional(sshd)
        lines = self._config_lines(port, optional)
        self.config_path.write_text("\n".join(lines) + "\n")
        result = self._validate(sshd, self.config_path)
        if result.returncode != 0:
            numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(lines, 1))
            raise OpenSSHServerError(
                f"sshd -t rejected {self.config_path} (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()}\n"
                f"--- {self.config_path} ---\n{numbered}"
            )

    def _check_account(self) -> None:
        """
        Fail early, with the fix, when ``sshd`` would refuse every login as :attr:`user`.
        """
        uses_pam = self.effective_config().get("usepam", ["no"])[0].lower() == "yes"
        problem = None if uses_pam else _account_lock_problem(self.user)
        if problem is not None:
            raise OpenSSHServerError(problem)

    def _launch(self, sshd: str, port: int) -> None:
        """
        Start ``sshd -D`` and wait for "Server listening on 127.0.0.1 port PORT." in the log.

        :param sshd: the ``sshd`` binary.
        :param port: the port it listens on.
        :raises _BindFailed: if the port was taken.
        :raises OpenSSHServerError: if it exits or does not listen in time.
        """
        offset = self.log_path.stat().st_size
        log_file = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # -D: stay in the foreground, as our child. -E: log to the file (and imply -e), so
        # the per-connection processes, which re-execute sshd with the same arguments, log
        # there too. Anything printed before sshd opens the log lands there as well.
        process = subprocess.Popen(
            [sshd, "-D", "-e", "-E", str(self.log_path), "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=None if self._env is None else {**os.environ, **self._env},
        )
        self._process = process
        self._log_file = log_file
        ready = f"Server listening on {self.host} port {port}."
        deadline = time.monotonic() + self.startup_timeout
        while True:
            text = self._log_since(offset)
            if ready in text:
                return
            exited = process.poll()
            if exited is not None:
                text = self._log_since(offset)
                self._cleanup_process()
                message = (
                    f"sshd exited with status {exited} before listening on "
                    f"{self.host}:{port}; log {self.log_path} says:\n{_tail(text, 40)}"
                )
                if "Address already in use" in text or "Cannot bind any address" in text:
                    raise _BindFailed(message)
                raise OpenSSHServerError(message)
            if time.monotonic() > deadline:
                self.stop()
                raise OpenSSHServerError(
                    f"sshd did not listen on {self.host}:{port} within "
                    f"{self.startup_timeout} s; log {self.log_path} says:\n"
                    f"{_tail(self._log_since(offset), 40)}"
                )
            time.sleep(0.02)

    def _log_since(self, offset: int) -> str:
        """
        :param offset: a byte offset in the log.
        :return: what was logged after it.
        """
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _take_orphans(self) -> list[int]:
        """
        :return: the sessions earlier stops left running that are still the same processes.
        """
        orphans, self._orphans = self._orphans, []
        return [pid for pid, start in orphans if _start_time(pid) == start]

    def _kill(self, sessions: list[int]) -> None:
        """
        End connection-serving processes: ``SIGCONT`` + ``SIGTERM``, then ``SIGKILL``. Done
        while the listener still runs where possible, so it reaps them.

        :param sessions: their process ids.
        """
        for pid in sessions:
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while any(_alive(pid) for pid in sessions) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in sessions:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)

    def _cleanup_process(self) -> None:
        """
        Forget the (exited) process and close our handle on the log.
        """
        self._process = None
        if self._log_file is not None:
            os.close(self._log_file)
            self._log_file = None
        _running.discard(self)


def _quote(path: Path, *, tokens: bool = False) -> str:
    """
    Write a path as an ``sshd_config`` argument: double-quoted when it contains whitespace
    (``sshd`` splits arguments like a shell, with ``"..."`` grouping).

    :param path: the path.
    :param tokens: whether ``sshd`` expands ``%`` tokens in this keyword's argument.
    :return: the argument.
    """
    text = str(path).replace("%", "%%") if tokens else str(path)
    if '"' in text or "\n" in text:
        raise OpenSSHServerError(
            f"sshd_config cannot name a path with a quote or newline: {text!r}"
        )
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _tail(text: str, lines: int) -> str:
    """
    :param text: some text.
    :param lines: how many lines.
    :return: the last ``lines`` lines of ``text``, indented, or a note that it is empty.
    """
    kept = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else "    (nothing)"


@atexit.register
def _stop_all() -> None:
    """
    Stop every server still running when the interpreter exits.
    """
    for server in list(_running):
        server.stop()
