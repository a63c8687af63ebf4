"""
pytest fixtures for testing code that opens SSH reverse tunnels, loaded automatically
through the ``pytest11`` entry point once rtunnel is installed. They need pytest-twisted
(rtunnel's ``test`` extra).

``ssh_test_server``
    A started :class:`~rtunnel.testing.SSHTestServer` on 127.0.0.1 with one user, named
    after the local user (:func:`getpass.getuser`), who logs on with the
    ``ssh_client_key`` key or the password ``"password"``; stopped after the test.
``ssh_client_key``
    The path of an Ed25519 private key file (OpenSSH format, ``.pub`` beside it)
    authorized on that server.
``ssh_known_hosts``
    The path of a ``known_hosts`` file that holds the server's host key.
``ssh_fault_proxy``
    A started :class:`~rtunnel.testing.FaultProxy` in front of ``ssh_test_server``,
    passing to begin with; stopped after the test. Clients connect to its port and check
    the host key against ``ssh_test_server.write_known_hosts(path, port=proxy.port)``.
``ssh_memory_pair``
    A :class:`~rtunnel.testing.MemoryPair`: a tunnel and a test server joined in memory,
    on a clock, with no reactor running (it needs no pytest-twisted); closed after the
    test.

All are function scoped; keys are generated once per process.
"""

from __future__ import annotations

import getpass
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import pytest
import pytest_twisted  # type: ignore[import-untyped]  # ships no type information

if TYPE_CHECKING:
    from rtunnel.testing._memory import MemoryPair
    from rtunnel.testing._proxy import FaultProxy
    from rtunnel.testing.server import SSHTestServer

__all__ = [
    "ssh_client_key",
    "ssh_fault_proxy",
    "ssh_known_hosts",
    "ssh_memory_pair",
    "ssh_test_server",
    "ssh_user",
]

#: The password of the ``ssh_test_server`` user.
PASSWORD = "password"

_F = TypeVar("_F", bound=Callable[..., object])


def _async_yield_fixture(function: _F) -> _F:
    # pytest-twisted's decorator, typed at this one seam.
    return cast(_F, pytest_twisted.async_yield_fixture(function))


@pytest.fixture
def ssh_user() -> str:
    """The user name the ``ssh_test_server`` user has: the local user's."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No USER/LOGNAME and no passwd entry (some containers).
        return "rtunnel"


@pytest.fixture
def ssh_client_key(tmp_path: Path) -> Path:
    """A client private key file authorized on ``ssh_test_server``."""
    from rtunnel.testing._keys import generate_client_key

    return generate_client_key("ed25519", tmp_path / "rtunnel-ssh")


@_async_yield_fixture
async def ssh_test_server(ssh_client_key: Path, ssh_user: str) -> AsyncGenerator[SSHTestServer]:
    """A started test SSH server, stopped after the test."""
    # Imported here, not at module level: the plugin is loaded before pytest-twisted
    # installs the reactor it was asked for, and importing Conch or the reactor first
    # would install the default one.
    from twisted.conch.ssh.keys import Key
    from twisted.internet import reactor

    from rtunnel.testing.server import SSHTestServer

    server = SSHTestServer(reactor)
    public = Key.fromFile(str(ssh_client_key) + ".pub")
    server.add_user(ssh_user, password=PASSWORD, authorized_keys=[public])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def ssh_known_hosts(ssh_test_server: SSHTestServer, tmp_path: Path) -> Path:
    """A ``known_hosts`` file for ``ssh_test_server``."""
    directory = tmp_path / "rtunnel-ssh"
    directory.mkdir(exist_ok=True)
    return ssh_test_server.write_known_hosts(directory / "known_hosts")


@_async_yield_fixture
async def ssh_fault_proxy(ssh_test_server: SSHTestServer) -> AsyncGenerator[FaultProxy]:
    """A started fault-injecting proxy in front of ``ssh_test_server``, stopped after."""
    from twisted.internet import reactor

    from rtunnel.testing._proxy import FaultProxy

    proxy = FaultProxy(reactor, ssh_test_server.host, ssh_test_server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture
def ssh_memory_pair(tmp_path: Path) -> Iterator[MemoryPair]:
    """A tunnel and a test server joined in memory (its files in ``tmp_path``)."""
    from rtunnel.testing._memory import MemoryPair

    pair = MemoryPair(tmp_path / "rtunnel-memory")
    try:
        yield pair
    finally:
        pair.close()
