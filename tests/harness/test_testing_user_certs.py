"""
OpenSSH user certificates against the bundled server's ``trusted_user_ca_keys``, with the
real rtunnel client: which certificates it accepts and refuses and why (in memory, a
MemoryPair whose clock reads the real time), and the same certificates against a real sshd
with ``TrustedUserCAKeys`` so both servers agree (over loopback).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from rtunnel import AuthenticationError, PrivateKeyFile, ReverseTunnel, TunnelOptions
from rtunnel.client.hostkeys.certificates import parse_certificate
from rtunnel.errors import ForwardingError
from rtunnel.testing import MemoryPair, OpenSSHServer, SSHTestServer, generate_client_key
from rtunnel.testing._certs import (
    certificate_line,
    make_certificate,
    read_ca_keys,
    user_certificate_refusal,
)
from rtunnel.testing.server._auth import _USER_SIG_ALGS, _CertificateCredentials, _PublicKeyChecker

USER = "alice"
CA = Key(ed25519.Ed25519PrivateKey.generate())
OTHER_CA = Key(ed25519.Ed25519PrivateKey.generate())
RSA_CA = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def now() -> int:
    return int(time.time())


def user_cert(user: str, kind: str = "ed25519", ca: Key = CA, **kw: Any) -> bytes:
    """A user certificate for the test client key of ``kind``, valid from 5 min ago for 1 h."""
    from rtunnel.testing import client_key

    options: dict[str, Any] = {
        "host": False,
        "principals": [user],
        "valid_after": now() - 300,
        "valid_before": now() + 3600,
    }
    options.update(kw)
    return make_certificate(ca, client_key(kind), **options)  # type: ignore[arg-type]


def key_with_cert(directory: Path, cert: bytes | None, kind: str = "ed25519") -> Path:
    """The client key's files, with ``cert`` as ``<key>-cert.pub`` beside it."""
    key = generate_client_key(kind, directory)  # type: ignore[arg-type]
    if cert is not None:
        key.with_name(key.name + "-cert.pub").write_text(certificate_line(cert) + "\n")
    return key


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    """
    The bundled server in memory, trusting the test CAs; its clock at the real time, for
    the certificates' validity. The pair's own user is not USER: USER has no key.
    """
    ca_file = tmp_path / "user_ca.pub"
    ca_file.write_text("# the test CAs\n\n" + RSA_CA.public().toString("openssh").decode() + "\n")
    # One CA as a Key, one as a public key line, one in a file.
    cas = [CA, OTHER_CA.public().toString("openssh").decode(), ca_file]
    pair = MemoryPair(
        tmp_path / "pair",
        user="pair",
        start_time=time.time(),
        server_options={"trusted_user_ca_keys": cas},
    )
    # Only publickey, as the sshd harness: the refusal is "Permission denied (publickey)."
    pair.server.add_user(USER, auth_methods="publickey")
    yield pair
    pair.close()


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path) -> AsyncGenerator[SSHTestServer]:
    """The same server on 127.0.0.1, for OpenSSH's own client."""
    test_server = SSHTestServer(reactor, trusted_user_ca_keys=[CA])
    test_server.add_user(USER, auth_methods="publickey")
    await test_server.start()
    try:
        yield test_server
    finally:
        await test_server.stop()


def tunnel(host: str, port: int, user: str, known_hosts: Path, key: PrivateKeyFile) -> Any:
    return ReverseTunnel(
        reactor,
        host,
        port,
        options=TunnelOptions.create(
            user=user, known_hosts=known_hosts, auth=[key], connect_timeout=30
        ),
    )


async def outcome(t: ReverseTunnel, methods: str = "publickey") -> str:
    """``accepted`` (logon and a remote forward), ``no-forwarding`` or ``refused``."""
    try:
        await t.logon()
    except AuthenticationError as e:
        assert str(e) == f"Permission denied ({methods})."
        assert e.code == 1032
        return "refused"
    try:
        await t.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9)
    except ForwardingError:
        return "no-forwarding"
    finally:
        await t.logoff()
    return "accepted"


def bundled_outcome(pair: MemoryPair, key: PrivateKeyFile, user: str = USER) -> str:
    """The outcome against the bundled server, in memory."""
    t = pair.make_tunnel(user=user, auth=[key], connect_timeout=30)
    methods = "publickey" if user == USER else "publickey,password"
    return pair.run(outcome(t, methods))


