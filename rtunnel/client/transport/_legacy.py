"""
Legacy ciphers, for old servers only and only when asked for by name (with a warning, see
:data:`rtunnel.client.transport._algorithms.LEGACY`): ``3des-cbc``, ``blowfish-cbc``,
``cast128-cbc`` (RFC 4253 §6.3) and ``arcfour``, ``arcfour128``, ``arcfour256`` (RFC 4253,
RFC 4345), from
``cryptography.hazmat.decrepit``. The packet format is the same as for AES-CBC/CTR in
:mod:`rtunnel.client.transport._packet` (MAC-then-encrypt, or encrypt-then-MAC with
``*-etm@openssh.com``). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from rtunnel.client.transport._packet import (
    MACS,
    CipherSpec,
    Opener,
    Sealer,
    _PlainOpener,
    _PlainSealer,
)

__all__ = ["CIPHERS", "make_legacy_opener", "make_legacy_sealer"]

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


def make_legacy_sealer(
    cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mac_key: bytes
) -> Sealer:
    """The outgoing half for a legacy ``cipher`` (a key of :data:`CIPHERS`)."""
    context = _context(cipher, key, iv, True)
    return _PlainSealer(CIPHERS[cipher].block_size, context, MACS.get(mac or b"none"), mac_key)


def make_legacy_opener(
    cipher: bytes, key: bytes, iv: bytes, mac: bytes | None, mac_key: bytes
) -> Opener:
    """The incoming half; see :func:`make_legacy_sealer`."""
    context = _context(cipher, key, iv, False)
    return _PlainOpener(CIPHERS[cipher].block_size, context, MACS.get(mac or b"none"), mac_key)
