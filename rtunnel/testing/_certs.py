"""
OpenSSH certificates made in Python, for tests (what ``ssh-keygen -s`` does, OpenSSH's
PROTOCOL.certkeys), including kinds ``ssh-keygen`` will not make: host certificates with
critical options, SHA-1 signatures, a signature under the wrong name.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Any

from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS, getNS

from rtunnel.client.certificates import parse_certificate, signature_algorithm_of

__all__ = ["FOREVER", "certificate_line", "host_certificate_keys", "make_certificate"]

#: ``valid_before`` for a certificate that never expires.
FOREVER = 0xFFFFFFFFFFFFFFFF


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
    extensions: Sequence[tuple[str, bytes]] = (),
    signature_algorithm: str | None = None,
    signed_as: str | None = None,
) -> bytes:
    """
    A certificate for ``key`` signed by the private key ``ca``, in wire form.

    :param host: a host certificate (else a user certificate).
    :param signature_algorithm: what the CA signs with (default: its own type, and
        ``rsa-sha2-512`` for RSA, as ``ssh-keygen`` does).
    :param signed_as: the algorithm name written into the signature, when it should lie
        about ``signature_algorithm`` (for tests of a mislabelled signature).
    """
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
