"""
The layers of rtunnel's tests, and the fixtures they share.

Each folder under ``tests/`` is a layer, cheapest first, and its tests carry its marker
(``pytest -m memory``, ``pytest -m "not interop"``): ``pure`` (plain functions),
``memory`` (protocols over StringTransport, a Clock or the in-memory pair), ``loopback``
(real sockets on 127.0.0.1 against the bundled server), ``interop`` (real third-party
programs: OpenSSH, proxies, Kerberos), ``harness`` (the test helpers themselves, the
soak, the benchmark) and ``docs``. Helpers the files share are modules in
``tests/support/`` (on ``pythonpath``, see pyproject.toml).

A test that needs OpenSSH carries the ``openssh`` marker, and with it ``interop``,
whatever its folder: one using an OpenSSH fixture gets it automatically, as do the
``openssh`` variants of the ``server`` fixture. When OpenSSH is not installed they are
skipped, except when the ``CI`` environment variable is set: then they fail, so a CI run
can never pass by skipping them. The fixtures for a real ``sshd``
(:class:`rtunnel.testing._openssh.OpenSSHServer`) are here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rtunnel.testing._openssh import OpenSSHServer, find_sshd

if TYPE_CHECKING:
    from e2e_support import Agent, LocalUser, Server

#: How many lines of ``sshd``'s log a failed test's report shows.
_LOG_TAIL_LINES = 150

#: The servers a test started through :func:`openssh_server`, for its failure report.
_SERVERS = pytest.StashKey[list[OpenSSHServer]]()

#: Fixtures that need OpenSSH; a test using one of them is an ``openssh`` test.
_OPENSSH_FIXTURES = frozenset(
    {"openssh_server", "openssh_sshd", "openssh_ssh", "openssh_client_key", "openssh_rsa_key"}
)


def _in_ci() -> bool:
    """
    :return: whether the ``CI`` environment variable is set (to anything but a false value).
    """
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _require(program: str, path: str | None, package: str) -> str:
    """
    Skip the test, or fail it in CI, when an OpenSSH program is missing.

    :param program: the program's name, for the message.
    :param path: where it was found, or ``None``.
    :param package: the Debian package that installs it.
    :return: ``path``.
    """
    if path is not None:
        return path
    message = (
        f"{program} not found: OpenSSH interop tests need it. Install it with "
        f"`apt-get update && apt-get install -y {package}` (or run scripts/test as root, "
        f"which does)."
    )
    override = os.environ.get("RTUNNEL_SSHD")
    if program == "sshd" and override:
        message += f" RTUNNEL_SSHD={override} is not an executable file."
    if _in_ci():
        pytest.fail(f"{message} CI is set, so this fails instead of skipping.", pytrace=False)
    pytest.skip(message)


def _keygen(directory: Path, key_type: str) -> Path:
    """
    Generate an unencrypted OpenSSH client key with ``ssh-keygen``.

    :param directory: where to put it.
    :param key_type: the ``ssh-keygen -t`` type.
    :return: the private key's path; the public key is next to it, with ``.pub`` added.
    """
    keygen = _require("ssh-keygen", shutil.which("ssh-keygen"), "openssh-client")
    path = directory / f"id_{key_type}"
    subprocess.run(
        [keygen, "-q", "-t", key_type, "-N", "", "-C", f"rtunnel-test-{key_type}", "-f", str(path)],
        stdin=subprocess.DEVNULL,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


#: The folders of tests/, each a layer with a marker of its name.
LAYERS = ("pure", "memory", "loopback", "interop", "harness", "docs")

_TESTS = Path(__file__).resolve().parent


def layer_of(path: Path) -> str | None:
    """
    :param path: a test file.
    :return: the layer its folder is, or None outside the layer folders.
    """
    try:
        folder = path.resolve().relative_to(_TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return folder if folder in LAYERS else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark every test with its folder's layer; every test that uses an OpenSSH fixture as
    an ``openssh`` test; every ``openssh`` test as ``interop``.

    :param items: the collected tests.
    """
    for item in items:
        layer = layer_of(item.path)
        if layer is not None:
            item.add_marker(layer)
        if _OPENSSH_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.openssh)
        if item.get_closest_marker("openssh") is not None:
            item.add_marker(pytest.mark.interop)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """
    Skip (or in CI, fail) ``openssh`` tests when ``sshd`` is not installed.

    :param item: the test about to run.
    """
    if item.get_closest_marker("openssh") is not None:
        _require("sshd", find_sshd(), "openssh-server")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """
    Add the tail of each ``sshd`` log to the report of a failed test.

    :param item: the test.
    :param call: the phase that ran.
    :return: the report.
    """
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append(
                (f"sshd log tail ({server.log_path})", server.log_tail(_LOG_TAIL_LINES))
            )
    return report


@pytest.fixture(scope="session")
def openssh_sshd() -> str:
    """
    The ``sshd`` binary (see :func:`rtunnel.testing._openssh.find_sshd`); skips the test, or
    fails it when ``CI`` is set, if there is none.
    """
    return _require("sshd", find_sshd(), "openssh-server")


@pytest.fixture(scope="session")
def openssh_ssh() -> str:
    """
    OpenSSH's ``ssh`` client; skips the test, or fails it when ``CI`` is set, if there is
    none.
    """
    return _require("ssh", shutil.which("ssh"), "openssh-client")


@pytest.fixture(scope="session")
def openssh_client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    An unencrypted ed25519 client key in OpenSSH format, generated once per session. The
    public key is the same path with ``.pub`` added; :func:`openssh_server` authorizes it.
    """
    return _keygen(tmp_path_factory.mktemp("openssh-ed25519"), "ed25519")


@pytest.fixture(scope="session")
def openssh_rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    An unencrypted RSA client key in OpenSSH format (``ssh-keygen``'s default size),
    generated once per session. :func:`openssh_server` authorizes it.
    """
    return _keygen(tmp_path_factory.mktemp("openssh-rsa"), "rsa")


