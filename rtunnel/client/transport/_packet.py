"""
The SSH binary packet layer (RFC 4253 §6) as pure functions and small objects, no reactor.

One :class:`Sealer` per direction turns a payload into wire bytes; one :class:`Opener` takes
wire bytes out of a :class:`PacketReader`'s buffer and gives back the payload. Supported:

- no cipher / no MAC (the initial key exchange);
- a block or stream cipher (AES-CTR, AES-CBC) with an HMAC, MAC-then-encrypt (RFC 4253) or
  encrypt-then-MAC (OpenSSH's ``*-etm@openssh.com``: the length in the clear, the MAC over
  sequence number, length and ciphertext, checked before anything is decrypted);
- ``aes128-gcm@openssh.com`` / ``aes256-gcm@openssh.com`` (RFC 5647 as OpenSSH does it: the
  length in the clear as associated data, a 4-byte fixed IV part and an 8-byte invocation
  counter, the MAC negotiation ignored);
- ``chacha20-poly1305@openssh.com`` (OpenSSH's ``PROTOCOL.chacha20poly1305``).

Sequence numbers are the caller's (they wrap at 2^32, RFC 4253 §6.4). Every failure is a
:class:`PacketError` carrying the SSH disconnect reason to send.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import md5, sha1, sha256, sha512
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

__all__ = [
    "CIPHERS",
    "MACS",
    "MAX_PACKET_LENGTH",
    "CipherSpec",
    "MacSpec",
    "Opener",
    "PacketError",
    "PacketReader",
    "Sealer",
    "make_opener",
    "make_sealer",
]

# RFC 4253 §11.1 reason codes used here.
DISCONNECT_PROTOCOL_ERROR = 2
DISCONNECT_MAC_ERROR = 5

#: The longest packet accepted (OpenSSH's PACKET_MAX_SIZE, packet.c: 256 KiB). RFC 4253 §6.1
#: asks for at least 35000; OpenSSH never sends more than this, and Conch at most 32 KiB of
#: channel data per packet.
MAX_PACKET_LENGTH = 256 * 1024

SEQ_MASK = 0xFFFFFFFF

_U32 = struct.Struct(">I")


class PacketError(Exception):
    """
    A received packet is malformed or fails authentication.

    :ivar reason: the SSH disconnect reason code to send (RFC 4253 §11.1).
    """

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CipherSpec:
    """
    :ivar key_size: bytes of key.
    :ivar iv_size: bytes of IV (for GCM: fixed part plus invocation counter).
    :ivar block_size: the padding block size.
    :ivar kind: ``"none"``, ``"ctr"``, ``"cbc"``, ``"gcm"`` or ``"chacha"``.
    """

    key_size: int
    iv_size: int
    block_size: int
    kind: str

    @property
    def aead(self) -> bool:
        """True when the cipher authenticates, so the negotiated MAC is not used."""
        return self.kind in ("gcm", "chacha")


@dataclass(frozen=True)
class MacSpec:
    """
    :ivar hash: the hashlib constructor.
    :ivar etm: encrypt-then-MAC (``*-etm@openssh.com``).
    """

    hash: Callable[..., Any]
    etm: bool

    @property
    def size(self) -> int:
        """Bytes of MAC (and of key: OpenSSH's key_len for HMAC is the digest length)."""
        return int(self.hash().digest_size)


CIPHERS: dict[bytes, CipherSpec] = {
    b"chacha20-poly1305@openssh.com": CipherSpec(64, 0, 8, "chacha"),
    b"aes128-gcm@openssh.com": CipherSpec(16, 12, 16, "gcm"),
    b"aes256-gcm@openssh.com": CipherSpec(32, 12, 16, "gcm"),
    b"aes128-ctr": CipherSpec(16, 16, 16, "ctr"),
    b"aes192-ctr": CipherSpec(24, 16, 16, "ctr"),
    b"aes256-ctr": CipherSpec(32, 16, 16, "ctr"),
    b"aes128-cbc": CipherSpec(16, 16, 16, "cbc"),
    b"aes192-cbc": CipherSpec(24, 16, 16, "cbc"),
    b"aes256-cbc": CipherSpec(32, 16, 16, "cbc"),
    b"none": CipherSpec(0, 0, 8, "none"),
}

MACS: dict[bytes, MacSpec] = {
    b"hmac-sha2-256-etm@openssh.com": MacSpec(sha256, True),
    b"hmac-sha2-512-etm@openssh.com": MacSpec(sha512, True),
    b"hmac-sha1-etm@openssh.com": MacSpec(sha1, True),
    b"hmac-md5-etm@openssh.com": MacSpec(md5, True),
    b"hmac-sha2-256": MacSpec(sha256, False),
    b"hmac-sha2-512": MacSpec(sha512, False),
    b"hmac-sha1": MacSpec(sha1, False),
    b"hmac-md5": MacSpec(md5, False),
}


def _pad(body_len: int, block_size: int, length_in_blocks: bool) -> int:
    # RFC 4253 §6: at least 4 bytes of padding; the padded packet (with the length field,
    # unless the length is sent in the clear or encrypted apart: OpenSSH's aadlen) a
    # multiple of the block size.
    total = 1 + body_len + (4 if length_in_blocks else 0)
    pad = block_size - total % block_size
    if pad < 4:
        pad += block_size
    return pad


class _Padding:
    """
    Random padding bytes (RFC 4253 §6: "arbitrary-length padding ... random"), cut from a
    pool refilled 4 KiB at a time: one ``getrandom`` system call per few hundred packets
    instead of one per packet, which showed in the profile of small-packet traffic. Every
    byte is used once.
    """

    __slots__ = ("_pool", "_pos")

    _SIZE = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._pool):
            self._pool, pos = os.urandom(self._SIZE), 0
        self._pos = pos + n
        return self._pool[pos : pos + n]


