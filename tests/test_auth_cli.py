"""
The ``rtunnel`` command's passwords end to end against the bundled server: an
``SSH_ASKPASS`` program under ``SSH_ASKPASS_REQUIRE``, ``BatchMode=yes`` never asking,
``NumberOfPasswordPrompts``, ``PreferredAuthentications`` with keyboard-interactive, and
the ``password_source`` decision table.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel.client.askpass import DEFAULT_ASKPASS, password_source
from rtunnel.testing._server import SSHTestServer
from tests.test_auth_agent import Agent, ssh_agent  # noqa: F401 (the fixture)
from tests.test_cli import PYTHON_CLI, RTunnelProcess, _clean_env


def askpass_script(tmp_path: Path, answer: str) -> tuple[Path, Path]:
    """An askpass program that records each prompt and prints ``answer``."""
    record = tmp_path / "asked"
    script = tmp_path / "askpass.sh"
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{record}'\nprintf '%s\\n' '{answer}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


def spawn(
    server: SSHTestServer,
    user: str,
    known: Path,
    tmp_path: Path,
    env_extra: dict[str, str],
    *options: str,
) -> RTunnelProcess:
    protocol = RTunnelProcess()
    argv = [
        *PYTHON_CLI,
        "-N",
        *["-o", f"UserKnownHostsFile={known}"],
        *["-p", str(server.port)],
        *["-R", "0:127.0.0.1:9"],
        *options,
        f"{user}@{server.host}",
    ]
    env = {**_clean_env(tmp_path), **env_extra}
    reactor.spawnProcess(protocol, argv[0], argv, env=env, path=str(tmp_path))  # type: ignore[attr-defined]
    return protocol


async def stop(child: RTunnelProcess) -> None:
    if child.running:
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    await child.ended


@pytest_twisted.ensureDeferred
async def test_askpass_forced_logs_on_with_the_password(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    script, record = askpass_script(tmp_path, "password")
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"},
    )
    try:
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        await stop(child)
    assert record.read_text() == f"{ssh_user}@{ssh_test_server.host}'s password: \n"
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password"]


@pytest_twisted.ensureDeferred
async def test_batch_mode_never_asks(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    script, record = askpass_script(tmp_path, "password")
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"},
        "-o",
        "BatchMode=yes",
    )
    await child.wait_for(r"Permission denied \(publickey,password\)\.")
    code, _signal = await child.ended
    assert code == 255
    assert not record.exists()


@pytest_twisted.ensureDeferred
async def test_number_of_password_prompts_and_askpass_never(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    script, record = askpass_script(tmp_path, "wrong")
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"},
        "-o",
        "NumberOfPasswordPrompts=2",
    )
    await child.wait_for(r"Permission denied")
    assert (await child.ended)[0] == 255
    assert len(record.read_text().splitlines()) == 2
    # SSH_ASKPASS_REQUIRE=never and no terminal: nothing asks.
    record.unlink()
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "never", "DISPLAY": ":0"},
    )
    await child.wait_for(r"Permission denied")
    assert (await child.ended)[0] == 255
    assert not record.exists()


@pytest_twisted.ensureDeferred
async def test_preferred_keyboard_interactive_through_askpass(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    ssh_test_server.add_user(
        ssh_user,
        "pw",
        auth_methods=["keyboard-interactive", "password"],
        keyboard_interactive=[[("Password: ", False, "pw")]],
    )
    script, record = askpass_script(tmp_path, "pw")
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "prefer", "DISPLAY": ":0"},
        "-o",
        "PreferredAuthentications=keyboard-interactive,password",
    )
    try:
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        await stop(child)
    assert record.read_text() == "Password: \n"
    assert ssh_test_server.keyboard_interactive_answers == [["pw"]]


@pytest.mark.parametrize(
    ("env", "tty", "batch", "expected"),
    [
        ({}, False, False, None),
        ({}, True, False, "terminal"),
        ({}, True, True, None),
        ({"SSH_ASKPASS": "/x", "DISPLAY": ":0"}, False, False, "/x"),
        ({"SSH_ASKPASS": "/x", "DISPLAY": ":0"}, True, False, "terminal"),
        (
            {"SSH_ASKPASS": "/x", "DISPLAY": ":0", "SSH_ASKPASS_REQUIRE": "prefer"},
            True,
            False,
            "/x",
        ),
        ({"SSH_ASKPASS": "/x", "SSH_ASKPASS_REQUIRE": "prefer"}, True, False, "terminal"),
        ({"SSH_ASKPASS": "/x", "SSH_ASKPASS_REQUIRE": "force"}, True, False, "/x"),
        ({"SSH_ASKPASS_REQUIRE": "force"}, False, False, DEFAULT_ASKPASS),
        (
            {"SSH_ASKPASS": "/x", "DISPLAY": ":0", "SSH_ASKPASS_REQUIRE": "never"},
            False,
            False,
            None,
        ),
        ({"SSH_ASKPASS": "/x", "SSH_ASKPASS_REQUIRE": "force"}, False, True, None),
    ],
)
def test_password_source_table(
    env: dict[str, str], tty: bool, batch: bool, expected: str | None
) -> None:
    source = password_source(batch_mode=batch, environ=env, tty=tty)
    if expected is None:
        assert source is None
    elif expected == "terminal":
        assert source is not None and source.ask.__name__ == "_ask_terminal"
    else:
        assert source is not None
        closure = source.ask.__closure__ or ()
        assert expected in [c.cell_contents for c in closure]


def test_no_stray_env() -> None:
    assert "SSH_ASKPASS" not in _clean_env(Path(os.devnull))


@pytest_twisted.ensureDeferred
async def test_identity_agent_and_identities_only(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    tmp_path: Path,
    ssh_agent: Agent,  # noqa: F811
) -> None:
    key = tmp_path / "agent-only" / "id_ed25519"
    key.parent.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    ssh_agent.add(key)
    key.unlink()  # only the agent has it now
    ssh_test_server.add_user(ssh_user, authorized_keys=[Key.fromFile(f"{key}.pub")])
    batch = ("-o", "BatchMode=yes")
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {},
        *batch,
        "-o",
        f"IdentityAgent={ssh_agent.socket}",
    )
    try:
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        await stop(child)
    # SSH_AUTH_SOCK, but IdentitiesOnly=yes: the agent is not used.
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_AUTH_SOCK": str(ssh_agent.socket)},
        *batch,
        "-o",
        "IdentitiesOnly=yes",
    )
    await child.wait_for(r"Permission denied \(publickey,password\)\.")
    assert (await child.ended)[0] == 255
