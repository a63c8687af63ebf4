"""
User authentication against a real OpenSSH sshd with ``UsePAM yes``: password and
keyboard-interactive (PAM's "Password: " prompt), multi-step ``AuthenticationMethods``
with partial success, and refusals.

These need a local account with a password. They run only as root, and create a uniquely
named account for the test (``useradd``; removed afterwards); otherwise they are skipped
(the bundled server covers the same logic in tests/test_auth.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import LocalUser
from openssh_log import wait_for_log
from twisted.internet import reactor

from rtunnel import AuthenticationError, Password, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.client.auth.credentials import KeyboardInteractive, KeyboardInteractiveChallenge
from rtunnel.testing._openssh import OpenSSHServer


def tunnel(server: OpenSSHServer, user: LocalUser, **kw: object) -> ReverseTunnel:
    return ReverseTunnel(
        reactor,
        server.host,
        server.port,
        options=TunnelOptions.create(user=user.name, known_hosts=server.known_hosts_path, **kw),
    )


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_password_through_pam_kbdint_and_password(
    pam_sshd: OpenSSHServer, local_user: LocalUser
) -> None:
    # Default order: keyboard-interactive (PAM's "Password: " answered by the pattern).
    t = tunnel(pam_sshd, local_user, auth=[Password(local_user.password)])
    await t.logon()
    await t.logoff()
    wait_for_log(pam_sshd, "Accepted keyboard-interactive/pam for " + local_user.name)
    # The password method when preferred.
    t = tunnel(
        pam_sshd,
        local_user,
        auth=[Password(local_user.password)],
        preferred_authentications=["password"],
    )
    await t.logon()
    await t.logoff()
    wait_for_log(pam_sshd, "Accepted password for " + local_user.name)


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_kbdint_callback_against_pam(pam_sshd: OpenSSHServer, local_user: LocalUser) -> None:
    seen: list[tuple[str, bool]] = []

    def respond(challenge: KeyboardInteractiveChallenge) -> list[str]:
        seen.extend((p.text, p.echo) for p in challenge.prompts)
        return [local_user.password for _ in challenge.prompts]

    t = tunnel(
        pam_sshd,
        local_user,
        auth=[KeyboardInteractive(respond)],
        preferred_authentications=["keyboard-interactive"],
    )
    await t.logon()
    await t.logoff()
    assert seen and all(not echo for _, echo in seen)
    assert "assword" in seen[0][0]


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_wrong_password_is_permission_denied_once(
    pam_sshd: OpenSSHServer, local_user: LocalUser
) -> None:
    t = tunnel(pam_sshd, local_user, auth=[Password("not-" + local_user.password)])
    with pytest.raises(AuthenticationError, match=r"^Permission denied \((.*)\)\.$") as e:
        await t.logon()
    assert e.value.code == 1032
    assert "password" in e.value.methods and "keyboard-interactive" in e.value.methods
    log = wait_for_log(pam_sshd, f"Failed password for {local_user.name}")
    # One keyboard-interactive round and one password attempt with the one password.
    assert log.count(f"Failed password for {local_user.name}") == 1
    assert log.count(f"Failed keyboard-interactive/pam for {local_user.name}") == 1


@pytest.mark.openssh
@pytest.mark.parametrize(
    "pam_sshd", [["AuthenticationMethods publickey,keyboard-interactive"]], indirect=True
)
@pytest_twisted.ensureDeferred
async def test_publickey_then_kbdint_partial_success(
    pam_sshd: OpenSSHServer, local_user: LocalUser, openssh_client_key: Path
) -> None:
    pub = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text()
    (local_user.keys_dir / "authorized_keys").write_text(pub)
    os.chmod(local_user.keys_dir / "authorized_keys", 0o644)
    t = tunnel(
        pam_sshd,
        local_user,
        auth=[PrivateKeyFile(openssh_client_key), Password(local_user.password)],
    )
    await t.logon()
    await t.logoff()
    log = wait_for_log(pam_sshd, "Accepted keyboard-interactive/pam for " + local_user.name)
    assert "Partial publickey for " + local_user.name in log
    # Without the key the password alone is not enough.
    t = tunnel(pam_sshd, local_user, auth=[Password(local_user.password)])
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(publickey\)\.$"):
        await t.logon()
