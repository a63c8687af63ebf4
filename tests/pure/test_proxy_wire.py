"""
The proxy handshakes' pure parts (:mod:`rtunnel.client.reach._proxywire`) and the proxy settings
(:mod:`rtunnel.client.reach.proxy`: ``Proxy``, ``from_url``, ``from_environment``,
``bypasses``), as plain functions: byte-exact requests against the specifications'
layouts, every refusal code's message, replies split anywhere, leftover bytes.
"""

from __future__ import annotations

import base64
import struct

import pytest

from rtunnel.client.reach._proxywire import (
    HTTP_HEAD_LIMIT,
    SOCKS4_REPLIES,
    SOCKS5_REPLIES,
    BoundAddress,
    Handshake,
    HandshakeFailed,
    HTTPReply,
    encode_http_connect,
    encode_socks4_request,
    encode_socks5_auth,
    encode_socks5_connect,
    encode_socks5_greeting,
    http_failure,
    parse_http_reply,
    parse_socks4_reply,
    parse_socks5_auth_reply,
    parse_socks5_method,
    parse_socks5_reply,
)
from rtunnel.client.reach.proxy import Proxy, bypasses, parse_headers
from rtunnel.errors import SpecError

# -- SOCKS4 / SOCKS4A ------------------------------------------------------------------------


def test_socks4_request_layout() -> None:
    # VN 4, CD 1 (CONNECT), DSTPORT big-endian, DSTIP, USERID, NUL.
    assert encode_socks4_request("10.1.2.3", 2222, "bob", socks4a=False) == (
        b"\x04\x01\x08\xae\x0a\x01\x02\x03bob\x00"
    )
    assert (
        encode_socks4_request("10.1.2.3", 22, socks4a=False)
        == b"\x04\x01\x00\x16\n\x01\x02\x03\x00"
    )


def test_socks4a_request_layout() -> None:
    # DSTIP 0.0.0.1 says "a name follows the USERID's NUL", NUL-terminated itself.
    assert encode_socks4_request("ssh.example", 22, "bob", socks4a=True) == (
        b"\x04\x01\x00\x16\x00\x00\x00\x01bob\x00ssh.example\x00"
    )
    # An IPv4 literal goes as plain SOCKS4.
    assert encode_socks4_request("10.0.0.1", 22, socks4a=True) == (
        b"\x04\x01\x00\x16\x0a\x00\x00\x01\x00"
    )


