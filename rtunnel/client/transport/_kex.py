"""
What rtunnel adds to Conch's SSH transport (``twisted.conch.ssh.transport``), as a mixin for
both the client (:class:`rtunnel.client.transport.client_transport.ClientTransport`) and
the bundled test server:

- the packet layer of :mod:`rtunnel.client.transport._packet` (chacha20-poly1305, AES-GCM, EtM MACs;
  linear-time buffering; sequence numbers that wrap at 2^32 instead of raising);
- new keys taken into use per direction, as RFC 4253 §7.3 says (Conch switches both
  directions when the peer's NEWKEYS arrives);
- strict key exchange (OpenSSH 9.6 ``kex-strict-*-v00@openssh.com``, the Terrapin fix,
  CVE-2023-48795; OpenSSH's PROTOCOL §1.10);
- a clear error when the two sides have no algorithm of a kind in common;
- rekeying on demand, by volume, by time (also when idle, as OpenSSH) and before the
  RFC 4344 §3 limits of the cipher in use;
- the fixed groups of RFC 8268 (group14-sha256, group16/18-sha512) registered with Conch;
- the peer's version line checked against a pattern and kept, escaped, for display;
- typed errors with the seed's codes for a bad version line (1002), a packet that fails
  its MAC (1015) or will not inflate (1016), and DH (1034) / ECDH (1038) values out of
  range.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from dataclasses import dataclass
from hashlib import sha256, sha512
from typing import TYPE_CHECKING, Any, cast

from twisted.conch.ssh import _kex as conch_kex
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import MP, getNS
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from typing_extensions import override
from zope.interface import implementer

from rtunnel._core.text import printable
from rtunnel.client.transport import _groups, _legacy
from rtunnel.client.transport._algorithms import (
    DEFAULT_REKEY_BYTES,
    DEFAULT_VERSION_PATTERN,
    REKEY_MAX_PACKETS,
    STRICT_KEX_CLIENT,
    STRICT_KEX_SERVER,
    parse_version_pattern,
    rekey_limit,
    version_accepted,
)
from rtunnel.client.transport._packet import (
    CIPHERS,
    MACS,
    SEQ_MASK,
    CipherSpec,
    Opener,
    PacketError,
    PacketReader,
    Sealer,
    make_opener,
    make_sealer,
)
from rtunnel.client.transport._sockopts import acknowledge_now
from rtunnel.client.transport._writes import write_now
from rtunnel.errors import (
    ConnectionLostError,
    DecompressError,
    DecryptError,
    ECDHKeyExchangeError,
    KeyExchangeError,
    NegotiationError,
    ProtocolError,
    RTunnelError,
    VersionError,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    _Base = conch.SSHTransportBase
else:
    _Base = object

__all__ = ["DEFAULT_REKEY_BYTES", "SecureTransportMixin"]


#: Longest decompressed payload accepted (bounded inflate).
_MAX_INFLATE = 256 * 1024

_log = Logger()

_MSG_USERAUTH_SUCCESS = 52

_INITIAL_KEX_ALLOWED = frozenset(
    [conch.MSG_DISCONNECT, conch.MSG_NEWKEYS, *range(30, 50)]
)  # message types allowed between the first KEXINIT and NEWKEYS under strict kex

#: Most bytes accepted before the peer's version line (RFC 4253 §4.2 allows other lines
#: first; Conch's limit).
_MAX_PRE_VERSION = 4096


@implementer(conch_kex._IFixedGroupKexAlgorithm)
@dataclass(frozen=True)
class _FixedGroup:
    """An RFC 8268 fixed group, in the shape of Conch's ``_IFixedGroupKexAlgorithm``."""

    preference: int
    hashProcessor: Any  # noqa: N815 (Conch's attribute name)
    prime: int
    generator: int = 2


def _register_fixed_groups() -> None:
    # Conch 26.10 knows only group14-sha1. Its key exchange code looks groups up by name
    # (twisted.conch.ssh._kex.getKex), client and server side alike, so registering the
    # RFC 8268 groups is all both sides need. The primes are RFC 3526's (tests check
    # them against their definition from pi).
    for name, hash_, prime in (
        (b"diffie-hellman-group14-sha256", sha256, _groups.GROUP14),
        (b"diffie-hellman-group16-sha512", sha512, _groups.GROUP16),
        (b"diffie-hellman-group18-sha512", sha512, _groups.GROUP18),
    ):
        conch_kex._kexAlgorithms.setdefault(name, _FixedGroup(20, hash_, prime))


