"""
Key files: encrypted OpenSSH and PEM keys with a passphrase given as a value or a
callback, PKCS#8, and the errors naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import CredentialError, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.client.auth.credentials import PrivateKey
from rtunnel.client.auth.userauth import load_credentials
from rtunnel.testing.server import SSHTestServer


@pytest.fixture(autouse=True)
def _private_files() -> Iterator[None]:
    """Key files these tests write are private (umask 077), as ssh and rtunnel want them."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def write_key(path: Path, kind: str, fmt: str, passphrase: bytes | None) -> Key:
    private = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else (ec.generate_private_key(ec.SECP256R1()))
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    formats = {
        "openssh": serialization.PrivateFormat.OpenSSH,
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "sec1": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, formats[fmt], encryption))
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return Key.fromString(public)


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("ed25519", "openssh"), ("ecdsa", "openssh"), ("ecdsa", "pkcs8"), ("ecdsa", "sec1")],
)
def test_encrypted_keys_with_passphrase_value_or_callback(
    tmp_path: Path, kind: str, fmt: str
) -> None:
    path = tmp_path / "key"
    public = write_key(path, kind, fmt, b"sesame")
    for passphrase in ("sesame", lambda p: "sesame"):
        loaded, _ = load_credentials([PrivateKeyFile(path, passphrase)])
        assert loaded[0].key.public() == public
    asked: list[Path] = []
    with pytest.raises(CredentialError, match=f"Identity file {path}: incorrect passphrase"):
        load_credentials([PrivateKeyFile(path, lambda p: asked.append(p) or "nope")])
    assert asked == [path]
    with pytest.raises(CredentialError, match=f"Identity file {path} is encrypted"):
        load_credentials([PrivateKeyFile(path)])
    with pytest.raises(CredentialError, match="is encrypted"):
        load_credentials([PrivateKeyFile(path, lambda p: None)])


def test_passphrase_callback_not_asked_for_a_plain_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    public = write_key(path, "ed25519", "pkcs8", None)
    asked: list[Path] = []
    loaded, _ = load_credentials([PrivateKeyFile(path, lambda p: asked.append(p) or "x")])
    assert loaded[0].key.public() == public and asked == []


def test_public_key_file_and_garbage_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    public = write_key(path, "ed25519", "openssh", None)
    pub = tmp_path / "key.pub"
    pub.write_bytes(public.toString("openssh"))
    with pytest.raises(CredentialError, match=f"{pub} holds a public key"):
        load_credentials([PrivateKeyFile(pub)])
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(CredentialError, match=f"Identity file {junk} is not a private key"):
        load_credentials([PrivateKeyFile(junk)])


@pytest_twisted.ensureDeferred
async def test_encrypted_pkcs8_key_logs_on(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, tmp_path: Path
) -> None:
    path = tmp_path / "key"
    public = write_key(path, "ecdsa", "pkcs8", b"sesame")
    ssh_test_server.add_user(ssh_user, authorized_keys=[public])
    t = ReverseTunnel(
        reactor,
        ssh_test_server.host,
        ssh_test_server.port,
        options=TunnelOptions.create(
            user=ssh_user,
            known_hosts=ssh_known_hosts,
            auth=[PrivateKeyFile(path, lambda p: "sesame")],
            preferred_authentications=["publickey"],
        ),
    )
    await t.logon()
    await t.logoff()
    assert [m for _, m in ssh_test_server.auth_attempts] == ["none", "publickey"]


def test_keys_given_as_values(tmp_path: Path) -> None:
    path = tmp_path / "key"
    public = write_key(path, "ecdsa", "pkcs8", b"sesame")
    text = path.read_text()
    for value in (text, text.encode()):
        loaded, _ = load_credentials([PrivateKey(value, "sesame", source="vault:k1")])
        assert loaded[0].key.public() == public and loaded[0].source == "vault:k1"
    with pytest.raises(CredentialError, match="The key vault:k1: incorrect passphrase"):
        load_credentials([PrivateKey(text, "nope", source="vault:k1")])
    with pytest.raises(CredentialError, match=r"The key \(in memory\) is encrypted"):
        load_credentials([PrivateKey(text)])
    plain = tmp_path / "plain"
    write_key(plain, "ed25519", "openssh", None)
    as_key = Key.fromFile(str(plain))
    loaded, _ = load_credentials([PrivateKey(as_key)])
    assert loaded[0].key is as_key
    with pytest.raises(CredentialError, match="public key"):
        load_credentials([PrivateKey(as_key.public())])
    assert "BEGIN" not in repr(PrivateKey(text))


@pytest_twisted.ensureDeferred
async def test_key_value_logs_on(
    ssh_test_server: SSHTestServer, ssh_user: str, ssh_known_hosts: Path, ssh_client_key: Path
) -> None:
    t = ReverseTunnel(
        reactor,
        ssh_test_server.host,
        ssh_test_server.port,
        options=TunnelOptions.create(
            user=ssh_user,
            known_hosts=ssh_known_hosts,
            auth=[PrivateKey(ssh_client_key.read_bytes())],
        ),
    )
    await t.logon()
    await t.logoff()