@pytest.mark.parametrize(
    ("host", "socks4a", "user", "message"),
    [
        ("ssh.example", False, "", "SOCKS4 needs an IPv4 address"),
        ("::1", False, "", "SOCKS4 cannot connect to the IPv6 address ::1"),
        ("::1", True, "", "SOCKS4 cannot connect to the IPv6 address ::1"),
        ("10.0.0.1", False, "a\0b", "NUL"),
        ("x" * 256, True, "", "1 to 255 bytes"),
    ],
)
def test_socks4_request_refusals(host: str, socks4a: bool, user: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_socks4_request(host, 22, user, socks4a=socks4a)


def test_socks4_reply_granted_takes_eight_bytes() -> None:
    reply = b"\x00\x5a\x00\x16\x7f\x00\x00\x01"
    for n in range(8):
        assert parse_socks4_reply(reply[:n]) is None
    assert parse_socks4_reply(reply) == 8
    assert parse_socks4_reply(reply + b"SSH-2.0-x\r\n") == 8
    # Some servers echo VN 4 instead of 0.
    assert parse_socks4_reply(b"\x04\x5a" + bytes(6)) == 8


@pytest.mark.parametrize("code", [91, 92, 93, 17])
def test_socks4_refusal_codes(code: int) -> None:
    with pytest.raises(HandshakeFailed) as e:
        parse_socks4_reply(bytes([0, code]) + bytes(6))
    expected = SOCKS4_REPLIES.get(code, "unknown reply code")
    assert e.value.reason == f"{expected} (SOCKS4 reply {code})"
    assert e.value.category == "refused"


def test_socks4_reply_meanings() -> None:
    assert SOCKS4_REPLIES == {
        91: "request rejected or failed",
        92: "request rejected because the SOCKS server cannot connect to identd on the client",
        93: "request rejected because the client program and identd report different user-ids",
    }


def test_socks4_reply_from_another_protocol_fails_on_the_first_byte() -> None:
    with pytest.raises(HandshakeFailed, match=r'not a SOCKS4 reply: it starts "H"') as e:
        parse_socks4_reply(b"H")
    assert e.value.category == "protocol"
    with pytest.raises(HandshakeFailed, match=r'it starts "\\x05\\x00"'):
        parse_socks4_reply(b"\x05\x00")


# -- SOCKS5 ----------------------------------------------------------------------------------


def test_socks5_greeting_layout() -> None:
    # RFC 1928 §3: VER 5, NMETHODS, METHODS.
    assert encode_socks5_greeting(False) == b"\x05\x01\x00"
    assert encode_socks5_greeting(True) == b"\x05\x02\x00\x02"


def test_socks5_method_reply() -> None:
    assert parse_socks5_method(b"") is None
    assert parse_socks5_method(b"\x05") is None
    assert parse_socks5_method(b"\x05\x00") == (0, 2)
    assert parse_socks5_method(b"\x05\x02\x01\x00") == (2, 2)
    with pytest.raises(HandshakeFailed, match="none of the offered") as e:
        parse_socks5_method(b"\x05\xff")
    assert e.value.category == "authentication"
    with pytest.raises(
        HandshakeFailed, match=r'not a SOCKS5 reply: it starts "HTTP/1\.1 400 Bad"'
    ) as e:
        parse_socks5_method(b"HTTP/1.1 400 Bad Request\r\n")
    assert e.value.category == "protocol"


def test_socks5_auth_request_layout() -> None:
    # RFC 1929 §2: VER 1, ULEN, UNAME, PLEN, PASSWD; lengths in bytes (UTF-8).
    assert encode_socks5_auth("bob", "pw") == b"\x01\x03bob\x02pw"
    assert encode_socks5_auth("jörg", "p") == b"\x01\x05j\xc3\xb6rg\x01p"
    assert encode_socks5_auth("u" * 255, "p" * 255) == (
        b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255
    )


@pytest.mark.parametrize(
    ("user", "password", "what"),
    [
        ("", "pw", "user name"),
        ("u" * 256, "pw", "user name"),
        ("bob", "", "password"),
        ("bob", "é" * 128, "password"),
    ],
)
def test_socks5_auth_request_lengths(user: str, password: str, what: str) -> None:
    with pytest.raises(ValueError, match=f"SOCKS5 {what} must be 1 to 255 bytes"):
        encode_socks5_auth(user, password)


def test_socks5_auth_reply() -> None:
    assert parse_socks5_auth_reply(b"") is None
    assert parse_socks5_auth_reply(b"\x01") is None
    assert parse_socks5_auth_reply(b"\x01\x00\x05") == 2
    with pytest.raises(
        HandshakeFailed, match=r"refused the user name and password \(RFC 1929 status 1\)"
    ) as e:
        parse_socks5_auth_reply(b"\x01\x01")
    assert e.value.category == "authentication"
    with pytest.raises(HandshakeFailed, match="not a SOCKS5 username/password reply") as e:
        parse_socks5_auth_reply(b"\x05\x00")
    assert e.value.category == "protocol"


def test_socks5_connect_layout() -> None:
    # RFC 1928 §4: VER 5, CMD 1, RSV 0, ATYP, DST.ADDR, DST.PORT.
    assert encode_socks5_connect("192.0.2.7", 22) == b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x16"
    assert encode_socks5_connect("2001:db8::1", 2222) == (
        b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x08\xae"
    )
    # A name goes to the proxy to resolve (ATYP 3: length byte, no NUL).
    assert encode_socks5_connect("ssh.example", 22) == b"\x05\x01\x00\x03\x0bssh.example\x00\x16"
    name = "a" * 255
    assert encode_socks5_connect(name, 1) == b"\x05\x01\x00\x03\xff" + name.encode() + b"\x00\x01"
    # An internationalized name as IDNA.
    assert encode_socks5_connect("bücher.example", 22) == (
        b"\x05\x01\x00\x03\x15xn--bcher-kva.example\x00\x16"
    )
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        encode_socks5_connect("a" * 256, 22)


@pytest.mark.parametrize("code", range(1, 11))
def test_socks5_refusal_codes(code: int) -> None:
    # The refusal is known from REP alone: no need to wait for BND.ADDR.
    with pytest.raises(HandshakeFailed) as e:
        parse_socks5_reply(bytes([5, code]))
    expected = SOCKS5_REPLIES.get(code, "unassigned reply code")
    assert e.value.reason == f"{expected} (SOCKS5 reply {code})"
    assert e.value.category == "refused"


def test_socks5_reply_meanings() -> None:
    # RFC 1928 §6.
    assert SOCKS5_REPLIES == {
        1: "general SOCKS server failure",
        2: "connection not allowed by ruleset",
        3: "Network unreachable",
        4: "Host unreachable",
        5: "Connection refused",
        6: "TTL expired",
        7: "Command not supported",
        8: "Address type not supported",
    }


@pytest.mark.parametrize(
    ("reply", "bound"),
    [
        (b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x00", BoundAddress("127.0.0.1", 1024)),
        (
            b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x50",
            BoundAddress("::1", 80),
        ),
        (b"\x05\x00\x00\x03\x05proxy\x00\x16", BoundAddress("proxy", 22)),
        (b"\x05\x00\x00\x03\x00\x00\x16", BoundAddress("", 22)),
    ],
)
def test_socks5_reply_variable_length_and_leftover(reply: bytes, bound: BoundAddress) -> None:
    for n in range(len(reply)):
        assert parse_socks5_reply(reply[:n]) is None, n
    assert parse_socks5_reply(reply) == (bound, len(reply))
    assert parse_socks5_reply(reply + b"SSH-2.0-") == (bound, len(reply))


def test_socks5_reply_malformed() -> None:
    with pytest.raises(HandshakeFailed, match="unknown address type 7") as e:
        parse_socks5_reply(b"\x05\x00\x00\x07\x00")
    assert e.value.category == "protocol"
    with pytest.raises(HandshakeFailed, match="not a SOCKS5 reply") as e:
        parse_socks5_reply(b"\x00\x5a")
    # A name from the proxy is made printable.
    bound, _ = parse_socks5_reply(b"\x05\x00\x00\x03\x03a\x1bb\x00\x01") or (None, 0)
    assert bound == BoundAddress("a\\x1bb", 1)


# -- HTTP CONNECT ----------------------------------------------------------------------------


def test_http_connect_layout() -> None:
    assert encode_http_connect("ssh.example", 22) == (
        b"CONNECT ssh.example:22 HTTP/1.1\r\nHost: ssh.example:22\r\n\r\n"
    )
    # RFC 9110 §9.3.6 authority form; an IPv6 literal in brackets (RFC 3986 §3.2.2).
    assert encode_http_connect("2001:db8::1", 2222) == (
        b"CONNECT [2001:db8::1]:2222 HTTP/1.1\r\nHost: [2001:db8::1]:2222\r\n\r\n"
    )


def test_http_connect_basic_credentials_rfc7617_example() -> None:
    # RFC 7617 §2's example: Aladdin / open sesame.
    head = encode_http_connect("h", 22, "Aladdin", "open sesame")
    assert head == (
        b"CONNECT h:22 HTTP/1.1\r\nHost: h:22\r\n"
        b"Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
    )
    # UTF-8 (RFC 7617 §2.1's charset), an absent password as empty.
    token = encode_http_connect("h", 22, "jörg", None).split(b"Basic ")[1].split(b"\r\n")[0]
    assert base64.b64decode(token) == "jörg:".encode()
    with pytest.raises(ValueError, match="cannot contain ':'"):
        encode_http_connect("h", 22, "a:b", "c")


def test_http_connect_extra_headers() -> None:
    head = encode_http_connect("h", 22, headers=[("X-Token", "abc def"), ("User-Agent", "rtunnel")])
    assert head == (
        b"CONNECT h:22 HTTP/1.1\r\nHost: h:22\r\nX-Token: abc def\r\nUser-Agent: rtunnel\r\n\r\n"
    )
    # An extra Host or Proxy-Authorization replaces rtunnel's own.
    head = encode_http_connect(
        "h", 22, "u", "p", headers=[("host", "other:1"), ("Proxy-Authorization", "Bearer t")]
    )
    assert head == (
        b"CONNECT h:22 HTTP/1.1\r\nhost: other:1\r\nProxy-Authorization: Bearer t\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (("X-A", "v\r\nEvil: 1"), "contains CR, LF or NUL"),
        (("X-A", "v\nx"), "contains CR, LF or NUL"),
        (("X-A", "v\0"), "contains CR, LF or NUL"),
        (("X A", "v"), "not a valid HTTP header name"),
        (("X:A", "v"), "not a valid HTTP header name"),
        (("", "v"), "not a valid HTTP header name"),
    ],
)
def test_http_connect_header_injection_refused(header: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_http_connect("h", 22, headers=[header])


def test_http_reply_head_and_leftover() -> None:
    head = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 proxy\r\n\r\n"
    for n in range(len(head)):
        assert parse_http_reply(head[:n]) is None, n
    reply = HTTPReply(
        200,
        "Connection established",
        "HTTP/1.1 200 Connection established",
        (("Via", "1.1 proxy"),),
    )
    assert parse_http_reply(head) == (reply, len(head))
    assert parse_http_reply(head + b"SSH-2.0-OpenSSH\r\n") == (reply, len(head))
    # Bare LF line ends (RFC 9112 §2.2 lets a recipient accept them), an empty reason.
    assert parse_http_reply(b"HTTP/1.0 200\n\nSSH") == (HTTPReply(200, "", "HTTP/1.0 200", ()), 14)


def test_http_reply_head_is_capped() -> None:
    start = b"HTTP/1.1 200 OK\r\n"
    filler = start + b"X: " + b"a" * (HTTP_HEAD_LIMIT - len(start) - 4)
    assert len(filler) == HTTP_HEAD_LIMIT - 1
    assert parse_http_reply(filler) is None
    with pytest.raises(HandshakeFailed, match=f"longer than {HTTP_HEAD_LIMIT} bytes") as e:
        parse_http_reply(filler + b"a")
    assert e.value.category == "protocol"
    # The end must fall within the limit; what follows it may be longer.
    fits = start + b"X: " + b"a" * (HTTP_HEAD_LIMIT - len(start) - 7) + b"\r\n\r\n"
    assert len(fits) == HTTP_HEAD_LIMIT
    assert parse_http_reply(fits + b"b" * 100_000) is not None
    # An end beyond the limit, arriving in one read, is still too late.
    late = start + b"X: " + b"a" * HTTP_HEAD_LIMIT + b"\r\n\r\n"
    with pytest.raises(HandshakeFailed, match="longer than"):
        parse_http_reply(late)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x05\x00", r'not an HTTP reply: it starts "\\x05\\x00"'),
        (b"SSH-2.0-OpenSSH", 'not an HTTP reply: it starts "SSH-2.0-OpenSSH"'),
        (b"HTTP/1.1 2000 OK\r\n\r\n", 'malformed HTTP status line "HTTP/1.1 2000 OK"'),
        (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", 'malformed HTTP header line "NoColon"'),
    ],
)
def test_http_reply_malformed(data: bytes, message: str) -> None:
    with pytest.raises(HandshakeFailed, match=message) as e:
        parse_http_reply(data)
    assert e.value.category == "protocol"


def _reply(head: bytes) -> HTTPReply:
    parsed = parse_http_reply(head)
    assert parsed is not None
    return parsed[0]


def test_http_failure_judgement() -> None:
    assert http_failure(_reply(b"HTTP/1.1 200 OK\r\n\r\n"), False) is None
    assert http_failure(_reply(b"HTTP/1.1 204 No Content\r\n\r\n"), False) is None
    refused = http_failure(_reply(b"HTTP/1.1 403 Access violation\r\n\r\n"), True)
    assert refused is not None and refused.category == "refused"
    assert refused.reason == 'the proxy answered "HTTP/1.1 403 Access violation"'
    redirect = http_failure(_reply(b"HTTP/1.1 302 Found\r\nLocation: x\r\n\r\n"), False)
    assert redirect is not None and redirect.category == "refused"

    need = http_failure(
        _reply(
            b"HTTP/1.0 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="x"\r\n\r\n'
        ),
        False,
    )
    assert need is not None and need.category == "authentication"
    assert "requires authentication: give a user name and password" in need.reason
    bad = http_failure(_reply(b"HTTP/1.1 407 Nope\r\n\r\n"), True)
    assert bad is not None and bad.category == "authentication"
    assert bad.reason == 'the proxy refused the user name and password (answer "HTTP/1.1 407 Nope")'
    other = http_failure(
        _reply(
            b"HTTP/1.1 407 x\r\nProxy-Authenticate: Negotiate\r\nProxy-Authenticate: NTLM\r\n\r\n"
        ),
        True,
    )
    assert other is not None and other.category == "authentication"
    assert "asks for Negotiate, NTLM authentication, and only Basic is supported" in other.reason
    # tinyproxy 1.11.1 answers wrong credentials with 401.
    wrong = http_failure(_reply(b"HTTP/1.0 401 Unauthorized\r\n\r\n"), True)
    assert wrong is not None and wrong.category == "authentication"
    plain_401 = http_failure(_reply(b"HTTP/1.0 401 Unauthorized\r\n\r\n"), False)
    assert plain_401 is not None and plain_401.category == "refused"


def test_http_status_line_is_made_printable_and_capped() -> None:
    evil = b"HTTP/1.1 403 \x1b[31mred" + b"x" * 1000 + b"\r\n\r\n"
    failure = http_failure(_reply(evil), False)
    assert failure is not None
    assert "\x1b" not in failure.reason and "\\x1b[31mred" in failure.reason
    assert len(failure.reason) < 300 and failure.reason.endswith('..."')


# -- the state machine -----------------------------------------------------------------------

_SSH = b"SSH-2.0-OpenSSH_9.2\r\n"


def _run(handshake: Handshake, replies: bytes, chunk: int) -> tuple[bytes, bytes]:
    """
    Feed ``replies`` ``chunk`` bytes at a time, as reads would bring them; return (every
    byte sent, the leftover plus the reads after the handshake ended, which the endpoint
    hands on directly).
    """
    sent = handshake.start()
    after = b""
    done = False
    for i in range(0, len(replies), chunk):
        piece = replies[i : i + chunk]
        if done:
            after += piece
            continue
        progress = handshake.receive(piece)
        sent += progress.send
        if progress.leftover is not None:
            after, done = progress.leftover, True
    assert done and handshake.state == "DONE"
    return sent, after


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 8, 9, 1000])
def test_handshake_socks4(chunk: int) -> None:
    sent, after = _run(
        Handshake("socks4", "127.0.0.1", 22, "me"), b"\x00\x5a" + bytes(6) + _SSH, chunk
    )
    assert sent == b"\x04\x01\x00\x16\x7f\x00\x00\x01me\x00"
    assert after == _SSH


