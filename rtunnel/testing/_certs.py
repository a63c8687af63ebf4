"""
OpenSSH certificates made in Python, for tests (what ``ssh-keygen -s`` does, OpenSSH's
PROTOCOL.certkeys), including kinds ``ssh-keygen`` will not make: host certificates with
critical options, SHA-1 signatures, a signature under the wrong name. Also what sshd
checks before it accepts a user certificate (``TrustedUserCAKeys``), for the test server.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS, getNS

from rtunnel.client.hostkeys.certificates import (
    ALLOWED_CA_SIGNATURE_ALGORITHMS,
    SSHCertificate,
    check_certificate,
    is_certificate,
    parse_certificate,
    signature_algorithm_of,
)

__all__ = [
    "FOREVER",
    "USER_CERTIFICATE_EXTENSIONS",
    "USER_CRITICAL_OPTIONS",
    "certificate_line",
    "host_certificate_keys",
    "make_certificate",
    "read_ca_keys",
    "user_certificate_refusal",
]

#: ``valid_before`` for a certificate that never expires.
FOREVER = 0xFFFFFFFFFFFFFFFF

#: What ``ssh-keygen -s`` grants a user certificate by default (ssh-keygen.c,
#: ``prepare_options_buf``), in the lexical order PROTOCOL.certkeys asks for.
USER_CERTIFICATE_EXTENSIONS: tuple[str, ...] = (
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
)

#: The critical options sshd understands in a user certificate (auth-options.c,
#: ``cert_option_list``, OpenSSH 9.2); any other refuses the certificate.
USER_CRITICAL_OPTIONS: tuple[str, ...] = ("force-command", "source-address", "verify-required")


def _pack(pairs: Sequence[tuple[str, bytes]]) -> bytes:
    return b"".join(NS(name.encode()) + NS(data) for name, data in pairs)


def make_certificate(
    ca: keys.Key,
    key: keys.Key,
    *,
    host: bool = True,
    key_id: str = "rtunnel-test",
    principals: Sequence[str] = (),
    valid_after: int = 0,
    valid_before: int = FOREVER,
    serial: int = 0,
    critical_options: Sequence[tuple[str, bytes]] = (),
    extensions: Sequence[tuple[str, bytes]] | None = None,
    signature_algorithm: str | None = None,
    signed_as: str | None = None,
) -> bytes:
    """
    A certificate for ``key`` signed by the private key ``ca``, in wire form.

    :param host: a host certificate (else a user certificate).
    :param critical_options: (name, data) pairs; the data is in wire form, so a string
        value is packed: ``("source-address", NS(b"127.0.0.1/32"))``.
    :param extensions: (name, data) pairs; default: none for a host certificate, and
        ``ssh-keygen``'s for a user certificate (:data:`USER_CERTIFICATE_EXTENSIONS`, which
        include ``permit-port-forwarding``: without it sshd refuses remote forwards).
    :param signature_algorithm: what the CA signs with (default: its own type, and
        ``rsa-sha2-512`` for RSA, as ``ssh-keygen`` does).
    :param signed_as: the algorithm name written into the signature, when it should lie
        about ``signature_algorithm`` (for tests of a mislabelled signature).
    """
    if extensions is None:
        extensions = () if host else [(name, b"") for name in USER_CERTIFICATE_EXTENSIONS]
    plain = key.public().blob()
    key_type, fields = getNS(plain)
    cert_type = key_type + b"-cert-v01@openssh.com"
    body = (
        NS(cert_type)
        + NS(os.urandom(32))
        + fields
        + serial.to_bytes(8, "big")
        + (2 if host else 1).to_bytes(4, "big")
        + NS(key_id.encode())
        + NS(b"".join(NS(p.encode()) for p in principals))
        + valid_after.to_bytes(8, "big")
        + valid_before.to_bytes(8, "big")
        + NS(_pack(critical_options))
        + NS(_pack(extensions))
        + NS(b"")
        + NS(ca.public().blob())
    )
    algorithm = signature_algorithm or (
        "rsa-sha2-512" if ca.sshType() == b"ssh-rsa" else ca.sshType().decode()
    )
    signature = ca.sign(body, signatureType=algorithm.encode())
    if signed_as is not None:
        signature = NS(signed_as.encode()) + NS(getNS(signature, 2)[1])
    return bytes(body + NS(signature))


def certificate_line(blob: bytes, comment: str = "") -> str:
    """The ``*-cert.pub`` line for a certificate (type, base64, optional comment)."""
    line = f"{getNS(blob)[0].decode()} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line


class _CertificatePublicKey:
    """What Conch's server transport needs of a host public key: its ``blob()``."""

    def __init__(self, blob: bytes) -> None:
        self._blob = blob

    def blob(self) -> bytes:
        return self._blob


class _CertificateSigner:
    """
    What Conch's server transport needs of a host private key, for one certificate
    algorithm: the algorithm's name, and signing with the certified key under the plain
    signature algorithm (``rsa-sha2-512`` for ``rsa-sha2-512-cert-v01@openssh.com``).
    """

    def __init__(self, key: keys.Key, algorithm: str) -> None:
        self._key = key
        self._algorithm = algorithm

    def supportedSignatureAlgorithms(self) -> list[bytes]:  # noqa: N802 (Conch's name)
        return [self._algorithm.encode()]

    def sign(self, data: bytes, signatureType: bytes | None = None) -> bytes:  # noqa: N803
        plain = signature_algorithm_of(self._algorithm).encode()
        return bytes(self._key.sign(data, signatureType=plain))


