"""
Custom authentication (the reference's amCustom / SSHCustomAuth): a hook that sees the
server's raw user authentication packets and answers with its own, built with the packet
helpers. Against the bundled server, in memory (password and keyboard-interactive driven
by the hook, declining, partial success, bad answers). Against OpenSSH sshd (a publickey
signature made by the hook over the session id; password through PAM as root):
tests/interop/test_auth_custom_openssh.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from custom_auth_support import (
    INFO_REQUEST,
    INFO_RESPONSE,
    USERAUTH_FAILURE,
    failure_methods,
    request,
)
from twisted.internet.task import deferLater

from rtunnel import (
    AuthenticationError,
    CustomAuth,
    CustomAuthStep,
    Password,
    PrivateKeyFile,
    ReverseTunnel,
    SpecError,
    TunnelOptions,
    encode_packet,
    get_ssh_param,
    read_ssh_params,
    set_ssh_param,
)
from rtunnel.testing import MemoryPair
from rtunnel.testing.server import SSHTestServer


# The plugin's fixtures, in memory: the same user, password, key and known_hosts.
@pytest.fixture
def pair(tmp_path: Path, ssh_user: str) -> Iterator[MemoryPair]:
    pair = MemoryPair(tmp_path / "pair", user=ssh_user)
    pair.server.add_user(ssh_user, password="password")
    yield pair
    pair.close()


@pytest.fixture
def ssh_test_server(pair: MemoryPair) -> SSHTestServer:
    return pair.server


@pytest.fixture
def ssh_known_hosts(pair: MemoryPair) -> Path:
    return pair.known_hosts


@pytest.fixture
def ssh_client_key(pair: MemoryPair) -> Path:
    return pair.client_key


def tunnel(server: Any, user: str, known: Path, **kw: Any) -> ReverseTunnel:
    return ReverseTunnel(
        server._reactor,
        server.host,
        server.port,
        options=TunnelOptions.create(user=user, known_hosts=known, **kw),
    )


def test_the_hook_logs_on_with_a_password_it_sends_itself(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
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
    pair.run(t.logon())
    pair.run(t.logoff())
    assert [s.message for s in seen] == [USERAUTH_FAILURE, USERAUTH_FAILURE]
    assert get_ssh_param(seen[0].packet, "%b,s") == "publickey,password"
    assert all(s.user == ssh_user and s.service == "ssh-connection" for s in seen)
    assert len(seen[0].session_id) == 32  # curve25519-sha256: a SHA-256 exchange hash
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password", "password"]


def test_the_hook_drives_keyboard_interactive_asynchronously(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
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
        await deferLater(pair.reactor, 0.01, lambda: None)
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
    pair.run(t.logon())
    pair.run(t.logoff())
    assert seen == [USERAUTH_FAILURE, INFO_REQUEST]
    assert prompts_seen == [("Code: ", True), ("PIN: ", False)]
    assert ssh_test_server.keyboard_interactive_answers == [["42", "1234"]]


def test_a_declining_hook_leaves_the_logon_to_the_other_credentials(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    calls: list[int] = []
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[CustomAuth(lambda step: calls.append(step.message)), Password("password")],
    )
    pair.run(t.logon())
    pair.run(t.logoff())
    assert calls == [USERAUTH_FAILURE]  # asked once: a decline holds until partial success
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password"]
    # Alone, declining is "Permission denied" in OpenSSH's words.
    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(lambda s: None)])
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(publickey,password\)\.$"):
        pair.run(t.logon())


def test_the_hook_takes_the_second_step_after_partial_success(
    pair: MemoryPair,
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    ssh_client_key: Path,
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
    pair.run(t.logon())
    pair.run(t.logoff())
    assert partial == [False, True]
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "publickey", "password"]


def test_a_bad_answer_or_a_failing_hook_ends_the_logon_saying_why(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[CustomAuth(lambda step: b"\x5e\x00\x00\x00\x00")],
    )
    with pytest.raises(SpecError, match="returned message 94"):
        pair.run(t.logon())
    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(lambda step: b"")])
    with pytest.raises(SpecError, match="returned an empty packet"):
        pair.run(t.logon())

    def broken(step: CustomAuthStep) -> bytes:
        raise KeyError("oops")

    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[CustomAuth(broken)])
    with pytest.raises(AuthenticationError, match="custom authentication hook failed: KeyError"):
        pair.run(t.logon())
    # Only the probe reached the server: nothing was sent for the bad answers.
    assert {m for _, m in ssh_test_server.auth_attempts} == {"none"}
