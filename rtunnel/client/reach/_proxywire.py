"""
The client side of the proxy handshakes, without I/O: request encoders, incremental reply
parsers and :class:`Handshake`, the state machine that drives one of them.

- SOCKS4 and SOCKS4A: the de-facto specifications ("SOCKS: A protocol for TCP proxy across
  firewalls", Ying-Da Lee; "SOCKS 4A: A Simple Extension to SOCKS 4 Protocol").
- SOCKS5: RFC 1928, with RFC 1929 username/password authentication. A name is sent as a
  DOMAINNAME for the proxy to resolve, as OpenSSH's ``nc -X 5`` and curl's ``socks5h`` do.
- HTTP: the CONNECT method (RFC 9110 §9.3.6) with Basic authentication (RFC 7617).

Every parser takes the bytes received so far and returns ``None`` while the reply is
incomplete, or the parsed reply with the number of bytes it took: what follows is the
destination's (the SSH server's first bytes can share a read with the proxy's reply).
A broken or refusing reply raises :class:`HandshakeFailed`. Text from the proxy is made
printable and capped before it is put in a message.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import struct
from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

from rtunnel._core.text import printable

__all__ = [
    "HTTP_HEAD_LIMIT",
    "SOCKS4_REPLIES",
    "SOCKS5_REPLIES",
    "BoundAddress",
    "HTTPReply",
    "Handshake",
    "HandshakeFailed",
    "Progress",
    "encode_destination_name",
    "encode_http_connect",
    "encode_socks4_request",
    "encode_socks5_auth",
    "encode_socks5_connect",
    "encode_socks5_greeting",
    "http_failure",
    "parse_http_reply",
    "parse_socks4_reply",
    "parse_socks5_auth_reply",
    "parse_socks5_method",
    "parse_socks5_reply",
]

#: Kinds of proxy (the reference's FirewallType values fwTunnel, fwSOCKS4, fwSOCKS4A,
#: fwSOCKS5).
Kind = Literal["http", "socks4", "socks4a", "socks5"]

#: The most an HTTP proxy's response head (status line and headers) may take; more is
#: refused rather than buffered.
HTTP_HEAD_LIMIT: Final = 16 * 1024

#: SOCKS4 reply codes (CD) that refuse the request, with the specification's meaning.
SOCKS4_REPLIES: Final = {
    91: "request rejected or failed",
    92: "request rejected because the SOCKS server cannot connect to identd on the client",
    93: "request rejected because the client program and identd report different user-ids",
}
_SOCKS4_GRANTED = 90

#: SOCKS5 reply codes (REP) other than 0 (succeeded), with RFC 1928 §6's meaning.
SOCKS5_REPLIES: Final = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "Network unreachable",
    4: "Host unreachable",
    5: "Connection refused",
    6: "TTL expired",
    7: "Command not supported",
    8: "Address type not supported",
}

# RFC 1928 §3 method numbers.
_NO_AUTH = 0x00
_USERNAME_PASSWORD = 0x02
_NO_ACCEPTABLE = 0xFF
_METHOD_NAMES: Final = {0x00: "no authentication", 0x01: "GSSAPI", 0x02: "username/password"}

# RFC 1928 §5 address types.
_ATYP_IPV4 = 1
_ATYP_DOMAINNAME = 3
_ATYP_IPV6 = 4

#: An HTTP field name (RFC 9110 §5.1: a token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: The end of an HTTP head: an empty line (bare LF line ends tolerated, RFC 9112 §2.2).
_HEAD_END = re.compile(rb"\r?\n\r?\n")

#: An HTTP/1.x status line (RFC 9112 §4); the reason phrase may be empty.
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: ([^\r\n]*))?")


class HandshakeFailed(Exception):
    """
    The proxy refused, or broke its protocol.

    :ivar reason: what happened, in words (from the proxy's reply where it gives one).
    :ivar category: ``"refused"`` (the proxy would not connect to the destination),
        ``"authentication"`` (credentials missing or refused) or ``"protocol"`` (not a
        valid reply).
    """

    def __init__(
        self, reason: str, category: Literal["refused", "authentication", "protocol"]
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.category = category


class BoundAddress(NamedTuple):
    """The address a SOCKS proxy says it connected from (BND.ADDR, BND.PORT)."""

    host: str
    port: int


class HTTPReply(NamedTuple):
    """An HTTP proxy's response head."""

    status: int
    reason: str
    status_line: str
    headers: tuple[tuple[str, str], ...]


class Progress(NamedTuple):
    """
    What :meth:`Handshake.receive` made of the bytes it was given.

    :ivar send: bytes to write to the proxy now (may be empty).
    :ivar leftover: ``None`` while the handshake goes on; once it has succeeded, the bytes
        received after the proxy's last reply (the destination's, to hand on).
    """

    send: bytes
    leftover: bytes | None


def encode_destination_name(host: str) -> bytes:
    """
    A host name as SOCKS4A and SOCKS5 send it: ASCII, or IDNA for an internationalized
    name; 1 to 255 bytes.

    :raises ValueError: if the name cannot be sent.
    """
    try:
        encoded = host.encode("ascii")
    except UnicodeEncodeError:
        try:
            encoded = host.encode("idna")
        except UnicodeError as e:
            raise ValueError(f"{host!r} is not a valid host name: {e}") from None
    if not 1 <= len(encoded) <= 255 or b"\0" in encoded:
        raise ValueError(f"the host name {printable(host, 64)!r} must be 1 to 255 bytes")
    return encoded


# -- SOCKS4 and SOCKS4A ----------------------------------------------------------------------


def encode_socks4_request(host: str, port: int, user_id: str = "", *, socks4a: bool) -> bytes:
    """
    A SOCKS4 CONNECT request: VN 4, CD 1, DSTPORT, DSTIP, USERID, NUL. For SOCKS4A with a
    host name, DSTIP is ``0.0.0.1`` (an address that means "name follows") and the name
    follows the USERID's NUL, with its own NUL.

    :param host: an IPv4 literal, or (SOCKS4A only) a host name.
    :raises ValueError: for an IPv6 literal, a name without ``socks4a``, a NUL in the user id.
    """
    user = user_id.encode()
    if b"\0" in user:
        raise ValueError("a SOCKS4 user id cannot contain a NUL")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not socks4a:
            raise ValueError(f"SOCKS4 needs an IPv4 address, not the name {host!r}") from None
        name = encode_destination_name(host)
        return struct.pack("!BBH", 4, 1, port) + bytes([0, 0, 0, 1]) + user + b"\0" + name + b"\0"
    if address.version != 4:
        raise ValueError(f"SOCKS4 cannot connect to the IPv6 address {host}")
    return struct.pack("!BBH", 4, 1, port) + address.packed + user + b"\0"


def parse_socks4_reply(buf: bytes) -> int | None:
    """
    A SOCKS4 reply: 8 bytes, VN 0, CD 90 for "request granted".

    :return: the bytes taken (8), or ``None`` while fewer have arrived.
    :raises HandshakeFailed: for a refusal (CD 91-93, or any other code) or a reply that
        is not SOCKS4.
    """
    if buf and buf[0] not in (0, 4):
        # VN is 0 in a reply; some servers echo the request's 4. Anything else is another
        # protocol (an HTTP proxy's "HTTP/1.1 400 ...", a SOCKS5 server's 5).
        raise HandshakeFailed(f"not a SOCKS4 reply: it starts {_quote(buf[:16])}", "protocol")
    if len(buf) < 8:
        return None
    code = buf[1]
    if code == _SOCKS4_GRANTED:
        return 8
    meaning = SOCKS4_REPLIES.get(code, "unknown reply code")
    raise HandshakeFailed(f"{meaning} (SOCKS4 reply {code})", "refused")


# -- SOCKS5 ----------------------------------------------------------------------------------


def encode_socks5_greeting(with_password: bool) -> bytes:
    """
    RFC 1928 §3's version identifier/method selection message: VER 5, NMETHODS, METHODS:
    "no authentication required" (0x00), and "username/password" (0x02) when credentials
    are given.
    """
    methods = [_NO_AUTH, _USERNAME_PASSWORD] if with_password else [_NO_AUTH]
    return bytes([5, len(methods), *methods])


def parse_socks5_method(buf: bytes) -> tuple[int, int] | None:
    """
    RFC 1928 §3's method selection reply: VER 5, METHOD.

    :return: ``(method, bytes taken)``, or ``None`` while incomplete. The method may be one
        not offered; :class:`Handshake` checks.
    :raises HandshakeFailed: if the reply is not SOCKS5, or METHOD is 0xFF ("no acceptable
        methods", an authentication failure).
    """
    if not buf:
        return None
    if buf[0] != 5:
        raise HandshakeFailed(f"not a SOCKS5 reply: it starts {_quote(buf[:16])}", "protocol")
    if len(buf) < 2:
        return None
    if buf[1] == _NO_ACCEPTABLE:
        raise HandshakeFailed(
            "the proxy accepts none of the offered authentication methods", "authentication"
        )
    return buf[1], 2


def encode_socks5_auth(user: str, password: str) -> bytes:
    """
    RFC 1929 §2's username/password request: VER 1, ULEN, UNAME, PLEN, PASSWD (UTF-8).

    :raises ValueError: if either is empty or longer than 255 bytes.
    """
    name, secret = user.encode(), password.encode()
    for what, value in (("user name", name), ("password", secret)):
        if not 1 <= len(value) <= 255:
            raise ValueError(f"a SOCKS5 {what} must be 1 to 255 bytes (RFC 1929)")
    return bytes([1, len(name)]) + name + bytes([len(secret)]) + secret


def parse_socks5_auth_reply(buf: bytes) -> int | None:
    """
    RFC 1929 §2's reply: VER 1, STATUS (0 = success).

    :return: the bytes taken (2), or ``None`` while incomplete.
    :raises HandshakeFailed: if the credentials were refused or the reply is malformed.
    """
    if not buf:
        return None
    if buf[0] != 1:
        raise HandshakeFailed(
            f"not a SOCKS5 username/password reply: it starts {_quote(buf[:16])}", "protocol"
        )
    if len(buf) < 2:
        return None
    if buf[1] != 0:
        raise HandshakeFailed(
            f"the proxy refused the user name and password (RFC 1929 status {buf[1]})",
            "authentication",
        )
    return 2


def encode_socks5_connect(host: str, port: int) -> bytes:
    """
    RFC 1928 §4's CONNECT request: VER 5, CMD 1, RSV 0, ATYP, DST.ADDR, DST.PORT. An IP
    literal goes as ATYP 1 (IPv4) or 4 (IPv6); anything else as ATYP 3 (DOMAINNAME), for
    the proxy to resolve.

    :raises ValueError: for a name longer than 255 bytes.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = encode_destination_name(host)
        target = bytes([_ATYP_DOMAINNAME, len(name)]) + name
    else:
        atyp = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
        target = bytes([atyp]) + address.packed
    return bytes([5, 1, 0]) + target + struct.pack("!H", port)


def parse_socks5_reply(buf: bytes) -> tuple[BoundAddress, int] | None:
    """
    RFC 1928 §6's reply: VER 5, REP, RSV, ATYP, BND.ADDR (4 or 16 bytes, or a length byte
    and a name), BND.PORT.

    A refusal is raised as soon as REP has arrived: some servers close without sending
    BND.ADDR after a failure code.

    :return: ``(bound address, bytes taken)``, or ``None`` while incomplete.
    :raises HandshakeFailed: for REP 1-255 or a malformed reply.
    """
    if not buf:
        return None
    if buf[0] != 5:
        raise HandshakeFailed(f"not a SOCKS5 reply: it starts {_quote(buf[:16])}", "protocol")
    if len(buf) < 2:
        return None
    code = buf[1]
    if code != 0:
        meaning = SOCKS5_REPLIES.get(code, "unassigned reply code")
        raise HandshakeFailed(f"{meaning} (SOCKS5 reply {code})", "refused")
    if len(buf) < 5:
        return None
    atyp = buf[3]
    if atyp == _ATYP_IPV4:
        end = 4 + 4
    elif atyp == _ATYP_IPV6:
        end = 4 + 16
    elif atyp == _ATYP_DOMAINNAME:
        end = 5 + buf[4]
    else:
        raise HandshakeFailed(f"malformed SOCKS5 reply: unknown address type {atyp}", "protocol")
    if len(buf) < end + 2:
        return None
    (port,) = struct.unpack("!H", buf[end : end + 2])
    if atyp == _ATYP_DOMAINNAME:
        host = printable(buf[5:end])
    else:
        host = str(ipaddress.ip_address(buf[4:end]))
    return BoundAddress(host, port), end + 2


# -- HTTP CONNECT ----------------------------------------------------------------------------


def _authority(host: str, port: int) -> str:
    # RFC 9110 §9.3.6: the request target is "host:port"; an IPv6 literal is bracketed
    # (RFC 3986 §3.2.2).
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def encode_http_connect(
    host: str,
    port: int,
    user: str | None = None,
    password: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """
    An HTTP CONNECT request head: ``CONNECT host:port HTTP/1.1``, ``Host:`` (RFC 9110
    §7.2), ``Proxy-Authorization: Basic`` (RFC 7617, UTF-8) when ``user`` is given, then
    ``headers`` (the reference's FirewallData). An extra header named ``Host`` or
    ``Proxy-Authorization`` replaces the one rtunnel would send.

    :raises ValueError: for a header name that is not a token, or a value with CR, LF or
        NUL (which would let it add lines of its own), or a ``:`` in the user name.
    """
    authority = _authority(host, port)
    overridden = set()
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid HTTP header name")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"the value of the HTTP header {name!r} contains CR, LF or NUL")
        overridden.add(name.lower())
    lines = [f"CONNECT {authority} HTTP/1.1"]
    if "host" not in overridden:
        lines.append(f"Host: {authority}")
    if user is not None and "proxy-authorization" not in overridden:
        if ":" in user:
            raise ValueError("an HTTP Basic user name cannot contain ':' (RFC 7617 §2)")
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_http_reply(buf: bytes) -> tuple[HTTPReply, int] | None:
    """
    An HTTP response head: the status line and headers, up to the empty line.

    :return: ``(reply, bytes taken)``, or ``None`` while incomplete. Whatever follows the
        head is not read: after a 2xx it is the tunnel's.
    :raises HandshakeFailed: if the head is not HTTP/1.x or is longer than
        :data:`HTTP_HEAD_LIMIT`.
    """
    # As soon as the first bytes show it, not after 16 KiB: a SOCKS proxy's binary reply.
    prefix = b"HTTP/1."
    if not prefix.startswith(buf[: len(prefix)]):
        raise HandshakeFailed(f"not an HTTP reply: it starts {_quote(buf[:16])}", "protocol")
    end = _HEAD_END.search(buf, 0, HTTP_HEAD_LIMIT)
    if end is None:
        if len(buf) >= HTTP_HEAD_LIMIT:
            raise HandshakeFailed(
                f"the proxy's response head is longer than {HTTP_HEAD_LIMIT} bytes", "protocol"
            )
        return None
    lines = re.split(rb"\r?\n", buf[: end.start()])
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise HandshakeFailed(f"malformed HTTP status line {_quote(lines[0])}", "protocol")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name:
            raise HandshakeFailed(f"malformed HTTP header line {_quote(line)}", "protocol")
        headers.append((printable(name.strip()), printable(value.strip())))
    reply = HTTPReply(
        status=int(status.group(1)),
        reason=printable(status.group(2) or b""),
        status_line=printable(lines[0]),
        headers=tuple(headers),
    )
    return reply, end.end()


def http_failure(reply: HTTPReply, sent_credentials: bool) -> HandshakeFailed | None:
    """
    Judge an HTTP proxy's reply to CONNECT: any 2xx opens the tunnel (RFC 9110 §9.3.6);
    407 asks for proxy credentials (§15.5.8), as does 401 after credentials were sent;
    anything else is a refusal.

    :param sent_credentials: whether the request carried ``Proxy-Authorization``.
    :return: ``None`` for success, else the failure to raise.
    """
    if 200 <= reply.status <= 299:
        return None
    quoted = f'"{reply.status_line}"'
    if reply.status == 401 and sent_credentials:
        # tinyproxy 1.11.1 answers wrong BasicAuth credentials with 401 (and 407 only when
        # there are none): a refusal of the credentials all the same.
        return HandshakeFailed(
            f"the proxy refused the user name and password (answer {quoted})", "authentication"
        )
    if reply.status != 407:
        return HandshakeFailed(f"the proxy answered {quoted}", "refused")
    schemes = [
        value.split(None, 1)[0] if value.split() else value
        for name, value in reply.headers
        if name.lower() == "proxy-authenticate"
    ]
    if schemes and not any(s.lower() == "basic" for s in schemes):
        offered = ", ".join(printable(s, 32) for s in schemes[:4])
        return HandshakeFailed(
            f"the proxy asks for {offered} authentication, and only Basic is supported "
            f"(answer {quoted})",
            "authentication",
        )
    if sent_credentials:
        return HandshakeFailed(
            f"the proxy refused the user name and password (answer {quoted})", "authentication"
        )
    return HandshakeFailed(
        f"the proxy requires authentication: give a user name and password (answer {quoted})",
        "authentication",
    )


# -- the state machine -----------------------------------------------------------------------


class Handshake:
    """
    One client handshake with a proxy, fed the proxy's bytes as they arrive.

    Use: write :meth:`start`'s bytes, then pass every read to :meth:`receive` and write
    what it returns in :attr:`Progress.send`, until :attr:`Progress.leftover` is not
    ``None``. Unread bytes are kept only while a reply is incomplete, and no reply may be
    longer than :data:`HTTP_HEAD_LIMIT` (SOCKS replies: at most 262 bytes), so memory
    stays bounded whatever the proxy sends.

    States: SOCKS4/4A ``REQUEST``; SOCKS5 ``METHOD -> [AUTH ->] CONNECT``; HTTP
    ``REQUEST``; then ``DONE`` (or ``FAILED`` after a :class:`HandshakeFailed`).

    :param kind: the proxy protocol.
    :param host: the destination; for ``"socks4"``, an IPv4 literal (resolve it first).
    :param port: the destination port.
    :param user: the SOCKS4 user id, or the SOCKS5/HTTP user name.
    :param password: the SOCKS5/HTTP password.
    :param headers: extra HTTP headers.
    :raises ValueError: if the destination or the credentials cannot be encoded.
    """

    def __init__(
        self,
        kind: Kind,
        host: str,
        port: int,
        user: str | None = None,
        password: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.kind = kind
        self._buffer = b""
        self._auth_request = b""
        self.bound: BoundAddress | None = None
        self.http_reply: HTTPReply | None = None
        if kind in ("socks4", "socks4a"):
            self._request = encode_socks4_request(host, port, user or "", socks4a=kind == "socks4a")
            self.state = "REQUEST"
        elif kind == "socks5":
            if user is not None:
                self._auth_request = encode_socks5_auth(user, password or "")
            self._connect = encode_socks5_connect(host, port)
            self._request = encode_socks5_greeting(user is not None)
            self.state = "METHOD"
        elif kind == "http":
            self._request = encode_http_connect(host, port, user, password, headers)
            self._sent_credentials = user is not None
            self.state = "REQUEST"
        else:
            raise ValueError(f"unknown proxy kind {kind!r}")

    def start(self) -> bytes:
        """:return: the first bytes to send to the proxy."""
        return self._request

    def receive(self, data: bytes) -> Progress:
        """
        Take bytes from the proxy.

        :return: what to send, and the leftover once the handshake has succeeded.
        :raises HandshakeFailed: if the proxy refused or broke its protocol (then this
            handshake takes no more bytes).
        """
        if self.state in ("DONE", "FAILED"):
            raise ValueError(f"the handshake is over ({self.state})")
        self._buffer += data
        send = b""
        try:
            while True:
                taken = self._step()
                if taken is None:
                    return Progress(send, None)
                self._buffer, step_send = self._buffer[taken[0] :], taken[1]
                send += step_send
                if self.state == "DONE":
                    leftover, self._buffer = self._buffer, b""
                    return Progress(send, leftover)
        except HandshakeFailed:
            self.state, self._buffer = "FAILED", b""
            raise

    def _step(self) -> tuple[int, bytes] | None:
        # One reply, if complete: (bytes taken, bytes to send next).
        buf = self._buffer
        if self.kind in ("socks4", "socks4a"):
            taken = parse_socks4_reply(buf)
            if taken is None:
                return None
            self.state = "DONE"
            return taken, b""
        if self.kind == "http":
            parsed = parse_http_reply(buf)
            if parsed is None:
                return None
            self.http_reply, taken = parsed
            failure = http_failure(self.http_reply, self._sent_credentials)
            if failure is not None:
                raise failure
            self.state = "DONE"
            return taken, b""
        if self.state == "METHOD":
            try:
                method = parse_socks5_method(buf)
            except HandshakeFailed as e:
                if e.category != "authentication":
                    raise
                offered = (
                    "offered no authentication or username/password"
                    if self._auth_request
                    else "offered only no authentication: give a user name and password"
                )
                raise HandshakeFailed(f"{e.reason} ({offered})", e.category) from None
            if method is None:
                return None
            chosen, taken = method
            if chosen == _NO_AUTH:
                self.state = "CONNECT"
                return taken, self._connect
            if chosen == _USERNAME_PASSWORD and self._auth_request:
                self.state = "AUTH"
                return taken, self._auth_request
            name = _METHOD_NAMES.get(chosen, f"method {chosen}")
            if chosen == _USERNAME_PASSWORD:
                raise HandshakeFailed(
                    "the proxy requires username/password authentication: give a user name "
                    "and password",
                    "authentication",
                )
            raise HandshakeFailed(
                f"the proxy chose {name} ({chosen}), which was not offered", "protocol"
            )
        if self.state == "AUTH":
            taken_auth = parse_socks5_auth_reply(buf)
            if taken_auth is None:
                return None
            self.state = "CONNECT"
            return taken_auth, self._connect
        reply = parse_socks5_reply(buf)
        if reply is None:
            return None
        self.bound, taken = reply
        self.state = "DONE"
        return taken, b""


def _quote(data: bytes) -> str:
    return f'"{printable(data, 64)}"'