_register_fixed_groups()


def cipher_spec(name: bytes) -> CipherSpec:
    """The packet-layer description of a negotiated cipher, legacy ones included."""
    return CIPHERS.get(name) or _legacy.CIPHERS[name]


def tag_size(cipher: bytes, mac: bytes | None) -> int:
    """Bytes of MAC (or AEAD tag) after each packet under ``cipher`` and ``mac``."""
    if cipher_spec(cipher).aead:
        return 16
    spec = MACS.get(mac or b"none")
    return spec.size if spec is not None else 0


def shown_mac(cipher: bytes, mac: bytes) -> bytes:
    """
    The MAC as OpenSSH names it in its logs: ``<implicit>`` for an AEAD cipher, whose
    own tag authenticates (kex.c, kex_choose_conf), whatever MAC the lists agreed on.
    """
    spec = CIPHERS.get(cipher) or _legacy.CIPHERS.get(cipher)
    return b"<implicit>" if spec is not None and spec.aead else mac


def _make_sealer(cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mk: bytes) -> Sealer:
    if cipher in _legacy.CIPHERS:
        return _legacy.make_legacy_sealer(cipher, key, iv, mac, mk)
    return make_sealer(cipher, key, iv, mac, mk)


def _make_opener(cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mk: bytes) -> Opener:
    if cipher in _legacy.CIPHERS:
        return _legacy.make_legacy_opener(cipher, key, iv, mac, mk)
    return make_opener(cipher, key, iv, mac, mk)