def test_handshake_leftover_is_everything_after_the_reply_whatever_the_split() -> None:
    replies = b"\x05\x02" + b"\x01\x00" + b"\x05\x00\x00\x03\x02ab\x00\x16" + _SSH
    for chunk in range(1, len(replies) + 1):
        sent, after = _run(Handshake("socks5", "ssh.example", 22, "u", "p"), replies, chunk)
        assert after == _SSH, chunk
        assert sent == (
            b"\x05\x02\x00\x02" + b"\x01\x01u\x01p" + b"\x05\x01\x00\x03\x0bssh.example\x00\x16"
        )


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_handshake_socks4a_and_http(chunk: int) -> None:
    sent, after = _run(
        Handshake("socks4a", "ssh.example", 22), b"\x00\x5a" + bytes(6) + _SSH, chunk
    )
    assert sent == b"\x04\x01\x00\x16\x00\x00\x00\x01\x00ssh.example\x00"
    assert after == _SSH
    head = b"HTTP/1.1 200 Connection established\r\n\r\n"
    sent, after = _run(
        Handshake("http", "ssh.example", 22, "u", "p", [("X-A", "1")]), head + _SSH, chunk
    )
    assert sent == encode_http_connect("ssh.example", 22, "u", "p", [("X-A", "1")])
    assert after == _SSH