# -- accepted


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_certificate_beside_the_key_is_accepted(
    pair: MemoryPair, tmp_path: Path, kind: str
) -> None:
    server = pair.server
    key = key_with_cert(tmp_path / "bare", None, kind)
    # The key alone is not authorized...
    assert bundled_outcome(pair, PrivateKeyFile(key)) == "refused"
    # ... with its certificate beside it, it logs on and may forward.
    key = key_with_cert(tmp_path / "cert", user_cert(USER, kind), kind)
    assert bundled_outcome(pair, PrivateKeyFile(key)) == "accepted"
    assert server.certificate_refusals == []
    # One publickey request per logon: the certificate went in at the first try.
    methods = [m for u, m in server.auth_attempts if u == USER]
    assert methods.count("publickey") == 2


@pytest.mark.parametrize("ca", [OTHER_CA, RSA_CA], ids=["ca-as-line", "ca-in-file"])
def test_certificate_given_explicitly_and_cas_given_as_text(
    pair: MemoryPair, tmp_path: Path, ca: Key
) -> None:
    key = key_with_cert(tmp_path, None)
    elsewhere = tmp_path / "elsewhere-cert.pub"
    elsewhere.write_text(certificate_line(user_cert(USER, ca=ca)))
    key_file = PrivateKeyFile(key, certificate=elsewhere)
    assert bundled_outcome(pair, key_file) == "accepted"


@pytest.mark.parametrize(
    ("principals", "certified", "expected"),
    [
        (["ops", "deploy"], ["deploy"], "accepted"),
        (["ops"], [USER], "refused"),  # the user name no longer counts
        (None, ["deploy"], "refused"),
    ],
    ids=["listed", "user-name-not-listed", "default-is-user-name"],
)
def test_principals_as_authorized_principals_file(
    pair: MemoryPair,
    tmp_path: Path,
    principals: list[str] | None,
    certified: list[str],
    expected: str,
) -> None:
    pair.server.add_user(USER, auth_methods="publickey", principals=principals)
    key = key_with_cert(tmp_path, user_cert(USER, principals=certified))
    assert bundled_outcome(pair, PrivateKeyFile(key)) == expected


def test_certificate_for_another_key_is_refused(pair: MemoryPair, tmp_path: Path) -> None:
    server = pair.server
    # A good certificate for the ecdsa key, presented with the ed25519 key's signature.
    key = key_with_cert(tmp_path, None, "ed25519")
    cert = tmp_path / "ecdsa-cert.pub"
    cert.write_text(certificate_line(user_cert(USER, "ecdsa")))
    result = bundled_outcome(pair, PrivateKeyFile(key, certificate=cert))
    assert result == "refused"
    assert server.certificate_refusals[-1] in (
        "bad signature",
        "signature does not match algorithm",
    )


# -- refused, with sshd's reasons


