"""
Legacy ciphers, for old servers only and only when asked for by name (with a warning, see
:data:`rtunnel.client._algorithms.LEGACY`): ``3des-cbc``, ``blowfish-cbc``, ``cast128-cbc``
(RFC 4253 §6.3) and ``arcfour``, ``arcfour128``, ``arcfour256`` (RFC 4253, RFC 4345), from
``cryptography.hazmat.decrepit``. The packet format is the same as for AES-CBC/CTR in
:mod:`rtunnel.client._packet` (MAC-then-encrypt, or encrypt-then-MAC with
``*-etm@openssh.com``). Pure: no I/O.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from rtunnel.client._packet import (
    MACS,
    SEQ_MASK,
    CipherSpec,
    MacSpec,
    Opener,
    PacketError,
    Sealer,
    _check_lengths,
    _pad,
    _payload,
)

__all__ = ["CIPHERS", "make_legacy_opener", "make_legacy_sealer"]

_DISCONNECT_MAC_ERROR = 5

#: kind ``"stream"``: no blocks, padding to 8 bytes (RFC 4253 §6).
CIPHERS: dict[bytes, CipherSpec] = {
    b"3des-cbc": CipherSpec(24, 8, 8, "cbc"),
    b"blowfish-cbc": CipherSpec(16, 8, 8, "cbc"),
    b"cast128-cbc": CipherSpec(16, 8, 8, "cbc"),
    b"arcfour": CipherSpec(16, 0, 8, "stream"),
    b"arcfour128": CipherSpec(16, 0, 8, "stream"),
    b"arcfour256": CipherSpec(32, 0, 8, "stream"),
}


def _context(name: bytes, key: bytes, iv: bytes, encrypt: bool) -> Any:
    from cryptography.hazmat.decrepit.ciphers import algorithms

    spec = CIPHERS[name]
    key = key[: spec.key_size]
    cipher: Any
    if name == b"3des-cbc":
        cipher = Cipher(algorithms.TripleDES(key), modes.CBC(iv[:8]))
    elif name == b"blowfish-cbc":
        cipher = Cipher(algorithms.Blowfish(key), modes.CBC(iv[:8]))
    elif name == b"cast128-cbc":
        cipher = Cipher(algorithms.CAST5(key), modes.CBC(iv[:8]))
    else:
        cipher = Cipher(algorithms.ARC4(key), mode=None)
    context = cipher.encryptor() if encrypt else cipher.decryptor()
    if name in (b"arcfour128", b"arcfour256"):
        # RFC 4345 §4: the first 1536 bytes of keystream are discarded.
        context.update(bytes(1536))
    return context


class _LegacySealer:
    def __init__(self, name: bytes, key: bytes, iv: bytes, mac: MacSpec | None, mk: bytes) -> None:
        self._block = CIPHERS[name].block_size
        self._enc = _context(name, key, iv, True)
        self._mac = hmac.new(mk[: mac.size], digestmod=mac.hash) if mac is not None else None
        self._etm = mac is not None and mac.etm

    def seal(self, seq: int, payload: bytes) -> bytes:
        pad = _pad(len(payload), self._block, not self._etm)
        length = struct.pack(">I", 1 + len(payload) + pad)
        body = bytes((pad,)) + payload + os.urandom(pad)
        seq_bytes = struct.pack(">I", seq & SEQ_MASK)
        if self._etm:
            assert self._mac is not None
            encrypted: bytes = self._enc.update(body)
            m = self._mac.copy()
            m.update(seq_bytes + length + encrypted)
            return length + encrypted + m.digest()
        packet = length + body
        tag = b""
        if self._mac is not None:
            m = self._mac.copy()
            m.update(seq_bytes + packet)
            tag = m.digest()
        return bytes(self._enc.update(packet)) + tag


class _LegacyOpener:
    def __init__(self, name: bytes, key: bytes, iv: bytes, mac: MacSpec | None, mk: bytes) -> None:
        self._block = CIPHERS[name].block_size
        self._dec = _context(name, key, iv, False)
        self._mac = hmac.new(mk[: mac.size], digestmod=mac.hash) if mac is not None else None
        self._mac_size = mac.size if mac is not None else 0
        self._etm = mac is not None and mac.etm
        # (packet length, decrypted first block) of a packet still arriving.
        self._first: tuple[int, bytes] | None = None

    def open(self, buf: bytearray, seq: int) -> bytes | None:
        if self._etm:
            return self._open_etm(buf, seq)
        if self._first is None:
            if len(buf) < self._block:
                return None
            first = bytes(self._dec.update(bytes(buf[: self._block])))
            (packet_len,) = struct.unpack(">I", first[:4])
            _check_lengths(packet_len, self._block, True)
            self._first = (packet_len, first)
        packet_len, first = self._first
        total = 4 + packet_len + self._mac_size
        if len(buf) < total:
            return None
        self._first = None
        packet = first + bytes(self._dec.update(bytes(buf[self._block : 4 + packet_len])))
        tag = bytes(buf[4 + packet_len : total])
        del buf[:total]
        if self._mac is not None:
            m = self._mac.copy()
            m.update(struct.pack(">I", seq & SEQ_MASK) + packet)
            if not hmac.compare_digest(m.digest(), tag):
                raise PacketError(_DISCONNECT_MAC_ERROR, "Corrupted MAC on input")
        return _payload(packet[4:])

    def _open_etm(self, buf: bytearray, seq: int) -> bytes | None:
        assert self._mac is not None
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
            raise PacketError(_DISCONNECT_MAC_ERROR, "Corrupted MAC on input")
        return _payload(bytes(self._dec.update(data[4:])))


def make_legacy_sealer(
    cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mac_key: bytes
) -> Sealer:
    """The outgoing half for a legacy ``cipher`` (a key of :data:`CIPHERS`)."""
    return _LegacySealer(cipher, key, iv, MACS.get(mac or b"none"), mac_key)


def make_legacy_opener(
    cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mac_key: bytes
) -> Opener:
    """The incoming half; see :func:`make_legacy_sealer`."""
    return _LegacyOpener(cipher, key, iv, MACS.get(mac or b"none"), mac_key)
