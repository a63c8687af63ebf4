"""
Remote dynamic forwarding (``ssh -R [bind_address:]port``, OpenSSH 7.6): the SOCKS server
side as plain functions (RFC 1928 layouts byte for byte, SOCKS4/4A), then real ``curl``
as the SOCKS client through the bundled server and a real sshd, ``PermitRemoteOpen``, and
the command's ``Allocated port N for remote forward to socks:0`` line next to ssh's.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from e2e_support import Server, first_lines_side_by_side
from twisted.internet.threads import deferToThread

from rtunnel import SpecError
from rtunnel._core.syntax import parse_permit_remote_open, remote_open_permitted
from rtunnel.client.channels._socksserver import (
    SocksFailure,
    SocksRequest,
    SocksServerHandshake,
    socks_reply,
)

# -- the SOCKS server codec ----------------------------------------------------------


def _feed_bytewise(data: bytes) -> tuple[bytes, object]:
    handshake = SocksServerHandshake()
    sent = b""
    outcome: object = None
    for i in range(len(data)):
        send, outcome = handshake.feed(data[i : i + 1])
        sent += send
        if outcome is not None:
            break
    return sent, outcome


@pytest.mark.parametrize(
    ("data", "sent", "expected"),
    [
        # SOCKS5, no authentication, CONNECT to an IPv4 address (RFC 1928 §3, §4).
        (
            b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
            b"\x05\x00",
            SocksRequest(5, "127.0.0.1", 80),
        ),
        # DOMAINNAME, and bytes after the request kept.
        (
            b"\x05\x02\x02\x00" + b"\x05\x01\x00\x03\x09localhost\x1f\x90" + b"GET",
            b"\x05\x00",
            SocksRequest(5, "localhost", 8080, b"GET"),
        ),
        # IPv6.
        (
            b"\x05\x01\x00" + b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + b"\x00\x16",
            b"\x05\x00",
            SocksRequest(5, "::1", 22),
        ),
        # SOCKS4: VN CD DSTPORT DSTIP USERID NUL.
        (b"\x04\x01\x00\x50\x0a\x00\x00\x01me\x00", b"", SocksRequest(4, "10.0.0.1", 80)),
        # SOCKS4A: 0.0.0.x, then the name after the user id.
        (
            b"\x04\x01\x01\xbb\x00\x00\x00\x07\x00example.com\x00x",
            b"",
            SocksRequest(4, "example.com", 443, b"x"),
        ),
    ],
)
def test_requests_byte_by_byte(data: bytes, sent: bytes, expected: SocksRequest) -> None:
    handshake = SocksServerHandshake()
    assert handshake.feed(data) == (sent, expected)
    # Arriving a byte at a time, the leftover is what followed the last byte fed.
    got_sent, outcome = _feed_bytewise(data)
    assert got_sent == sent
    assert isinstance(outcome, SocksRequest)
    assert (outcome.version, outcome.host, outcome.port) == (
        expected.version,
        expected.host,
        expected.port,
    )


@pytest.mark.parametrize(
    ("data", "sent", "reply", "reason"),
    [
        (b"\x05\x01\x02", b"\x05\xff", b"", "no method without authentication"),
        (b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6), b"\x05\x00", b"\x05\x07", "command 2"),
        (b"\x05\x01\x00\x05\x01\x00\x09\x00", b"\x05\x00", b"\x05\x08", "address type 9"),
        (b"\x04\x02\x00\x50\x0a\x00\x00\x01\x00", b"", b"\x00\x5b", "SOCKS4 command 2"),
        (b"GET / HTTP/1.1\r\n", b"", b"", "first byte 71"),
    ],
)
def test_bad_requests_are_refused_with_the_right_code(
    data: bytes, sent: bytes, reply: bytes, reason: str
) -> None:
    send, outcome = SocksServerHandshake().feed(data)
    assert send == sent
    assert isinstance(outcome, SocksFailure)
    assert outcome.reply[:2] == reply
    assert reason in outcome.reason


def test_a_client_that_never_finishes_is_cut_off() -> None:
    handshake = SocksServerHandshake()
    assert handshake.feed(b"\x04\x01\x00\x50\x0a\x00\x00\x01") == (b"", None)
    _, outcome = handshake.feed(b"u" * 2000)
    assert isinstance(outcome, SocksFailure) and "without a request" in outcome.reason


def test_replies() -> None:
    assert socks_reply(5, None, ("127.0.0.1", 8080)) == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x1f\x90"
    assert socks_reply(5, None, ("::1", 1)) == b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x00\x01"
    assert socks_reply(5, "refused") == b"\x05\x05\x00\x01" + bytes(6)
    assert socks_reply(5, "not-allowed")[1] == 2
    assert socks_reply(4, None, ("10.1.2.3", 80)) == b"\x00\x5a\x00\x50\x0a\x01\x02\x03"
    assert socks_reply(4, "refused")[:2] == b"\x00\x5b"


def test_permit_remote_open() -> None:
    assert parse_permit_remote_open(None) is None
    assert parse_permit_remote_open("any") is None
    assert parse_permit_remote_open("none") == ()
    rules = parse_permit_remote_open("localhost:80 *:443 [::1]:* Web.Example:8080")
    assert remote_open_permitted(rules, "LOCALHOST", 80)
    assert not remote_open_permitted(rules, "localhost", 81)
    assert remote_open_permitted(rules, "anything.example", 443)
    assert remote_open_permitted(rules, "::1", 22)
    assert remote_open_permitted(rules, "web.example", 8080)
    # No lookups: the address of a permitted name is not permitted.
    assert not remote_open_permitted(rules, "127.0.0.1", 80)
    assert not remote_open_permitted((), "localhost", 80)
    for bad in ["localhost", "host:", ":80", "h:0", "h:x", "[::1"]:
        with pytest.raises(SpecError, match="PermitRemoteOpen"):
            parse_permit_remote_open(bad)


# -- through real servers, with curl as the SOCKS client ------------------------------


@pytest.fixture(scope="module")
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("curl not found (scripts/test installs it)", pytrace=False)
        pytest.skip("curl not found")
    return found


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}, you came from {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _curl(curl: str, proxy: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [curl, "-sS", "--max-time", "20", "--proxy", proxy, url],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest_twisted.ensureDeferred
async def test_curl_through_each_socks_version(server: Server, curl: str, web: int) -> None:
    tunnel = server.tunnel(forwarding_local_host="127.0.0.3")
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding("127.0.0.1", 0, dynamic=True)
        assert forward.describe_target() == "socks:0"
        for scheme, host in [
            ("socks4", "127.0.0.1"),
            ("socks4a", "localhost"),
            ("socks5", "127.0.0.1"),
            ("socks5h", "localhost"),
        ]:
            done = await deferToThread(
                _curl, curl, f"{scheme}://127.0.0.1:{forward.port}", f"http://{host}:{web}/{scheme}"
            )
            assert done.returncode == 0, done.stderr
            # Connected from this machine, from ForwardingLocalHost.
            assert done.stdout == f"hello from /{scheme}, you came from 127.0.0.3"
        # Nothing listens there: SOCKS5 "connection refused" (RFC 1928 REP 5).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        done = await deferToThread(
            _curl, curl, f"socks5://127.0.0.1:{forward.port}", f"http://127.0.0.1:{closed}/"
        )
        # curl 7.88 shows the SOCKS5 reply code: 5, "connection refused".
        assert done.returncode != 0 and "(5)" in done.stderr, done.stderr
    finally:
        await tunnel.logoff()


@pytest.mark.parametrize("server", ["bundled"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_permit_remote_open_limits_where_clients_go(
    server: Server, curl: str, web: int
) -> None:
    tunnel = server.tunnel(permit_remote_open=f"localhost:{web}")
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding("127.0.0.1", 0, dynamic=True)
        proxy = f"socks5h://127.0.0.1:{forward.port}"
        done = await deferToThread(_curl, curl, proxy, f"http://localhost:{web}/ok")
        assert done.returncode == 0 and done.stdout.startswith("hello from /ok"), done.stderr
        # The same server by address is not the name permitted (no lookups, as OpenSSH).
        done = await deferToThread(_curl, curl, proxy, f"http://127.0.0.1:{web}/no")
        assert done.returncode != 0, done.stdout
        # curl 7.88 shows the SOCKS5 reply code: 2, "connection not allowed by ruleset".
        assert "(2)" in done.stderr, done.stderr
    finally:
        await tunnel.logoff()


@pytest.mark.parametrize("server", ["openssh"], indirect=True)
def test_the_command_prints_what_ssh_prints(
    server: Server, openssh_ssh: str, curl: str, web: int, tmp_path: Path
) -> None:
    """-R 0: "Allocated port N for remote forward to socks:0", as ssh 9.2 prints it, and
    the port is a working SOCKS proxy."""

    def check(port: int) -> None:
        done = _curl(curl, f"socks5h://127.0.0.1:{port}", f"http://localhost:{web}/cli")
        assert done.stdout.startswith("hello from /cli"), done.stderr

    lines = first_lines_side_by_side(server, openssh_ssh, ["-R", "0"], tmp_path, check)
    assert lines == ["Allocated port for remote forward to socks:0"] * 2


def test_a_silent_client_or_a_slow_destination_is_given_up_on_time() -> None:
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from rtunnel.client.channels.dynamic import SocksChannel

    logged: list[str] = []
    reactor = MemoryReactorClock()
    protocol = SocksChannel(reactor, 10.0, None, None, lambda level, text: logged.append(text))
    transport = StringTransport()
    protocol.makeConnection(transport)
    reactor.advance(9.9)
    assert not transport.disconnecting
    reactor.advance(0.2)
    assert transport.disconnecting and transport.value() == b""
    assert logged == ["Channel ?: dynamic forward: no SOCKS request within 10 s."]
    # A request whose connect never completes: SOCKS5 REP 4 (host unreachable) on time.
    logged.clear()
    protocol = SocksChannel(
        reactor, 10.0, ("127.0.0.3", 0), None, lambda _level, t: logged.append(t)
    )
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x09\x00\x50")
    host, port, _factory, _timeout, bind = reactor.tcpClients[-1]
    assert (host, port, bind) == ("10.0.0.9", 80, ("127.0.0.3", 0))
    reactor.advance(10.1)
    assert transport.value() == b"\x05\x00" + socks_reply(5, "host")
    assert transport.disconnecting
    assert logged == ["Channel ?: dynamic forward: no connect within 10 s."]
