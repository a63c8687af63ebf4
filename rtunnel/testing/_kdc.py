"""
A real MIT Kerberos KDC for GSSAPI interop tests, in one directory: its own realm,
``krb5.conf``, ``kdc.conf``, database and port on ``127.0.0.1``.

Synchronous on purpose (``subprocess``, no reactor), like :mod:`rtunnel.testing._openssh`:
a test starts it in a fixture, adds principals (a host principal into a keytab for
``sshd``, a user principal with a password), gets a ticket with :meth:`KerberosKDC.kinit`,
and points the processes under test at :attr:`KerberosKDC.config_path` with
``KRB5_CONFIG`` (MIT krb5 reads it, and ``KRB5CCNAME``, whenever it creates a context).

Notes on MIT krb5 (checked against Debian 12's krb5 1.20.1):

- ``dns_canonicalize_hostname = false`` and ``rdns = false``: the GSSAPI name
  ``host@localhost`` becomes ``host/localhost@REALM`` as written, whatever the resolver
  says about ``localhost``.
- The KDC listens on TCP and UDP on one port; ``udp_preference_limit = 1`` makes the
  clients use TCP, so a UDP port taken by someone else cannot get in the way.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from typing_extensions import override

from rtunnel.testing._listening import StartedInWith

__all__ = ["KerberosKDC", "KerberosKDCError", "find_kdc"]

#: Where Debian's ``krb5-kdc`` and ``krb5-admin-server`` install the tools.
_SBIN = ("/usr/sbin", "/usr/local/sbin")

_TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")

_running: set[KerberosKDC] = set()


class KerberosKDCError(Exception):
    """The KDC could not be set up or started; the message says why."""


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _SBIN:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def find_kdc() -> str | None:
    """
    :return: None when MIT Kerberos's KDC and tools are all installed, else what is
        missing and how to install it.
    """
    missing = [name for name in _TOOLS if _tool(name) is None]
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not found: install MIT Kerberos (Debian: apt-get install "
        "krb5-kdc krb5-admin-server krb5-user)"
    )


def _free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP both (the KDC binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise KerberosKDCError("no port free for both TCP and UDP on 127.0.0.1")


class KerberosKDC(StartedInWith):
    """
    An MIT ``krb5kdc`` on ``127.0.0.1`` serving :attr:`realm`, with its database in
    ``directory``. Usable as a context manager (started on entry, stopped on exit).

    :ivar realm: the realm (default ``RTUNNEL.TEST``).
    :ivar directory: where the configuration, database, keytabs and log live.
    :ivar config_path: the ``krb5.conf`` clients and servers use (``KRB5_CONFIG``).
    :ivar kdc_config_path: the KDC's ``kdc.conf`` (``KRB5_KDC_PROFILE``).
    :ivar log_path: the KDC's log.
    :ivar startup_timeout: seconds :meth:`start` waits for the KDC to listen.
    """

    startup_timeout: float = 15.0

    def __init__(self, directory: Path, realm: str = "RTUNNEL.TEST") -> None:
        self.realm = realm
        self.directory = Path(directory).absolute()
        self.config_path = self.directory / "krb5.conf"
        self.kdc_config_path = self.directory / "kdc.conf"
        self.log_path = self.directory / "kdc.log"
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The KDC's port (TCP and UDP), picked by :meth:`start`."""
        if self._port is None:
            raise KerberosKDCError("the KDC has no port until start() is called")
        return self._port

    @property
    def env(self) -> dict[str, str]:
        """The environment a krb5 client or server needs to use this KDC's realm."""
        return {"KRB5_CONFIG": str(self.config_path), "KRB5_KDC_PROFILE": str(self.kdc_config_path)}

    @override
    def start(self) -> None:
        """
        Write the configuration, create the database (``kdb5_util create -s``) and start
        ``krb5kdc -n``; wait until it accepts TCP connections.

        :raises KerberosKDCError: naming the tool that failed, with its output.
        """
        problem = find_kdc()
        if problem is not None:
            raise KerberosKDCError(problem)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._port = _free_port()
        self._write_config()
        self._run("kdb5_util", "create", "-s", "-r", self.realm, "-P", "rtunnel-test-master-key")
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [_tool_path("krb5kdc"), "-n", "-r", self.realm],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._environment(),
            )
        finally:
            log.close()
        _running.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                _running.discard(self)
                raise KerberosKDCError(
                    f"krb5kdc exited with status {code}; {self.log_path} says:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise KerberosKDCError(
                    f"krb5kdc did not listen on 127.0.0.1:{self._port} within "
                    f"{self.startup_timeout} s; {self.log_path} says:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    @override
    def stop(self) -> None:
        """Stop the KDC (``SIGTERM``, then ``SIGKILL``); nothing when it is not running."""
        process, self._process = self._process, None
        _running.discard(self)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def add_principal(
        self, name: str, *, password: str | None = None, keytab: Path | None = None
    ) -> str:
        """
        Add a principal: with ``password``, or with a random key (then give ``keytab``,
        the file its keys are written to, e.g. for ``sshd``'s ``KRB5_KTNAME``).

        :param name: the principal without the realm (``host/localhost``, ``alice``).
        :return: the full principal name, ``NAME@REALM``.
        """
        full = f"{name}@{self.realm}"
        if password is None:
            self._kadmin(f"addprinc -randkey {full}")
        else:
            self._kadmin(f"addprinc -pw {password} {full}")
        if keytab is not None:
            self._kadmin(f"ktadd -k {keytab} {full}")
        return full

    def kinit(
        self, principal: str, password: str, ccache: Path, *, forwardable: bool = True
    ) -> None:
        """
        Get a ticket-granting ticket for ``principal`` into the file ``ccache``, as
        ``kinit`` (reading the password from its standard input).

        :raises KerberosKDCError: with ``kinit``'s output.
        """
        flag = "-f" if forwardable else "-F"
        self._run("kinit", flag, "-c", f"FILE:{ccache}", principal, stdin=f"{password}\n")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the KDC's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "    (nothing)"
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (nothing)"

    # -- internals

    def _environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **(extra or {})}

    def _kadmin(self, query: str) -> None:
        self._run("kadmin.local", "-r", self.realm, "-q", query)

    def _run(self, tool: str, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [_tool_path(tool), *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=60,
            env=self._environment(),
            check=False,
        )
        output = result.stdout + result.stderr
        # kadmin.local exits 0 even when the query failed; it prints the error instead.
        if result.returncode != 0 or (tool == "kadmin.local" and "error" in output.lower()):
            raise KerberosKDCError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{output.strip()}\n"
                f"KDC log:\n{self.log_tail()}"
            )
        return output

    def _write_config(self) -> None:
        realm = self.realm
        d = self.directory
        self.config_path.write_text(
            f"""\
[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    forwardable = true
    kdc_timeout = 5s
    max_retries = 1

[realms]
    {realm} = {{
        kdc = 127.0.0.1:{self.port}
    }}

[domain_realm]
    localhost = {realm}
"""
        )
        self.kdc_config_path.write_text(
            f"""\
[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}

[realms]
    {realm} = {{
        database_name = {d / "principal"}
        key_stash_file = {d / "stash"}
        acl_file = {d / "kadm5.acl"}
        kdc_listen = 127.0.0.1:{self.port}
        kdc_tcp_listen = 127.0.0.1:{self.port}
        max_life = 1h
        max_renewable_life = 1h
    }}

[logging]
    kdc = FILE:{self.log_path}
"""
        )
        (d / "kadm5.acl").write_text("")


def _tool_path(name: str) -> str:
    path = _tool(name)
    if path is None:  # pragma: no cover - start() checked
        raise KerberosKDCError(find_kdc() or f"{name} not found")
    return path


@atexit.register
def _stop_all() -> None:
    """Stop every KDC still running when the interpreter exits."""
    for kdc in list(_running):
        kdc.stop()
