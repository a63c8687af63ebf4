"""
Which signature algorithm a public key authenticates with (the reference's
SSHPubKeyAuthSigAlgorithms, OpenSSH's ``PubkeyAcceptedAlgorithms``). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from rtunnel.client.transport._algorithms import apply_modifiers
from rtunnel.errors import SpecError

__all__ = [
    "CERT_SUFFIX",
    "DEFAULT_PUBKEY_ALGORITHMS",
    "SUPPORTED_PUBKEY_ALGORITHMS",
    "choose_signature_algorithm",
    "request_algorithm",
    "resolve_pubkey_algorithms",
]

CERT_SUFFIX = b"-cert-v01@openssh.com"

#: OpenSSH 9's default PubkeyAcceptedAlgorithms (myproposal.h), less the FIDO (sk-*)
#: kinds rtunnel cannot use: certificates first, SHA-2 for RSA.
DEFAULT_PUBKEY_ALGORITHMS: tuple[str, ...] = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
#: Also RSA with SHA-1, which OpenSSH 8.8+ leaves out of the default.
SUPPORTED_PUBKEY_ALGORITHMS: tuple[str, ...] = (
    *DEFAULT_PUBKEY_ALGORITHMS,
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-rsa",
)

_RSA_SIGNATURES = (b"rsa-sha2-512", b"rsa-sha2-256", b"ssh-rsa")


def resolve_pubkey_algorithms(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """
    The accepted algorithms ``value`` means: None stays None (rtunnel's automatic
    choice), a string in OpenSSH's syntax (``+`` appends to
    :data:`DEFAULT_PUBKEY_ALGORITHMS`, ``-`` removes, ``^`` puts first, wildcards), a
    sequence of names as given.

    :raises SpecError: for an unknown name or an empty list.
    """
    if value is None:
        return None
    if isinstance(value, str):
        spec = value
    else:
        names = [str(name).strip() for name in value]
        if not names or any(not name or name[0] in "+-^" for name in names):
            raise SpecError("pubkey_accepted_algorithms: give algorithm names, at least one.")
        spec = ",".join(names)
    return tuple(
        apply_modifiers("public key", spec, DEFAULT_PUBKEY_ALGORITHMS, SUPPORTED_PUBKEY_ALGORITHMS)
    )


def _automatic(key_type: bytes, server_sig_algs: bytes | None) -> bytes:
    # RSA signs with SHA-2 (RFC 8332): from server-sig-algs (RFC 8308 section 3.1) when
    # the server lists it, else rsa-sha2-512, as OpenSSH 8.8+ refuses SHA-1 signatures.
    if key_type != b"ssh-rsa":
        return key_type
    if server_sig_algs is not None:
        offered = server_sig_algs.split(b",")
        for candidate in _RSA_SIGNATURES:
            if candidate in offered:
                return candidate
    return b"rsa-sha2-512"


def choose_signature_algorithm(
    key_type: bytes,
    *,
    certificate: bool,
    server_sig_algs: bytes | None,
    accepted: Sequence[str] | None,
) -> bytes | None:
    """
    The signature algorithm for a key of ``key_type`` (``ssh-rsa``, ``ssh-ed25519``,
    ``ecdsa-sha2-nistp256``...), or None when ``accepted`` allows none for it (the key is
    then skipped, as OpenSSH skips it).

    :param certificate: whether the key is offered as a certificate (then the accepted
        names to look for are the ``*-cert-v01@openssh.com`` ones).
    :param server_sig_algs: the server's ``server-sig-algs`` (RFC 8308), if it sent one.
    :param accepted: None for the automatic choice (RSA: the best SHA-2 the server lists,
        else rsa-sha2-512); else the accepted list, in preference order. For RSA, the first
        RSA entry whose signature the server lists (OpenSSH's ``key_sig_algorithm``), or,
        without ``server-sig-algs``, the first RSA entry (the reference's rule).
    """
    if accepted is None:
        return _automatic(key_type, server_sig_algs)
    suffix = CERT_SUFFIX if certificate else b""
    names = [name.encode("ascii") for name in accepted]
    if key_type != b"ssh-rsa":
        return key_type if key_type + suffix in names else None
    rsa = [
        name.removesuffix(suffix)
        for name in names
        if name.endswith(suffix)
        and name.removesuffix(suffix) in _RSA_SIGNATURES
        and (certificate or not name.endswith(CERT_SUFFIX))
    ]
    if server_sig_algs is not None:
        offered = server_sig_algs.split(b",")
        return next((name for name in rsa if name in offered), None)
    return rsa[0] if rsa else None


def request_algorithm(cert_type: bytes | None, signing: bytes) -> bytes:
    """
    The algorithm a ``publickey`` request names: the signature algorithm for a plain key;
    for a certificate its own type, except RSA certificates, which name the SHA-2
    signature (``rsa-sha2-512-cert-v01@openssh.com``, OpenSSH 7.8+).
    """
    if cert_type is None:
        return signing
    if cert_type == b"ssh-rsa" + CERT_SUFFIX and signing != b"ssh-rsa":
        return signing + CERT_SUFFIX
    return cert_type