def test_handshake_socks5_without_credentials_sends_connect_after_method_0() -> None:
    handshake = Handshake("socks5", "10.0.0.1", 22)
    assert handshake.start() == b"\x05\x01\x00"
    progress = handshake.receive(b"\x05\x00")
    assert progress == (b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x16", None)
    assert handshake.state == "CONNECT"
    progress = handshake.receive(b"\x05\x00\x00\x01\x01\x02\x03\x04\x00\x01")
    assert progress == (b"", b"")
    assert handshake.bound == BoundAddress("1.2.3.4", 1)


@pytest.mark.parametrize(
    ("user", "method_reply", "message", "category"),
    [
        (
            None,
            b"\x05\x02",
            "requires username/password authentication: give a user",
            "authentication",
        ),
        (
            None,
            b"\x05\xff",
            r"none of the offered .* \(offered only no authentication: give a user",
            "authentication",
        ),
        (
            "u",
            b"\x05\xff",
            r"none of the offered .* \(offered no authentication or username/password\)",
            "authentication",
        ),
        (None, b"\x05\x01", r"chose GSSAPI \(1\), which was not offered", "protocol"),
        ("u", b"\x05\x03", r"chose method 3 \(3\), which was not offered", "protocol"),
    ],
)
def test_handshake_socks5_method_problems(
    user: str | None, method_reply: bytes, message: str, category: str
) -> None:
    handshake = Handshake("socks5", "h", 22, user, "p" if user else None)
    handshake.start()
    with pytest.raises(HandshakeFailed, match=message) as e:
        handshake.receive(method_reply)
    assert e.value.category == category
    assert handshake.state == "FAILED"
    with pytest.raises(ValueError, match="over"):
        handshake.receive(b"\x05\x00")


def test_handshake_http_refusal_and_407() -> None:
    handshake = Handshake("http", "h", 22)
    handshake.start()
    with pytest.raises(HandshakeFailed) as e:
        handshake.receive(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    assert e.value.category == "authentication"
    handshake = Handshake("http", "h", 22)
    with pytest.raises(HandshakeFailed) as e:
        handshake.receive(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    assert e.value.category == "refused" and '"HTTP/1.1 403 Forbidden"' in e.value.reason


def test_handshake_memory_stays_bounded() -> None:
    # A proxy that sends an endless head a byte at a time: refused at the cap, and never
    # more than that buffered.
    handshake = Handshake("http", "h", 22)
    handshake.receive(b"HTTP/1.1 200 OK\r\nX: ")
    with pytest.raises(HandshakeFailed, match="longer than"):
        for _ in range(HTTP_HEAD_LIMIT):
            handshake.receive(b"a")
            assert len(handshake._buffer) < HTTP_HEAD_LIMIT
    assert handshake._buffer == b""


def test_handshake_refuses_bad_destinations() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        Handshake("socks4", "ssh.example", 22)
    with pytest.raises(ValueError, match="unknown proxy kind"):
        Handshake("socks6", "h", 22)  # type: ignore[arg-type]


# -- Proxy -----------------------------------------------------------------------------------


def test_proxy_defaults_and_normalization() -> None:
    assert Proxy("http", "p").port == 80
    assert Proxy("socks4", "p").port == 1080
    assert Proxy("socks4a", "p").port == 1080
    assert Proxy("SOCKS5", "p").port == 1080
    assert Proxy("SOCKS5", "p").kind == "socks5"
    assert Proxy("http", "p", 3128).port == 3128
    assert Proxy("socks5", "[::1]").host == "::1"
    assert Proxy("socks5", "::1", 1).address == "[::1]:1"
    assert Proxy("socks5", "p", 1).label == "socks5 proxy p:1"
    assert Proxy("http", "p", headers=[("A", "b")]).headers == (("A", "b"),)  # type: ignore[arg-type]
    assert Proxy("socks5", "p") == Proxy("socks5", "p", 1080)


def test_proxy_repr_hides_the_password() -> None:
    text = repr(Proxy("socks5", "p", 1, "bob", "hunter2"))
    assert "hunter2" not in text
    assert text == "Proxy(kind='socks5', host='p', port=1, user='bob', password='***')"
    assert "hunter2" not in str(Proxy("http", "p", 1, "bob", "hunter2"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("socks6", "p"),
            r"unknown proxy kind 'socks6': use 'http', 'socks4', 'socks4a' or 'socks5'",
        ),
        (("https", "p"), "unknown proxy kind"),
        (
            ("http", "p", 65536),
            r"proxy port must be 1 to 65535 \(or 0 for the default, 80 for http\)",
        ),
        (("socks5", "p", -1), "proxy port must be"),
        (("socks5", "p", True), "proxy port must be"),
        (("socks5", ""), "is not a host name or IP address"),
        (("socks5", "a b"), "is not a host name or IP address"),
        (("socks5", "p:1080"), "give the port separately"),
        (("socks5", "u@p"), "is not a host name"),
        (
            ("socks4", "p", 0, "bob", "pw"),
            r"takes a user id but no password .* use a socks5 or http proxy",
        ),
        (("socks4a", "p", 0, "bob", "pw"), "socks4a proxy takes a user id but no password"),
        (("socks4", "p", 0, "a\0b"), "NUL"),
        (("socks5", "p", 0, None, "pw"), "a proxy password needs a user name"),
        (("socks5", "p", 0, "bob"), r"SOCKS5 proxy password must be 1 to 255 bytes"),
        (("socks5", "p", 0, "bob", ""), "SOCKS5 proxy password must be 1 to 255 bytes"),
        (("socks5", "p", 0, "u" * 256, "pw"), "SOCKS5 proxy user name must be 1 to 255 bytes"),
        (("socks5", "p", 0, "", "pw"), "SOCKS5 proxy user name must be 1 to 255 bytes"),
        (("http", "p", 0, "a:b", "pw"), r"cannot contain ':' \(RFC 7617"),
        (("socks5", "p", 0, None, None, (("X-A", "1"),)), "sent only to an HTTP proxy, not socks5"),
        (("http", "p", 0, None, None, (("X-A", "1\r\nHost: evil"),)), "contains CR, LF or NUL"),
        (("http", "p", 0, None, None, (("Bad Name", "1"),)), "not a valid HTTP header name"),
    ],
)
def test_proxy_validation(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(SpecError, match=message) as e:
        Proxy(*args)  # type: ignore[arg-type]
    assert e.value.code == 10022


def test_proxy_allowed_credentials() -> None:
    assert Proxy("socks4", "p", 0, "userid").user == "userid"
    assert Proxy("http", "p", 0, "bob").password is None
    assert Proxy("http", "p", 0, "bob", "").password == ""
    assert Proxy("socks5", "p", 0, "u" * 255, "p" * 255).user == "u" * 255


# -- from_url --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.example", Proxy("http", "proxy.example", 80)),
        ("http://proxy.example:3128/", Proxy("http", "proxy.example", 3128)),
        ("HTTP://Proxy.Example:3128", Proxy("http", "proxy.example", 3128)),
        ("socks4://10.0.0.1", Proxy("socks4", "10.0.0.1", 1080)),
        ("socks4://me@10.0.0.1:1081", Proxy("socks4", "10.0.0.1", 1081, "me")),
        ("socks4a://p:9050", Proxy("socks4a", "p", 9050)),
        ("socks5://p", Proxy("socks5", "p", 1080)),
        ("socks5h://p:1", Proxy("socks5", "p", 1)),
        ("socks5://bob:s%3Ac%40r%20et@p", Proxy("socks5", "p", 1080, "bob", "s:c@r et")),
        ("socks5://j%C3%B6rg:pw@[::1]:1080", Proxy("socks5", "::1", 1080, "jörg", "pw")),
        ("http://[2001:db8::1]", Proxy("http", "2001:db8::1", 80)),
        ("http://bob@p", Proxy("http", "p", 80, "bob")),
        ("http://bob:@p", Proxy("http", "p", 80, "bob", "")),
    ],
)
def test_from_url(url: str, expected: Proxy) -> None:
    proxy = Proxy.from_url(url)
    assert proxy == expected
    assert (proxy.user, proxy.password) == (expected.user, expected.password)


def test_from_url_headers() -> None:
    assert Proxy.from_url("http://p", [("X-A", "1")]).headers == (("X-A", "1"),)
    with pytest.raises(SpecError, match="only to an HTTP proxy"):
        Proxy.from_url("socks5://p", [("X-A", "1")])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://p:443", r"HTTPS proxies \(TLS to the proxy\) are not supported"),
        (
            "socks://p",
            r"unsupported scheme 'socks'; use http://, socks4://, socks4a://, socks5:// or socks5h://",
        ),
        ("ftp://p", "unsupported scheme 'ftp'"),
        ("p:1080", "has no scheme"),
        ("socks5://", "has no host"),
        ("socks5://p:99999", "out of range"),
        ("socks5://p:abc", "proxy URL 'socks5://p:abc'"),
        ("http://p/path", "no path, query or fragment"),
        ("http://p?x=1", "no path, query or fragment"),
        ("http://p#f", "no path, query or fragment"),
        ("http://p :1", "spaces or control characters"),
        ("http://p\n", "spaces or control characters"),
        (
            "socks4://bob:secret@p",
            r"proxy URL 'socks4://bob:\*\*\*@p': a socks4 proxy takes a user id but no password",
        ),
        ("socks5://:secret@p", "a password needs a user name"),
        ("http://a%3Ab:secret@p", "cannot contain ':'"),
    ],
)
def test_from_url_errors(url: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as e:
        Proxy.from_url(url)
    assert "secret" not in str(e.value)


# -- from_environment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "host", "expected"),
    [
        ({}, "h", None),
        ({"ALL_PROXY": "socks5://p:1"}, "h", Proxy("socks5", "p", 1)),
        ({"all_proxy": "socks5://p:1"}, "h", Proxy("socks5", "p", 1)),
        # Lower case wins, as curl reads it; set-but-empty lower case means no proxy.
        (
            {"all_proxy": "socks5://low:1", "ALL_PROXY": "socks5://up:1"},
            "h",
            Proxy("socks5", "low", 1),
        ),
        ({"all_proxy": "", "ALL_PROXY": "socks5://up:1"}, "h", None),
        ({"ALL_PROXY": "  "}, "h", None),
        # No scheme: HTTP, as curl assumes.
        ({"ALL_PROXY": "p:3128"}, "h", Proxy("http", "p", 3128)),
        # http_proxy / https_proxy are for HTTP(S) URLs, not read here.
        ({"http_proxy": "http://p:1", "HTTPS_PROXY": "http://p:1"}, "h", None),
        ({"ALL_PROXY": "socks5://p:1", "NO_PROXY": "h"}, "h", None),
        ({"ALL_PROXY": "socks5://p:1", "NO_PROXY": "other, .example.com"}, "ssh.example.com", None),
        ({"ALL_PROXY": "socks5://p:1", "NO_PROXY": "other"}, "h", Proxy("socks5", "p", 1)),
        ({"ALL_PROXY": "socks5://p:1", "no_proxy": "*"}, "h", None),
        (
            {"ALL_PROXY": "socks5://p:1", "no_proxy": "x", "NO_PROXY": "h"},
            "h",
            Proxy("socks5", "p", 1),
        ),
        ({"ALL_PROXY": "socks5://p:1", "NO_PROXY": "10.0.0.0/8"}, "10.1.2.3", None),
    ],
)
def test_from_environment(environ: dict[str, str], host: str, expected: Proxy | None) -> None:
    assert Proxy.from_environment(environ, host) == expected


