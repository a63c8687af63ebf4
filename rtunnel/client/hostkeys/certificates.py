"""
OpenSSH certificates (OpenSSH's PROTOCOL.certkeys): reading one, checking its CA
signature, and the checks OpenSSH makes before it trusts a host certificate
(``sshkey_cert_check_authority`` in sshkey.c, ``check_host_cert`` in sshconnect.c).
Also the host key algorithm names that carry certificates. Pure: no reactor, no I/O.

A certificate, in wire form (PROTOCOL.certkeys)::

    string  "ssh-ed25519-cert-v01@openssh.com"     (the certificate type)
    string  nonce
    ...     the certified key's own fields          (as in its plain blob, after the type)
    uint64  serial
    uint32  type                                    (1 user, 2 host)
    string  key id
    string  valid principals                        (packed strings)
    uint64  valid after
    uint64  valid before
    string  critical options                        (packed name, data pairs)
    string  extensions                              (likewise)
    string  reserved
    string  signature key                           (the CA's public key)
    string  signature                               (over everything above)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS, getNS

from rtunnel._core.text import printable
from rtunnel.client.hostkeys.known_hosts import fingerprint_sha256

__all__ = [
    "ALLOWED_CA_SIGNATURE_ALGORITHMS",
    "CERT_SUFFIX",
    "HOST_CERTIFICATE",
    "USER_CERTIFICATE",
    "CertificateError",
    "SSHCertificate",
    "certificate_algorithms",
    "check_certificate",
    "check_host_certificate",
    "is_certificate",
    "is_certificate_algorithm",
    "key_type_of_algorithm",
    "parse_certificate",
    "signature_algorithm_of",
]

CERT_SUFFIX = "-cert-v01@openssh.com"

#: The certificate ``type`` field (PROTOCOL.certkeys: SSH2_CERT_TYPE_USER / _HOST).
USER_CERTIFICATE = 1
HOST_CERTIFICATE = 2

#: OpenSSH's default ``CASignatureAlgorithms`` (myproposal.h, SSH_ALLOWED_CA_SIGALGS, since
#: 8.2: no SHA-1 ``ssh-rsa``), less the FIDO kinds rtunnel cannot verify.
ALLOWED_CA_SIGNATURE_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)

#: How many string/mpint fields each key type has after its type name.
_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ssh-dss": 4,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
}

#: The signature algorithms each key type may sign with.
_SIGNATURES = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
    "ssh-dss": ("ssh-dss",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}

#: valid_before meaning "no end" (ssh-keygen writes 2^64 - 1).
_FOREVER = 0xFFFFFFFFFFFFFFFF


class CertificateError(ValueError):
    """The bytes are not an OpenSSH certificate rtunnel can use; the message says why."""


@dataclass(frozen=True)
class SSHCertificate:
    """
    An OpenSSH certificate, as read by :func:`parse_certificate`.

    :ivar blob: the certificate in wire form.
    :ivar cert_type: e.g. ``ssh-ed25519-cert-v01@openssh.com``.
    :ivar key_type: the certified key's type, e.g. ``ssh-ed25519``.
    :ivar public_blob: the certified key in wire form (its plain blob).
    :ivar nonce: the CA's random nonce.
    :ivar serial: the serial number the CA gave it.
    :ivar kind: :data:`USER_CERTIFICATE` or :data:`HOST_CERTIFICATE`.
    :ivar key_id: the CA's identifier for it (``ssh-keygen -I``); the reference's
        CertSubject.
    :ivar principals: the names it is valid for (host names for a host certificate); empty
        means any.
    :ivar valid_after: start of validity, seconds since the epoch (0: always).
    :ivar valid_before: end of validity, seconds since the epoch (2^64-1: never).
    :ivar critical_options: (name, data) pairs; a host certificate must have none.
    :ivar extensions: (name, data) pairs.
    :ivar ca_blob: the CA's public key in wire form; the reference's CertIssuer is its
        fingerprint, :attr:`ca_fingerprint`.
    :ivar signature: the CA's signature (algorithm name and signature, in wire form).
    """

    blob: bytes
    cert_type: str
    key_type: str
    public_blob: bytes
    nonce: bytes
    serial: int
    kind: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: tuple[tuple[str, bytes], ...]
    extensions: tuple[tuple[str, bytes], ...]
    ca_blob: bytes
    signature: bytes

    @property
    def is_host(self) -> bool:
        """Whether this is a host certificate."""
        return self.kind == HOST_CERTIFICATE

    @property
    def ca_key_type(self) -> str:
        """The CA key's type, e.g. ``ssh-ed25519``."""
        return getNS(self.ca_blob)[0].decode("ascii", "replace")

    @property
    def ca_fingerprint(self) -> str:
        """The CA key's SHA256 fingerprint in OpenSSH's form."""
        return fingerprint_sha256(self.ca_blob)

    @property
    def fingerprint(self) -> str:
        """The certified key's SHA256 fingerprint (OpenSSH shows this for a certificate)."""
        return fingerprint_sha256(self.public_blob)

    @property
    def signature_algorithm(self) -> str:
        """The algorithm the CA signed with, e.g. ``rsa-sha2-512``."""
        return getNS(self.signature)[0].decode("ascii", "replace")

    def validity(self) -> str:
        """The validity interval in OpenSSH's words (``forever``, ``from X to Y``), in UTC."""
        if self.valid_after == 0 and self.valid_before == _FOREVER:
            return "forever"
        parts = []
        if self.valid_after != 0:
            parts.append(f"from {_time_text(self.valid_after)}")
        if self.valid_before != _FOREVER:
            parts.append(f"to {_time_text(self.valid_before)}")
        return " ".join(parts)

    def describe(self) -> str:
        """One line for logs: type, key id, serial, CA, validity, principals."""
        # The certificate's text is the peer's: escaped and capped (RELIABILITY.md D17).
        names = printable(",".join(self.principals)) or "(any)"
        return (
            f"{printable(self.cert_type, 64)} {self.fingerprint}, serial {self.serial} "
            f"ID '{printable(self.key_id)}' "
            f"CA {self.ca_key_type} {self.ca_fingerprint} valid {self.validity()}, "
            f"principals {names}"
        )


