"""
Payload codecs for the connection-layer messages rtunnel sends and receives (RFC 4254), with
the peers' quirks. Pure: bytes in, values out. Every decoder raises :class:`WireError` on a
short or malformed payload, never ``struct.error`` or ``IndexError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ForwardedTcpip",
    "WireError",
    "decode_forwarded_streamlocal",
    "decode_forwarded_tcpip",
    "decode_string",
    "decode_tcpip_forward_reply",
    "encode_string",
    "encode_tcpip_forward",
]

_U32 = struct.Struct(">L")

# Caps on strings we accept in an open request: an address longer than this is not an
# address, and megabyte strings must not reach logs or events (RELIABILITY.md D15).
MAX_ADDRESS_LENGTH = 1024


class WireError(ValueError):
    """A payload is truncated or malformed."""


def encode_string(value: bytes) -> bytes:
    """RFC 4251 §5 ``string``: uint32 length, then the bytes."""
    return _U32.pack(len(value)) + value


def decode_string(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    """Read a ``string`` at ``offset``; return it and the offset after it."""
    if offset + 4 > len(data):
        raise WireError("truncated string length")
    (length,) = _U32.unpack_from(data, offset)
    end = offset + 4 + length
    if end > len(data):
        raise WireError("truncated string")
    return data[offset + 4 : end], end


def decode_uint32(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Read a ``uint32`` at ``offset``; return it and the offset after it."""
    if offset + 4 > len(data):
        raise WireError("truncated uint32")
    return _U32.unpack_from(data, offset)[0], offset + 4


def encode_tcpip_forward(bind_address: str, port: int) -> bytes:
    """The request-specific data of ``tcpip-forward`` and ``cancel-tcpip-forward``
    (RFC 4254 §7.1)."""
    return encode_string(bind_address.encode("utf-8")) + _U32.pack(port)


def decode_tcpip_forward_reply(requested_port: int, payload: bytes) -> int:
    """
    The port the server listens on, from a ``tcpip-forward`` REQUEST_SUCCESS.

    For port 0 the reply carries the allocated port (RFC 4254 §7.1). For a fixed port the
    reply should be empty, but OpenSSH 6.8 (and some servers since) sends the port anyway;
    that is tolerated and the requested port is kept.
    """
    if requested_port != 0:
        return requested_port
    port, _ = decode_uint32(payload)
    if not 0 < port <= 65535:
        raise WireError(f"server allocated an impossible port {port}")
    return port


def _decode_text(raw: bytes) -> str:
    # Addresses are ASCII in practice; anything else is kept visible, never trusted.
    return raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ForwardedTcpip:
    """The channel-specific data of a ``forwarded-tcpip`` open (RFC 4254 §7.2)."""

    connected_address: str
    connected_port: int
    origin_address: str
    origin_port: int


def decode_forwarded_tcpip(data: bytes) -> ForwardedTcpip:
    """Decode a ``forwarded-tcpip`` open's channel-specific data."""
    address, offset = decode_string(data)
    port, offset = decode_uint32(data, offset)
    origin, offset = decode_string(data, offset)
    origin_port, offset = decode_uint32(data, offset)
    if len(address) > MAX_ADDRESS_LENGTH or len(origin) > MAX_ADDRESS_LENGTH:
        raise WireError("address in forwarded-tcpip open is too long")
    if port > 65535 or origin_port > 65535:
        raise WireError("port in forwarded-tcpip open is out of range")
    return ForwardedTcpip(_decode_text(address), port, _decode_text(origin), origin_port)


def encode_forwarded_tcpip(info: ForwardedTcpip) -> bytes:
    """Encode a ``forwarded-tcpip`` open's channel-specific data (for test servers)."""
    return (
        encode_string(info.connected_address.encode("utf-8"))
        + _U32.pack(info.connected_port)
        + encode_string(info.origin_address.encode("utf-8"))
        + _U32.pack(info.origin_port)
    )


def decode_forwarded_streamlocal(data: bytes) -> str:
    """
    The socket path of a ``forwarded-streamlocal@openssh.com`` open (OpenSSH's
    PROTOCOL §2.4: string socket path, string reserved).
    """
    path, offset = decode_string(data)
    decode_string(data, offset)  # reserved
    return _decode_text(path)
