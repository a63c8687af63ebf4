"""
PuTTY ``.ppk`` keys (versions 2 and 3, plain and encrypted: SHA-1 and Argon2 key
derivation) and PKCS#12 (``.pfx``/``.p12``) files, the reference's cstPPKFile/Blob and
cstPFXFile/Blob: read from files made by ``puttygen``, ``openssl`` and ``cryptography``,
and from files this test writes by the PPK specification (PuTTY manual, appendix C);
wrong or unsupported input is a CredentialError naming the file; and logons with them
against the bundled server and sshd.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import CredentialError, PrivateKey, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.client.auth.userauth import load_credentials
from rtunnel.testing._openssh import OpenSSHServer
from rtunnel.testing.server import SSHTestServer

PASS = "sesame"


@pytest.fixture(autouse=True)
def _private_files() -> Iterator[None]:
    """Key files these tests write are private (umask 077), as ssh and rtunnel want them."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def puttygen() -> str:
    path = shutil.which("puttygen")
    if path is None:
        message = "puttygen not found: install it with `apt-get install -y putty-tools`."
        if os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}:
            pytest.fail(message + " CI is set, so this fails instead of skipping.")
        pytest.skip(message)
    return path


def make_ppk(
    puttygen: str, directory: Path, kind: str, bits: int, version: int, passphrase: str | None
) -> tuple[Path, bytes]:
    """A key made by puttygen, and its public blob as puttygen exports it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}{bits}-v{version}{'-enc' if passphrase else ''}.ppk"
    secret = directory / "passphrase"
    secret.write_text(passphrase or "")
    args = [puttygen, "-q", "-t", kind, "-b", str(bits), "-o", str(path)]
    args += ["--ppk-param", f"version={version}", "--new-passphrase", str(secret)]
    if version == 3 and passphrase:
        # Small Argon2 parameters keep the test quick; the format is the same.
        args[-3] += ",memory=1024,passes=2"
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    export = [puttygen, str(path), "-O", "public-openssh", "-o", "/dev/stdout"]
    if passphrase:
        export += ["--old-passphrase", str(secret)]
    out = subprocess.run(export, check=True, capture_output=True, timeout=120).stdout
    return path, base64.b64decode(out.split()[1])


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize(
    ("kind", "bits"),
    [("rsa", 2048), ("ecdsa", 256), ("ecdsa", 384), ("ecdsa", 521), ("ed25519", 255)],
)
def test_puttygen_keys_are_read(
    puttygen: str, tmp_path: Path, kind: str, bits: int, version: int
) -> None:
    for passphrase in (None, PASS):
        path, public = make_ppk(puttygen, tmp_path, kind, bits, version, passphrase)
        loaded, _ = load_credentials([PrivateKeyFile(path, passphrase)])
        assert loaded[0].key is not None and not loaded[0].key.isPublic()
        assert loaded[0].key.public().blob() == public
        # The key signs what its public key verifies.
        assert loaded[0].key.public().verify(loaded[0].key.sign(b"data"), b"data")


def test_argon2_flavours_and_wrong_or_missing_passphrases(puttygen: str, tmp_path: Path) -> None:
    for kdf in ("argon2id", "argon2i", "argon2d"):
        path = tmp_path / f"{kdf}.ppk"
        (tmp_path / "pw").write_text(PASS)
        ppk_param = f"kdf={kdf},memory=1024,passes=1,parallelism=2"
        subprocess.run(
            [
                *[puttygen, "-q", "-t", "ed25519", "-o", str(path), "--ppk-param", ppk_param],
                *["--new-passphrase", str(tmp_path / "pw")],
            ],
            check=True,
            capture_output=True,
        )
        assert f"Key-Derivation: {kdf.capitalize()}" in path.read_text()
        loaded, _ = load_credentials([PrivateKeyFile(path, PASS)])
        assert loaded[0].key is not None
    with pytest.raises(CredentialError, match=f"^Identity file {path}: incorrect passphrase.$"):
        load_credentials([PrivateKeyFile(path, "nope")])
    with pytest.raises(CredentialError, match=f"^Identity file {path} is encrypted: give its"):
        load_credentials([PrivateKeyFile(path)])
    asked: list[Path] = []
    loaded, _ = load_credentials([PrivateKeyFile(path, lambda p: asked.append(p) or PASS)])
    assert asked == [path] and loaded[0].key is not None


def test_ppk_v3_without_argon2_says_what_to_do(
    puttygen: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _public = make_ppk(puttygen, tmp_path, "ed25519", 255, 3, PASS)
    from cryptography.hazmat.primitives.kdf import argon2

    monkeypatch.delattr(argon2, "Argon2id")
    with pytest.raises(
        CredentialError, match=f"Identity file {path} .*needs a newer 'cryptography'"
    ):
        load_credentials([PrivateKeyFile(path, PASS)])


# -- PPK files written here, by the specification ------------------------------------


def ns(data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + data


def write_ppk(
    path: Path,
    private: ed25519.Ed25519PrivateKey,
    version: int,
    passphrase: bytes | None,
    comment: str = "written by the test",
) -> None:
    """PuTTY manual appendix C, for an Ed25519 key (v3 only unencrypted: Argon2 aside)."""
    algorithm = b"ssh-ed25519"
    public = ns(algorithm) + ns(private.public_key().public_bytes_raw())
    secret = ns(private.private_bytes_raw())
    encryption = b"aes256-cbc" if passphrase else b"none"
    if passphrase:
        secret += hashlib.sha1(secret).digest()[: (-len(secret)) % 16]  # C.3: padding
    if version == 2:
        mac_key = hashlib.sha1(b"putty-private-key-file-mac-key" + (passphrase or b"")).digest()
        digest = hashlib.sha1
    else:
        assert passphrase is None
        mac_key, digest = b"", hashlib.sha256
    mac = hmac.new(
        mac_key,
        ns(algorithm) + ns(encryption) + ns(comment.encode()) + ns(public) + ns(secret),
        digest,
    ).hexdigest()
    if passphrase:
        key = (
            hashlib.sha1(b"\0\0\0\0" + passphrase).digest()
            + hashlib.sha1(b"\0\0\0\1" + passphrase).digest()
        )[:32]
        encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
        secret = encryptor.update(secret) + encryptor.finalize()

    def lines(blob: bytes) -> list[str]:
        text = base64.b64encode(blob).decode()
        return [text[i : i + 64] for i in range(0, len(text), 64)]

    out = [
        f"PuTTY-User-Key-File-{version}: ssh-ed25519",
        f"Encryption: {encryption.decode()}",
        f"Comment: {comment}",
        f"Public-Lines: {len(lines(public))}",
        *lines(public),
        f"Private-Lines: {len(lines(secret))}",
        *lines(secret),
        f"Private-MAC: {mac}",
    ]
    # CR LF, which PuTTY accepts on input (C.2).
    path.write_bytes("\r\n".join(out).encode() + b"\r\n")


@pytest.mark.parametrize(("version", "passphrase"), [(2, None), (2, b"sesame"), (3, None)])
def test_ppk_written_by_the_specification(
    tmp_path: Path, version: int, passphrase: bytes | None
) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "spec.ppk"
    write_ppk(path, private, version, passphrase)
    loaded, _ = load_credentials(
        [PrivateKeyFile(path, passphrase.decode() if passphrase else None)]
    )
    raw = private.public_key().public_bytes_raw()
    assert loaded[0].key is not None and loaded[0].key.public().blob() == ns(b"ssh-ed25519") + ns(
        raw
    )


def test_bad_ppk_files_name_the_file_and_the_fault(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    good = tmp_path / "good.ppk"
    write_ppk(good, private, 2, None)
    text = good.read_text()

    def check(name: str, content: str, message: str) -> None:
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(CredentialError, match=f"^Identity file {path} .*{message}"):
            load_credentials([PrivateKeyFile(path)])

    check("v1.ppk", text.replace("File-2", "File-1"), "PPK format version 1 is not supported")
    check("comment.ppk", text.replace("written by", "changed by"), "corrupt .*Private-MAC")
    check("cipher.ppk", text.replace("Encryption: none", "Encryption: des"), "'des' is not supp")
    check("nomac.ppk", text.split("Private-MAC")[0], "no Private-MAC line")
    check("garbage.ppk", re.sub("Public-Lines: \\d+", "Public-Lines: x", text), "not a number")
    check(
        "dss.ppk",
        text.replace(": ssh-ed25519", ": ssh-dss"),
        "PPK key type ssh-dss is not supported",
    )
    # ...and a key rtunnel cannot use says so before asking for a passphrase.
    check(
        "dss-enc.ppk",
        text.replace(": ssh-ed25519", ": ssh-dss").replace("none", "aes256-cbc"),
        "PPK key type ssh-dss is not supported",
    )


# -- PKCS#12 ------------------------------------------------------------------------


def self_signed(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtunnel test")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )


def write_pfx(path: Path, private: object, password: bytes | None, cert: bool = True) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    certificate = self_signed(private) if cert else None  # type: ignore[arg-type]
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(b"k", private, certificate, None, encryption)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_pkcs12_files_with_and_without_password(tmp_path: Path, kind: str) -> None:
    private = {
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
        "ecdsa": lambda: ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    expected = Key(private.public_key()).blob()
    plain, locked = tmp_path / "plain.pfx", tmp_path / "locked.p12"
    write_pfx(plain, private, None, cert=kind != "ed25519")
    write_pfx(locked, private, PASS.encode(), cert=kind != "ed25519")
    loaded, _ = load_credentials([PrivateKeyFile(plain), PrivateKeyFile(locked, PASS)])
    assert [k.key.public().blob() for k in loaded if k.key is not None] == [expected, expected]
    with pytest.raises(CredentialError, match=f"^Identity file {locked}: incorrect passphrase"):
        load_credentials([PrivateKeyFile(locked, "nope")])
    with pytest.raises(CredentialError, match=f"^Identity file {locked} is encrypted"):
        load_credentials([PrivateKeyFile(locked)])
    # The reference's cstPFXBlob: the file's contents, in memory.
    loaded, _ = load_credentials([PrivateKey(locked.read_bytes(), PASS, source="vault:pfx")])
    assert loaded[0].key is not None and loaded[0].key.public().blob() == expected


def test_pkcs12_from_openssl_and_unusable_ones(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    crt = tmp_path / "cert.pem"
    crt.write_bytes(self_signed(private).public_bytes(serialization.Encoding.PEM))
    pfx = tmp_path / "openssl.pfx"
    subprocess.run(
        [
            *["openssl", "pkcs12", "-export", "-inkey", str(pem), "-in", str(crt)],
            *["-out", str(pfx), "-passout", f"pass:{PASS}"],
        ],
        check=True,
        capture_output=True,
    )
    loaded, _ = load_credentials([PrivateKeyFile(pfx, PASS)])
    assert loaded[0].key is not None
    assert loaded[0].key.public().blob() == Key(private.public_key()).blob()
    # Certificates only.
    only = tmp_path / "certs.pfx"
    only.write_bytes(
        pkcs12.serialize_key_and_certificates(
            None, None, None, [self_signed(private)], serialization.NoEncryption()
        )
    )
    with pytest.raises(CredentialError, match=f"^Identity file {only} .*holds no private key"):
        load_credentials([PrivateKeyFile(only)])
    # A DSA key: not a kind rtunnel signs with.
    dss = tmp_path / "dsa.pfx"
    write_pfx(dss, dsa.generate_private_key(2048), None, cert=False)
    with pytest.raises(CredentialError, match=f"^Identity file {dss} .*DSAPrivateKey key"):
        load_credentials([PrivateKeyFile(dss)])


# -- logging on ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_logon_with_ppk_and_pfx_against_the_bundled_server(
    puttygen: str,
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    ppk, public = make_ppk(puttygen, tmp_path / "ppk", "ecdsa", 256, 3, PASS)
    private = rsa.generate_private_key(65537, 2048)
    pfx = tmp_path / "id.pfx"
    write_pfx(pfx, private, PASS.encode())
    ssh_test_server.add_user(
        ssh_user, authorized_keys=[Key.fromString(public), Key(private.public_key())]
    )
    for credential in (
        PrivateKeyFile(ppk, PASS),
        PrivateKey(ppk.read_text(), PASS),
        PrivateKeyFile(pfx, PASS),
    ):
        t = ReverseTunnel(
            reactor,
            ssh_test_server.host,
            ssh_test_server.port,
            options=TunnelOptions.create(
                user=ssh_user, known_hosts=ssh_known_hosts, auth=[credential]
            ),
        )
        await t.logon()
        await t.logoff()
    assert [m for _, m in ssh_test_server.auth_attempts].count("publickey") == 3


@pytest_twisted.ensureDeferred
async def test_logon_with_a_puttygen_rsa_key_against_openssh(
    puttygen: str, openssh_server: OpenSSHServer, tmp_path: Path
) -> None:
    ppk, public = make_ppk(puttygen, tmp_path, "rsa", 2048, 2, PASS)
    path = openssh_server.authorized_keys_path
    path.write_text(path.read_text() + Key.fromString(public).toString("openssh").decode() + "\n")
    t = ReverseTunnel(
        reactor,
        openssh_server.host,
        openssh_server.port,
        options=TunnelOptions.create(
            user=openssh_server.user,
            known_hosts=openssh_server.known_hosts_path,
            auth=[PrivateKeyFile(ppk, PASS)],
        ),
    )
    await t.logon()
    await t.logoff()
    # RSA with SHA-2 (rsa-sha2-512), the PPK being just another container.
    assert "Accepted publickey for " + openssh_server.user in openssh_server.log_text()