def _time_text(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "the far future"


def is_certificate(blob: bytes) -> bool:
    """Whether ``blob`` is (named as) an OpenSSH certificate."""
    try:
        name = getNS(blob)[0]
    except (struct.error, IndexError):
        return False
    return name.endswith(CERT_SUFFIX.encode())


def _take(data: bytes, what: str) -> tuple[bytes, bytes]:
    if len(data) < 4:
        raise CertificateError(f"The certificate is truncated in its {what}.")
    (length,) = struct.unpack(">L", data[:4])
    if len(data) < 4 + length:
        raise CertificateError(f"The certificate is truncated in its {what}.")
    return data[4 : 4 + length], data[4 + length :]


def _take_uint(data: bytes, size: int, what: str) -> tuple[int, bytes]:
    if len(data) < size:
        raise CertificateError(f"The certificate is truncated in its {what}.")
    return int.from_bytes(data[:size], "big"), data[size:]


def _strings(packed: bytes, what: str) -> list[bytes]:
    out = []
    while packed:
        value, packed = _take(packed, what)
        out.append(value)
    return out


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise CertificateError(f"The certificate's {what} is not UTF-8 text.") from None


def _options(packed: bytes, what: str) -> tuple[tuple[str, bytes], ...]:
    fields = _strings(packed, what)
    if len(fields) % 2:
        raise CertificateError(f"The certificate's {what} are malformed.")
    return tuple((_text(fields[i], what), fields[i + 1]) for i in range(0, len(fields), 2))


def parse_certificate(blob: bytes, *, verify: bool = True) -> SSHCertificate:
    """
    Read an OpenSSH certificate in wire form.

    :param verify: check the CA's signature over it (as OpenSSH does whenever it reads one);
        the CA key must not itself be a certificate and must have signed with an
        algorithm that fits its type.
    :raises CertificateError: for anything else than a well-formed certificate of a type
        rtunnel knows (ed25519, ECDSA, RSA, DSA) with a valid signature.
    """
    data = bytes(blob)
    raw_type, rest = _take(data, "type")
    cert_type = raw_type.decode("ascii", "replace")
    if not cert_type.endswith(CERT_SUFFIX):
        raise CertificateError(f"{cert_type[:64]!r} is not an OpenSSH certificate type.")
    key_type = cert_type[: -len(CERT_SUFFIX)]
    count = _KEY_FIELDS.get(key_type)
    if count is None:
        raise CertificateError(f"Unsupported certificate type {cert_type[:64]!r}.")
    nonce, rest = _take(rest, "nonce")
    fields = []
    for _ in range(count):
        value, rest = _take(rest, "public key")
        fields.append(value)
    if key_type.startswith("ecdsa-sha2-") and fields[0] != key_type[len("ecdsa-sha2-") :].encode():
        raise CertificateError(f"The {cert_type} certificate names another curve.")
    serial, rest = _take_uint(rest, 8, "serial")
    kind, rest = _take_uint(rest, 4, "type")
    key_id, rest = _take(rest, "key id")
    principals, rest = _take(rest, "principals")
    valid_after, rest = _take_uint(rest, 8, "validity")
    valid_before, rest = _take_uint(rest, 8, "validity")
    critical, rest = _take(rest, "critical options")
    extensions, rest = _take(rest, "extensions")
    _reserved, rest = _take(rest, "reserved field")
    ca_blob, rest = _take(rest, "signature key")
    signed_length = len(data) - len(rest)
    signature, rest = _take(rest, "signature")
    if rest:
        raise CertificateError("The certificate has trailing data after its signature.")
    if kind not in (USER_CERTIFICATE, HOST_CERTIFICATE):
        raise CertificateError(f"The certificate has an unknown type {kind}.")
    cert = SSHCertificate(
        blob=data,
        cert_type=cert_type,
        key_type=key_type,
        public_blob=NS(key_type.encode()) + b"".join(NS(f) for f in fields),
        nonce=nonce,
        serial=serial,
        kind=kind,
        key_id=_text(key_id, "key id"),
        principals=tuple(_text(p, "principals") for p in _strings(principals, "principals")),
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=_options(critical, "critical options"),
        extensions=_options(extensions, "extensions"),
        ca_blob=ca_blob,
        signature=signature,
    )
    if verify:
        _verify_ca_signature(cert, data[:signed_length])
    return cert


def _verify_ca_signature(cert: SSHCertificate, signed: bytes) -> None:
    ca_type = cert.ca_key_type
    if ca_type.endswith(CERT_SUFFIX):
        raise CertificateError("The certificate's signature key is itself a certificate.")
    try:
        sig_type = cert.signature_algorithm
        ca = keys.Key.fromString(cert.ca_blob, type="blob")
    except (keys.BadKeyError, ValueError, IndexError, struct.error) as e:
        raise CertificateError(f"The certificate's CA key cannot be read ({e}).") from None
    # Conch's Key.verify hashes by key type for ed25519 whatever the named algorithm, so
    # the name is checked here (OpenSSH: sshkey_verify with the key's own type).
    if sig_type not in _SIGNATURES.get(ca_type, ()):
        raise CertificateError(
            f"The certificate is signed with {sig_type!r}, which a {ca_type} CA key cannot use."
        )
    try:
        good = ca.verify(cert.signature, signed)
    except Exception:  # malformed signature fields: Conch raises various errors
        good = False
    if not good:
        raise CertificateError("The certificate's CA signature is invalid.")


def check_certificate(
    cert: SSHCertificate,
    *,
    want_host: bool,
    name: str | None,
    now: float,
    require_principal: bool = False,
) -> str | None:
    """
    OpenSSH's ``sshkey_cert_check_authority``: the certificate's type, validity interval
    and principals. Principals compare exactly (no wildcards: OpenSSH 9.2's client, checked
    against ``ssh -o HostKeyAlias``).

    :param name: the principal that must be listed (None: any).
    :param now: the time to check against, seconds since the epoch.
    :return: None when it passes, else the reason in OpenSSH's words.
    """
    if want_host and cert.kind != HOST_CERTIFICATE:
        return "Certificate invalid: not a host certificate"
    if not want_host and cert.kind != USER_CERTIFICATE:
        return "Certificate invalid: not a user certificate"
    when = int(now)
    if when < cert.valid_after:
        return f"Certificate invalid: not yet valid (valid {cert.validity()})"
    if when >= cert.valid_before:
        return f"Certificate invalid: expired (valid {cert.validity()})"
    if not cert.principals:
        if require_principal:
            return "Certificate lacks principal list"
    elif name is not None and name not in cert.principals:
        return (
            f"Certificate invalid: name is not a listed principal ({name!r} is not in "
            f"{printable(', '.join(cert.principals))})"
        )
    return None


def check_host_certificate(
    cert: SSHCertificate,
    host: str,
    now: float,
    *,
    ca_signature_algorithms: Sequence[str] = ALLOWED_CA_SIGNATURE_ALGORITHMS,
) -> str | None:
    """
    OpenSSH's ``check_host_cert``: a host certificate, valid now, listing ``host`` (the name
    connected to, lowercased, without the port) unless it lists no principals, with no
    critical options (none are defined for host certificates) and signed with an allowed
    algorithm (``CASignatureAlgorithms``).

    :return: None when it passes, else the reason in OpenSSH's words.
    """
    reason = check_certificate(cert, want_host=True, name=host.lower(), now=now)
    if reason is not None:
        return reason
    if cert.critical_options:
        names = printable(", ".join(name for name, _ in cert.critical_options))
        return f"Certificate contains unsupported critical options ({names})"
    if cert.signature_algorithm not in ca_signature_algorithms:
        algorithm = printable(cert.signature_algorithm, 64)
        return (
            f"Certificate signed with disallowed algorithm {algorithm} "
            f"(allowed: {','.join(ca_signature_algorithms)})"
        )
    return None


# -- host key algorithm names


def is_certificate_algorithm(algorithm: str) -> bool:
    """Whether a host key algorithm name carries a certificate."""
    return algorithm.endswith(CERT_SUFFIX)


def key_type_of_algorithm(algorithm: str) -> str:
    """
    The known_hosts key type an algorithm's host key has: ``ssh-rsa`` for
    ``rsa-sha2-512`` and its certificate form, the plain type for a certificate algorithm.
    """
    base = algorithm[: -len(CERT_SUFFIX)] if is_certificate_algorithm(algorithm) else algorithm
    return "ssh-rsa" if base in ("rsa-sha2-512", "rsa-sha2-256") else base


def signature_algorithm_of(algorithm: str) -> str:
    """
    The signature algorithm a host key algorithm signs the exchange with:
    ``rsa-sha2-512`` for ``rsa-sha2-512-cert-v01@openssh.com`` (OpenSSH PROTOCOL.certkeys).
    """
    return algorithm[: -len(CERT_SUFFIX)] if is_certificate_algorithm(algorithm) else algorithm


def certificate_algorithms(algorithms: Sequence[str]) -> list[str]:
    """
    The certificate algorithms for ``algorithms`` in the same order (``ssh-ed25519`` gives
    ``ssh-ed25519-cert-v01@openssh.com``; ``ssh-dss`` none, as OpenSSH dropped DSA
    certificates).
    """
    out = []
    for name in algorithms:
        if is_certificate_algorithm(name) or name == "ssh-dss":
            continue
        cert = name + CERT_SUFFIX
        if cert not in out:
            out.append(cert)
    return out