def _check_lengths(packet_len: int, block_size: int, length_in_blocks: bool) -> None:
    if packet_len < 5 or packet_len > MAX_PACKET_LENGTH:
        raise PacketError(DISCONNECT_PROTOCOL_ERROR, f"bad packet length {packet_len}")
    if (packet_len + (4 if length_in_blocks else 0)) % block_size:
        raise PacketError(
            DISCONNECT_PROTOCOL_ERROR,
            f"packet length {packet_len} is not a multiple of the block size {block_size}",
        )


def _payload(plain: bytes) -> bytes:
    # plain = padding_length byte || payload || padding
    pad = plain[0]
    if pad < 4 or pad > len(plain) - 2:
        raise PacketError(DISCONNECT_PROTOCOL_ERROR, f"bad padding length {pad}")
    return plain[1 : len(plain) - pad]


class Sealer(Protocol):
    """Outgoing half: payload in, wire bytes out."""

    def seal(self, seq: int, payload: bytes) -> bytes:
        """Encrypt and authenticate one packet with sequence number ``seq``."""
        ...


class Opener(Protocol):
    """Incoming half: takes one packet out of the front of a buffer."""

    def open(self, buf: bytearray, seq: int) -> bytes | None:
        """
        The payload of the packet at the front of ``buf`` (removed from it), or None if the
        packet is not complete yet (``buf`` untouched). Raises :class:`PacketError`.
        """
        ...


def _new_mac(spec: MacSpec | None, key: bytes) -> Any:
    if spec is None:
        return None
    return hmac.new(key[: spec.size], digestmod=spec.hash)


class _PlainSealer:
    """
    No cipher or a block/stream cipher, with an optional HMAC.

    :param encryptor: a ``cryptography`` cipher context, None for no encryption (also
        the legacy ciphers of :mod:`rtunnel.client.transport._legacy` come this way).
    """

    def __init__(
        self, block_size: int, encryptor: Any, mac: MacSpec | None, mac_key: bytes
    ) -> None:
        self._block = block_size
        self._enc = encryptor
        self._mac = _new_mac(mac, mac_key)
        self._etm = mac is not None and mac.etm
        self._padding = _Padding()

    def seal(self, seq: int, payload: bytes) -> bytes:
        pad = _pad(len(payload), self._block, not self._etm)
        length = struct.pack(">I", 1 + len(payload) + pad)
        body = b"".join((bytes((pad,)), payload, self._padding.take(pad)))
        seq_bytes = struct.pack(">I", seq & SEQ_MASK)
        if self._etm:
            encrypted: bytes = self._enc.update(body) if self._enc is not None else body
            m = self._mac.copy()
            m.update(seq_bytes + length + encrypted)
            return length + encrypted + bytes(m.digest())
        packet = length + body
        tag = b""
        if self._mac is not None:
            m = self._mac.copy()
            m.update(seq_bytes + packet)
            tag = m.digest()
        if self._enc is not None:
            packet = self._enc.update(packet)
        return packet + tag


def _aes(cipher: CipherSpec, key: bytes, iv: bytes) -> Any:
    mode: Any = modes.CTR(iv[:16]) if cipher.kind == "ctr" else modes.CBC(iv[:16])
    return Cipher(algorithms.AES(key[: cipher.key_size]), mode)


