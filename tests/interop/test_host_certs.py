"""
OpenSSH host certificates (``@cert-authority``, the reference's SSHAcceptServerCAKey) and
the host key algorithm order that follows known_hosts (RELIABILITY.md A16).

Layers: certificate reading and OpenSSH's checks as plain functions, on certificates made
by ``ssh-keygen -s`` (and, for kinds ssh-keygen will not make, by
``rtunnel.testing._certs``); the verifier's decisions on files in a temporary directory;
the exchange-signature check; and end to end against a real sshd presenting
``HostCertificate``s: a valid one per key exchange family, an expired one, one for another
name, a revoked or unknown CA, and a host known only by its ECDSA key.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor

from rtunnel import HostKeyError, HostKeyInfo, ReverseTunnel, TunnelOptions
from rtunnel.client.hostkeys._hostcert import verify_exchange_signature
from rtunnel.client.hostkeys.certificates import (
    CertificateError,
    certificate_algorithms,
    check_host_certificate,
    is_certificate,
    key_type_of_algorithm,
    parse_certificate,
    signature_algorithm_of,
)
from rtunnel.client.hostkeys.known_hosts import HostKeyCheck, fingerprint
from rtunnel.client.hostkeys.verify import HostKeyVerifier
from rtunnel.client.transport._algorithms import DEFAULT_HOST_KEY_ALGORITHMS
from rtunnel.testing import KeyKind, client_key, host_key
from rtunnel.testing._certs import certificate_line, make_certificate
from rtunnel.testing._openssh import OpenSSHServer

CERTS = [
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
]


def keygen(*args: str) -> str:
    program = shutil.which("ssh-keygen")
    if program is None:
        pytest.skip("ssh-keygen not installed")
    done = subprocess.run(
        [program, "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def make_key(path: Path, kind: str, bits: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keygen("-t", kind, *(["-b", bits] if bits else []), "-N", "", "-C", "", "-f", str(path))
    return path


def sign(ca: Path, key: Path, *opts: str, validity: str = "-5m:+1h") -> bytes:
    """``ssh-keygen -s ca`` on ``key.pub``; the certificate's wire blob."""
    keygen("-s", str(ca), "-I", f"id-{key.name}", "-z", "7", "-V", validity, *opts, f"{key}.pub")
    return read_cert(key.with_name(key.name + "-cert.pub"))


def read_cert(path: Path) -> bytes:
    return base64.b64decode(path.read_text().split()[1])


def pub_line(path: Path) -> str:
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("host-certs")


@pytest.fixture(scope="module")
def ca(keydir: Path) -> Path:
    return make_key(keydir / "ca", "ed25519")


@pytest.fixture(scope="module")
def other_ca(keydir: Path) -> Path:
    return make_key(keydir / "other_ca", "rsa")


@pytest.fixture(scope="module")
def hkey(keydir: Path) -> Path:
    return make_key(keydir / "host_ed25519", "ed25519")


# -- reading certificates (pure) -----------------------------------------------------------


@pytest.mark.parametrize(("kind", "bits"), [("ed25519", ""), ("ecdsa", "384"), ("rsa", "")])
def test_ssh_keygen_certificates_read(ca: Path, keydir: Path, kind: str, bits: str) -> None:
    key = make_key(keydir / f"read_{kind}", kind, bits)
    blob = sign(ca, key, "-h", "-n", "h.example,127.0.0.1")
    cert = parse_certificate(blob)
    assert is_certificate(blob) and not is_certificate(Key.fromFile(f"{key}.pub").blob())
    assert cert.blob == blob and cert.is_host
    assert cert.public_blob == Key.fromFile(f"{key}.pub").blob()
    assert cert.key_type == Key.fromFile(f"{key}.pub").sshType().decode()
    assert cert.cert_type == cert.key_type + "-cert-v01@openssh.com"
    assert (cert.key_id, cert.serial) == (f"id-{key.name}", 7)
    assert cert.principals == ("h.example", "127.0.0.1")
    assert cert.ca_blob == Key.fromFile(f"{ca}.pub").blob()
    # ssh-keygen -l shows the CA's fingerprint as we compute it.
    assert cert.ca_fingerprint in keygen("-l", "-f", f"{ca}.pub")
    assert cert.fingerprint == fingerprint(cert.public_blob)
    assert cert.critical_options == () and cert.signature_algorithm == "ssh-ed25519"
    assert abs(cert.valid_after - (time.time() - 300)) < 120
    assert cert.valid_before - cert.valid_after == 3900
    assert "from " in cert.validity() and " to " in cert.validity()


