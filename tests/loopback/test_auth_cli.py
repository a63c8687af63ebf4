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
from command_support import PYTHON_CLI, RTunnelProcess, _clean_env
from command_support import spawn_with_env as spawn
from e2e_support import Agent
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError
from twisted.internet.task import deferLater

from rtunnel.client.auth.askpass import DEFAULT_ASKPASS, UserAsk, password_source
from rtunnel.testing.server import SSHTestServer


def askpass_script(tmp_path: Path, answer: str) -> tuple[Path, Path]:
    """An askpass program that records each prompt and prints ``answer``."""
    record = tmp_path / "asked"
    script = tmp_path / "askpass.sh"
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{record}'\nprintf '%s\\n' '{answer}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


async def stop(child: RTunnelProcess) -> None:
    if child.running:
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
    try:
        await child.ended.addTimeout(30, reactor)
    except TimeoutError:
        child.transport.signalProcess("KILL")  # type: ignore[union-attr]
        raise AssertionError(f"rtunnel did not end on SIGTERM; stderr:\n{child.stderr}") from None


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
    else:
        assert source is not None and isinstance(source.ask, UserAsk)
        assert source.ask.program == (None if expected == "terminal" else expected)


def test_no_stray_env() -> None:
    assert "SSH_ASKPASS" not in _clean_env(Path(os.devnull))


@pytest_twisted.ensureDeferred
async def test_identity_agent_and_identities_only(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    tmp_path: Path,
    ssh_agent: Agent,
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


def answering_askpass(tmp_path: Path, answers: dict[str, str]) -> tuple[Path, Path]:
    """An askpass program that records each prompt and answers by the prompt's start."""
    record = tmp_path / "asked"
    cases = "".join(
        f"  '{start}'*) printf '%s\\n' '{answer}' ;;\n" for start, answer in answers.items()
    )
    script = tmp_path / "askpass-by-prompt.sh"
    script.write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{record}'\n"
        f'case "$1" in\n{cases}  *) exit 1 ;;\nesac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


def encrypted_key(tmp_path: Path, passphrase: str) -> Path:
    key = tmp_path / "keys" / "id_ecdsa"
    key.parent.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", passphrase, "-f", str(key)],
        check=True,
        capture_output=True,
    )
    return key


@pytest_twisted.ensureDeferred
async def test_passphrase_of_an_identity_file_is_asked_through_askpass(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    key = encrypted_key(tmp_path, "sesame")
    ssh_test_server.add_user(ssh_user, authorized_keys=[Key.fromFile(f"{key}.pub")])
    script, record = answering_askpass(tmp_path, {"Enter passphrase": "sesame"})
    env = {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}
    child = spawn(ssh_test_server, ssh_user, ssh_known_hosts, tmp_path, env, "-i", str(key))
    try:
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        await stop(child)
    assert record.read_text() == f"Enter passphrase for key '{key}': \n"
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "publickey"]
    # BatchMode=yes: never asked; the key is skipped and the logon refused.
    record.unlink()
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        env,
        *["-i", str(key), "-o", "BatchMode=yes"],
    )
    await child.wait_for(r"Permission denied \(publickey,password\)\.")
    assert (await child.ended)[0] == 255
    assert not record.exists()


@pytest_twisted.ensureDeferred
async def test_identities_only_with_an_encrypted_key_in_the_agent(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    tmp_path: Path,
    ssh_agent: Agent,
) -> None:
    key = encrypted_key(tmp_path, "")
    other = tmp_path / "keys" / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        capture_output=True,
    )
    ssh_agent.add(other)
    ssh_agent.add(key)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", "sesame", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    ssh_test_server.add_user(ssh_user, authorized_keys=[Key.fromFile(f"{key}.pub")])
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {"SSH_AUTH_SOCK": str(ssh_agent.socket)},
        *["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"],
    )
    try:
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        await stop(child)
    # Only the identity file's key was offered (through the agent, no passphrase): the
    # agent's other key never was.
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "publickey"]