class _PlainOpener:
    """The incoming half of :class:`_PlainSealer`, with a decryptor (or None)."""

    def __init__(
        self, block_size: int, decryptor: Any, mac: MacSpec | None, mac_key: bytes
    ) -> None:
        self._block = block_size
        self._dec = decryptor
        self._mac = _new_mac(mac, mac_key)
        self._mac_size = mac.size if mac is not None else 0
        self._etm = mac is not None and mac.etm
        # The decrypted first block of a packet whose rest has not arrived (decrypting is
        # stateful, so it is done once): (packet length, first block).
        self._first: tuple[int, bytes] | None = None

    def open(self, buf: bytearray, seq: int) -> bytes | None:
        if self._etm:
            return self._open_etm(buf, seq)
        if self._first is None:
            if len(buf) < self._block:
                return None
            first = bytes(buf[: self._block])
            if self._dec is not None:
                first = self._dec.update(first)
            (packet_len,) = struct.unpack(">I", first[:4])
            _check_lengths(packet_len, self._block, True)
            self._first = (packet_len, first)
        packet_len, first = self._first
        total = 4 + packet_len + self._mac_size
        if len(buf) < total:
            return None
        self._first = None
        rest = bytes(buf[self._block : 4 + packet_len])
        tag = bytes(buf[4 + packet_len : total])
        del buf[:total]
        if self._dec is not None:
            rest = self._dec.update(rest)
        packet = first + rest
        if self._mac is not None:
            m = self._mac.copy()
            m.update(struct.pack(">I", seq & SEQ_MASK) + packet)
            if not hmac.compare_digest(m.digest(), tag):
                raise PacketError(DISCONNECT_MAC_ERROR, "Corrupted MAC on input")
        return _payload(packet[4:])

    def _open_etm(self, buf: bytearray, seq: int) -> bytes | None:
        if len(buf) < 4:
            return None
        (packet_len,) = struct.unpack(">I", buf[:4])
        _check_lengths(packet_len, self._block, False)
        total = 4 + packet_len + self._mac_size
        if len(buf) < total:
            return None
        data = bytes(buf[: 4 + packet_len])
        tag = bytes(buf[4 + packet_len : total])
        del buf[:total]
        m = self._mac.copy()
        m.update(struct.pack(">I", seq & SEQ_MASK) + data)
        if not hmac.compare_digest(m.digest(), tag):
            raise PacketError(DISCONNECT_MAC_ERROR, "Corrupted MAC on input")
        body = data[4:]
        if self._dec is not None:
            body = self._dec.update(body)
        return _payload(body)


class _GcmState:
    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def next_nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        # RFC 5647 §7.1: the invocation counter is incremented modulo 2^64.
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce


class _GcmSealer:
    def __init__(self, cipher: CipherSpec, key: bytes, iv: bytes) -> None:
        self._state = _GcmState(key[: cipher.key_size], iv)
        self._padding = _Padding()

    def seal(self, seq: int, payload: bytes) -> bytes:
        pad = _pad(len(payload), 16, False)
        length = struct.pack(">I", 1 + len(payload) + pad)
        body = b"".join((bytes((pad,)), payload, self._padding.take(pad)))
        return length + self._state._aead.encrypt(self._state.next_nonce(), body, length)


class _GcmOpener:
    def __init__(self, cipher: CipherSpec, key: bytes, iv: bytes) -> None:
        self._state = _GcmState(key[: cipher.key_size], iv)

    def open(self, buf: bytearray, seq: int) -> bytes | None:
        if len(buf) < 4:
            return None
        (packet_len,) = _U32.unpack_from(buf)
        _check_lengths(packet_len, 16, False)
        total = 4 + packet_len + 16
        if len(buf) < total:
            return None
        # Decrypted straight out of the buffer: copying a 32 KiB packet out first (twice,
        # for bytes(buf[a:b])) was a visible share of the receive path. The view is
        # released before the packet is cut off the buffer (a bytearray with a live
        # export cannot shrink).
        state = self._state
        with memoryview(buf) as view:
            try:
                body = state._aead.decrypt(state.next_nonce(), view[4:total], view[:4])
            except InvalidTag:
                raise PacketError(DISCONNECT_MAC_ERROR, "Corrupted MAC on input") from None
        del buf[:total]
        return _payload(body)


def _chacha_nonce(seq: int) -> bytes:
    # OpenSSH uses the original ChaCha20 (64-bit block counter, 64-bit nonce = the sequence
    # number, big-endian); cryptography takes 16 bytes: the little-endian counter (0 here),
    # then the nonce.
    return _COUNTER_ZERO + (seq & SEQ_MASK).to_bytes(8, "big")


_COUNTER_ZERO = bytes(8)
_BLOCK_OF_ZEROS = bytes(64)