def test_user_certificate_and_forever(ca: Path, keydir: Path) -> None:
    key = make_key(keydir / "user_key", "ed25519")
    cert = parse_certificate(sign(ca, key, "-n", "alice", validity="always:forever"))
    assert not cert.is_host and cert.validity() == "forever"
    assert ("permit-pty", b"") in cert.extensions
    assert check_host_certificate(cert, "alice", time.time()) == (
        "Certificate invalid: not a host certificate"
    )


def test_tampered_and_truncated_certificates_are_refused(ca: Path, hkey: Path) -> None:
    blob = sign(ca, hkey, "-h", "-n", "h")
    key_id = NS(f"id-{hkey.name}".encode())
    forged = blob.replace(key_id, NS(f"id-{hkey.name[:-1]}X".encode()))
    assert forged != blob
    with pytest.raises(CertificateError, match="CA signature is invalid"):
        parse_certificate(forged)
    parse_certificate(forged, verify=False)  # well formed, only the signature is wrong
    for cut in (10, 60, len(blob) - 5):
        with pytest.raises(CertificateError, match="truncated"):
            parse_certificate(blob[:cut])
    with pytest.raises(CertificateError, match="trailing"):
        parse_certificate(blob + b"\0")
    with pytest.raises(CertificateError, match="not an OpenSSH certificate"):
        parse_certificate(Key.fromFile(f"{hkey}.pub").blob())


def test_signature_under_the_wrong_name_is_refused() -> None:
    # Conch verifies an ed25519 signature whatever algorithm it names; we do not.
    blob = make_certificate(
        client_key("ed25519"), host_key("ecdsa"), principals=["h"], signed_as="rsa-sha2-512"
    )
    with pytest.raises(CertificateError, match="ssh-ed25519 CA key cannot use"):
        parse_certificate(blob)


def test_ca_that_is_a_certificate_is_refused() -> None:
    blob = make_certificate(client_key("ed25519"), host_key("ed25519"), principals=["h"])
    cert_type, rest = getNS(blob)
    # Swap the CA key for a certificate blob: OpenSSH refuses that in cert_parse.
    ca_blob = parse_certificate(blob).ca_blob
    forged = blob.replace(NS(ca_blob), NS(blob[:40]))
    with pytest.raises(CertificateError):
        parse_certificate(forged)
    assert cert_type.endswith(b"-cert-v01@openssh.com") and rest


NOW = 1_800_000_000


def cert_for(**kw: Any) -> bytes:
    kw.setdefault("principals", ["h.example"])
    return make_certificate(client_key("ed25519"), host_key("ecdsa"), **kw)


@pytest.mark.parametrize(
    ("kw", "host", "reason"),
    [
        ({}, "h.example", None),
        ({}, "H.Example", None),  # ssh lowercases the name it connects to
        ({"principals": []}, "anything", None),  # no principals: any host (OpenSSH)
        ({}, "other.example", "name is not a listed principal"),
        ({"principals": ["*.example"]}, "h.example", "name is not a listed principal"),
        ({"valid_before": NOW}, "h.example", "Certificate invalid: expired"),
        ({"valid_after": NOW + 1}, "h.example", "Certificate invalid: not yet valid"),
        ({"host": False}, "h.example", "Certificate invalid: not a host certificate"),
        (
            {"critical_options": [("force-command", NS(b"ls"))]},
            "h.example",
            "unsupported critical options (force-command)",
        ),
        (
            {"critical_options": [("something-new@example.com", b"")]},
            "h.example",
            "unsupported critical options",
        ),
        ({"extensions": [("x@example.com", b"")]}, "h.example", None),
    ],
)
def test_host_certificate_checks(kw: dict[str, Any], host: str, reason: str | None) -> None:
    cert = parse_certificate(cert_for(**kw))
    found = check_host_certificate(cert, host, NOW)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