@pytest_twisted.ensureDeferred
async def test_other_keyboard_interactive_prompts_are_asked_through_askpass(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    ssh_test_server.add_user(
        ssh_user,
        "pw",
        auth_methods="keyboard-interactive",
        keyboard_interactive=[[("Password: ", False, "pw"), ("Token: ", True, "123456")]],
    )
    script, record = answering_askpass(tmp_path, {"Password": "pw", "Token": "123456"})
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
    assert record.read_text() == "Password: \nToken: \n"
    assert ssh_test_server.keyboard_interactive_answers == [["pw", "123456"]]


class TerminalSession(RTunnelProcess):
    """rtunnel on a pseudo-terminal: everything it writes, prompts included, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.screen = ""

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (ProcessProtocol)
        self.screen += data.decode("utf-8", "replace")
        super().errReceived(data)

    async def answer(self, prompt: str, text: str, timeout: float = 20.0) -> None:
        """Wait until ``prompt`` is on the screen, then type ``text`` and Enter."""
        waited = 0.0
        while prompt not in self.screen:
            assert self.running, f"rtunnel ended; screen:\n{self.screen}"
            assert waited < timeout, f"no {prompt!r}; screen:\n{self.screen}"
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        self.screen = self.screen.split(prompt, 1)[1]
        self.transport.write(text.encode() + b"\n")  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_terminal_prompts_echo_only_what_the_server_says_to(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    ssh_test_server.add_user(
        ssh_user,
        "hunter2-secret",
        auth_methods="keyboard-interactive",
        keyboard_interactive=[
            [("Password: ", False, "hunter2-secret"), ("Token: ", True, "777123")]
        ],
    )
    child = TerminalSession()
    argv = [
        *PYTHON_CLI,
        "-N",
        *["-o", f"UserKnownHostsFile={ssh_known_hosts}"],
        *["-p", str(ssh_test_server.port)],
        *["-R", "0:127.0.0.1:9"],
        f"{ssh_user}@{ssh_test_server.host}",
    ]
    reactor.spawnProcess(  # type: ignore[attr-defined]
        child, argv[0], argv, env=_clean_env(tmp_path), path=str(tmp_path), usePTY=True
    )
    try:
        await child.answer("Password: ", "hunter2-secret")
        await child.answer("Token: ", "777123")
        await child.wait_for(r"Allocated port \d+ for remote forward")
    finally:
        await stop(child)
    everything = "\n".join(child.lines)
    assert "777123" in everything  # echoed: the server asked for echo
    assert "hunter2-secret" not in everything  # not echoed
    assert ssh_test_server.keyboard_interactive_answers == [["hunter2-secret", "777123"]]


@pytest_twisted.ensureDeferred
async def test_sigterm_at_a_terminal_prompt_stops_at_once(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    # A prompt nobody answers must not keep a SIGTERMed rtunnel alive: the prompt runs in
    # a daemon thread, not the reactor's pool (joined at shutdown), and the terminal's
    # echo setting is put back.
    ssh_test_server.add_user(ssh_user, "hunter2-secret", auth_methods="password")
    child = TerminalSession()
    argv = [
        *PYTHON_CLI,
        "-N",
        *["-o", f"UserKnownHostsFile={ssh_known_hosts}"],
        *["-p", str(ssh_test_server.port)],
        *["-R", "0:127.0.0.1:9"],
        f"{ssh_user}@{ssh_test_server.host}",
    ]
    reactor.spawnProcess(  # type: ignore[attr-defined]
        child, argv[0], argv, env=_clean_env(tmp_path), path=str(tmp_path), usePTY=True
    )
    try:
        waited = 0.0
        while "password: " not in child.screen.lower():
            assert child.running and waited < 20, f"no prompt; screen:\n{child.screen}"
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        started = reactor.seconds()  # type: ignore[attr-defined]
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        status = await child.ended.addTimeout(10, reactor)
        assert reactor.seconds() - started < 5  # type: ignore[attr-defined]
        assert status == (0, None), child.screen
    finally:
        if child.running:
            child.transport.signalProcess("KILL")  # type: ignore[union-attr]