class _ChachaKeys:
    """
    The two ChaCha20 streams of one direction (PROTOCOL.chacha20poly1305: K_2, the payload
    key, is the first 32 bytes of the key, K_1, the length key, the second), each one
    cipher context kept for the life of the keys and moved to the next packet's nonce with
    ``reset_nonce``: setting up a new context per packet cost about 2.3 µs each, two per
    packet, which was half the cost of sealing a small packet.
    """

    __slots__ = ("_header", "_main")

    def __init__(self, key: bytes) -> None:
        self._main = Cipher(algorithms.ChaCha20(key[:32], bytes(16)), mode=None).encryptor()
        self._header = Cipher(algorithms.ChaCha20(key[32:64], bytes(16)), mode=None).encryptor()

    def length(self, seq: int, data: bytes) -> bytes:
        """The 4-byte length field, encrypted or decrypted with K_1 at block 0."""
        header = self._header
        header.reset_nonce(_chacha_nonce(seq))
        return bytes(header.update(data))

    def payload_stream(self, seq: int) -> tuple[bytes, Any]:
        """
        The Poly1305 key (the first 32 bytes of K_2's block 0; the rest of the block is
        discarded) and K_2's stream, which continues at block 1 where the payload goes.
        """
        stream = self._main
        stream.reset_nonce(_chacha_nonce(seq))
        return bytes(stream.update(_BLOCK_OF_ZEROS)[:32]), stream


class _ChachaSealer:
    def __init__(self, key: bytes) -> None:
        self._keys = _ChachaKeys(key)
        self._padding = _Padding()

    def seal(self, seq: int, payload: bytes) -> bytes:
        pad = _pad(len(payload), 8, False)
        length = _U32.pack(1 + len(payload) + pad)
        body = b"".join((bytes((pad,)), payload, self._padding.take(pad)))
        keys = self._keys
        enc_length = keys.length(seq, length)
        poly_key, stream = keys.payload_stream(seq)
        packet: bytes = enc_length + stream.update(body)
        tag: bytes = Poly1305.generate_tag(poly_key, packet)
        return packet + tag


class _ChachaOpener:
    def __init__(self, key: bytes) -> None:
        self._keys = _ChachaKeys(key)
        self._length: int | None = None

    def open(self, buf: bytearray, seq: int) -> bytes | None:
        if self._length is None:
            if len(buf) < 4:
                return None
            (packet_len,) = _U32.unpack(self._keys.length(seq, bytes(buf[:4])))
            _check_lengths(packet_len, 8, False)
            self._length = packet_len
        packet_len = self._length
        total = 4 + packet_len + 16
        if len(buf) < total:
            return None
        self._length = None
        poly_key, stream = self._keys.payload_stream(seq)
        # Checked and decrypted straight out of the buffer, as for AES-GCM; the view is
        # released before the packet is cut off the buffer.
        with memoryview(buf) as view:
            try:
                tag = bytes(view[4 + packet_len : total])
                Poly1305.verify_tag(poly_key, view[: 4 + packet_len], tag)
            except InvalidSignature:
                raise PacketError(DISCONNECT_MAC_ERROR, "Corrupted MAC on input") from None
            plain = stream.update(view[4 : 4 + packet_len])
        del buf[:total]
        return _payload(plain)


def make_sealer(cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mac_key: bytes) -> Sealer:
    """
    The outgoing half for a negotiated cipher and MAC (``mac`` is ignored for the AEAD
    ciphers; None or ``b"none"``: no MAC).
    """
    spec = CIPHERS[cipher]
    if spec.kind == "chacha":
        return _ChachaSealer(key[:64])
    if spec.kind == "gcm":
        return _GcmSealer(spec, key, iv)
    encryptor = None if spec.kind == "none" else _aes(spec, key, iv).encryptor()
    return _PlainSealer(spec.block_size, encryptor, MACS.get(mac or b"none"), mac_key)


def make_opener(cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mac_key: bytes) -> Opener:
    """The incoming half; see :func:`make_sealer`."""
    spec = CIPHERS[cipher]
    if spec.kind == "chacha":
        return _ChachaOpener(key[:64])
    if spec.kind == "gcm":
        return _GcmOpener(spec, key, iv)
    decryptor = None if spec.kind == "none" else _aes(spec, key, iv).decryptor()
    return _PlainOpener(spec.block_size, decryptor, MACS.get(mac or b"none"), mac_key)


class PacketReader:
    """
    The receive buffer. A ``bytearray`` that is appended to and consumed from the front
    (CPython makes both amortized O(1) per byte), and an opener that keeps the decrypted
    length of a partial packet: a packet that arrives a byte at a time costs linear time,
    where Conch's ``self.buf = self.buf + data`` costs quadratic.
    """

    def __init__(self, opener: Opener) -> None:
        self.buf = bytearray()
        self.opener = opener

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self.buf += data

    def next(self, seq: int) -> bytes | None:
        """The next complete packet's payload, or None; raises :class:`PacketError`."""
        return self.opener.open(self.buf, seq)