REFUSALS: dict[str, tuple[Callable[[], bytes], str]] = {
    "expired": (
        lambda: user_cert(USER, valid_after=now() - 7200, valid_before=now() - 3600),
        "Certificate invalid: expired",
    ),
    "not-yet-valid": (
        lambda: user_cert(USER, valid_after=now() + 3600, valid_before=now() + 7200),
        "Certificate invalid: not yet valid",
    ),
    "wrong-principal": (
        lambda: user_cert("somebody-else"),
        "Certificate invalid: name is not a listed principal",
    ),
    "no-principals": (lambda: user_cert(USER, principals=[]), "Certificate lacks principal list"),
    "host-certificate": (
        lambda: user_cert(USER, host=True),
        "Certificate invalid: not a user certificate",
    ),
    "unknown-ca": (
        lambda: user_cert(USER, ca=Key(ed25519.Ed25519PrivateKey.generate())),
        "is not listed in TrustedUserCAKeys",
    ),
    "unknown-critical-option": (
        lambda: user_cert(USER, critical_options=[("no-such-option@example.com", b"")]),
        'Certificate critical option "no-such-option@example.com" is not supported',
    ),
    "other-source-address": (
        lambda: user_cert(USER, critical_options=[("source-address", NS(b"10.0.0.0/8"))]),
        f"Authentication tried for {USER} with valid certificate but not from a permitted "
        "source address (127.0.0.1).",
    ),
    "bad-source-address": (
        lambda: user_cert(USER, critical_options=[("source-address", NS(b"not-an-address"))]),
        "Certificate source-address contents invalid",
    ),
    "sha1-ca-signature": (
        lambda: user_cert(USER, ca=RSA_CA, signature_algorithm="ssh-rsa"),
        "certificate signature algorithm ssh-rsa: signature algorithm not supported",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_certificates_are_refused(pair: MemoryPair, tmp_path: Path, case: str) -> None:
    server = pair.server
    make, reason = REFUSALS[case]
    key = key_with_cert(tmp_path, make())
    assert bundled_outcome(pair, PrivateKeyFile(key)) == "refused"
    assert len(server.certificate_refusals) == 1
    assert reason in server.certificate_refusals[0]


def test_unknown_user_is_refused(pair: MemoryPair, tmp_path: Path) -> None:
    # sshd wants an existing account; here, one added with add_user.
    key = key_with_cert(tmp_path, user_cert("bob"))
    # (An unknown user is offered the server's default methods.)
    assert bundled_outcome(pair, PrivateKeyFile(key), user="bob") == "refused"
    assert pair.server.certificate_refusals == ["Invalid user bob"]


def test_without_trusted_cas_no_certificate_is_accepted(tmp_path: Path) -> None:
    with MemoryPair(tmp_path / "bare", user="pair", start_time=time.time()) as bare:
        bare.server.add_user(USER, auth_methods="publickey")
        key = key_with_cert(tmp_path, user_cert(USER))
        assert bundled_outcome(bare, PrivateKeyFile(key)) == "refused"


@pytest.mark.parametrize(
    ("options", "extensions", "expected"),
    [
        ([("source-address", NS(b"10.0.0.0/8,127.0.0.0/8"))], None, "accepted"),
        ([("force-command", NS(b"/bin/true"))], None, "accepted"),
        ([], [], "no-forwarding"),
        ([], [("permit-port-forwarding", b"")], "accepted"),
    ],
    ids=["source-address", "force-command", "no-extensions", "permit-port-forwarding-only"],
)
def test_options_and_extensions(
    pair: MemoryPair,
    tmp_path: Path,
    options: list[tuple[str, bytes]],
    extensions: list[tuple[str, bytes]] | None,
    expected: str,
) -> None:
    cert = user_cert(USER, critical_options=options, extensions=extensions)
    key = key_with_cert(tmp_path, cert)
    assert bundled_outcome(pair, PrivateKeyFile(key)) == expected


# -- the pure check and the CA key reader


def test_user_certificate_refusal_table() -> None:
    cert = parse_certificate(user_cert(USER, valid_after=1000, valid_before=2000))
    check = dict(user=USER, trusted_cas=[CA.public().blob()], client_address="::1")
    assert user_certificate_refusal(cert, now=1000, **check) is None  # type: ignore[arg-type]
    assert "expired" in (user_certificate_refusal(cert, now=2000, **check) or "")  # type: ignore[arg-type]
    assert "not yet valid" in (user_certificate_refusal(cert, now=999, **check) or "")  # type: ignore[arg-type]
    mapped = parse_certificate(
        user_cert(USER, critical_options=[("source-address", NS(b"127.0.0.1/32"))])
    )
    for address, ok in [("127.0.0.1", True), ("::ffff:127.0.0.1", True), ("127.0.0.2", False)]:
        reason = user_certificate_refusal(
            mapped,
            user=USER,
            trusted_cas=[CA.public().blob()],
            now=now(),
            client_address=address,
        )
        assert (reason is None) == ok, address


def test_read_ca_keys(tmp_path: Path) -> None:
    line = CA.public().toString("openssh").decode()
    path = tmp_path / "cas"
    path.write_text(f"# comment\n\n{line} ca\n")
    assert read_ca_keys([CA, line, path]) == [CA.public().blob()] * 3
    with pytest.raises(ValueError, match="is not an OpenSSH public key line"):
        read_ca_keys(["ssh-ed25519 AAAA"])
    with pytest.raises(ValueError, match="the CA key line is not an OpenSSH public key"):
        read_ca_keys(["ssh-rsa " + line.split()[1]])
    path.write_text(certificate_line(user_cert(USER)) + "\n")
    with pytest.raises(ValueError, match=r"cas, line 1 is a certificate"):
        read_ca_keys([path])
    with pytest.raises(ValueError, match="is a certificate"):
        SSHTestServer(reactor, trusted_user_ca_keys=[path])


def test_make_certificate_extensions_default_as_ssh_keygen() -> None:
    user = parse_certificate(user_cert(USER))
    assert [name for name, _ in user.extensions] == [
        "permit-X11-forwarding",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-pty",
        "permit-user-rc",
    ]
    assert parse_certificate(user_cert(USER, host=True)).extensions == ()


# -- the bundled server and a real sshd agree


@dataclass(frozen=True)
class Case:
    make: Callable[[str], bytes]
    expected: str
    kind: str = "ed25519"


AGREEMENT: dict[str, Case] = {
    "ed25519": Case(lambda u: user_cert(u), "accepted"),
    "ecdsa": Case(lambda u: user_cert(u, "ecdsa"), "accepted", "ecdsa"),
    "rsa": Case(lambda u: user_cert(u, "rsa"), "accepted", "rsa"),
    "rsa-ca": Case(lambda u: user_cert(u, ca=RSA_CA), "accepted"),
    "expired": Case(lambda u: user_cert(u, valid_before=now() - 60), "refused"),
    "not-yet-valid": Case(lambda u: user_cert(u, valid_after=now() + 3600), "refused"),
    "wrong-principal": Case(lambda u: user_cert("somebody-else"), "refused"),
    "no-principals": Case(lambda u: user_cert(u, principals=[]), "refused"),
    "host-certificate": Case(lambda u: user_cert(u, host=True), "refused"),
    "unknown-ca": Case(
        lambda u: user_cert(u, ca=Key(ed25519.Ed25519PrivateKey.generate())), "refused"
    ),
    "unknown-critical-option": Case(
        lambda u: user_cert(u, critical_options=[("no-such-option@example.com", b"")]),
        "refused",
    ),
    "source-address-other": Case(
        lambda u: user_cert(u, critical_options=[("source-address", NS(b"10.0.0.0/8"))]),
        "refused",
    ),
    "source-address-ours": Case(
        lambda u: user_cert(u, critical_options=[("source-address", NS(b"127.0.0.1/32"))]),
        "accepted",
    ),
    "force-command": Case(
        lambda u: user_cert(u, critical_options=[("force-command", NS(b"/bin/true"))]),
        "accepted",
    ),
    "verify-required": Case(
        lambda u: user_cert(u, critical_options=[("verify-required", b"")]), "accepted"
    ),
    "bad-source-address": Case(
        lambda u: user_cert(u, critical_options=[("source-address", NS(b"not-an-address"))]),
        "refused",
    ),
    "sha1-ca-signature": Case(
        lambda u: user_cert(u, ca=RSA_CA, signature_algorithm="ssh-rsa"), "refused"
    ),
    "no-extensions": Case(lambda u: user_cert(u, extensions=[]), "no-forwarding"),
}


async def both_servers(
    tmp_path: Path,
    sshd_path: str,
    make: Callable[[str], bytes],
    kind: str = "ed25519",
    principals: list[str] | None = None,
) -> tuple[str, str]:
    """The outcome against sshd (``TrustedUserCAKeys``), then against the bundled server."""
    ca_file = tmp_path / "user_ca.pub"
    ca_file.write_text(
        "".join(k.public().toString("openssh").decode() + "\n" for k in (CA, RSA_CA))
    )
    config = [f"TrustedUserCAKeys {ca_file}"]
    if principals is not None:
        principals_file = tmp_path / "principals"
        principals_file.write_text("".join(f"{name}\n" for name in principals))
        config.append(f"AuthorizedPrincipalsFile {principals_file}")
    sshd = OpenSSHServer(tmp_path / "sshd", sshd_path=sshd_path, extra_config=config)
    key = key_with_cert(tmp_path / "key", make(sshd.user), kind)
    sshd.start()
    try:
        t = tunnel(sshd.host, sshd.port, sshd.user, sshd.known_hosts_path, PrivateKeyFile(key))
        sshd_result = await outcome(t)
    finally:
        sshd.stop()
    bundled = SSHTestServer(reactor, trusted_user_ca_keys=[ca_file])
    bundled.add_user(sshd.user, auth_methods="publickey", principals=principals)
    await bundled.start()
    try:
        known_hosts = bundled.write_known_hosts(tmp_path / "known_hosts_bundled")
        t = tunnel(bundled.host, bundled.port, sshd.user, known_hosts, PrivateKeyFile(key))
        bundled_result = await outcome(t)
    finally:
        await bundled.stop()
    return sshd_result, bundled_result


@pytest.mark.parametrize("case", list(AGREEMENT))
@pytest_twisted.ensureDeferred
async def test_bundled_server_and_sshd_agree(tmp_path: Path, openssh_sshd: str, case: str) -> None:
    spec = AGREEMENT[case]
    results = await both_servers(tmp_path, openssh_sshd, spec.make, spec.kind)
    assert results == (spec.expected, spec.expected)


@pytest.mark.parametrize(
    ("certified", "expected"),
    [(["ops", "deploy"], "accepted"), (["user"], "refused")],
    ids=["listed", "not-listed"],
)
@pytest_twisted.ensureDeferred
async def test_authorized_principals_agree_with_sshd(
    tmp_path: Path, openssh_sshd: str, certified: list[str], expected: str
) -> None:
    # With AuthorizedPrincipalsFile, the user name itself no longer counts.
    def make(user: str) -> bytes:
        return user_cert(user, principals=[user if p == "user" else p for p in certified])

    results = await both_servers(tmp_path, openssh_sshd, make, principals=["deploy", "admin"])
    assert results == (expected, expected)


# -- the checker alone: what the rtunnel client never sends


def signed_request(
    key: Key, cert: bytes, algorithm: str, signature_as: str | None
) -> _CertificateCredentials:
    data = b"session id and request"
    signature = (
        None if signature_as is None else key.sign(data, signatureType=signature_as.encode())
    )
    return _CertificateCredentials(
        USER.encode(), algorithm.encode(), cert, data, signature, "127.0.0.1"
    )


@pytest.mark.parametrize(
    ("kind", "algorithm", "signature_as", "expected"),
    [
        ("rsa", "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-512", None),
        ("rsa", "rsa-sha2-256-cert-v01@openssh.com", "rsa-sha2-256", None),
        ("rsa", "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256", "signature does not match"),
        ("rsa", "ssh-rsa-cert-v01@openssh.com", "ssh-rsa", "ssh-rsa-cert-v01@openssh.com not"),
        ("ed25519", "ssh-ed25519", "ssh-ed25519", "algorithm ssh-ed25519 not accepted"),
        ("ed25519", "ecdsa-sha2-nistp256-cert-v01@openssh.com", "ssh-ed25519", "does not match"),
        ("ed25519", "ssh-ed25519-cert-v01@openssh.com", None, "query"),
        ("ed25519", "ecdsa-sha2-nistp256-cert-v01@openssh.com", None, "does not match"),
    ],
)
def test_checker_ties_the_signature_to_the_request(
    kind: str, algorithm: str, signature_as: str | None, expected: str | None
) -> None:
    from rtunnel.testing import client_key

    server = SSHTestServer(reactor, trusted_user_ca_keys=[CA])
    server.add_user(USER)
    checker = _PublicKeyChecker({}, set(_USER_SIG_ALGS), server)
    credentials = signed_request(client_key(kind), user_cert(USER, kind), algorithm, signature_as)  # type: ignore[arg-type]
    results: list[Any] = []
    checker.requestAvatarId(credentials).addBoth(results.append)
    if expected is None:
        assert results == [USER.encode()]
    elif expected == "query":
        # No signature: PK_OK (RFC 4252 section 7) for a certificate that would do.
        assert results[0].check(ValidPublicKey)
    else:
        assert results[0].check(UnauthorizedLogin)
        assert expected in server.certificate_refusals[-1]


@pytest_twisted.ensureDeferred
async def test_openssh_client_logs_on_with_a_certificate(
    server: SSHTestServer, tmp_path: Path, openssh_ssh: str
) -> None:
    # OpenSSH's ssh asks first without a signature (PK_OK), then signs.
    key = key_with_cert(tmp_path, user_cert(USER))
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    args = [
        "-v", "-F", "none", "-i", str(key), "-p", str(server.port),
        "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9",
        f"{USER}@{server.host}",
    ]  # fmt: skip
    server.refuse_forwards()
    _out, err, code = await getProcessOutputAndValue(
        openssh_ssh, args, env={"PATH": "/usr/bin:/bin"}, reactor=reactor
    )
    text = err.decode("utf-8", "replace")
    # The forward is refused, so ssh exits (ExitOnForwardFailure) after logging on.
    assert "Server accepts key: " in text and "-CERT" in text, text
    assert "Authenticated to" in text, text
    assert code != 0
