"""
The server side of SOCKS4, SOCKS4A and SOCKS5 (RFC 1928), CONNECT only and without
authentication, as OpenSSH's ``ssh -R [bind_address:]port`` (a remote dynamic forward,
OpenSSH 7.6) speaks it on each forwarded channel: the remote client says where it wants to
go, rtunnel connects there from this machine and answers. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "SocksFailure",
    "SocksRequest",
    "SocksServerHandshake",
    "socks_reply",
]

#: No request is longer: a SOCKS5 greeting (2 + 255) and request (4 + 1 + 255 + 2), or a
#: SOCKS4A request with a user id and a name of at most 255 bytes each.
MAX_HANDSHAKE = 1024

FailureKind = Literal["general", "not-allowed", "network", "host", "refused", "command", "address"]

# RFC 1928 §6 REP values.
_SOCKS5_REP: dict[str, int] = {
    "general": 1,
    "not-allowed": 2,
    "network": 3,
    "host": 4,
    "refused": 5,
    "command": 7,
    "address": 8,
}


@dataclass(frozen=True)
class SocksRequest:
    """
    A complete CONNECT request.

    :ivar version: 4 (SOCKS4 or 4A) or 5.
    :ivar host: the destination: an IP address, or a name (SOCKS4A, SOCKS5 DOMAINNAME).
    :ivar port: the destination port.
    :ivar leftover: bytes the client sent after the request (kept for the destination).
    """

    version: int
    host: str
    port: int
    leftover: bytes = b""


@dataclass(frozen=True)
class SocksFailure:
    """
    The client's request cannot be served: send ``reply`` (may be empty) and close.

    :ivar reason: what was wrong, for the log.
    """

    reply: bytes
    reason: str


def socks_reply(
    version: int,
    failure: FailureKind | None = None,
    bound: tuple[str, int] = ("0.0.0.0", 0),
) -> bytes:
    """
    The answer to a CONNECT: success with the bound address (SOCKS5) or port, or the
    failure (SOCKS4 has one code for every failure, 91).
    """
    host, port = bound
    if version == 4:
        code = 90 if failure is None else 91
        try:
            packed = ipaddress.IPv4Address(host).packed
        except ValueError:
            packed = bytes(4)
        return struct.pack(">BBH", 0, code, port) + packed
    rep = 0 if failure is None else _SOCKS5_REP[failure]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = ipaddress.IPv4Address(0)
    atyp = 1 if address.version == 4 else 4
    return struct.pack(">BBBB", 5, rep, 0, atyp) + address.packed + struct.pack(">H", port)


class SocksServerHandshake:
    """
    Reads a client's greeting and request as they arrive. :meth:`feed` returns the bytes to
    send now (the SOCKS5 method choice) and the outcome so far: None (more is needed), a
    :class:`SocksRequest`, or a :class:`SocksFailure`.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._state: Literal["start", "socks5-request", "done"] = "start"

    def feed(self, data: bytes) -> tuple[bytes, SocksRequest | SocksFailure | None]:
        """Add received bytes."""
        if self._state == "done":
            return b"", None
        self._buf += data
        if len(self._buf) > MAX_HANDSHAKE:
            self._state = "done"
            return b"", SocksFailure(b"", f"more than {MAX_HANDSHAKE} bytes without a request")
        send = b""
        if self._state == "start":
            if not self._buf:
                return b"", None
            version = self._buf[0]
            if version == 4:
                return b"", self._socks4()
            if version != 5:
                self._state = "done"
                return b"", SocksFailure(
                    b"", f"not a SOCKS4 or SOCKS5 client (first byte {version})"
                )
            if len(self._buf) < 2 or len(self._buf) < 2 + self._buf[1]:
                return b"", None
            methods = self._buf[2 : 2 + self._buf[1]]
            self._buf = self._buf[2 + len(methods) :]
            if 0 not in methods:
                # RFC 1928 §3: X'FF' NO ACCEPTABLE METHODS; the client must close.
                self._state = "done"
                return b"\x05\xff", SocksFailure(
                    b"", "the client offered no method without authentication"
                )
            send = b"\x05\x00"
            self._state = "socks5-request"
        outcome = self._socks5()
        return send, outcome

    def _socks4(self) -> SocksRequest | SocksFailure | None:
        buf = self._buf
        # VN CD DSTPORT(2) DSTIP(4) USERID NUL [HOSTNAME NUL]
        if len(buf) < 9:
            return None
        end = buf.find(b"\x00", 8)
        if end == -1:
            return None
        command = buf[1]
        (port,) = struct.unpack(">H", buf[2:4])
        ip = buf[4:8]
        after = end + 1
        if ip[:3] == b"\x00\x00\x00" and ip[3] != 0:
            # SOCKS4A: the name follows the user id.
            name_end = buf.find(b"\x00", after)
            if name_end == -1:
                return None
            host = buf[after:name_end].decode("ascii", "replace")
            after = name_end + 1
        else:
            host = str(ipaddress.IPv4Address(ip))
        self._state = "done"
        if command != 1:
            return SocksFailure(
                socks_reply(4, "command"), f"SOCKS4 command {command} is not CONNECT"
            )
        if not host:
            return SocksFailure(socks_reply(4, "address"), "an empty SOCKS4A host name")
        return SocksRequest(4, host, port, buf[after:])

    def _socks5(self) -> SocksRequest | SocksFailure | None:
        buf = self._buf
        # VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4)
        if len(buf) < 5:
            return None
        version, command, _, atyp = buf[:4]
        if version != 5:
            self._state = "done"
            return SocksFailure(socks_reply(5, "general"), f"SOCKS5 request version {version}")
        if atyp == 1:
            end = 4 + 4
        elif atyp == 4:
            end = 4 + 16
        elif atyp == 3:
            end = 5 + buf[4]
        else:
            self._state = "done"
            return SocksFailure(socks_reply(5, "address"), f"SOCKS5 address type {atyp}")
        if len(buf) < end + 2:
            return None
        raw = buf[4:end]
        if atyp == 1:
            host = str(ipaddress.IPv4Address(raw))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(raw))
        else:
            host = raw[1:].decode("ascii", "replace")
        (port,) = struct.unpack(">H", buf[end : end + 2])
        self._state = "done"
        if command != 1:
            return SocksFailure(
                socks_reply(5, "command"), f"SOCKS5 command {command} is not CONNECT"
            )
        if not host:
            return SocksFailure(socks_reply(5, "address"), "an empty SOCKS5 host name")
        return SocksRequest(5, host, port, buf[end + 2 :])
