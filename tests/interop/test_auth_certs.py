"""
OpenSSH user certificates against a real sshd with ``TrustedUserCAKeys``: ``key-cert.pub``
beside the key picked up, a certificate given explicitly (``CertificateFile``), and the
refusals for a wrong principal and an expired certificate. The bundled server's own
certificate checks, and their agreement with sshd, are in test_testing_user_certs.py.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import (
    AuthenticationError,
    CredentialError,
    PrivateKeyFile,
    ReverseTunnel,
    TunnelOptions,
)
from rtunnel.client.auth.credentials import CertificateFile
from rtunnel.client.auth.userauth import certificate_public_blob, load_credentials
from rtunnel.testing._openssh import OpenSSHServer


def keygen(*args: str) -> None:
    program = shutil.which("ssh-keygen")
    if program is None:
        pytest.skip("ssh-keygen not installed")
    subprocess.run([program, "-q", *args], check=True, capture_output=True, timeout=60)


def make_key(directory: Path, kind: str = "ed25519") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"id_{kind}"
    keygen("-t", kind, "-N", "", "-f", str(path))
    return path


def sign(ca: Path, key: Path, principal: str, validity: str = "-5m:+1h") -> Path:
    keygen("-s", str(ca), "-I", "rtunnel-test", "-n", principal, "-V", validity, f"{key}.pub")
    return key.with_name(key.name + "-cert.pub")


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    return make_key(tmp_path / "ca")


@pytest.fixture
def cert_sshd(tmp_path: Path, openssh_sshd: str, ca: Path) -> OpenSSHServer:
    # No authorized_keys at all: only certificates signed by the CA get in.
    server = OpenSSHServer(
        tmp_path / "sshd", sshd_path=openssh_sshd, extra_config=[f"TrustedUserCAKeys {ca}.pub"]
    )
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def tunnel(server: OpenSSHServer, key: PrivateKeyFile) -> ReverseTunnel:
    return ReverseTunnel(
        reactor,
        server.host,
        server.port,
        options=TunnelOptions.create(
            user=server.user, known_hosts=server.known_hosts_path, auth=[key]
        ),
    )


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
@pytest_twisted.ensureDeferred
async def test_certificate_beside_the_key_is_used(
    cert_sshd: OpenSSHServer, ca: Path, tmp_path: Path, kind: str
) -> None:
    key = make_key(tmp_path / "user", kind)
    # Without the certificate the key alone is refused...
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await tunnel(cert_sshd, PrivateKeyFile(key)).logon()
    sign(ca, key, cert_sshd.user)
    # ... with it beside the key, it is accepted.
    t = tunnel(cert_sshd, PrivateKeyFile(key))
    await t.logon()
    await t.logoff()
    assert "Accepted publickey for" in cert_sshd.log_text()
    assert "CERT" in cert_sshd.log_text()


@pytest_twisted.ensureDeferred
async def test_certificate_given_explicitly(
    cert_sshd: OpenSSHServer, ca: Path, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "user")
    cert = sign(ca, key, cert_sshd.user)
    elsewhere = tmp_path / "elsewhere.pub"
    cert.rename(elsewhere)
    t = tunnel(cert_sshd, PrivateKeyFile(key, certificate=elsewhere))
    await t.logon()
    await t.logoff()


@pytest.mark.parametrize(
    ("principal", "validity"),
    [("somebody-else", "-5m:+1h"), (None, "20200101:20200102")],
    ids=["wrong-principal", "expired"],
)
@pytest_twisted.ensureDeferred
async def test_bad_certificates_are_refused(
    cert_sshd: OpenSSHServer, ca: Path, tmp_path: Path, principal: str | None, validity: str
) -> None:
    key = make_key(tmp_path / "user")
    sign(ca, key, principal or cert_sshd.user, validity)
    with pytest.raises(AuthenticationError, match=r"^Permission denied \(publickey\)\.$") as e:
        await tunnel(cert_sshd, PrivateKeyFile(key)).logon()
    assert e.value.code == 1032


def test_certificate_files_are_checked(tmp_path: Path) -> None:
    key = make_key(tmp_path / "user")
    with pytest.raises(CredentialError, match=r"Certificate file .*missing\.pub not found"):
        load_credentials([PrivateKeyFile(key, certificate=tmp_path / "missing.pub")])
    with pytest.raises(CredentialError, match="is not an OpenSSH certificate"):
        load_credentials([PrivateKeyFile(key, certificate=f"{key}.pub")])
    loaded, _ = load_credentials([PrivateKeyFile(key)])
    assert [k.certificate for k in loaded] == [None]


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_certificate_public_blob_is_the_certified_key(ca: Path, tmp_path: Path, kind: str) -> None:
    key = make_key(tmp_path / "user", kind)
    cert = sign(ca, key, "anyone")
    blob = base64.b64decode(cert.read_text().split()[1])
    assert certificate_public_blob(blob) == Key.fromFile(f"{key}.pub").blob()
    assert certificate_public_blob(b"\x00\x00\x00\x03abc") is None


@pytest_twisted.ensureDeferred
async def test_certificate_file_credential_pairs_with_its_key(
    cert_sshd: OpenSSHServer, ca: Path, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "user")
    other = make_key(tmp_path / "other")
    cert = sign(ca, key, cert_sshd.user)
    elsewhere = tmp_path / "cert-elsewhere.pub"
    cert.rename(elsewhere)
    loaded, _ = load_credentials(
        [PrivateKeyFile(other), PrivateKeyFile(key), CertificateFile(elsewhere)]
    )
    assert [(k.source, k.certificate is not None) for k in loaded] == [
        (str(other), False),
        (str(key), True),
        (str(key), False),
    ]
    t = ReverseTunnel(
        reactor,
        cert_sshd.host,
        cert_sshd.port,
        options=TunnelOptions.create(
            user=cert_sshd.user,
            known_hosts=cert_sshd.known_hosts_path,
            auth=[PrivateKeyFile(other), PrivateKeyFile(key), CertificateFile(elsewhere)],
        ),
    )
    await t.logon()
    await t.logoff()
