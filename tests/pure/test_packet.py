"""
The pure packet codec (rtunnel.client.transport._packet): round trips for every cipher and MAC, tag
failures, sequence-number wrap, length and padding checks, the constructions checked
against the primitives directly, and linear-time buffering.
"""

from __future__ import annotations

import os
import struct
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from rtunnel.client.transport._packet import (
    CIPHERS,
    MACS,
    MAX_PACKET_LENGTH,
    PacketError,
    PacketReader,
    make_opener,
    make_sealer,
)

KEY = bytes(range(64))
IV = bytes(range(100, 116))
MAC_KEY = bytes(range(200, 256))

COMBOS = [(c, None) for c in CIPHERS if CIPHERS[c].aead] + [
    (c, m) for c in CIPHERS if not CIPHERS[c].aead for m in [None, *MACS]
]


def pair(cipher: bytes, mac: bytes | None) -> tuple[object, PacketReader]:
    sealer = make_sealer(cipher, KEY, IV, mac, MAC_KEY)
    reader = PacketReader(make_opener(cipher, KEY, IV, mac, MAC_KEY))
    return sealer, reader


@pytest.mark.parametrize(("cipher", "mac"), COMBOS)
def test_round_trip_across_the_sequence_number_wrap(cipher: bytes, mac: bytes | None) -> None:
    sealer, reader = pair(cipher, mac)
    payloads = [b"\x05", os.urandom(1), os.urandom(15), os.urandom(16), os.urandom(32768)]
    seqs = [0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]  # A12: 2^32 - 1 wraps to 0
    wire = b"".join(sealer.seal(seq, p) for seq, p in zip(seqs, payloads, strict=True))  # type: ignore[attr-defined]
    reader.feed(wire)
    assert [reader.next(seq) for seq in seqs] == payloads
    assert reader.next(3) is None
    assert reader.buf == bytearray()


@pytest.mark.parametrize(("cipher", "mac"), COMBOS)
def test_padding_and_block_alignment(cipher: bytes, mac: bytes | None) -> None:
    sealer, _ = pair(cipher, mac)
    spec = CIPHERS[cipher]
    tag = 16 if spec.aead else (MACS[mac].size if mac else 0)
    length_apart = spec.aead or (mac is not None and MACS[mac].etm)
    for size in range(1, 70):
        wire = sealer.seal(7, os.urandom(size))  # type: ignore[attr-defined]
        body = len(wire) - tag - 4
        assert (body + (0 if length_apart else 4)) % spec.block_size == 0
        assert body - 1 - size >= 4  # at least 4 bytes of padding


