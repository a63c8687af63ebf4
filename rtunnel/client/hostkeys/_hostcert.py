"""
Host certificates in the client's key exchange.

Conch's client checks the server's exchange-hash signature with
``keys.Key.fromString(K_S)``, which cannot read an OpenSSH certificate
(``*-cert-v01@openssh.com``, PROTOCOL.certkeys). For a certificate, this mixin computes the
same exchange hash (RFC 4253 §8, RFC 5656 §4, RFC 4419 §3: K_S is the certificate as sent)
and checks the signature with the certified key instead, after the host-key policy
(:mod:`rtunnel.client.hostkeys.verify`) has judged the certificate itself. Plain host keys take
Conch's own path unchanged.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh import _kex as conch_kex
from twisted.conch.ssh import keys
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import MP, NS, getNS
from typing_extensions import override

from rtunnel.client.hostkeys.certificates import (
    CertificateError,
    is_certificate,
    is_certificate_algorithm,
    parse_certificate,
    signature_algorithm_of,
)

if TYPE_CHECKING:
    _Base = conch.SSHClientTransport
else:
    _Base = object

__all__ = ["HostCertificateMixin", "verify_exchange_signature"]


def verify_exchange_signature(
    host_blob: bytes, negotiated: bytes, signature: bytes, exchange_hash: bytes
) -> bool:
    """
    Whether ``signature`` over ``exchange_hash`` verifies with the server's host key
    ``host_blob`` (a plain key or a certificate) under the negotiated host key algorithm.

    For a certificate the algorithm must be a certificate algorithm of the same key type,
    and the signature must use that algorithm's signature (``rsa-sha2-512`` for
    ``rsa-sha2-512-cert-v01@openssh.com``; OpenSSH sshkey_verify checks this too).
    """
    algorithm = negotiated.decode("ascii", "replace")
    try:
        if is_certificate(host_blob):
            cert = parse_certificate(host_blob, verify=False)
            expected = signature_algorithm_of(algorithm)
            base = "ssh-rsa" if expected in ("rsa-sha2-512", "rsa-sha2-256") else expected
            if not is_certificate_algorithm(algorithm) or base != cert.key_type:
                return False
            if getNS(signature)[0].decode("ascii", "replace") != expected:
                return False
            key = keys.Key.fromString(cert.public_blob, type="blob")
        else:
            key = keys.Key.fromString(host_blob, type="blob")
        return bool(key.verify(signature, exchange_hash))
    except (CertificateError, keys.BadKeyError, ValueError, IndexError, struct.error):
        return False


class HostCertificateMixin(_Base):
    """
    Mix in before Conch's ``SSHClientTransport`` (and rtunnel's other transport mixins):
    the three Conch key exchange replies that check the exchange-hash signature (ECDH and
    curve25519; fixed DH groups; DH group exchange) accept a host certificate.
    """

    def _finish_certificate_kex(
        self, host_blob: bytes, middle: bytes, secret: bytes, signature: bytes
    ) -> None:
        # H = HASH(V_C || V_S || I_C || I_S || K_S || <exchange-specific values> || K).
        h = conch_kex.getHashProcessor(self.kexAlg)()
        for part in (
            self.ourVersionString,
            self.otherVersionString,
            self.ourKexInitPayload,
            self.otherKexInitPayload,
            host_blob,
        ):
            h.update(NS(part))
        h.update(middle)
        h.update(secret)
        exchange_hash = h.digest()
        if not verify_exchange_signature(host_blob, self.keyAlg, signature, exchange_hash):
            self.sendDisconnect(conch.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad signature")
            return
        self._keySetup(secret, exchange_hash)

    @override
    def _ssh_KEX_ECDH_REPLY(self, packet: bytes) -> Any:
        # RFC 5656 §4: string K_S, string Q_S, string signature.
        host_blob, server_public, signature, _ = getNS(packet, 3)
        if not is_certificate(host_blob):
            return super()._ssh_KEX_ECDH_REPLY(packet)  # type: ignore[misc]

        def finish(_ok: object) -> None:
            secret = self._generateECSharedSecret(self.ecPriv, server_public)
            ours = self._encodeECPublicKey(self.ecPub)
            self._finish_certificate_kex(host_blob, NS(ours) + NS(server_public), secret, signature)

        d = self.verifyHostKey(host_blob, b"")
        d.addCallback(finish)
        d.addErrback(
            lambda _f: self.sendDisconnect(
                conch.DISCONNECT_HOST_KEY_NOT_VERIFIABLE, b"bad host key"
            )
        )
        return d

    @override
    def _continueKEXDH_REPLY(
        self, ignored: object, pubKey: bytes, f: int, signature: bytes
    ) -> None:
        if not is_certificate(pubKey):
            super()._continueKEXDH_REPLY(ignored, pubKey, f, signature)  # type: ignore[misc]
            return
        secret = self._finishEphemeralDH(f)
        middle = self.dhSecretKeyPublicMP + MP(f)
        self._finish_certificate_kex(pubKey, middle, secret, signature)

    @override
    def _continueGEX_REPLY(self, ignored: object, pubKey: bytes, f: int, signature: bytes) -> None:
        if not is_certificate(pubKey):
            super()._continueGEX_REPLY(ignored, pubKey, f, signature)  # type: ignore[misc]
            return
        secret = self._finishEphemeralDH(f)
        sizes = struct.pack(
            ">LLL", self._dhMinimalGroupSize, self._dhPreferredGroupSize, self._dhMaximalGroupSize
        )
        middle = sizes + MP(self.p) + MP(self.g) + self.dhSecretKeyPublicMP + MP(f)
        self._finish_certificate_kex(pubKey, middle, secret, signature)
