"""
Public key signature algorithms (the reference's SSHPubKeyAuthSigAlgorithms, OpenSSH's
``PubkeyAcceptedAlgorithms``): the choice as a pure function, the list syntax, and the
choice on the wire against the bundled server, sshd and through the command.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from command_support import spawn_with_env as spawn
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import AuthenticationError, PrivateKeyFile, ReverseTunnel, SpecError, TunnelOptions
from rtunnel.client.auth._pubkey import (
    DEFAULT_PUBKEY_ALGORITHMS,
    choose_signature_algorithm,
    request_algorithm,
    resolve_pubkey_algorithms,
)
from rtunnel.openssh.client_options import ClientOptions
from rtunnel.testing._openssh import OpenSSHServer
from rtunnel.testing.server import SSHTestServer

ALL_RSA = b"rsa-sha2-512,rsa-sha2-256,ssh-rsa"


@pytest.mark.parametrize(
    ("key_type", "certificate", "server", "accepted", "expected"),
    [
        # Automatic (None): the reference's and OpenSSH 8.8+'s SHA-2 preference.
        (b"ssh-rsa", False, ALL_RSA, None, b"rsa-sha2-512"),
        (b"ssh-rsa", False, b"rsa-sha2-256,ssh-rsa", None, b"rsa-sha2-256"),
        (b"ssh-rsa", False, b"ssh-rsa", None, b"ssh-rsa"),
        (b"ssh-rsa", False, None, None, b"rsa-sha2-512"),
        (b"ssh-ed25519", False, b"ssh-rsa", None, b"ssh-ed25519"),
        # A list: its order among what the server lists (OpenSSH key_sig_algorithm).
        (b"ssh-rsa", False, ALL_RSA, ["rsa-sha2-256", "rsa-sha2-512"], b"rsa-sha2-256"),
        (b"ssh-rsa", False, b"rsa-sha2-512", ["rsa-sha2-256", "rsa-sha2-512"], b"rsa-sha2-512"),
        (b"ssh-rsa", False, b"rsa-sha2-512", ["rsa-sha2-256"], None),
        (b"ssh-rsa", False, ALL_RSA, ["ssh-ed25519"], None),
        # No server-sig-algs: the list's first RSA entry (the reference's rule).
        (b"ssh-rsa", False, None, ["ssh-ed25519", "ssh-rsa", "rsa-sha2-512"], b"ssh-rsa"),
        # Certificates look for their own names.
        (b"ssh-rsa", True, ALL_RSA, ["rsa-sha2-512"], None),
        (b"ssh-rsa", True, ALL_RSA, ["rsa-sha2-256-cert-v01@openssh.com"], b"rsa-sha2-256"),
        (b"ssh-ed25519", True, None, ["ssh-ed25519"], None),
        (b"ssh-ed25519", True, None, ["ssh-ed25519-cert-v01@openssh.com"], b"ssh-ed25519"),
        (b"ecdsa-sha2-nistp384", False, None, DEFAULT_PUBKEY_ALGORITHMS, b"ecdsa-sha2-nistp384"),
        (b"ecdsa-sha2-nistp384", False, None, ["ecdsa-sha2-nistp256"], None),
    ],
)
def test_choose_signature_algorithm(
    key_type: bytes,
    certificate: bool,
    server: bytes | None,
    accepted: list[str] | None,
    expected: bytes | None,
) -> None:
    assert (
        choose_signature_algorithm(
            key_type, certificate=certificate, server_sig_algs=server, accepted=accepted
        )
        == expected
    )


def test_request_algorithm_names_rsa_certificates_by_their_hash() -> None:
    cert = b"ssh-rsa-cert-v01@openssh.com"
    assert request_algorithm(None, b"rsa-sha2-256") == b"rsa-sha2-256"
    assert request_algorithm(cert, b"rsa-sha2-512") == b"rsa-sha2-512-cert-v01@openssh.com"
    assert request_algorithm(cert, b"ssh-rsa") == cert
    ed = b"ssh-ed25519-cert-v01@openssh.com"
    assert request_algorithm(ed, b"ssh-ed25519") == ed


def test_the_list_syntax() -> None:
    assert resolve_pubkey_algorithms(None) is None
    assert resolve_pubkey_algorithms("ssh-ed25519,rsa-sha2-256") == (
        "ssh-ed25519",
        "rsa-sha2-256",
    )
    assert resolve_pubkey_algorithms("+ssh-rsa") == (*DEFAULT_PUBKEY_ALGORITHMS, "ssh-rsa")
    without = resolve_pubkey_algorithms("-*-cert-v01@openssh.com,rsa-sha2-512")
    assert without == (
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "rsa-sha2-256",
    )
    first = resolve_pubkey_algorithms("^rsa-sha2-256")
    assert first is not None and first[0] == "rsa-sha2-256" and len(first) == 12
    assert resolve_pubkey_algorithms(["ssh-rsa"]) == ("ssh-rsa",)
    with pytest.raises(SpecError, match="Unsupported public key algorithm 'ssh-dss'"):
        resolve_pubkey_algorithms("ssh-dss")
    with pytest.raises(SpecError, match="give algorithm names"):
        resolve_pubkey_algorithms(["+ssh-rsa"])
    with pytest.raises(SpecError, match="Unsupported public key algorithm"):
        ReverseTunnel(
            reactor, "h", options=TunnelOptions.create(pubkey_accepted_algorithms="rsa-sha2-1024")
        )
    options = ClientOptions()
    options.apply_option("PubkeyAcceptedAlgorithms=+ssh-rsa")
    options.apply_option("PubkeyAcceptedAlgorithms=ssh-ed25519")  # the first one wins
    assert options.tunnel["pubkey_accepted_algorithms"] == resolve_pubkey_algorithms("+ssh-rsa")
    with pytest.raises(SpecError, match="Bad key types 'x'"):
        ClientOptions().apply_option("PubkeyAcceptedAlgorithms x")


def rsa_key(tmp_path: Path) -> Path:
    path = tmp_path / "id_rsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


@pytest_twisted.ensureDeferred
async def test_the_bundled_server_sees_the_configured_choice(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    key = rsa_key(tmp_path)
    ssh_test_server.add_user(ssh_user, authorized_keys=[Key.fromFile(f"{key}.pub")])

    def tunnel(accepted: str | list[str] | None) -> ReverseTunnel:
        return ReverseTunnel(
            reactor,
            ssh_test_server.host,
            ssh_test_server.port,
            options=TunnelOptions.create(
                user=ssh_user,
                known_hosts=ssh_known_hosts,
                auth=[PrivateKeyFile(key)],
                pubkey_accepted_algorithms=accepted,
            ),
        )

    # An RSA key with only ed25519 accepted: skipped, nothing sent for it.
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await tunnel(["ssh-ed25519"]).logon()
    assert "publickey" not in [m for _, m in ssh_test_server.auth_attempts]
    # ssh-rsa (SHA-1) only: the server's server-sig-algs leaves it out (as OpenSSH 8.8+
    # does), so the key is skipped too, as OpenSSH's client skips it.
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await tunnel("ssh-rsa").logon()
    assert "publickey" not in [m for _, m in ssh_test_server.auth_attempts]
    for accepted in ("-rsa-sha2-512", None):
        t = tunnel(accepted)
        await t.logon()
        await t.logoff()


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_openssh_gets_the_algorithm_asked_for(openssh_sshd: str, tmp_path: Path) -> None:
    key = rsa_key(tmp_path)
    sshd = OpenSSHServer(
        tmp_path / "sshd",
        sshd_path=openssh_sshd,
        authorized_keys=[Path(f"{key}.pub").read_text().strip()],
    )
    sshd.start()
    seen = 0
    try:
        for accepted, expected in (("rsa-sha2-256", "rsa-sha2-256"), (None, "rsa-sha2-512")):
            t = ReverseTunnel(
                reactor,
                sshd.host,
                sshd.port,
                options=TunnelOptions.create(
                    user=sshd.user,
                    known_hosts=sshd.known_hosts_path,
                    auth=[PrivateKeyFile(key)],
                    pubkey_accepted_algorithms=accepted,
                ),
            )
            await t.logon()
            await t.logoff()
            # sshd (DEBUG3) names the signature algorithm of each publickey request; its
            # log may trail the client by a moment.
            for _ in range(100):
                used = re.findall(r"userauth_pubkey: .*?pkalg (\S+)", sshd.log_text())
                if len(used) > seen:
                    break
                time.sleep(0.05)
            assert used[seen:] == [expected]
            seen = len(used)
    finally:
        sshd.stop()


@pytest_twisted.ensureDeferred
async def test_the_command_takes_the_option(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    key = rsa_key(tmp_path)
    ssh_test_server.add_user(ssh_user, authorized_keys=[Key.fromFile(f"{key}.pub")])
    child = spawn(
        ssh_test_server,
        ssh_user,
        ssh_known_hosts,
        tmp_path,
        {},
        *["-i", str(key), "-o", "BatchMode=yes", "-o", "PubkeyAcceptedAlgorithms=-rsa*"],
    )
    await child.wait_for(r"Permission denied \(publickey,password\)\.")
    assert (await child.ended)[0] == 255
    assert "publickey" not in [m for _, m in ssh_test_server.auth_attempts]
