"""
No password or key material in the logs (issue #14), whatever the format: the ``rtunnel``
command logs on to the bundled server with a key AND a password (the server asks for
both, ``publickey,password``) at the most verbose level (``-vvv``), in text and in JSON
lines, and the whole stderr is searched for the password and for every line of the
private key file's body. In JSON mode every line must be one JSON object with the four
fields.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import pytest_twisted
from command_support import PYTHON_CLI, RTunnelProcess, _clean_env
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError

from rtunnel.testing import generate_client_key
from rtunnel.testing.server import SSHTestServer

#: Distinctive enough that finding it anywhere can only mean it was logged.
SECRET = "Qx7-sekrit-PW-not-in-any-message-4711"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_password_or_key_in_the_most_verbose_log(
    ssh_test_server: SSHTestServer, ssh_known_hosts: Path, tmp_path: Path, log_format: str
) -> None:
    key = generate_client_key("ed25519", tmp_path / "keys")
    ssh_test_server.add_user(
        "observer",
        password=SECRET,
        authorized_keys=[Key.fromFile(str(key) + ".pub")],
        auth_methods="publickey,password",
    )
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' '{SECRET}'\n")
    askpass.chmod(askpass.stat().st_mode | stat.S_IXUSR)
    child = RTunnelProcess()
    argv = [
        *PYTHON_CLI,
        *["-vvv", "-N", "-o", f"LogFormat={log_format}"],
        *["-o", f"UserKnownHostsFile={ssh_known_hosts}", "-i", str(key)],
        *["-p", str(ssh_test_server.port), "-R", "0:127.0.0.1:9"],
        f"observer@{ssh_test_server.host}",
    ]
    env = {
        **_clean_env(tmp_path),
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
    }
    reactor.spawnProcess(child, argv[0], argv, env=env, path=str(tmp_path))  # type: ignore[attr-defined]
    try:
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        if child.running:
            child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        try:
            await child.ended.addTimeout(30, reactor)
        except TimeoutError:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
            raise
    assert [m for _, m in ssh_test_server.auth_attempts][-2:] == ["publickey", "password"]
    output = child.stderr
    # Something was logged at -vvv (a silent run would pass the search trivially).
    assert 10 <= len(child.lines) <= 200, output
    assert SECRET not in output
    body = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    assert len(body) >= 3
    for line in body:
        assert line not in output
    if log_format == "json":
        records = [json.loads(line) for line in child.lines if line]
        assert all(set(r) >= {"time", "level", "tunnel", "message"} for r in records)
        assert {r["level"] for r in records} <= {"debug", "info", "warn", "error", "critical"}
        assert any(r["message"].startswith("Allocated port") for r in records)
        assert {r["tunnel"] for r in records} == {ssh_test_server.host}