@pytest.fixture
def openssh_server(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    openssh_sshd: str,
    openssh_client_key: Path,
    openssh_rsa_key: Path,
) -> Iterator[OpenSSHServer]:
    """
    A started :class:`~rtunnel.testing._openssh.OpenSSHServer` in ``tmp_path / "sshd"``,
    authorizing :func:`openssh_client_key` and :func:`openssh_rsa_key` for its ``user``;
    stopped (with its connections) after the test. A failed test's report includes the tail
    of the server's log.
    """
    authorized = [
        key.with_name(key.name + ".pub").read_text().strip()
        for key in (openssh_client_key, openssh_rsa_key)
    ]
    server = OpenSSHServer(tmp_path / "sshd", authorized_keys=authorized, sshd_path=openssh_sshd)
    request.node.stash.setdefault(_SERVERS, []).append(server)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_ssh_env(tmp_path: Path) -> dict[str, str]:
    """
    An environment for SSH client subprocesses: this one, with ``HOME`` set to an empty
    temporary directory and no ``SSH_*`` variables (no ``SSH_AUTH_SOCK``, so no agent keys)
    and no ``DISPLAY`` (no askpass).

    OpenSSH's ``ssh`` ignores ``HOME``: it finds ``~/.ssh`` through the password database.
    Run it with ``-F none`` and explicit ``-i``, ``-o IdentitiesOnly=yes``,
    ``-o UserKnownHostsFile=...`` and ``-o GlobalKnownHostsFile=/dev/null`` to keep the
    developer's own configuration and keys out of a test.
    """
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SSH_") and name != "DISPLAY"
    }
    env["HOME"] = str(home)
    return env


@pytest.fixture(params=["bundled", pytest.param("openssh", marks=pytest.mark.openssh)])
def server(request: pytest.FixtureRequest) -> Server:
    """The bundled server, then a real sshd: the end-to-end tests run against each."""
    # Imported here: they import the reactor, which pytest-twisted installs after this
    # file is loaded.
    from e2e_support import Server
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    if request.param == "bundled":
        srv = request.getfixturevalue("ssh_test_server")
        return Server(
            "bundled",
            srv.host,
            srv.port,
            request.getfixturevalue("ssh_user"),
            request.getfixturevalue("ssh_client_key"),
            request.getfixturevalue("ssh_known_hosts"),
            srv.drop_connections,
            {"server": srv},
        )
    sshd = request.getfixturevalue("openssh_server")

    def kill_sessions() -> Any:
        # A session's processes may exit between the listing and the kill (the monitor
        # going takes its child with it): kill_sessions' own SIGKILL, tolerant of that.
        sshd.kill_sessions()
        return deferLater(reactor, 0, lambda: None)

    return Server(
        "openssh",
        sshd.host,
        sshd.port,
        sshd.user,
        request.getfixturevalue("openssh_client_key"),
        sshd.known_hosts_path,
        kill_sessions,
        {"server": sshd, "rsa_key": request.getfixturevalue("openssh_rsa_key")},
    )


def _serve_echo(listener: socket.socket) -> None:
    """Echo every connection ``listener`` accepts, each in turn, until it is closed."""

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()


@pytest.fixture
def threaded_echo_port() -> Iterator[int]:
    """A plain echo server on 127.0.0.1 in a thread (nothing shared with the reactor)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    _serve_echo(listener)
    yield int(listener.getsockname()[1])
    listener.close()


@pytest.fixture
def unix_echo(tmp_path: Path) -> Iterator[Path]:
    """The same on a Unix-domain socket in ``tmp_path``."""
    path = tmp_path / "echo.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)
    _serve_echo(listener)
    yield path
    listener.close()


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Agent]:
    """A real ``ssh-agent`` on its own socket, killed after the test."""
    import re

    from e2e_support import Agent

    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent not installed")
    socket_path = tmp_path / "agent.sock"
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", str(socket_path)], check=True, capture_output=True, text=True
    ).stdout
    match = re.search(r"SSH_AGENT_PID=(\d+)", out)
    assert match is not None
    pid = int(match.group(1))
    env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
    try:
        yield Agent(socket_path, env)
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.fixture
def local_user() -> Iterator[LocalUser]:
    """
    A uniquely named local account with a password (as root only; skipped otherwise), and
    a directory sshd can read its authorized_keys from; removed after the test.
    """
    from e2e_support import LocalUser

    from rtunnel.testing._proxyservers import ProxyServerError, throwaway_account

    try:
        with throwaway_account(prefix="rtt", shell="/bin/sh") as account:
            keys_dir = Path(f"/tmp/{account.name}-keys")
            keys_dir.mkdir(mode=0o755)
            try:
                yield LocalUser(account.name, account.password, keys_dir)
            finally:
                shutil.rmtree(keys_dir, ignore_errors=True)
    except ProxyServerError as e:
        pytest.skip(str(e))


@pytest.fixture
def pam_sshd(
    request: pytest.FixtureRequest, tmp_path: Path, openssh_sshd: str, local_user: LocalUser
) -> Iterator[OpenSSHServer]:
    """An sshd with ``UsePAM yes``, password and keyboard-interactive on, reading
    ``local_user``'s keys; extra sshd_config lines by indirect parametrization."""
    extra = getattr(request, "param", [])
    server = OpenSSHServer(
        tmp_path / "sshd",
        sshd_path=openssh_sshd,
        extra_config=[
            "UsePAM yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication yes",
            f"AuthorizedKeysFile {local_user.keys_dir}/authorized_keys",
            *extra,
        ],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
