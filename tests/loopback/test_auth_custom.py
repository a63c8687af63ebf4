"""
Custom authentication (the reference's amCustom / SSHCustomAuth): a hook that sees the
server's raw user authentication packets and answers with its own, built with the packet
helpers. Against the bundled server (password and keyboard-interactive driven by the
hook, declining, partial success, bad answers) and against OpenSSH sshd (a publickey
signature made by the hook over the session id; password through PAM as root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_support import LocalUser
from openssh_log import wait_for_log
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rtunnel import (
    AuthenticationError,
    CustomAuth,
    CustomAuthStep,
    Password,
    PrivateKeyFile,
    ReverseTunnel,
    SpecError,
    encode_packet,
    get_ssh_param,
    read_ssh_params,
    set_ssh_param,
)
from rtunnel.testing._openssh import OpenSSHServer
from rtunnel.testing.server import SSHTestServer

USERAUTH_REQUEST = 50
USERAUTH_FAILURE = 51
INFO_REQUEST = 60
INFO_RESPONSE = 61


def tunnel(server: Any, user: str, known: Path, **kw: Any) -> ReverseTunnel:
    return ReverseTunnel(reactor, server.host, server.port, user=user, known_hosts=known, **kw)


def request(step: CustomAuthStep, method: str, *fields: tuple[str, object]) -> bytes:
    """A USERAUTH_REQUEST (RFC 4252 section 5) built field by field."""
    packet = set_ssh_param(b"", "b", USERAUTH_REQUEST)
    packet = set_ssh_param(packet, "s", step.user)
    packet = set_ssh_param(packet, "s", step.service)
    packet = set_ssh_param(packet, "s", method)
    for kind, value in fields:
        packet = set_ssh_param(packet, kind, value)  # type: ignore[arg-type]
    return packet


def failure_methods(step: CustomAuthStep) -> tuple[list[str], bool]:
    _number, methods, partial = read_ssh_params(step.packet, "b,s,f")
    return str(methods).split(","), bool(partial)


@pytest_twisted.ensureDeferred
async def test_the_hook_logs_on_with_a_password_it_sends_itself(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    seen: list[CustomAuthStep] = []

    def respond(step: CustomAuthStep) -> bytes | None:
        seen.append(step)
        methods, _partial = failure_methods(step)
        if len(seen) > 2 or "password" not in methods:
            return None
        # First the wrong password, then the right one: the hook sees the FAILURE between.
        password = "wrong" if len(seen) == 1 else "password"
        return request(step, "password", ("f", "false"), ("s", password))

    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(respond)])
    await t.logon()
    await t.logoff()
    assert [s.message for s in seen] == [USERAUTH_FAILURE, USERAUTH_FAILURE]
    assert get_ssh_param(seen[0].packet, "%b,s") == "publickey,password"
    assert all(s.user == ssh_user and s.service == "ssh-connection" for s in seen)
    assert len(seen[0].session_id) == 32  # curve25519-sha256: a SHA-256 exchange hash
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password", "password"]


@pytest_twisted.ensureDeferred
async def test_the_hook_drives_keyboard_interactive_asynchronously(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    ssh_test_server.add_user(
        ssh_user,
        auth_methods="keyboard-interactive",
        keyboard_interactive=[[("Code: ", True, "42"), ("PIN: ", False, "1234")]],
    )
    answers = {"Code: ": "42", "PIN: ": "1234"}
    seen: list[int] = []
    prompts_seen: list[tuple[str, bool]] = []

    async def respond(step: CustomAuthStep) -> str | None:
        seen.append(step.message)
        await deferLater(reactor, 0.01, lambda: None)
        if step.message == USERAUTH_FAILURE:
            if len(seen) > 1:
                return None
            # RFC 4256 section 3.1: language tag, submethods. As hex text this time.
            return encode_packet(request(step, "keyboard-interactive", ("s", ""), ("s", "")))
        assert step.message == INFO_REQUEST
        # RFC 4256 section 3.2: name, instruction, language, count, then prompt + echo.
        _n, _name, _instruction, _lang, count = read_ssh_params(step.packet, "b,s,s,s,i")
        types = "b,s,s,s,i" + ",s,f" * int(count)  # type: ignore[call-overload]
        fields = read_ssh_params(step.packet, types)[5:]
        prompts = [(str(fields[i]), bool(fields[i + 1])) for i in range(0, len(fields), 2)]
        prompts_seen.extend(prompts)
        reply = set_ssh_param(set_ssh_param(b"", "b", INFO_RESPONSE), "i", len(prompts))
        for text, _echo in prompts:
            reply = set_ssh_param(reply, "s", answers[text])
        return encode_packet(reply)

    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(respond)])
    await t.logon()
    await t.logoff()
    assert seen == [USERAUTH_FAILURE, INFO_REQUEST]
    assert prompts_seen == [("Code: ", True), ("PIN: ", False)]
    assert ssh_test_server.keyboard_interactive_answers == [["42", "1234"]]


@pytest_twisted.ensureDeferred
async def test_a_declining_hook_leaves_the_logon_to_the_other_credentials(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    calls: list[int] = []
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[CustomAuth(lambda step: calls.append(step.message)), Password("password")],
    )
    await t.logon()
    await t.logoff()
    assert calls == [USERAUTH_FAILURE]  # asked once: a decline holds until partial success
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password"]
    # Alone, declining is "Permission denied" in OpenSSH's words.
    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(lambda s: None)])
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(publickey,password\)\.$"):
        await t.logon()


@pytest_twisted.ensureDeferred
async def test_the_hook_takes_the_second_step_after_partial_success(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, ssh_client_key: Path
) -> None:
    ssh_test_server.add_user(ssh_user, "password", auth_methods="publickey,password")
    partial: list[bool] = []

    def respond(step: CustomAuthStep) -> bytes | None:
        methods, was_partial = failure_methods(step)
        partial.append(was_partial)
        if methods != ["password"]:
            return None
        return request(step, "password", ("f", False), ("s", "password"))

    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[CustomAuth(respond), PrivateKeyFile(ssh_client_key)],
    )
    await t.logon()
    await t.logoff()
    assert partial == [False, True]
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "publickey", "password"]


@pytest_twisted.ensureDeferred
async def test_a_bad_answer_or_a_failing_hook_ends_the_logon_saying_why(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[CustomAuth(lambda step: b"\x5e\x00\x00\x00\x00")],
    )
    with pytest.raises(SpecError, match="returned message 94"):
        await t.logon()
    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(lambda step: b"")])
    with pytest.raises(SpecError, match="returned an empty packet"):
        await t.logon()

    def broken(step: CustomAuthStep) -> bytes:
        raise KeyError("oops")

    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(broken)])
    with pytest.raises(AuthenticationError, match="custom authentication hook failed: KeyError"):
        await t.logon()
    # Only the probe reached the server: nothing was sent for the bad answers.
    assert {m for _, m in ssh_test_server.auth_attempts} == {"none"}


@pytest_twisted.ensureDeferred
async def test_the_hook_signs_a_publickey_request_for_openssh(
    openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    key = Key.fromFile(str(openssh_client_key))
    blob = key.public().blob()

    def respond(step: CustomAuthStep) -> bytes | None:
        methods, _partial = failure_methods(step)
        if "publickey" not in methods or step.message != USERAUTH_FAILURE:
            return None
        unsigned = request(step, "publickey", ("f", True), ("s", "ssh-ed25519"), ("sb", blob))
        # RFC 4252 section 7: the signature covers the session id and the request.
        signature = key.sign(set_ssh_param(b"", "sb", step.session_id) + unsigned)
        return set_ssh_param(unsigned, "sb", signature)

    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        user=openssh_server.user,
        known_hosts=openssh_server.known_hosts_path,
        auth=[CustomAuth(respond)],
    )
    await t.logon()
    await t.logoff()
    assert "Accepted publickey for " + openssh_server.user in openssh_server.log_text()


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_the_hook_sends_a_password_to_openssh_with_pam(
    pam_sshd: OpenSSHServer,
    local_user: LocalUser,
) -> None:
    def respond(step: CustomAuthStep) -> bytes | None:
        methods, _partial = failure_methods(step)
        if "password" not in methods:
            return None
        return request(step, "password", ("f", False), ("s", local_user.password))

    t = ReverseTunnel(
        reactor,
        pam_sshd.host,
        pam_sshd.port,
        user=local_user.name,
        known_hosts=pam_sshd.known_hosts_path,
        auth=[CustomAuth(respond)],
    )
    await t.logon()
    await t.logoff()
    wait_for_log(pam_sshd, "Accepted password for " + local_user.name)
