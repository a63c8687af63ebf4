"""
The SSH client transport: Conch's key exchange with rtunnel's packet layer, algorithm lists,
strict key exchange and rekeying (:mod:`rtunnel.client.transport._kex`), rtunnel's host-key policy,
a service requested once per connection, and the reason a connection ended kept for the
caller.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

from twisted.conch.ssh import _kex as conch_kex
from twisted.conch.ssh import common, transport
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from rtunnel._core.text import printable
from rtunnel._core.version import __version__
from rtunnel.client.auth.userauth import LoadedKey, UserAuthClient, UserAuthSettings
from rtunnel.client.channels.connection import ForwardingConnection
from rtunnel.client.hostkeys._hostcert import HostCertificateMixin, verify_exchange_signature
from rtunnel.client.transport import _algorithms
from rtunnel.client.transport._kex import DEFAULT_REKEY_BYTES, SecureTransportMixin, cipher_spec
from rtunnel.client.transport._packet import MACS
from rtunnel.errors import (
    ConnectionLostError,
    ECDHKeyExchangeError,
    HostKeyError,
    HostKeySignatureError,
    KeyExchangeError,
    RTunnelError,
)

__all__ = ["ClientTransport"]

#: Checks a host key blob; fires True to accept, or fails with HostKeyError.
HostKeyVerifier = Callable[[bytes], Deferred[bool]]

_log = Logger()

# mlkem768x25519-sha256 (draft-ietf-sshm-mlkem-hybrid-kex; OpenSSH 9.9+): ML-KEM-768
# ciphertext and X25519 public key lengths in the server's S_REPLY.
_MLKEM768_CIPHERTEXT = 1088
_X25519_KEY = 32
_MSG_KEX_HYBRID_INIT = 30


def default_client_version() -> str:
    """``SSH-2.0-rtunnel_<version>``: our identification line unless told otherwise."""
    return f"SSH-2.0-rtunnel_{__version__}"


class ClientTransport(HostCertificateMixin, SecureTransportMixin, transport.SSHClientTransport):
    """
    :param ciphers: cipher names to offer, in order (default
        :data:`~rtunnel.client.transport._algorithms.DEFAULT_CIPHERS`); likewise ``macs``,
        ``kex_algorithms`` and ``host_key_algorithms``. Checked by the caller
        (:func:`rtunnel.client.transport._algorithms.resolve`).
    :param require_strict_kex: disconnect unless the server offers strict key exchange.
    :param rekey_bytes: rekey once this many bytes have gone one way, each direction
        counted on its own (0: only the cipher's limit).
    :param rekey_seconds: rekey after this many seconds (None: never).
    :param clock: the clock for ``rekey_seconds``, the key-exchange timeout and liveness
        (the tunnel passes its own; None: no timers, for tests of the packet layer).
    :param compression: offer zlib compression (``zlib@openssh.com``, then ``zlib``).
    :param on_secure: called once, when the first key exchange is done (before
        authentication starts).
    :param preferred_dh_group_bits: the group size to ask for in group exchange (the
        seed's PreferredDHGroupBits); None: as OpenSSH, from the negotiated keys' strength.
    :param client_version: our identification line (default
        :func:`default_client_version`), checked by the caller.
    :param server_version_pattern: patterns the server's version line must match.
    :param on_server_version: called with the server's version line (escaped) on arrival.
    :ivar error: why the connection ended, when we know better than "connection lost"
        (host key refused, authentication refused, the server's DISCONNECT message, a
        protocol error).
    """

    def __init__(
        self,
        *,
        user: str,
        keys_to_try: Sequence[LoadedKey],
        passwords: Sequence[str],
        verify_host_key: HostKeyVerifier,
        connection: ForwardingConnection,
        on_lost: Callable[[ClientTransport, Failure], None],
        auth_options: UserAuthSettings | None = None,
        ciphers: Sequence[str] = _algorithms.DEFAULT_CIPHERS,
        macs: Sequence[str] = _algorithms.DEFAULT_MACS,
        kex_algorithms: Sequence[str] = _algorithms.DEFAULT_KEX,
        host_key_algorithms: Sequence[str] = _algorithms.DEFAULT_HOST_KEY_ALGORITHMS,
        require_strict_kex: bool = False,
        rekey_bytes: int = DEFAULT_REKEY_BYTES,
        rekey_seconds: float | None = None,
        clock: IReactorTime | None = None,
        compression: bool = False,
        on_secure: Callable[[ClientTransport], None] | None = None,
        preferred_dh_group_bits: int | None = None,
        client_version: str | None = None,
        server_version_pattern: Sequence[str] | None = None,
        on_server_version: Callable[[str], None] | None = None,
    ) -> None:
        self.ourVersionString = (client_version or default_client_version()).encode("ascii")
        if server_version_pattern is not None:
            self.version_patterns = tuple(server_version_pattern)
        self.preferred_dh_group_bits = preferred_dh_group_bits
        self._on_server_version = on_server_version
        self._user = user
        self._on_secure = on_secure
        self._keys = keys_to_try
        self._passwords = passwords
        self._auth_options = auth_options
        self._verify = verify_host_key
        self.connection = connection
        self._on_lost = on_lost
        self._first_host_key: bytes | None = None
        self.userauth: UserAuthClient | None = None
        self.error: RTunnelError | None = None
        self.supportedCiphers = [name.encode() for name in ciphers]
        self.supportedMACs = [name.encode() for name in macs]
        self.supportedKeyExchanges = [name.encode() for name in kex_algorithms]
        self.supportedPublicKeys = [name.encode() for name in host_key_algorithms]
        # Off by default, as in OpenSSH; on: zlib@openssh.com (from authentication on) or
        # zlib, with every inflate bounded.
        self.supportedCompressions = (
            [b"zlib@openssh.com", b"zlib", b"none"] if compression else [b"none"]
        )
        self.require_strict_kex = require_strict_kex
        self.rekey_bytes = rekey_bytes
        self.rekey_seconds = rekey_seconds
        self.rekey_clock = clock

    @override
    def transport_error(self, error: RTunnelError) -> None:
        if self.error is None:
            self.error = error

    @override
    def _kex_timed_out(self) -> None:
        # Our own timeout (D13), not a protocol error of the server's and not the server
        # closing the connection: said as what it is (issue 13).
        self.transport_error(
            ConnectionLostError(
                f"Timeout: key exchange not finished after {self.kex_timeout:g} s (the "
                "server stopped answering); rtunnel closed the connection."
            )
        )
        super()._kex_timed_out()

    @override
    def peer_version_received(self, version: str) -> None:
        if self._on_server_version is not None:
            self._on_server_version(version)

    # -- key exchange: what Conch's client lacks

    @override
    def _accept_kexinit(self, packet: bytes, peer_kex: list[bytes]) -> None:
        kex = next(k for k in self.supportedKeyExchanges if k in peer_kex)
        if conch_kex.isPQHybrid(kex):
            # Conch's client would answer a hybrid with a group exchange request.
            if transport.SSHTransportBase.ssh_KEXINIT(self, packet) is None:
                return
            self._start_hybrid()
        elif conch_kex.isDynamicPrimesGroup(kex):
            if transport.SSHTransportBase.ssh_KEXINIT(self, packet) is None:
                return
            # RFC 4419 §3; the sizes follow the negotiated keys, as OpenSSH's do (Conch's
            # client asks for 1024-2048-8192 whatever the ciphers). Conch hashes these
            # attributes into H.
            sizes = self._dh_request()
            (
                self._dhMinimalGroupSize,
                self._dhPreferredGroupSize,
                self._dhMaximalGroupSize,
            ) = sizes
            self.sendPacket(transport.MSG_KEX_DH_GEX_REQUEST, struct.pack(">LLL", *sizes))
        else:
            super()._accept_kexinit(packet, peer_kex)
        if self.sessionID is None and not self._closing:
            self._warn_legacy()

    def _warn_legacy(self) -> None:
        enc = self.nextEncryptions
        chosen = [
            ("kex", self.kexAlg),
            ("host key", self.keyAlg),
            ("cipher", enc.outCipType),
            ("cipher", enc.inCipType),
            ("mac", enc.outMACType if not cipher_spec(enc.outCipType).aead else b""),
            ("mac", enc.inMACType if not cipher_spec(enc.inCipType).aead else b""),
        ]
        weak = sorted(
            {
                f"{kind} {name.decode()}"
                for kind, name in chosen
                if name and _algorithms.legacy_names(kind, [name.decode()])
            }
        )
        if weak:
            _log.warn(
                "Using legacy SSH algorithms, as configured: {weak}. They are weak; "
                "upgrade the server and drop them from the algorithm lists.",
                weak=", ".join(weak),
            )

    def _dh_request(self) -> tuple[int, int, int]:
        enc = self.nextEncryptions
        sizes: list[int] = []
        for cipher, mac in ((enc.outCipType, enc.outMACType), (enc.inCipType, enc.inMACType)):
            spec = cipher_spec(cipher)
            sizes += [spec.key_size, spec.block_size, spec.iv_size]
            if not spec.aead and mac in MACS:
                sizes.append(MACS[mac].size)
        return _algorithms.dh_group_request(
            self.preferred_dh_group_bits, _algorithms.kex_need_bytes(sizes)
        )

    @override
    def ssh_KEX_DH_GEX_GROUP(self, packet: bytes) -> Any:
        # Message 31 is also the reply of the fixed-group, ECDH and hybrid exchanges.
        if conch_kex.isPQHybrid(self.kexAlg):
            return self._hybrid_reply(packet)
        if not (conch_kex.isFixedGroup(self.kexAlg) or conch_kex.isEllipticCurve(self.kexAlg)):
            p, rest = common.getMP(packet)
            g, _ = common.getMP(rest)
            low, high = self._dhMinimalGroupSize, self._dhMaximalGroupSize
            # OpenSSH kexgexc.c: "DH_GEX group out of range".
            if not low <= p.bit_length() <= high or not 1 < g < p - 1:
                self._kex_failed(
                    KeyExchangeError(
                        f"SSH key exchange failed: the server offered a {p.bit_length()}-bit "
                        f"Diffie-Hellman group; we asked for {low} to {high} bits."
                    )
                )
                return None
        return super().ssh_KEX_DH_GEX_GROUP(packet)

    def _start_hybrid(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

        self._mlkem_key = mlkem.MLKEM768PrivateKey.generate()
        self._x25519_key = x25519.X25519PrivateKey.generate()
        # C_INIT = C_PK2 (ML-KEM public key) || C_PK1 (X25519 public key).
        self._c_init = (
            self._mlkem_key.public_key().public_bytes_raw()
            + self._x25519_key.public_key().public_bytes_raw()
        )
        self.sendPacket(_MSG_KEX_HYBRID_INIT, common.NS(self._c_init))

    def _hybrid_reply(self, packet: bytes) -> Deferred[Any]:
        # SSH_MSG_KEX_HYBRID_REPLY: string K_S, string S_REPLY, string signature.
        host_key, s_reply, signature, _rest = common.getNS(packet, 3)
        d: Deferred[Any] = self.verifyHostKey(host_key, b"")
        d.addCallback(lambda _ok: self._finish_hybrid(host_key, s_reply, signature))
        d.addErrback(
            lambda _f: self.sendDisconnect(
                transport.DISCONNECT_HOST_KEY_NOT_VERIFIABLE, b"bad host key"
            )
        )
        return d

    def _finish_hybrid(self, host_key: bytes, s_reply: bytes, signature: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import x25519

        try:
            if len(s_reply) != _MLKEM768_CIPHERTEXT + _X25519_KEY:
                raise ValueError(f"S_REPLY of {len(s_reply)} bytes")
            k_pq = self._mlkem_key.decapsulate(s_reply[:_MLKEM768_CIPHERTEXT])
            server_x25519 = x25519.X25519PublicKey.from_public_bytes(s_reply[_MLKEM768_CIPHERTEXT:])
            k_cl = self._x25519_key.exchange(server_x25519)
        except ValueError as e:
            self._kex_failed(
                ECDHKeyExchangeError(
                    f"SSH key exchange failed: the server's mlkem768x25519 reply is invalid ({e})."
                )
            )
            return
        # K = HASH(K_PQ || K_CL), encoded as a string (not an mpint) in H and the keys.
        secret = common.NS(sha256(k_pq + k_cl).digest())
        h = sha256()
        for part in (
            self.ourVersionString,
            self.otherVersionString,
            self.ourKexInitPayload,
            self.otherKexInitPayload,
            host_key,
            self._c_init,
            s_reply,
        ):
            h.update(common.NS(part))
        h.update(secret)
        exchange_hash = h.digest()
        del self._mlkem_key, self._x25519_key
        if not verify_exchange_signature(host_key, self.keyAlg, signature, exchange_hash):
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad signature")
            return
        self._keySetup(secret, exchange_hash)

    @override
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        if self._first_host_key is not None:
            # A later key exchange must present the same key as the first.
            if hostKey == self._first_host_key:
                return defer.succeed(True)
            self.error = HostKeyError("The server presented a different host key on re-key.")
            return defer.fail(self.error)
        d = self._verify(hostKey)

        def accepted(ok: bool) -> bool:
            self._first_host_key = hostKey
            return ok

        def refused(failure: Failure) -> Failure:
            if isinstance(failure.value, RTunnelError):
                self.error = failure.value
            return failure

        return d.addCallbacks(accepted, refused)

    @override
    def connectionSecure(self) -> None:
        # Conch calls this after every key exchange; the service is requested once
        # (a second request makes OpenSSH log kex_protocol_error).
        if self.userauth is not None:
            return
        if self._on_secure is not None:
            self._on_secure(self)
        self.userauth = UserAuthClient(
            self._user, self.connection, self._keys, self._passwords, self._auth_options
        )
        self.requestService(self.userauth)

    def announce_disconnect(self, description: str) -> None:
        """
        Send DISCONNECT (by application) but leave closing the TCP connection to the
        server, so that the TIME_WAIT state stays on its side (the reference's
        WaitForServerDisconnect).
        """
        if self._closing:
            return
        self.sendPacket(
            transport.MSG_DISCONNECT,
            struct.pack(">L", transport.DISCONNECT_BY_APPLICATION)
            + common.NS(description.encode())
            + common.NS(b""),
        )
        self._closing = True

    @override
    def receiveError(self, reasonCode: int, description: bytes) -> None:
        text = printable(description, 512)
        if self.error is None:
            self.error = ConnectionLostError(
                f"The server disconnected: '{text}' (SSH reason code {reasonCode})."
            )

    @override
    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if (
            reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
            and self.userauth is not None
            and self.userauth.failure is not None
            and self.error is None
        ):
            self.error = self.userauth.failure
        if self.connection.protocol_error is not None and self.error is None:
            self.error = self.connection.protocol_error
        if (
            reason == transport.DISCONNECT_KEY_EXCHANGE_FAILED
            and desc == b"bad signature"
            and self.error is None
        ):
            # Conch's words when the exchange hash signature does not verify.
            self.error = HostKeySignatureError(
                "The server's signature over the key exchange does not verify with its "
                f"host key ({self.keyAlg.decode('ascii', 'replace')}): a broken server or "
                "someone in the middle."
            )
        super().sendDisconnect(reason, desc)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self._on_lost(self, reason if reason is not None else Failure(ConnectionLostError("lost")))
