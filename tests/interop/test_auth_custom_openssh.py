"""
Custom authentication against OpenSSH sshd: a publickey signature made by the hook over
the session id, and a password through PAM as root. Against the bundled server:
tests/memory/test_auth_custom.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from custom_auth_support import USERAUTH_FAILURE, failure_methods, request
from e2e_support import LocalUser
from openssh_log import wait_for_log
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import CustomAuth, CustomAuthStep, ReverseTunnel, TunnelOptions, set_ssh_param
from rtunnel.testing._openssh import OpenSSHServer


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
        options=TunnelOptions.create(
            user=openssh_server.user,
            known_hosts=openssh_server.known_hosts_path,
            auth=[CustomAuth(respond)],
        ),
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
        options=TunnelOptions.create(
            user=local_user.name, known_hosts=pam_sshd.known_hosts_path, auth=[CustomAuth(respond)]
        ),
    )
    await t.logon()
    await t.logoff()
    wait_for_log(pam_sshd, "Accepted password for " + local_user.name)