def test_from_environment_names_the_variable() -> None:
    with pytest.raises(SpecError, match=r"^all_proxy: proxy URL 'https://p'.*HTTPS"):
        Proxy.from_environment({"all_proxy": "https://p"}, "h")
    with pytest.raises(SpecError, match=r"^ALL_PROXY: proxy URL 'socks://p'"):
        Proxy.from_environment({"ALL_PROXY": "socks://p"}, "h")


# -- bypasses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "host", "expected"),
    [
        ([], "h", False),
        (["*"], "anything", True),
        ([" * "], "anything", True),
        (["example.com"], "example.com", True),
        (["example.com"], "ssh.example.com", True),
        (["example.com"], "EXAMPLE.COM.", True),
        (["Example.COM"], "example.com", True),
        ([".example.com"], "example.com", True),
        ([".example.com"], "a.b.example.com", True),
        (["example.com"], "badexample.com", False),
        (["example.com"], "example.com.evil", False),
        (["www.google.com", "www.nsoftware.com"], "www.nsoftware.com", True),
        (["*.example.com"], "ssh.example.com", True),
        (["*.example.com"], "example.com", False),
        (["ssh-??.example"], "ssh-01.example", True),
        (["10.0.*"], "10.0.3.4", True),
        (["10.0.0.1"], "10.0.0.1", True),
        (["10.0.0.1"], "10.0.0.2", False),
        (["10.0.0.1:22"], "10.0.0.1", True),
        (["example.com:22"], "ssh.example.com", True),
        (["10.0.0.0/8"], "10.200.1.1", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "ten.example", False),
        (["192.168.1.7/24"], "192.168.1.200", True),
        (["::1"], "::1", True),
        (["[::1]"], "::1", True),
        (["[::1]:22"], "[::1]", True),
        (["::1"], "0:0:0:0:0:0:0:1", True),
        (["fd00::/8"], "fd12::1", True),
        (["fd00::/8"], "10.0.0.1", False),
        (["0.0.1"], "10.0.0.1", False),
        (["bad/cidr"], "h", False),
        ([""], "h", False),
        (["", "  ", ":22"], "h", False),
    ],
)
def test_bypasses(entries: list[str], host: str, expected: bool) -> None:
    assert bypasses(entries, host) is expected


def test_bypasses_raw_string() -> None:
    # The reference's ProxyExceptionsList: semicolons (commas, as in NO_PROXY, too).
    assert bypasses("www.google.com;www.nsoftware.com", "www.nsoftware.com")
    assert bypasses("a.example; b.example", "b.example")
    assert bypasses("a.example,b.example", "b.example")
    assert not bypasses("a.example;b.example", "c.example")
    assert not bypasses("", "c.example")


def test_parse_headers() -> None:
    assert parse_headers("X-A: 1\r\nX-B:two words \nX-C:\n\n") == (
        ("X-A", "1"),
        ("X-B", "two words"),
        ("X-C", ""),
    )
    assert parse_headers("") == ()
    with pytest.raises(SpecError, match="is not 'Name: value'"):
        parse_headers("X-A 1")


def test_socks4_request_is_struct_layout() -> None:
    # Cross-check against an independent struct layout of the spec's fields.
    request = encode_socks4_request("1.2.3.4", 65535, "id", socks4a=False)
    vn, cd, port, ip = struct.unpack("!BBH4s", request[:8])
    assert (vn, cd, port, ip, request[8:]) == (4, 1, 65535, b"\x01\x02\x03\x04", b"id\x00")
