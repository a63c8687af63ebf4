"""
Keys from a real ``ssh-agent`` (started per test on its own socket), against the bundled
server and OpenSSH sshd (the ``server`` fixture): ed25519 and RSA (SHA-2 signatures), the
socket from ``SSH_AUTH_SOCK`` or given.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.conch.ssh.keys import Key

from rtunnel import AuthenticationError
from rtunnel.client.credentials import SSHAgent
from tests.test_tunnel_e2e import Server, server  # noqa: F401 (the fixture)


class Agent:
    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def add(self, key: Path) -> None:
        subprocess.run(["ssh-add", str(key)], env=self.env, check=True, capture_output=True)


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Agent]:
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.skip("ssh-agent not installed")
    socket = tmp_path / "agent.sock"
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", str(socket)], check=True, capture_output=True, text=True
    ).stdout
    match = re.search(r"SSH_AGENT_PID=(\d+)", out)
    assert match is not None
    pid = int(match.group(1))
    env = {**os.environ, "SSH_AUTH_SOCK": str(socket)}
    try:
        yield Agent(socket, env)
    finally:
        os.kill(pid, signal.SIGTERM)


def keygen(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, capture_output=True
    )
    return path


def authorize(server: Server, key: Path) -> None:  # noqa: F811
    if server.kind == "bundled":
        server.extra["server"].add_user(server.user, authorized_keys=[Key.fromFile(f"{key}.pub")])
    else:
        path = server.extra["server"].authorized_keys_path
        path.write_text(path.read_text() + Path(f"{key}.pub").read_text())


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
@pytest_twisted.ensureDeferred
async def test_agent_keys(
    server: Server,  # noqa: F811
    ssh_agent: Agent,
    tmp_path: Path,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = keygen(tmp_path / "agentkey" / f"id_{kind}", kind)
    ssh_agent.add(key)
    # The key is only in the agent: not authorized yet, so refused...
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[SSHAgent(str(ssh_agent.socket))]).logon()
    authorize(server, key)
    # ... then accepted, by the given socket and through SSH_AUTH_SOCK.
    t = server.tunnel(auth=[SSHAgent(str(ssh_agent.socket))])
    await t.logon()
    await t.logoff()
    monkeypatch.setenv("SSH_AUTH_SOCK", str(ssh_agent.socket))
    t = server.tunnel(auth=[SSHAgent()])
    await t.logon()
    await t.logoff()


@pytest_twisted.ensureDeferred
async def test_no_agent_is_no_keys(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[SSHAgent()]).logon()
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[SSHAgent("/nonexistent/agent.sock")]).logon()