class SecureTransportMixin(_Base):
    """
    Mix in before Conch's ``SSHClientTransport`` or ``SSHServerTransport``.

    :ivar strict_kex: whether strict key exchange is in effect on this connection.
    :ivar offer_strict_kex: offer strict key exchange in the first KEXINIT.
    :ivar require_strict_kex: disconnect if the peer does not offer strict key exchange.
    :ivar rekey_bytes: start a key exchange once this many bytes have gone one way since
        the last one, counting each direction on its own (0: no limit but the cipher's).
        OpenSSH's RekeyLimit rule (packet.c, ssh_packet_need_rekeying): a rekey is due
        when either direction reaches its limit, which is this or the RFC 4344 limit of
        that direction's cipher, whichever is smaller; bytes are packets as sent (length
        field, padding and all) less their MAC.
    :ivar rekey_seconds: start a key exchange after this many seconds (None: never); the
        check is made whenever a packet is sent or received, and when the time is up on
        a connection that carried a packet since the last key exchange (OpenSSH's rule:
        packet.c, ssh_packet_need_rekeying).
    :ivar rekey_clock: the clock for ``rekey_seconds``, ``kex_timeout`` and
        ``last_received``; None (only in tests of the packet layer): none of them.
    :ivar kex_timeout: seconds a key exchange after the first may take before we
        disconnect (D13: a peer that starts a rekey and goes silent); None: no limit. The
        first is bounded by the caller's handshake timeout instead.
    :ivar key_exchanges: completed key exchanges (the first included).
    :ivar rekeys_by_us: completed key exchanges after the first that this side started (by
        volume, time, packet count or :meth:`rekey`). When both sides send KEXINIT before
        seeing the other's (a collision, RFC 4253 §7.1), each counts it as its own.
    :ivar rekeys_by_peer: completed key exchanges after the first that the peer started.
        ``rekeys_by_us + rekeys_by_peer == key_exchanges - 1`` once the first is done.
    :ivar packets_received: packets read from the peer, of every layer (transport,
        authentication, connection): liveness, as OpenSSH counts it (packet.c,
        ssh_packet_read_poll_seqnr: any packet answers every keepalive outstanding).
        A DISCONNECT is not counted: a farewell is no sign of a working connection.
    :ivar last_received: when the last read that completed a packet happened, on
        ``rekey_clock`` (0.0 without a clock): when to send the next keepalive.
    :ivar version_patterns: the peer's version line must match one of these (the seed's
        SSHVersionPattern).
    :ivar peer_version: the peer's version line, escaped for display (None before it).
    """

    strict_kex = False
    offer_strict_kex = True
    require_strict_kex = False
    rekey_bytes = DEFAULT_REKEY_BYTES
    rekey_seconds: float | None = None
    rekey_clock: IReactorTime | None = None
    kex_timeout: float | None = 60.0
    key_exchanges = 0
    rekeys_by_us = 0
    rekeys_by_peer = 0
    packets_received = 0
    last_received = 0.0
    version_patterns: tuple[str, ...] = parse_version_pattern(DEFAULT_VERSION_PATTERN)
    peer_version: str | None = None

    @override
    def connectionMade(self) -> None:
        self._reader = PacketReader(make_opener(b"none", b"", b"", None, b""))
        self._sealer: Sealer = make_sealer(b"none", b"", b"", None, b"")
        self._next_sealer: Sealer | None = None
        self._next_opener: Any = None
        self._newkeys_pending = False
        # Payload bytes in _blockedByKeyExchange, waiting for the key exchange to end.
        self._held_out = 0
        self._paused = False
        self._pumping = False
        self._closing = False
        self.packets_received = 0
        self._kexinits_in = 0
        self._kexinits_out = 0
        self._in_initial_kex = True
        self._rekey_waiters: list[Deferred[None]] = []
        # Per direction, since that direction's last new keys (OpenSSH's p_send/p_read
        # and max_blocks_out/max_blocks_in): packets, bytes, the byte limit, and the MAC
        # length not counted.
        self._out_packets = self._out_bytes = self._out_limit = self._out_tag = 0
        self._in_packets = self._in_bytes = self._in_limit = self._in_tag = 0
        # Who started the exchange in progress: "us", "peer", or None (the first one).
        self._kex_started_by: str | None = None
        self._kex_at = self.last_received = self._now()
        self._kex_timer: Any = None
        self._rekey_timer: Any = None
        self._authenticated = False
        super().connectionMade()

    @override
    def connectionLost(self, reason: Any = None) -> None:
        if not self.gotVersion and not self._closing and self.buf:
            # Something answered, and it was not SSH (an HTTP or SMTP server, a proxy's
            # error page): say what it sent (RELIABILITY.md A3).
            self.transport_error(
                VersionError(
                    "The server closed the connection without sending an SSH version "
                    f"line; it sent '{printable(self.buf, 120)}'. Is this port an SSH "
                    "server?"
                )
            )
        self._closing = True
        self._cancel_kex_timer()
        self._cancel_rekey_timer()
        waiters, self._rekey_waiters = self._rekey_waiters, []
        super().connectionLost(reason)
        for d in waiters:
            d.errback(
                ConnectionLostError("The connection closed before the key exchange finished.")
            )

    # -- hooks for the subclass

    def transport_error(self, error: RTunnelError) -> None:
        """Called with the reason before we disconnect for a negotiation or protocol error."""
        _log.warn("{error}", error=str(error))

    def peer_version_received(self, version: str) -> None:
        """Called with the peer's version line (escaped), before it is checked."""

    @override
    def ssh_DISCONNECT(self, packet: bytes) -> None:
        # Counted in _pump like any packet; taken back here, where it costs nothing on the
        # data path (ReverseTunnel: a server that grants the forwards and says goodbye
        # has not shown that reconnecting works).
        self.packets_received -= 1
        super().ssh_DISCONNECT(packet)

    @override
    def receiveDebug(self, alwaysDisplay: bool, message: bytes, lang: bytes) -> None:
        # Nothing of ours answers it: sshd's next packet (with ``authorized_keys`` options it
        # sends DEBUG messages right after the logon) must not wait for a delayed ACK.
        acknowledge_now(self.transport)
        # Conch logs the raw bytes; a hostile peer's text is escaped and capped (D15).
        if alwaysDisplay:
            _log.info("SSH debug message from the peer: {message}", message=printable(message))

    # -- sending

    @override
    def sendKexInit(self) -> None:
        if self.sessionID is not None and self._kex_started_by is None:
            # Not an answer to the peer's KEXINIT (ssh_KEXINIT marks those first).
            self._kex_started_by = "us"
        kex = self.supportedKeyExchanges
        if self._kexinits_out == 0 and self.offer_strict_kex:
            # Only in the first KEXINIT (PROTOCOL §1.10: ignored after it).
            self.supportedKeyExchanges = [
                *kex,
                (STRICT_KEX_CLIENT if self.isClient else STRICT_KEX_SERVER).encode(),
            ]
        try:
            super().sendKexInit()  # type: ignore[no-untyped-call]
        finally:
            self.supportedKeyExchanges = kex
        self._kexinits_out += 1
        clock = self.rekey_clock
        if self.sessionID is not None and self.kex_timeout is not None and clock is not None:
            self._kex_timer = clock.callLater(self.kex_timeout, self._kex_timed_out)

    def _kex_timed_out(self) -> None:
        self._kex_timer = None
        self._protocol_error(f"key exchange not finished after {self.kex_timeout} s")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel_kex_timer(self) -> None:
        if self._kex_timer is not None:
            if self._kex_timer.active():
                self._kex_timer.cancel()
            self._kex_timer = None

    @override
    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            allowed = self._allowedKeyExchangeMessageType(messageType)  # type: ignore[no-untyped-call]
            if self._in_initial_kex and messageType not in _INITIAL_KEX_ALLOWED:
                # Strict kex (or not known yet): nothing but the key exchange until NEWKEYS.
                allowed = False
            if not allowed:
                assert self._blockedByKeyExchange is not None
                self._blockedByKeyExchange.append((messageType, payload))
                self._held_out += len(payload)
                # D13: the service bounds this queue by pausing what feeds it.
                held = getattr(self.service, "output_held", None)
                if held is not None:
                    held(self._held_out)
                return
        if self._closing:
            return
        data = bytes((messageType,)) + payload
        if self.outgoingCompression:
            data = self.outgoingCompression.compress(data) + self.outgoingCompression.flush(
                zlib.Z_SYNC_FLUSH
            )
        wire = self._sealer.seal(self.outgoingPacketSequence, data)
        # RFC 4253 §6.4: the sequence number wraps around to 0 after 2^32 - 1.
        self.outgoingPacketSequence = (self.outgoingPacketSequence + 1) & SEQ_MASK
        write_now(self.transport, wire)
        if messageType == conch.MSG_NEWKEYS:
            # RFC 4253 §7.3: the new keys are used from the next packet we send.
            assert self._next_sealer is not None
            self._sealer, self._next_sealer = self._next_sealer, None
            self._restart_compression("out")
            if self.strict_kex:
                self.outgoingPacketSequence = 0
            # OpenSSH ssh_set_newkeys(MODE_OUT): this direction counts from 0 again,
            # under its new cipher's limit, before anything queued is sent.
            nxt = self.nextEncryptions
            self._out_packets = self._out_bytes = 0
            self._out_limit = self._limit_for(nxt.outCipType)
            self._out_tag = tag_size(nxt.outCipType, nxt.outMACType)
            return
        self._out_packets += 1
        self._out_bytes += len(wire) - self._out_tag
        if messageType == _MSG_USERAUTH_SUCCESS and not self.isClient:
            # The server starts zlib@openssh.com after sending it (packet.c).
            self._start_delayed_compression()
        if messageType != conch.MSG_KEXINIT:
            self._maybe_rekey()

    @override
    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._closing:
            return
        # Sent now even during a key exchange (RFC 4253 §7.1 allows DISCONNECT).
        super().sendDisconnect(reason, desc)  # type: ignore[no-untyped-call]
        self._closing = True

    @override
    def sendUnimplemented(self) -> None:
        # RFC 4253 §11.4: the sequence number of the packet not understood (Conch sends
        # the next one's).
        self.sendPacket(
            conch.MSG_UNIMPLEMENTED,
            struct.pack(">L", (self.incomingPacketSequence - 1) & SEQ_MASK),
        )

    # -- receiving

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if not self.gotVersion:
            self.buf = self.buf + data
            if not self._take_version():
                return
            data, self.buf = self.buf, b""
        self._reader.feed(data)
        self._pump()

    def _take_version(self) -> bool:
        # RFC 4253 §4.2: the peer may send other lines before its "SSH-" line (a bare \n
        # accepted too, as OpenSSH and Conch do); all of it is capped at 4 KiB.
        lines = self.buf.split(b"\n")
        for i, line in enumerate(lines[:-1]):  # noqa: B007 (used after the loop)
            if line.startswith(b"SSH-"):
                break
        else:
            if len(self.buf) > _MAX_PRE_VERSION:
                self._version_failed(
                    f"The server sent more than {_MAX_PRE_VERSION} bytes without an SSH "
                    f"version line (it began '{printable(self.buf, 120)}'). Is this port "
                    "an SSH server?"
                )
            return False
        if sum(len(x) + 1 for x in lines[: i + 1]) > _MAX_PRE_VERSION:
            self._version_failed(
                f"The server sent more than {_MAX_PRE_VERSION} bytes before its SSH version line."
            )
            return False
        self.gotVersion = True
        # Kept exactly: it goes into the exchange hash (RFC 4253 §8).
        self.otherVersionString = line.rstrip(b"\r")
        self.peer_version = printable(self.otherVersionString, 255)
        self.peer_version_received(self.peer_version)
        if not version_accepted(self.peer_version, self.version_patterns):
            proto = self.otherVersionString.split(b"-")[1].decode("ascii", "replace")
            self._version_failed(
                f"The server's protocol version '{printable(proto, 16)}' is not supported "
                f"(it identified as '{printable(self.otherVersionString, 80)}'; accepted: "
                f"{','.join(self.version_patterns)}).",
                conch.DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED,
            )
            return False
        self.buf = b"\n".join(lines[i + 1 :])
        return True

    def _version_failed(self, message: str, reason: int = conch.DISCONNECT_PROTOCOL_ERROR) -> None:
        self.transport_error(VersionError(message))
        self.sendDisconnect(reason, b"bad version line")

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        first = self.packets_received
        try:
            reader = self._reader
            while not (self._paused or self._closing):
                size = len(reader.buf)
                try:
                    payload = reader.next(self.incomingPacketSequence)
                except PacketError as e:
                    self._protocol_error(str(e), e.reason)
                    return
                if payload is None:
                    return
                self.incomingPacketSequence = (self.incomingPacketSequence + 1) & SEQ_MASK
                # Liveness: every packet counts, IGNORE and key exchange included (the
                # only per-packet cost; see last_received below).
                self.packets_received += 1
                self._in_packets += 1
                self._in_bytes += size - len(reader.buf) - self._in_tag
                if self.incomingCompression:
                    payload = self._inflate(payload)
                    if payload is None:
                        return
                if payload[0] == _MSG_USERAUTH_SUCCESS and self.isClient:
                    # zlib@openssh.com starts after this packet, both ways (OpenSSH
                    # packet.c, ssh_packet_read_poll2).
                    self._start_delayed_compression()
                try:
                    number = payload[0]
                    if number >= 50 and self.service is not None and not self._in_initial_kex:
                        # The service's messages (RFC 4250 §4.1.2: 50 and up) go to it
                        # directly: Conch's dispatchMessage wraps each call in
                        # log.callWithLogger, a context switch per packet on the data path.
                        self.service.packetReceived(number, payload[1:])
                    else:
                        self.dispatchMessage(number, payload[1:])
                except Exception:
                    # A malformed message that a handler choked on: end the connection
                    # with a protocol error rather than let the exception escape (D8).
                    _log.failure("handling SSH message type {type}", type=payload[0])
                    self._protocol_error(f"malformed message of type {payload[0]}")
                    return
                self._maybe_rekey()
        finally:
            self._pumping = False
            if self.packets_received != first:
                # One clock reading per read that completed packets, not one per packet:
                # OpenSSH also times its next keepalive from the last read
                # (clientloop.c, client_process_net_input).
                self.last_received = self._now()

    @override
    def _newKeys(self) -> None:
        # Conch's, less compression: that restarts per direction as the keys change
        # (below), as OpenSSH does (packet.c, ssh_set_newkeys: a fresh zlib stream at
        # every NEWKEYS; zlib@openssh.com only once authenticated).
        self.currentEncryptions = self.nextEncryptions
        self._keyExchangeState = self._KEY_EXCHANGE_NONE
        queued = self._blockedByKeyExchange or []
        self._blockedByKeyExchange = None  # type: ignore[assignment]
        self._held_out = 0
        for message_type, payload in queued:
            self.sendPacket(message_type, payload)
        if queued:
            # What is still held: 0, or what the next exchange queued again when this
            # flush reached the rekey limit and started it.
            held = getattr(self.service, "output_held", None)
            if held is not None:
                held(self._held_out)

    def _compressing(self, method: bytes | None) -> bool:
        return method == b"zlib" or (method == b"zlib@openssh.com" and self._authenticated)

    def _restart_compression(self, direction: str) -> None:
        if direction == "out":
            method = getattr(self, "outgoingCompressionType", None)
            self.outgoingCompression = zlib.compressobj(6) if self._compressing(method) else None
        else:
            method = getattr(self, "incomingCompressionType", None)
            self.incomingCompression = zlib.decompressobj() if self._compressing(method) else None

    def _start_delayed_compression(self) -> None:
        if self._authenticated or self.sessionID is None:
            return
        self._authenticated = True
        for direction, current in (
            ("out", self.outgoingCompression),
            ("in", self.incomingCompression),
        ):
            if current is None:
                self._restart_compression(direction)

    def _inflate(self, payload: bytes) -> bytes | None:
        assert self.incomingCompression is not None
        try:
            out: bytes = self.incomingCompression.decompress(payload, _MAX_INFLATE)
        except zlib.error:
            out = b""
        if not out or self.incomingCompression.unconsumed_tail:
            self.transport_error(
                DecompressError(
                    "SSH protocol error: a packet from the peer could not be decompressed "
                    f"or inflated past {_MAX_INFLATE} bytes."
                )
            )
            self.sendDisconnect(conch.DISCONNECT_COMPRESSION_ERROR, b"compression error")
            return None
        return out

    @override
    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self.strict_kex and self._in_initial_kex and messageNum not in _INITIAL_KEX_ALLOWED:
            # OpenSSH's words (packet.c, kex.c).
            self._protocol_error(
                f"strict KEX violation: unexpected packet type {messageNum} "
                f"(seqnr {(self.incomingPacketSequence - 1) & SEQ_MASK})"
            )
            return
        if messageNum == conch.MSG_NEWKEYS and self._keyExchangeState == self._KEY_EXCHANGE_NONE:
            self._protocol_error("NEWKEYS outside a key exchange")
            return
        super().dispatchMessage(messageNum, payload)  # type: ignore[no-untyped-call]

    def _protocol_error(self, message: str, reason: int = conch.DISCONNECT_PROTOCOL_ERROR) -> None:
        if reason == conch.DISCONNECT_MAC_ERROR:
            # Corrupted or tampered with on the way (RELIABILITY.md A13).
            self.transport_error(
                DecryptError(f"SSH packet from the peer failed its integrity check: {message}.")
            )
        else:
            self.transport_error(ProtocolError(f"SSH protocol error: {message}."))
        self.sendDisconnect(reason, message.encode("utf-8", "replace"))

    def _kex_failed(self, error: KeyExchangeError) -> None:
        self.transport_error(error)
        self.sendDisconnect(conch.DISCONNECT_KEY_EXCHANGE_FAILED, b"key exchange failed")

    # Diffie-Hellman with Python integers instead of Conch's use of cryptography, which
    # tests every group it has not seen for primality: 20 s for each key exchange with an
    # 8192-bit group from the server's moduli file, the size OpenSSH asks for with
    # chacha20-poly1305. Each exponent is used for one exponentiation pair only, so the
    # timing of Python's pow() gives an observer nothing to accumulate.

    @override
    def _startEphemeralDH(self) -> None:
        p, g = cast(Any, self).p, cast(Any, self).g
        # OpenSSH dh_gen_key: an exponent of twice the bits the keys need, at most
        # |p| - 1; 1024 bits covers the largest need (64-byte keys).
        bits = min(1024, p.bit_length() - 1)
        self._dh_x = secrets.randbits(bits) | (1 << (bits - 1))
        self.dhSecretKeyPublicMP = MP(pow(g, self._dh_x, p))

    @override
    def _finishEphemeralDH(self, remoteDHpublicKey: int) -> bytes:
        p = cast(Any, self).p
        # RFC 4253 §8: e and f must be in [1, p-1]; 1 and p-1 give a predictable secret
        # (OpenSSH dh.c, dh_pub_is_valid, refuses them too).
        if not 1 < remoteDHpublicKey < p - 1:
            self._kex_failed(
                KeyExchangeError(
                    "SSH key exchange failed: the peer's Diffie-Hellman public value is "
                    "out of range."
                )
            )
            raise ValueError("DH public value out of range")
        secret = pow(remoteDHpublicKey, self._dh_x, p)
        del self._dh_x
        return bytes(MP(secret))

    @override
    def _generateECSharedSecret(self, ecPriv: Any, theirECPubBytes: bytes) -> bytes:
        try:
            secret: bytes = super()._generateECSharedSecret(ecPriv, theirECPubBytes)  # type: ignore[no-untyped-call]
        except ValueError:
            # Not a point on the curve, or a low-order X25519 point (all-zero secret).
            self._kex_failed(
                ECDHKeyExchangeError(
                    "SSH key exchange failed: the peer's elliptic-curve public key is invalid."
                )
            )
            raise
        return secret

    # -- key exchange

    @override
    def ssh_KEXINIT(self, packet: bytes) -> None:
        first = self._kexinits_in == 0
        self._kexinits_in += 1
        if self.strict_kex and self._in_initial_kex and not first:
            self._protocol_error("strict KEX violation: KEXINIT during the initial key exchange")
            return
        try:
            lists = [s.split(b",") if s else [] for s in getNS(packet[16:], 10)[:-1]]
        except Exception:
            self._protocol_error("malformed KEXINIT")
            return
        if first:
            theirs = (STRICT_KEX_SERVER if self.isClient else STRICT_KEX_CLIENT).encode()
            self.strict_kex = self.offer_strict_kex and theirs in lists[0]
            if self.strict_kex and self.packets_received != 1:
                self._protocol_error("strict KEX violation: KEXINIT was not the first packet")
                return
            if self.require_strict_kex and not self.strict_kex:
                self._negotiation_failed(
                    "strict kex",
                    [STRICT_KEX_CLIENT if self.isClient else STRICT_KEX_SERVER],
                    [n.decode("ascii", "replace") for n in lists[0]],
                )
                return
        if not self._check_overlap(lists):
            return
        if not first and self._keyExchangeState == self._KEY_EXCHANGE_NONE:
            # The peer started this one; our KEXINIT, sent next, answers it.
            self._kex_started_by = "peer"
        self._accept_kexinit(packet, lists[0])

    def _accept_kexinit(self, packet: bytes, peer_kex: list[bytes]) -> None:
        """Conch's KEXINIT handling: negotiate, then send our first key exchange packet."""
        super().ssh_KEXINIT(packet)  # type: ignore[safe-super]

    def _check_overlap(self, lists: list[list[bytes]]) -> bool:
        ours = [
            ("kex", self.supportedKeyExchanges, lists[0]),
            ("host key", self.supportedPublicKeys, lists[1]),
            ("cipher", self.supportedCiphers, lists[2] if self.isClient else lists[3]),
            ("cipher", self.supportedCiphers, lists[3] if self.isClient else lists[2]),
            ("mac", self.supportedMACs, lists[4]),
            ("mac", self.supportedMACs, lists[5]),
            ("compression", self.supportedCompressions, lists[6]),
            ("compression", self.supportedCompressions, lists[7]),
        ]
        for kind, mine, peer in ours:
            if not set(mine) & set(peer):
                self._negotiation_failed(
                    kind,
                    [n.decode("ascii", "replace") for n in mine],
                    [n.decode("ascii", "replace") for n in peer],
                )
                return False
        return True

    def _negotiation_failed(self, kind: str, ours: list[str], theirs: list[str]) -> None:
        peer = "server" if self.isClient else "client"
        if kind == "strict kex":
            text = f"Strict key exchange is required and the {peer} does not offer it"
        else:
            # OpenSSH: "Unable to negotiate ...: no matching cipher found. Their offer: ..."
            text = f"No matching {kind} algorithm found"
        shown = [printable(t, 64) for t in theirs[:32]]
        self.transport_error(
            NegotiationError(
                f"{text}. We offered: {','.join(ours)}. The {peer} offered: {','.join(shown)}.",
                kind,
                tuple(ours),
                tuple(shown),
            )
        )
        self.sendDisconnect(
            conch.DISCONNECT_KEY_EXCHANGE_FAILED, f"no matching {kind} found".encode()
        )

    @override
    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        # Replaces Conch's three _keySetup methods (base, client, server).
        first = self.sessionID is None
        if first:
            self.sessionID = exchangeHash
        iv_cs, iv_sc, key_cs, key_sc, mac_cs, mac_sc = (
            self._getKey(letter, sharedSecret, exchangeHash)
            for letter in (b"A", b"B", b"C", b"D", b"E", b"F")
        )
        out_keys, in_keys = (iv_cs, key_cs, mac_cs), (iv_sc, key_sc, mac_sc)
        if not self.isClient:
            out_keys, in_keys = in_keys, out_keys
        nxt = self.nextEncryptions
        self._next_sealer = _make_sealer(
            nxt.outCipType, out_keys[1], out_keys[0], nxt.outMACType, out_keys[2]
        )
        self._next_opener = _make_opener(
            nxt.inCipType, in_keys[1], in_keys[0], nxt.inMACType, in_keys[2]
        )
        self.sendPacket(conch.MSG_NEWKEYS, b"")
        if first and not self.isClient:
            # RFC 8308 §2.4, as Conch's server does.
            self.sendExtInfo([(b"server-sig-algs", b",".join(self.supportedPublicKeys))])  # type: ignore[no-untyped-call]
        if self._newkeys_pending:
            self._newkeys_pending = False
            self._take_incoming_keys()
            self._pump()

    def ssh_NEWKEYS(self, packet: bytes) -> None:  # noqa: N802 (Conch dispatch)
        if packet:
            self._protocol_error("NEWKEYS takes no data")
            return
        if self._next_opener is None:
            # Our side of the exchange is not finished (the client waits for the host-key
            # check): keep what follows in the buffer, it is under the new keys.
            self._newkeys_pending = True
            self._paused = True
            return
        self._take_incoming_keys()

    def _take_incoming_keys(self) -> None:
        nxt = self.nextEncryptions
        self._reader.opener, self._next_opener = self._next_opener, None
        self._restart_compression("in")
        if self.strict_kex:
            self.incomingPacketSequence = 0
        # OpenSSH ssh_set_newkeys(MODE_IN), as for the outgoing direction at our NEWKEYS.
        self._in_packets = self._in_bytes = 0
        self._in_limit = self._limit_for(nxt.inCipType)
        self._in_tag = tag_size(nxt.inCipType, nxt.inMACType)
        self._paused = False
        self._cancel_kex_timer()
        self._in_initial_kex = False
        self.key_exchanges += 1
        if self._kex_started_by == "us":
            self.rekeys_by_us += 1
        elif self._kex_started_by == "peer":
            self.rekeys_by_peer += 1
        self._kex_started_by = None
        self._kex_at = self._now()
        self._start_rekey_timer()
        waiters, self._rekey_waiters = self._rekey_waiters, []
        # Every counter, limit and timer is the new keys' by now: the packets queued
        # during the exchange, sent here, count against them, and start the next
        # exchange only if they themselves reach a limit (issue 12: sequence numbers
        # reset by strict kex, compared with the previous exchange's, looked like 2^32
        # packets, and every flush started another exchange).
        self._newKeys()  # type: ignore[no-untyped-call]
        if self.isClient:
            self.connectionSecure()  # type: ignore[attr-defined]
        for d in waiters:
            d.callback(None)

    # -- rekeying

    def rekey(self) -> Deferred[None]:
        """
        Start a key exchange now (or join the one in progress). Fires when it has finished.
        """
        d: Deferred[None] = Deferred()
        self._rekey_waiters.append(d)
        if self._keyExchangeState == self._KEY_EXCHANGE_NONE and not self._closing:
            self._start_rekey()
        return d

    def _start_rekey(self) -> None:
        self.sendKexInit()

    def _maybe_rekey(self) -> None:
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE or self._closing:
            return
        if self.sessionID is None:
            return
        if self._rekey_needed():
            self._cancel_rekey_timer()
            self._start_rekey()

    def _rekey_needed(self) -> bool:
        # OpenSSH packet.c, ssh_packet_need_rekeying.
        if not (self._out_packets or self._in_packets):
            # A packet either way since the last exchange first, so that a tiny limit
            # still lets the connection make progress.
            return False
        if self.rekey_seconds is not None and self._now() - self._kex_at >= self.rekey_seconds:
            return True
        # RFC 4344 §3.1: before the sequence numbers come round (OpenSSH: 2^31).
        if max(self._out_packets, self._in_packets) > REKEY_MAX_PACKETS:
            return True
        # Volume, each direction against its own limit.
        return bool(
            (self._out_limit and self._out_bytes >= self._out_limit)
            or (self._in_limit and self._in_bytes >= self._in_limit)
        )

    def _limit_for(self, cipher: bytes) -> int:
        spec = cipher_spec(cipher)
        return rekey_limit(self.rekey_bytes, spec.kind, spec.block_size)

    def _start_rekey_timer(self) -> None:
        # OpenSSH wakes up when RekeyLimit's time is up even on an idle connection
        # (clientloop.c, ssh_packet_get_rekey_timeout) and rekeys if a packet went either
        # way since the last key exchange; if none did, the next packet does it.
        self._cancel_rekey_timer()
        clock = self.rekey_clock
        if self.rekey_seconds is not None and not self._closing and clock is not None:
            self._rekey_timer = clock.callLater(self.rekey_seconds, self._rekey_due)

    def _rekey_due(self) -> None:
        self._rekey_timer = None
        self._maybe_rekey()

    def _cancel_rekey_timer(self) -> None:
        if self._rekey_timer is not None:
            if self._rekey_timer.active():
                self._rekey_timer.cancel()
            self._rekey_timer = None

    def _now(self) -> float:
        # No clock (a packet-layer test): no time-based rekeys, keepalives or timeouts.
        # The library never falls back on the global reactor.
        clock = self.rekey_clock
        return 0.0 if clock is None else clock.seconds()