def test_sha1_rsa_ca_signature_is_disallowed() -> None:
    # OpenSSH 8.2+ CASignatureAlgorithms leaves out ssh-rsa (SHA-1).
    blob = make_certificate(
        client_key("rsa"), host_key("ed25519"), principals=["h"], signature_algorithm="ssh-rsa"
    )
    cert = parse_certificate(blob)
    assert cert.signature_algorithm == "ssh-rsa"
    reason = check_host_certificate(cert, "h", NOW)
    assert reason is not None and "disallowed algorithm ssh-rsa" in reason


@pytest.mark.parametrize(
    ("algorithm", "key_type", "signature"),
    [
        ("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519", "ssh-ed25519"),
        ("rsa-sha2-512-cert-v01@openssh.com", "ssh-rsa", "rsa-sha2-512"),
        ("rsa-sha2-256", "ssh-rsa", "rsa-sha2-256"),
        ("ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
        ("ssh-ed25519", "ssh-ed25519", "ssh-ed25519"),
    ],
)
def test_algorithm_names(algorithm: str, key_type: str, signature: str) -> None:
    assert key_type_of_algorithm(algorithm) == key_type
    assert signature_algorithm_of(algorithm) == signature


def test_certificate_algorithms_follow_the_list() -> None:
    assert certificate_algorithms(DEFAULT_HOST_KEY_ALGORITHMS) == CERTS
    assert certificate_algorithms(["ssh-dss", "rsa-sha2-256", CERTS[0]]) == [CERTS[5]]


# -- the exchange signature ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_exchange_signature_with_a_certificate(kind: KeyKind) -> None:
    key = host_key(kind)
    cert = make_certificate(client_key("ed25519"), key, principals=["h"])
    base = "rsa-sha2-512" if kind == "rsa" else key.sshType().decode()
    alg = (base + "-cert-v01@openssh.com").encode()
    data = b"exchange hash"
    signature = key.sign(data, signatureType=base.encode())
    assert verify_exchange_signature(cert, alg, signature, data)
    assert not verify_exchange_signature(cert, alg, signature, data + b"!")
    # The negotiated algorithm must be a certificate one of the same key type.
    assert not verify_exchange_signature(cert, base.encode(), signature, data)
    assert not verify_exchange_signature(
        cert, CERTS[0 if kind != "ed25519" else 4].encode(), signature, data
    )
    # The plain key path still works.
    assert verify_exchange_signature(key.public().blob(), base.encode(), signature, data)


def test_rsa_certificate_signature_must_match_the_algorithm() -> None:
    key = host_key("rsa")
    cert = make_certificate(client_key("ed25519"), key, principals=["h"])
    data = b"H"
    sha256 = key.sign(data, signatureType=b"rsa-sha2-256")
    assert verify_exchange_signature(cert, CERTS[5].encode(), sha256, data)
    # rsa-sha2-512-cert-v01 negotiated: a SHA-256 signature does not do (OpenSSH refuses).
    assert not verify_exchange_signature(cert, CERTS[4].encode(), sha256, data)


# -- the verifier ----------------------------------------------------------------------------


def verifier(tmp_path: Path, known: str = "", **kw: Any) -> HostKeyVerifier:
    path = tmp_path / "known_hosts"
    if known:
        path.write_text(known)
    kw.setdefault("global_known_hosts", [])
    kw.setdefault("now", lambda: NOW)
    return HostKeyVerifier(
        "h.example", kw.pop("port", 2222), [path], kw.pop("policy", "strict"), **kw
    )


CA = client_key("ed25519")
CA_LINE = CA.public().toString("openssh").decode()
OTHER_CA_LINE = client_key("ecdsa").public().toString("openssh").decode()
HOST = host_key("ecdsa")
HOST_LINE = HOST.public().toString("openssh").decode()


def host_cert(**kw: Any) -> bytes:
    kw.setdefault("principals", ["h.example"])
    return make_certificate(CA, HOST, **kw)


@pytest.mark.parametrize(
    "known",
    [
        f"@cert-authority [h.example]:2222 {CA_LINE}\n",
        f"@cert-authority *.example {CA_LINE}\n",  # the plain name, off port 22 (OpenSSH)
        f"@cert-authority other,[h.example]:2222 {CA_LINE}\n@cert-authority * {OTHER_CA_LINE}\n",
    ],
)
def test_cert_authority_line_trusts_a_valid_certificate(tmp_path: Path, known: str) -> None:
    blob = host_cert()
    info, write = verifier(tmp_path, known).assess(blob)
    assert (info.accepted, write, info.known) == (True, False, HostKeyCheck.CERTIFIED)
    assert info.algorithm == "ecdsa-sha2-nistp256-cert-v01@openssh.com"
    assert info.blob == blob and info.key == HOST.public()
    assert info.fingerprint == fingerprint(HOST.public().blob())  # the key's, as OpenSSH
    assert info.certificate is not None and info.certificate.principals == ("h.example",)
    assert info.certificate.ca_fingerprint == fingerprint(CA.public().blob())
    assert info.certificate_problem == ""
    assert "known_hosts:" in info.status


def test_accepted_ca_key_trusts_a_valid_certificate(tmp_path: Path) -> None:
    v = verifier(tmp_path, accepted_ca_keys=[CA_LINE])
    assert v.check(host_cert()) is True
    assert v.assess(host_cert())[0].known is HostKeyCheck.CERTIFIED
    # Given as a Key, a known_hosts-style line or a blob, likewise.
    for given in (CA.public(), f"@cert-authority * {CA_LINE}", CA.public().blob()):
        assert verifier(tmp_path, accepted_ca_keys=[given]).check(host_cert())
    assert not (tmp_path / "known_hosts").exists()


@pytest.mark.parametrize(
    ("kw", "known", "reason"),
    [
        ({"valid_before": NOW - 1}, f"@cert-authority * {CA_LINE}", "Certificate invalid: expired"),
        (
            {"principals": ["other.example"]},
            f"@cert-authority * {CA_LINE}",
            "name is not a listed principal",
        ),
        ({"host": False}, f"@cert-authority * {CA_LINE}", "not a host certificate"),
        (
            {"critical_options": [("verify-required", b"")]},
            f"@cert-authority * {CA_LINE}",
            "unsupported critical options",
        ),
        ({}, f"@cert-authority * {OTHER_CA_LINE}", "which is not a certificate authority for"),
        ({}, f"@cert-authority other.example {CA_LINE}", "no @cert-authority line names"),
        # CAs for [host]:port: plain host is not looked at (OpenSSH: only when none).
        (
            {},
            f"@cert-authority [h.example]:2222 {OTHER_CA_LINE}\n"
            f"@cert-authority h.example {CA_LINE}",
            "which is not a certificate authority",
        ),
        ({}, "", "no @cert-authority line names [h.example]:2222"),
    ],
)
def test_certificate_refusals_name_the_reason(
    tmp_path: Path, kw: dict[str, Any], known: str, reason: str
) -> None:
    with pytest.raises(HostKeyError, match=r"Host key verification failed\.$") as e:
        verifier(tmp_path, known + "\n").check(host_cert(**kw))
    assert e.value.code == 1030
    assert "The host certificate of [h.example]:2222 was not accepted" in str(e.value)
    assert reason in str(e.value)
    assert e.value.fingerprint == fingerprint(HOST.public().blob())


def test_failed_certificate_falls_back_to_the_plain_key(tmp_path: Path) -> None:
    # OpenSSH: "No matching CA found. Retry with plain key"; the reason is still logged.
    expired = host_cert(valid_before=NOW - 1)
    known = f"@cert-authority * {CA_LINE}\n[h.example]:2222 {HOST_LINE}\n"
    info, _write = verifier(tmp_path, known).assess(expired)
    assert (info.accepted, info.known) == (True, HostKeyCheck.MATCH)
    assert "expired" in info.certificate_problem
    # accept-new writes the plain key, as OpenSSH does after the downgrade.
    new = tmp_path / "new"
    new.mkdir()
    v = verifier(new, f"@cert-authority * {OTHER_CA_LINE}\n", policy="accept-new")
    assert v.check(host_cert()) is True
    lines = (new / "known_hosts").read_text().splitlines()
    assert lines[1] == f"[h.example]:2222 {HOST_LINE}"
    assert verifier(new).check(host_cert()) is True  # now known as a plain key


@pytest.mark.parametrize("revoke", ["ca", "key"])
def test_revoked_ca_or_key_refuses_a_certificate(tmp_path: Path, revoke: str) -> None:
    line = CA_LINE if revoke == "ca" else HOST_LINE
    known = f"@cert-authority * {CA_LINE}\n@revoked * {line}\n[h.example]:2222 {HOST_LINE}\n"
    v = verifier(
        tmp_path, known, callback=lambda info: True, policy="accept-any", accepted_keys=[HOST]
    )
    with pytest.raises(HostKeyError, match=r"marked as revoked in .*known_hosts:2\.") as e:
        v.check(host_cert())
    assert ("certificate authority" in str(e.value)) is (revoke == "ca")
    assert v.assess(host_cert())[0].known is HostKeyCheck.REVOKED
    failure = v.verify(host_cert())  # the callback is not asked
    assert isinstance(failure.result.value, HostKeyError)  # type: ignore[attr-defined]
    failure.addErrback(lambda _: None)


def test_unreadable_certificate_is_refused(tmp_path: Path) -> None:
    blob = host_cert()
    forged = blob.replace(b"h.example", b"x.example")
    with pytest.raises(HostKeyError, match="cannot accept: The certificate's CA signature"):
        verifier(tmp_path, f"@cert-authority * {CA_LINE}\n").check(forged)


@pytest_twisted.ensureDeferred
async def test_callback_sees_the_certificate(tmp_path: Path) -> None:
    seen: list[HostKeyInfo] = []

    def decide(info: HostKeyInfo) -> bool:
        seen.append(info)
        return info.certificate is not None and info.certificate.key_id == "the-host"

    v = verifier(tmp_path, f"@cert-authority * {CA_LINE}\n", callback=decide)
    assert await v.verify(host_cert(key_id="the-host", valid_before=NOW - 1)) is True
    info = seen[0]
    assert info.accepted is False and "expired" in info.certificate_problem
    assert info.certificate is not None
    assert info.certificate.valid_before == NOW - 1
    with pytest.raises(HostKeyError, match="refused by the host key callback"):
        await v.verify(host_cert(key_id="another"))


# -- host key algorithm order -----------------------------------------------------------------

DEFAULT = list(DEFAULT_HOST_KEY_ALGORITHMS)
ED = host_key("ed25519").public().toString("openssh").decode()
EC = HOST_LINE
RSA = host_key("rsa").public().toString("openssh").decode()


@pytest.mark.parametrize(
    ("known", "port", "expected"),
    [
        ("", 2222, DEFAULT),
        # Known by its ECDSA key only: ask for that first (OpenSSH order_hostkeyalgs).
        (
            f"[h.example]:2222 {EC}",
            2222,
            ["ecdsa-sha2-nistp256", *[a for a in DEFAULT if a != "ecdsa-sha2-nistp256"]],
        ),
        (f"h.example {EC}", 2222, ["ecdsa-sha2-nistp256", *DEFAULT[:1], *DEFAULT[2:]]),
        (f"other.example {EC}", 2222, DEFAULT),
        # The first preference is known: the list as it is.
        (f"h.example {ED}\nh.example {EC}", 22, DEFAULT),
        (
            f"h.example {RSA}",
            22,
            ["rsa-sha2-512", "rsa-sha2-256", *DEFAULT[:4]],
        ),
        # A CA for the host: the certificate algorithms first.
        (f"@cert-authority *.example {CA_LINE}", 2222, CERTS + DEFAULT),
        (
            f"@cert-authority h.example {CA_LINE}\nh.example {RSA}",
            22,
            [*CERTS, "rsa-sha2-512", "rsa-sha2-256", *DEFAULT[:4]],
        ),
        # A CA for another host, or a revoked key: neither counts.
        (f"@cert-authority other {CA_LINE}", 22, DEFAULT),
        (f"@revoked h.example {EC}", 22, DEFAULT),
    ],
)
def test_host_key_algorithm_order(
    tmp_path: Path, known: str, port: int, expected: list[str]
) -> None:
    v = verifier(tmp_path, known + "\n", port=port)
    assert v.host_key_algorithms(DEFAULT) == expected
    # A list given outright is used as it is.
    assert v.host_key_algorithms(DEFAULT, follow_known_hosts=False) == DEFAULT


def test_accepted_ca_key_puts_certificates_first(tmp_path: Path) -> None:
    v = verifier(tmp_path, accepted_ca_keys=[CA_LINE])
    assert v.host_key_algorithms(DEFAULT) == CERTS + DEFAULT
    assert v.host_key_algorithms(["rsa-sha2-256"]) == [CERTS[5], "rsa-sha2-256"]
    # A list that names certificate algorithms itself keeps them where they are.
    assert v.host_key_algorithms(["ssh-ed25519", CERTS[0]]) == [CERTS[0], "ssh-ed25519"]


# -- end to end against sshd with HostCertificate --------------------------------------------


class CertServer:
    """One sshd, four host keys, each with its own certificate story."""

    def __init__(self, sshd: OpenSSHServer, ca: Path, keys: dict[str, Path]) -> None:
        self.sshd = sshd
        self.ca = ca
        self.keys = keys

    @property
    def ca_line(self) -> str:
        return pub_line(self.ca)

    def known_hosts(self, tmp_path: Path, text: str) -> Path:
        path = tmp_path / "known_hosts"
        path.write_text(text + "\n")
        return path

    def tunnel(self, client_key_path: Path, known: Path, **kw: Any) -> ReverseTunnel:
        from rtunnel import PrivateKeyFile

        kw.setdefault("global_known_hosts", [])
        return ReverseTunnel(
            reactor,
            self.sshd.host,
            self.sshd.port,
            options=TunnelOptions.create(
                user=self.sshd.user, auth=[PrivateKeyFile(client_key_path)], known_hosts=known, **kw
            ),
        )


@pytest.fixture(scope="module")
def cert_server(
    tmp_path_factory: pytest.TempPathFactory, openssh_sshd: str, openssh_client_key: Path
) -> Iterator[CertServer]:
    directory = tmp_path_factory.mktemp("cert-sshd")
    ca = make_key(directory / "host_ca", "ed25519")
    keys = {
        # The harness's own file names, so it keeps these keys instead of generating.
        "ed25519": make_key(directory / "ssh_host_ed25519_key", "ed25519"),
        "rsa": make_key(directory / "ssh_host_rsa_key", "rsa"),
        "ecdsa": make_key(directory / "ssh_host_ecdsa_key", "ecdsa"),
        "ecdsa384": make_key(directory / "ssh_host_ecdsa384_key", "ecdsa", "384"),
    }
    sign(ca, keys["ed25519"], "-h", "-n", "127.0.0.1,localhost")
    sign(ca, keys["rsa"], "-h", "-n", "127.0.0.1")
    sign(ca, keys["ecdsa"], "-h", "-n", "127.0.0.1", validity="-2h:-1h")  # expired
    sign(ca, keys["ecdsa384"], "-h", "-n", "other.example")  # another host's
    extra = [f"HostKey {keys['ecdsa384']}"] + [
        f"HostCertificate {path}-cert.pub" for path in keys.values()
    ]
    sshd = OpenSSHServer(
        directory,
        authorized_keys=[Path(f"{openssh_client_key}.pub").read_text().strip()],
        extra_config=extra,
        sshd_path=openssh_sshd,
        host_key_types=("ed25519", "rsa", "ecdsa"),
    )
    sshd.start()
    try:
        yield CertServer(sshd, ca, keys)
    finally:
        sshd.stop()


async def logon_info(server: CertServer, key: Path, known: Path, **kw: Any) -> HostKeyInfo:
    seen: list[HostKeyInfo] = []

    def record(info: HostKeyInfo) -> bool:
        seen.append(info)
        return info.accepted

    t = server.tunnel(key, known, host_key_callback=record, **kw)
    await t.logon()
    await t.logoff()
    return seen[-1]


@pytest.mark.parametrize(
    "kex",
    [
        "curve25519-sha256",
        "ecdh-sha2-nistp256",
        "diffie-hellman-group14-sha256",
        "diffie-hellman-group-exchange-sha256",
    ],
)
@pytest_twisted.ensureDeferred
async def test_e2e_host_certificate_trusted_through_cert_authority(
    cert_server: CertServer, openssh_client_key: Path, tmp_path: Path, kex: str
) -> None:
    port = cert_server.sshd.port
    known = cert_server.known_hosts(
        tmp_path, f"@cert-authority [127.0.0.1]:{port} {cert_server.ca_line}"
    )
    info = await logon_info(cert_server, openssh_client_key, known, kex_algorithms=[kex])
    assert info.known is HostKeyCheck.CERTIFIED
    assert info.algorithm == "ssh-ed25519-cert-v01@openssh.com"
    assert info.certificate is not None
    assert info.certificate.key_id == "id-ssh_host_ed25519_key"
    assert info.certificate.principals == ("127.0.0.1", "localhost")
    assert info.fingerprint == fingerprint(
        Key.fromFile(f"{cert_server.keys['ed25519']}.pub").blob()
    )
    assert known.read_text().count("\n") == 1  # nothing written


@pytest.mark.parametrize("algorithm", [CERTS[4], CERTS[5]])
@pytest_twisted.ensureDeferred
async def test_e2e_rsa_host_certificate(
    cert_server: CertServer, openssh_client_key: Path, tmp_path: Path, algorithm: str
) -> None:
    known = cert_server.known_hosts(tmp_path, f"@cert-authority * {cert_server.ca_line}")
    info = await logon_info(cert_server, openssh_client_key, known, host_key_algorithms=[algorithm])
    assert info.known is HostKeyCheck.CERTIFIED and info.algorithm == "ssh-rsa-cert-v01@openssh.com"


@pytest_twisted.ensureDeferred
async def test_e2e_accepted_ca_key(
    cert_server: CertServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    info = await logon_info(
        cert_server, openssh_client_key, empty, accepted_ca_keys=[cert_server.ca_line]
    )
    assert info.known is HostKeyCheck.CERTIFIED
    assert not empty.exists()


@pytest.mark.parametrize(
    ("algorithm", "known", "reason", "policy"),
    [
        (CERTS[1], "@cert-authority * {ca}", "Certificate invalid: expired", "strict"),
        (CERTS[2], "@cert-authority * {ca}", "name is not a listed principal", "strict"),
        (CERTS[0], "@cert-authority * {other}", "which is not a certificate authority", "strict"),
        # Revoked: refused even under accept-new (which would write a merely unknown key).
        (CERTS[0], "@cert-authority * {ca}\n@revoked * {ca}", "marked as revoked", "accept-new"),
        (
            CERTS[0],
            "@cert-authority * {ca}\n@revoked 127.0.0.1 {host}",
            "marked as revoked",
            "accept-new",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_e2e_host_certificate_refusals(
    cert_server: CertServer,
    openssh_client_key: Path,
    other_ca: Path,
    tmp_path: Path,
    algorithm: str,
    known: str,
    reason: str,
    policy: Any,
) -> None:
    text = known.format(
        ca=cert_server.ca_line,
        other=pub_line(other_ca),
        host=pub_line(cert_server.keys["ed25519"]),
    )
    path = cert_server.known_hosts(tmp_path, text)
    t = cert_server.tunnel(
        openssh_client_key, path, host_key_algorithms=[algorithm], host_key_policy=policy
    )
    with pytest.raises(HostKeyError, match="Host key verification failed") as e:
        await t.logon()
    assert reason in str(e.value)
    assert e.value.code == 1030
    assert path.read_text() == text + "\n"  # nothing written


@pytest_twisted.ensureDeferred
async def test_e2e_expired_certificate_of_a_known_key_is_accepted_as_the_plain_key(
    cert_server: CertServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    # As OpenSSH: the certificate fails (logged), the key it certifies is known.
    port = cert_server.sshd.port
    plain = pub_line(cert_server.keys["ecdsa"])
    known = cert_server.known_hosts(
        tmp_path, f"@cert-authority * {cert_server.ca_line}\n[127.0.0.1]:{port} {plain}"
    )
    info = await logon_info(cert_server, openssh_client_key, known, host_key_algorithms=[CERTS[1]])
    assert info.known is HostKeyCheck.MATCH
    assert "Certificate invalid: expired" in info.certificate_problem


@pytest_twisted.ensureDeferred
async def test_e2e_algorithm_order_follows_known_hosts(
    cert_server: CertServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    # Known by its ECDSA key only: rtunnel asks for ECDSA first and the logon succeeds
    # (without the order, sshd would present its ed25519 key and be refused).
    port = cert_server.sshd.port
    known = cert_server.known_hosts(
        tmp_path, f"[127.0.0.1]:{port} {pub_line(cert_server.keys['ecdsa'])}"
    )
    info = await logon_info(cert_server, openssh_client_key, known)
    assert (info.known, info.algorithm) == (HostKeyCheck.MATCH, "ecdsa-sha2-nistp256")
    assert info.certificate is None  # no CA: no certificate algorithm offered
    # The same list given outright is not reordered, and the ed25519 key is unknown.
    t = cert_server.tunnel(
        openssh_client_key, known, host_key_algorithms=list(DEFAULT_HOST_KEY_ALGORITHMS)
    )
    with pytest.raises(HostKeyError, match="No ssh-ed25519 host key is known"):
        await t.logon()
    # "+..." still follows known_hosts, as in OpenSSH.
    info = await logon_info(cert_server, openssh_client_key, known, host_key_algorithms="+ssh-rsa")
    assert info.algorithm == "ecdsa-sha2-nistp256"


@pytest_twisted.ensureDeferred
async def test_e2e_openssh_client_agrees(
    cert_server: CertServer, tmp_path: Path, openssh_ssh: str, openssh_client_key: Path
) -> None:
    # The same known_hosts lines through OpenSSH's own client: accepted / refused alike.
    port = cert_server.sshd.port
    good = cert_server.known_hosts(tmp_path, f"@cert-authority * {cert_server.ca_line}")
    for algorithm, ok in [(CERTS[0], True), (CERTS[1], False), (CERTS[2], False)]:
        done = subprocess.run(
            [
                openssh_ssh, "-F", "none", "-i", str(openssh_client_key),
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={good}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", f"HostKeyAlgorithms={algorithm}",
                "-p", str(port), "-l", cert_server.sshd.user, "127.0.0.1", "true",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode == 0) is ok, done.stderr
        t = cert_server.tunnel(openssh_client_key, good, host_key_algorithms=[algorithm])
        if ok:
            await t.logon()
            await t.logoff()
        else:
            with pytest.raises(HostKeyError):
                await t.logon()


# -- the bundled server presenting a host certificate ---------------------------------------


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [("ed25519", CERTS[0]), ("ecdsa", CERTS[1]), ("rsa", CERTS[4]), ("rsa", CERTS[5])],
)
@pytest_twisted.ensureDeferred
async def test_bundled_server_presents_a_host_certificate(
    tmp_path: Path, kind: KeyKind, algorithm: str
) -> None:
    from rtunnel import PrivateKeyFile
    from rtunnel.testing import SSHTestServer, generate_client_key

    ca = client_key("ed25519")
    cert = make_certificate(ca, host_key(kind), key_id="bundled", principals=["127.0.0.1"])
    server = SSHTestServer(reactor, host_key_type=kind, host_certificate=certificate_line(cert))
    user_key = generate_client_key("ed25519", tmp_path / "user")
    server.add_user("alice", authorized_keys=[Key.fromFile(f"{user_key}.pub")])
    await server.start()
    try:
        seen: list[HostKeyInfo] = []

        def tunnel(**kw: Any) -> ReverseTunnel:
            return ReverseTunnel(
                reactor,
                "127.0.0.1",
                server.port,
                options=TunnelOptions.create(
                    user="alice",
                    auth=[PrivateKeyFile(user_key)],
                    known_hosts=tmp_path / "known_hosts",
                    global_known_hosts=[],
                    host_key_callback=lambda info: seen.append(info) or info.accepted,
                    **kw,
                ),
            )

        ca_line = ca.public().toString("openssh").decode()
        t = tunnel(accepted_ca_keys=[ca_line], host_key_algorithms=f"^{algorithm}")
        await t.logon()
        await t.logoff()
        assert seen[-1].known is HostKeyCheck.CERTIFIED
        assert seen[-1].certificate is not None and seen[-1].certificate.key_id == "bundled"
        # Another CA: refused (strict, nothing known).
        other = client_key("ecdsa").public().toString("openssh").decode()
        with pytest.raises(HostKeyError, match="not a certificate authority"):
            await tunnel(accepted_ca_keys=[other], host_key_algorithms=f"^{algorithm}").logon()
    finally:
        await server.stop()


def test_bundled_server_refuses_a_certificate_for_another_key() -> None:
    from rtunnel.testing._certs import host_certificate_keys

    cert = make_certificate(client_key("ed25519"), host_key("ecdsa"), principals=["h"])
    with pytest.raises(ValueError, match="another key"):
        host_certificate_keys(host_key("ed25519"), cert)