@pytest.mark.parametrize(("cipher", "mac"), [c for c in COMBOS if CIPHERS[c[0]].aead or c[1]])
def test_flipped_bit_or_wrong_sequence_number_is_a_mac_error(
    cipher: bytes, mac: bytes | None
) -> None:
    # A13: a flipped bit anywhere is caught before a byte of the payload is returned.
    sealer, _ = pair(cipher, mac)
    wire = sealer.seal(5, b"secret payload")  # type: ignore[attr-defined]
    for position in (3, 4, len(wire) // 2, len(wire) - 1):
        tampered = bytearray(wire)
        tampered[position] ^= 0x01
        _, reader = pair(cipher, mac)
        reader.feed(bytes(tampered))
        with pytest.raises(PacketError) as info:
            reader.next(5)
        assert info.value.reason in (2, 5)  # a garbled length is a protocol error
    if CIPHERS[cipher].kind == "gcm":
        return  # the nonce is GCM's own invocation counter, not the sequence number
    _, reader = pair(cipher, mac)
    reader.feed(wire)
    with pytest.raises(PacketError) as info:
        reader.next(6)
    # chacha20-poly1305 decrypts the length with the sequence number: garbage length.
    assert info.value.reason == (2 if CIPHERS[cipher].kind == "chacha" else 5)


@pytest.mark.parametrize("length", [0, 4, MAX_PACKET_LENGTH + 8, 0xFFFFFFF0])
def test_bad_packet_length_is_a_protocol_error(length: int) -> None:
    # D10: an oversized or undersized length is refused before any more is read.
    reader = PacketReader(make_opener(b"none", b"", b"", None, b""))
    reader.feed(struct.pack(">I", length) + b"\x04" + bytes(11))
    with pytest.raises(PacketError, match="bad packet length") as info:
        reader.next(0)
    assert info.value.reason == 2


def test_bad_padding_length_is_a_protocol_error() -> None:
    reader = PacketReader(make_opener(b"none", b"", b"", None, b""))
    reader.feed(struct.pack(">IB", 12, 200) + bytes(11))
    with pytest.raises(PacketError, match="bad padding length"):
        reader.next(0)


def test_length_not_a_block_multiple_is_a_protocol_error() -> None:
    reader = PacketReader(make_opener(b"none", b"", b"", None, b""))
    reader.feed(struct.pack(">IB", 13, 4) + bytes(12))
    with pytest.raises(PacketError, match="block size"):
        reader.next(0)


def test_chacha20_poly1305_is_openssh_construction() -> None:
    # PROTOCOL.chacha20poly1305, checked with the primitives: K_1 (bytes 32-63) encrypts
    # the length with the sequence number as nonce, K_2 (0-31) the payload from block 1,
    # its block 0 is the Poly1305 key, the tag covers the encrypted length and payload.
    seq = 0x01020304
    wire = make_sealer(b"chacha20-poly1305@openssh.com", KEY, b"", None, b"").seal(seq, b"hi")
    k2, k1 = KEY[:32], KEY[32:]
    nonce = bytes(8) + seq.to_bytes(8, "big")

    def stream(key: bytes, n: int) -> bytes:
        return Cipher(algorithms.ChaCha20(key, nonce), None).encryptor().update(bytes(n))

    enc_len, enc_body, tag = wire[:4], wire[4:-16], wire[-16:]
    length = bytes(a ^ b for a, b in zip(enc_len, stream(k1, 4), strict=True))
    assert struct.unpack(">I", length)[0] == len(enc_body)
    k2_stream = stream(k2, 64 + len(enc_body))
    body = bytes(a ^ b for a, b in zip(enc_body, k2_stream[64:], strict=True))
    assert body[1 : 1 + 2] == b"hi" and body[0] == len(body) - 3
    Poly1305.verify_tag(k2_stream[:32], enc_len + enc_body, tag)


def test_aes_gcm_is_rfc_5647_with_an_invocation_counter() -> None:
    # The length is in the clear and is the associated data; the nonce is the 12-byte IV
    # whose last 8 bytes count packets (big-endian, carrying into nothing else).
    iv = bytes(4) + (2**64 - 1).to_bytes(8, "big")
    sealer = make_sealer(b"aes128-gcm@openssh.com", KEY, iv, None, b"")
    first, second = sealer.seal(0, b"one"), sealer.seal(1, b"two")
    aead = AESGCM(KEY[:16])
    assert aead.decrypt(iv, first[4:], first[:4])[1:4] == b"one"
    assert aead.decrypt(bytes(12), second[4:], second[:4])[1:4] == b"two"  # wrapped


def test_etm_mac_covers_sequence_length_and_ciphertext() -> None:
    import hashlib
    import hmac

    mac_name = b"hmac-sha2-256-etm@openssh.com"
    wire = make_sealer(b"aes128-ctr", KEY, IV, mac_name, MAC_KEY).seal(9, b"x")
    expected = hmac.new(MAC_KEY[:32], struct.pack(">I", 9) + wire[:-32], hashlib.sha256)
    assert wire[-32:] == expected.digest()


@pytest.mark.parametrize(
    ("cipher", "mac"),
    [
        (b"chacha20-poly1305@openssh.com", None),
        (b"aes128-gcm@openssh.com", None),
        (b"aes128-ctr", b"hmac-sha2-256"),
        (b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com"),
    ],
)
def test_a_packet_dripped_one_byte_at_a_time_costs_linear_time(
    cipher: bytes, mac: bytes | None
) -> None:
    # D10: Conch's self.buf = self.buf + data copies the buffer per byte (quadratic:
    # about 30 GB copied for this packet). Here: one 200 KiB packet, byte by byte, then a
    # second one right behind it.
    sealer, reader = pair(cipher, mac)
    payload = os.urandom(200 * 1024)
    wire = sealer.seal(0, payload) + sealer.seal(1, b"next")  # type: ignore[attr-defined]
    start = time.perf_counter()
    got: list[bytes] = []
    seq = 0
    for i in range(len(wire)):
        reader.feed(wire[i : i + 1])
        packet = reader.next(seq)
        if packet is not None:
            got.append(packet)
            seq += 1
    elapsed = time.perf_counter() - start
    assert got == [payload, b"next"]
    assert elapsed < 5, f"{elapsed:.1f} s for {len(wire)} single-byte reads"
