"""
Keys from a real ``ssh-agent`` (started per test on its own socket), against the bundled
server and OpenSSH sshd (the ``server`` fixture): ed25519 and RSA (SHA-2 signatures), the
socket from ``SSH_AUTH_SOCK`` or given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import Agent, Server
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import AuthenticationError, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.client.auth.credentials import AskPassword, CertificateFile, SSHAgent
from rtunnel.testing._openssh import OpenSSHServer


def keygen(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, capture_output=True
    )
    return path


def authorize(server: Server, key: Path) -> None:
    if server.kind == "bundled":
        server.extra["server"].add_user(server.user, authorized_keys=[Key.fromFile(f"{key}.pub")])
    else:
        path = server.extra["server"].authorized_keys_path
        path.write_text(path.read_text() + Path(f"{key}.pub").read_text())


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
@pytest_twisted.ensureDeferred
async def test_agent_keys(
    server: Server,
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
async def test_no_agent_is_no_keys(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[SSHAgent()]).logon()
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[SSHAgent("/nonexistent/agent.sock")]).logon()


def encrypt(key: Path, passphrase: str, old: str = "") -> None:
    """Give an OpenSSH key file a (new) passphrase (ssh-keygen -p)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", old, "-N", passphrase, "-f", str(key)],
        check=True,
        capture_output=True,
    )


class Asker:
    """An AskPassword callback that records its prompts and gives answers in turn."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str | None:
        self.prompts.append(prompt)
        return self.answers.pop(0) if self.answers else None


@pytest_twisted.ensureDeferred
async def test_identities_only_uses_the_agent_for_identity_files_only(
    server: Server,
    ssh_agent: Agent,
    tmp_path: Path,
) -> None:
    identity = keygen(tmp_path / "identity" / "id_ed25519", "ed25519")
    agent_only = keygen(tmp_path / "agent-only" / "id_ed25519", "ed25519")
    ssh_agent.add(identity)
    ssh_agent.add(agent_only)
    encrypt(identity, "sesame")
    asker = Asker("sesame")
    credentials = [PrivateKeyFile(identity, AskPassword(asker))]
    # Only the agent-only key is authorized: IdentitiesOnly keeps it out...
    authorize(server, agent_only)
    agent = SSHAgent(str(ssh_agent.socket), identities_only=True)
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[*credentials, agent]).logon()
    # ... and the identity file, which the agent holds, was signed by the agent: no
    # passphrase asked (sshconnect2.c pubkey_prepare).
    assert asker.prompts == []
    # Without IdentitiesOnly the agent's other keys are offered too.
    t = server.tunnel(auth=[*credentials, SSHAgent(str(ssh_agent.socket))])
    await t.logon()
    await t.logoff()
    assert asker.prompts == []
    # With IdentitiesOnly, the identity file that is authorized logs on through the agent.
    authorize(server, identity)
    t = server.tunnel(auth=[*credentials, agent])
    await t.logon()
    await t.logoff()
    assert asker.prompts == []
    if server.kind == "bundled":
        attempts = [m for _, m in server.extra["server"].auth_attempts]
        # Refused once (identity), then agent's identity + agent-only, then identity.
        assert attempts.count("publickey") == 1 + 2 + 1


@pytest_twisted.ensureDeferred
async def test_an_encrypted_key_is_asked_for_when_tried(
    server: Server,
    tmp_path: Path,
) -> None:
    key = keygen(tmp_path / "enc" / "id_ecdsa", "ecdsa")
    encrypt(key, "sesame")
    authorize(server, key)
    # Wrong, then right: asked again, as ssh asks.
    asker = Asker("nope", "sesame")
    t = server.tunnel(auth=[PrivateKeyFile(key, AskPassword(asker))])
    await t.logon()
    await t.logoff()
    assert asker.prompts == [f"Enter passphrase for key '{key}': "] * 2
    # Always wrong: asked number_of_password_prompts times, then the key is skipped.
    asker = Asker(*["nope"] * 5)
    t = server.tunnel(auth=[PrivateKeyFile(key, AskPassword(asker))], number_of_password_prompts=2)
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await t.logon()
    assert len(asker.prompts) == 2
    # An empty answer skips the key at once.
    asker = Asker("")
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await server.tunnel(auth=[PrivateKeyFile(key, AskPassword(asker))]).logon()
    assert len(asker.prompts) == 1


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_a_certificate_whose_key_only_the_agent_holds(
    openssh_sshd: str, ssh_agent: Agent, tmp_path: Path
) -> None:
    from test_auth_certs import make_key, sign

    ca = make_key(tmp_path / "ca")
    key = make_key(tmp_path / "user")
    sshd = OpenSSHServer(
        tmp_path / "sshd", sshd_path=openssh_sshd, extra_config=[f"TrustedUserCAKeys {ca}.pub"]
    )
    sshd.start()
    try:
        cert = sign(ca, key, sshd.user)
        elsewhere = tmp_path / "cert.pub"
        cert.rename(elsewhere)
        ssh_agent.add(key)  # the plain key only: no -cert.pub beside it any more
        key.unlink()
        for identities_only in (True, False):
            t = ReverseTunnel(
                reactor,
                sshd.host,
                sshd.port,
                options=TunnelOptions.create(
                    user=sshd.user,
                    known_hosts=sshd.known_hosts_path,
                    auth=[
                        CertificateFile(elsewhere),
                        SSHAgent(str(ssh_agent.socket), identities_only=identities_only),
                    ],
                ),
            )
            await t.logon()
            await t.logoff()
        assert "CERT" in sshd.log_text()
    finally:
        sshd.stop()


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_passphrase_is_asked_once_for_the_life_of_the_key_file(
    server: Server,
    tmp_path: Path,
) -> None:
    # A reconnect (here: logoff and logon again) must not ask again: an unattended tunnel
    # would wait at the prompt. A changed file is asked for afresh.
    key = keygen(tmp_path / "enc" / "id_ed25519", "ed25519")
    encrypt(key, "sesame")
    authorize(server, key)
    asker = Asker("sesame", "other")
    credential = PrivateKeyFile(key, AskPassword(asker))
    for _ in range(2):
        t = server.tunnel(auth=[credential])
        await t.logon()
        await t.logoff()
    assert asker.prompts == [f"Enter passphrase for key '{key}': "]
    encrypt(key, "other", old="sesame")
    t = server.tunnel(auth=[credential])
    await t.logon()
    await t.logoff()
    assert len(asker.prompts) == 2
    # A passphrase callback likewise runs once.
    calls: list[Path] = []
    credential = PrivateKeyFile(key, lambda path: calls.append(path) or "other")
    for _ in range(2):
        t = server.tunnel(auth=[credential])
        await t.logon()
        await t.logoff()
    assert calls == [key]
