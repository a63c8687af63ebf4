"""
User authentication end to end against the bundled server, in memory (MemoryPair):
keyboard-interactive (callback and the password prompt pattern), multi-step logons with
partial success, the password change request, password callbacks, method preference, and
refusals without retry loops. What the server decides needs no socket to show.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock

from rtunnel import AuthenticationError, Password, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.client.auth.credentials import (
    AskPassword,
    KeyboardInteractive,
    KeyboardInteractiveChallenge,
    password_prompt_matches,
)
from rtunnel.errors import SpecError
from rtunnel.testing import MemoryPair
from rtunnel.testing.server import KbdIntPrompt, SSHTestServer


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


def tunnel(server: SSHTestServer, user: str, known: Path, **kw: Any) -> ReverseTunnel:
    return ReverseTunnel(
        server._reactor,
        server.host,
        server.port,
        options=TunnelOptions.create(user=user, known_hosts=known, **kw),
    )


async def logon_ok(t: ReverseTunnel) -> None:
    await t.logon()
    assert t.connected
    await t.logoff()


# -- the password prompt pattern (pure) ------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prompt", "matches"),
    [
        ("*assword*", "Password: ", True),
        ("*assword*", "(alice@host) Password: ", True),
        ("*assword*", "Verification code: ", False),
        ("Password:", "Password: ", True),  # trailing white space of the prompt ignored
        ("Password:", "password:", False),
        ("?assword:", "Password:", True),
        ("?assword:", "PPassword:", False),
        ("C*t", "Coast", True),
        ("C*t", "Ct", True),
        ("C*t", "Cab", False),
        ("[a-z]in:", "pin:", True),
        ("[a-z]in:", "Pin:", False),
        ("[0-9,a-d,f]x", "7x", True),
        ("[0-9,a-d,f]x", "cx", True),
        ("[0-9,a-d,f]x", "fx", True),
        ("[0-9,a-d,f]x", "ex", False),
        (r"Code\*:", "Code*:", True),
        (r"Code\*:", "Codes:", False),
        (r"\?", "?", True),
        (r"\?", "x", False),
        ("a.b", "a.b", True),
        ("a.b", "axb", False),  # regex characters are literal
    ],
)
def test_password_prompt_pattern(pattern: str, prompt: str, matches: bool) -> None:
    assert password_prompt_matches(pattern, prompt) is matches


def test_unknown_preferred_method_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="hostbased"):
        ReverseTunnel(
            MemoryReactorClock(),
            "h",
            options=TunnelOptions.create(preferred_authentications=["hostbased"]),
        )


# -- keyboard-interactive ---------------------------------------------------------------


def test_kbdint_password_prompt_answered_with_password(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    # Only keyboard-interactive allowed (as sshd with PAM and PasswordAuthentication no).
    ssh_test_server.add_user(ssh_user, "s3cret", auth_methods="keyboard-interactive")
    pair.run(
        logon_ok(tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[Password("s3cret")]))
    )
    assert ssh_test_server.keyboard_interactive_answers == [["s3cret"]]
    assert "keyboard-interactive" in [m for _, m in ssh_test_server.auth_attempts]


def test_kbdint_callback_sees_every_prompt_and_may_be_async(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    ssh_test_server.add_user(
        ssh_user,
        "pw",
        auth_methods="keyboard-interactive",
        keyboard_interactive=[
            [("Password: ", False, "pw"), ("Token: ", True, "123456")],
            [KbdIntPrompt("Favourite colour? ", True, "blue")],
        ],
    )
    seen: list[KeyboardInteractiveChallenge] = []

    async def respond(challenge: KeyboardInteractiveChallenge) -> list[str]:
        seen.append(challenge)
        await deferLater(pair.reactor, 0.01, lambda: None)
        return [
            p.answer if p.answer is not None else {"Token: ": "123456"}.get(p.text, "blue")
            for p in challenge.prompts
        ]

    pair.run(
        logon_ok(
            tunnel(
                ssh_test_server,
                ssh_user,
                ssh_known_hosts,
                auth=[Password("pw"), KeyboardInteractive(respond)],
            )
        )
    )
    assert [[(p.text, p.echo, p.answer) for p in c.prompts] for c in seen] == [
        [("Password: ", False, "pw"), ("Token: ", True, None)],
        [("Favourite colour? ", True, None)],
    ]
    assert seen[0].name == "rtunnel test server"
    assert seen[0].instruction == "2 prompt(s)"
    assert ssh_test_server.keyboard_interactive_answers == [["pw", "123456"], ["blue"]]


def test_kbdint_wrong_answers_end_without_a_retry_loop(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    ssh_test_server.add_user(ssh_user, "right", auth_methods="keyboard-interactive")
    calls: list[int] = []

    def respond(challenge: KeyboardInteractiveChallenge) -> list[str]:
        calls.append(1)
        return ["wrong"]

    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[KeyboardInteractive(respond)],
        number_of_password_prompts=2,
    )
    with pytest.raises(
        AuthenticationError, match=r"^Permission denied \(keyboard-interactive\)\.$"
    ):
        pair.run(t.logon())
    # Two rounds (NumberOfPasswordPrompts), then it stops.
    assert len(calls) == 2
    methods = [m for _, m in ssh_test_server.auth_attempts]
    assert methods == ["none", "keyboard-interactive", "keyboard-interactive"]


def test_kbdint_unanswerable_prompt_is_abandoned(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    # A password but a prompt that does not look like a password prompt, and no callback.
    ssh_test_server.add_user(
        ssh_user,
        "pw",
        auth_methods="keyboard-interactive",
        keyboard_interactive=[[("Verification code: ", False, "42")]],
    )
    t = tunnel(
        ssh_test_server, ssh_user, ssh_known_hosts, auth=[Password("pw")], password_prompt="Pass*"
    )
    with pytest.raises(AuthenticationError, match="Permission denied") as e:
        pair.run(t.logon())
    assert e.value.code == 1032
    assert ssh_test_server.keyboard_interactive_answers == []


# -- multi-step, preference, password callbacks -------------------------------------------


def test_publickey_then_password_partial_success(
    pair: MemoryPair,
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    ssh_client_key: Path,
) -> None:
    ssh_test_server.add_user(ssh_user, "pw", auth_methods="publickey,password")
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[PrivateKeyFile(ssh_client_key), Password("pw")],
        preferred_authentications=["password", "publickey"],
    )
    pair.run(logon_ok(t))
    methods = [m for _, m in ssh_test_server.auth_attempts]
    assert methods == ["none", "publickey", "password"]


def test_partial_success_then_wrong_password_is_refused(
    pair: MemoryPair,
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    ssh_client_key: Path,
) -> None:
    ssh_test_server.add_user(ssh_user, "pw", auth_methods="publickey,password")
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[PrivateKeyFile(ssh_client_key), Password("nope")],
        preferred_authentications=["publickey", "password"],
        password_prompt=None,
    )
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(password\)\.$"):
        pair.run(t.logon())


def test_preferred_authentications_order_and_restriction(
    pair: MemoryPair,
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    ssh_client_key: Path,
) -> None:
    # Password first when preferred, although a good key is there too.
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[PrivateKeyFile(ssh_client_key), Password("password")],
        preferred_authentications=["password", "publickey"],
    )
    pair.run(logon_ok(t))
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password"]
    # Only password preferred, and it is wrong: the key is not tried...
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[PrivateKeyFile(ssh_client_key), Password("wrong")],
        preferred_authentications=["password"],
    )
    with pytest.raises(AuthenticationError):
        pair.run(t.logon())
    # ...unless every available method may be tried (TryAllAvailableAuthMethods).
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[PrivateKeyFile(ssh_client_key), Password("wrong")],
        preferred_authentications=["password"],
        try_all_auth_methods=True,
    )
    pair.run(logon_ok(t))


def test_ask_password_is_asked_up_to_the_limit(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    prompts: list[str] = []

    def ask(prompt: str) -> Deferred[str | None]:
        prompts.append(prompt)
        answer = "password" if len(prompts) == 2 else "wrong"
        return deferLater(pair.reactor, 0, lambda: answer)

    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[AskPassword(ask)],
        preferred_authentications=["password"],
    )
    pair.run(logon_ok(t))
    assert prompts == [f"{ssh_user}@{ssh_test_server.host}'s password: "] * 2

    prompts.clear()
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[AskPassword(lambda p: prompts.append(p) or "wrong")],
        preferred_authentications=["password"],
        number_of_password_prompts=3,
    )
    with pytest.raises(AuthenticationError, match="Permission denied"):
        pair.run(t.logon())
    assert len(prompts) == 3


def test_password_change_request_is_a_clear_error(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    ssh_test_server.add_user(ssh_user, "old", password_expired=True)
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[Password("old")],
        preferred_authentications=["password"],
    )
    with pytest.raises(AuthenticationError, match="requires a new password") as e:
        pair.run(t.logon())
    assert e.value.code == 1032
    assert "expired" in str(e.value)
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "password"]


def test_nothing_to_try_is_permission_denied(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    t = tunnel(ssh_test_server, ssh_user, ssh_known_hosts, auth=[])
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(") as e:
        pair.run(t.logon())
    assert set(e.value.methods) == {"publickey", "password"}
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none"]


def test_server_wide_keyboard_interactive_asks_for_the_password(
    ssh_user: str, tmp_path: Path
) -> None:
    with MemoryPair(tmp_path, user=ssh_user, server_options={"keyboard_interactive": True}) as pair:
        server = pair.server
        server.add_user(ssh_user, "pw")
        t = tunnel(server, ssh_user, pair.known_hosts, auth=[Password("pw")])
        pair.run(logon_ok(t))
        assert server.keyboard_interactive_answers == [["pw"]]
        assert [m for _, m in server.auth_attempts] == ["none", "keyboard-interactive"]


def test_password_change_callback_sets_a_new_password(
    pair: MemoryPair, ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path
) -> None:
    ssh_test_server.add_user(ssh_user, "old", password_expired=True)
    prompts: list[str] = []

    async def change(prompt: str) -> str:
        prompts.append(prompt)
        await deferLater(pair.reactor, 0, lambda: None)
        return "new"

    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[Password("old")],
        preferred_authentications=["password"],
        password_change=change,
    )
    pair.run(logon_ok(t))
    assert prompts == ["Your password has expired; choose a new one:"]
    # The server took the new password.
    t = tunnel(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        auth=[Password("new")],
        preferred_authentications=["password"],
    )
    pair.run(logon_ok(t))