def host_certificate_keys(
    private_key: keys.Key, certificate: bytes | str
) -> tuple[dict[bytes, Any], dict[bytes, Any]]:
    """
    Entries for a Conch ``SSHFactory``'s ``publicKeys`` and ``privateKeys`` that make the
    server present ``certificate`` (a wire blob or a ``*-cert.pub`` line) for its host key
    ``private_key`` under the certificate's host key algorithms (both RSA SHA-2 ones for
    an RSA key). Conch looks host keys up by algorithm name, so nothing else is needed.

    :raises ValueError: when the certificate is not for ``private_key``.
    """
    if isinstance(certificate, str):
        blob = base64.b64decode(certificate.split()[1])
    else:
        blob = bytes(certificate)
    cert = parse_certificate(blob)
    if cert.public_blob != private_key.public().blob():
        raise ValueError("The host certificate is for another key than the server's host key.")
    if cert.key_type == "ssh-rsa":
        names = ["rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com"]
    else:
        names = [cert.cert_type]
    public = {name.encode(): _CertificatePublicKey(blob) for name in names}
    private = {name.encode(): _CertificateSigner(private_key, name) for name in names}
    return public, private


# -- sshd's side of a user certificate


def read_ca_keys(keys_given: Iterable[keys.Key | str | os.PathLike[str]]) -> list[bytes]:
    """
    CA public keys, in wire form, as sshd's ``TrustedUserCAKeys`` takes them.

    :param keys_given: ``Key`` objects (public or private), OpenSSH public key lines
        (``ssh-ed25519 AAAA... comment``, a ``str``), or files of such lines (a
        ``pathlib.Path``; blank lines and ``#`` comments skipped).
    :raises ValueError: for a line that is not a public key, or a certificate (a CA key
        must be a plain key, as in sshd).
    """
    out: list[bytes] = []
    for given in keys_given:
        if isinstance(given, keys.Key):
            out.append(bytes(given.public().blob()))
            continue
        if isinstance(given, str):
            lines = [(given, "the CA key line")]
        else:
            path = Path(given)
            lines = [
                (line, f"{path}, line {number}")
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
        for line, where in lines:
            fields = line.split()
            try:
                blob = base64.b64decode(fields[1], validate=True)
            except (IndexError, ValueError):
                blob = b""
            if is_certificate(blob):
                raise ValueError(f"{where} is a certificate; a CA key must be a plain key.")
            try:
                key = keys.Key.fromString(blob)
            except Exception:  # Conch raises several kinds for a malformed blob
                key = None
            if key is None or getNS(blob)[0].decode("ascii", "replace") != fields[0]:
                raise ValueError(
                    f"{where} is not an OpenSSH public key line (type, base64, comment)."
                )
            out.append(blob)
    return out


def _source_addresses(data: bytes) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The ``source-address`` option's CIDR list (its data is one packed string)."""
    text, rest = getNS(data)
    if rest:
        raise ValueError("trailing data")
    return [ipaddress.ip_network(item, strict=False) for item in text.decode("ascii").split(",")]


def user_certificate_refusal(
    cert: SSHCertificate,
    *,
    user: str,
    trusted_cas: Collection[bytes],
    now: float,
    client_address: str,
    principals: Collection[str] | None = None,
) -> str | None:
    """
    Why sshd would refuse ``cert`` for a user, in its log's words, or None when it would
    accept it (auth2-pubkey.c ``user_cert_trusted_ca``, OpenSSH 9.2): a user certificate
    signed by a CA in ``TrustedUserCAKeys`` with an allowed algorithm
    (``CASignatureAlgorithms``), valid now, listing ``user`` or one of ``principals``
    (and so not empty), with only critical options sshd knows, and ``source-address`` (if
    present) listing ``client_address``. The CA signature must already have been checked
    (:func:`parse_certificate`).

    :param user: the user name logged on as.
    :param trusted_cas: the CA public keys, in wire form.
    :param now: seconds since the epoch.
    :param principals: the names of sshd's ``AuthorizedPrincipalsFile`` for the user; None:
        no such file, so the certificate must list the user name.
    """
    if cert.ca_blob not in trusted_cas:
        return f"CA {cert.ca_key_type} {cert.ca_fingerprint} is not listed in TrustedUserCAKeys"
    if cert.signature_algorithm not in ALLOWED_CA_SIGNATURE_ALGORITHMS:
        return (
            f"certificate signature algorithm {cert.signature_algorithm}: "
            "signature algorithm not supported"
        )
    reason = check_certificate(
        cert,
        want_host=False,
        name=user if principals is None else None,
        now=now,
        require_principal=True,
    )
    if reason is not None:
        return reason
    if principals is not None and not any(name in principals for name in cert.principals):
        return "Certificate does not contain an authorized principal"
    for name, data in cert.critical_options:
        if name not in USER_CRITICAL_OPTIONS:
            return f'Certificate critical option "{name}" is not supported'
        if name != "source-address":
            # force-command only restricts sessions, which the test server has none of;
            # verify-required only concerns FIDO keys (sshd 9.2 ignores it for others).
            continue
        try:
            networks = _source_addresses(data)
        except (ValueError, IndexError, UnicodeDecodeError):
            return "Certificate source-address contents invalid"
        address = ipaddress.ip_address(client_address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not any(address in network for network in networks):
            return (
                f"Authentication tried for {user} with valid certificate but not from a "
                f"permitted source address ({client_address})."
            )
    return None
