"""
A hostile SSH server (RELIABILITY.md D15, D17, D18): the bundled server's fault controls
send terminal escapes, CR/LF and forged lines as banner, version, debug message, method
names, channel addresses and disconnect text, and open channels nobody asked for by the
ten thousand. Whatever it sends reaches logs, events and the terminal escaped and
capped, with a banner's lines kept, and repeated warnings are summarised.

First in memory (the whole SSH stack on a MemoryReactorClock), then through the real
``rtunnel`` command at the default level and at ``-v``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from command_support import spawn_command
from memory_stack import Stack, result_of
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.wire import Echo
from twisted.python.failure import Failure

from rtunnel import ChannelInfo, TunnelObserver
from rtunnel._core.ratelimit import RepeatLimiter
from rtunnel._core.text import printable, printable_lines
from rtunnel.errors import AuthenticationError
from rtunnel.testing import SSHTestServer

#: An address with a colour escape, CR LF and a forged line that reads like one of ours.
FORGED = "\x1b[31mEVIL\r\nrtunnel: Allocated port 31337 for remote forward to 6.6.6.6:22\x07"
#: ... as every log line and event shows it: one line, escaped, at most 80 characters kept.
FORGED_SHOWN = (
    "\\x1b[31mEVIL\\r\\nrtunnel: Allocated port 31337 for remote forward to 6.6.6.6:22\\x07"
)
BANNER = "Welcome\r\n\x1b]0;pwned\x07\x1b[2J second line\n\u009b31mC1 \u202eRTL\n\n"
BANNER_SHOWN = ["Welcome", "\\x1b]0;pwned\\x07\\x1b[2J second line", "\\x9b31mC1 \\u202eRTL"]


# -- pure -------------------------------------------------------------------------------


def test_printable_lines_keeps_lines_and_escapes_the_rest() -> None:
    assert printable_lines(BANNER).split("\n") == BANNER_SHOWN
    # A lone CR would move the cursor back over the line: escaped, not a line break.
    assert printable_lines("a\rb\r\nc") == "a\\rb\nc"
    # Invalid UTF-8 and DEL, from bytes.
    assert printable_lines(b"\xff\x7f ok") == "\\xff\\x7f ok"


def test_printable_lines_caps_characters_and_lines() -> None:
    assert printable_lines("x" * 10_000, limit=100) == "x" * 100 + "..."
    assert printable_lines("a\n" * 100, max_lines=3) == "a\na\na..."
    many = printable_lines(("y" * 50 + "\n") * 1000)
    assert len(many) <= 4096 + 3 and many.endswith("...") and many.count("\n") <= 63
    # A megabyte of bytes is never decoded whole.
    assert len(printable_lines(b"\x1b" * 1_000_000)) <= 4 * 4096 + 3


def test_printable_escapes_every_control_character() -> None:
    controls = "".join(chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)])
    shown = printable(controls, None)
    assert shown.isprintable() and shown.isascii()
    assert shown.count("\\") == len(controls)


def test_repeat_limiter_shows_a_burst_then_summarises() -> None:
    limiter = RepeatLimiter(burst=3, period=10.0)
    shown = [limiter.allow("k", f"m{i}", now=i * 0.001) for i in range(1000)]
    assert shown == [True] * 3 + [False] * 997
    assert limiter.summaries(5.0) == []  # the period is not over
    assert limiter.next_due() == 10.0
    assert limiter.summaries(10.0) == [
        ("k", "Not shown: 997 more like this in 10 s, the last: m999")
    ]
    assert limiter.summaries(10.0) == [] and limiter.next_due() is None
    # A new period shows a burst again; another kind has its own.
    assert limiter.allow("k", "again", 11.0) and limiter.allow("other", "x", 11.0)
    assert [limiter.allow("k", "z", 12.0) for _ in range(3)] == [True, True, False]
    assert limiter.summaries(12.5, final=True) == [
        ("k", "Not shown: 1 more like this in 2 s, the last: z")
    ]


# -- in memory --------------------------------------------------------------------------


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The text of every warning (and worse) logged during the test."""
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The text of every log event during the test."""
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


def _connected(tmp_path: Path) -> Stack:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    return stack


def test_a_forged_address_is_one_escaped_warning(tmp_path: Path, warnings: list[str]) -> None:
    stack = _connected(tmp_path)
    answers = stack.server.open_unrequested(FORGED, 4242, origin_address="\x1b[2J")
    stack.pump.flush()
    assert result_of(answers) == ["no such forward"]
    assert warnings == [
        f"refused forwarded-tcpip for {FORGED_SHOWN}:4242, which we did not request"
    ]


def test_a_refused_open_is_capped(tmp_path: Path, warnings: list[str]) -> None:
    stack = _connected(tmp_path)
    stack.server.open_unrequested("\x07" * 1000, 1)
    stack.pump.flush()
    bells = "\\x07" * 80
    assert warnings == [f"refused forwarded-tcpip for {bells}...:1, which we did not request"]


def test_channel_events_see_the_origin_escaped(tmp_path: Path) -> None:
    stack = _connected(tmp_path)
    stack.forward_upper()
    forward = stack.tunnel.forwards[0]
    opened: list[ChannelInfo] = []

    class Watch(TunnelObserver):
        def channel_opened(self, info: ChannelInfo) -> None:
            opened.append(info)

    stack.tunnel.add_observer(Watch())
    answers = stack.server.open_unrequested(
        "localhost", forward.port, origin_address="\x1b[31m10.0.0.1\r\nforged"
    )
    stack.pump.flush()
    assert result_of(answers) == [None]
    assert [(i.origin_address, i.connected_address) for i in opened] == [
        ("\\x1b[31m10.0.0.1\\r\\nforged", "localhost")
    ]


def test_ten_thousand_refused_opens_make_six_warnings(tmp_path: Path, warnings: list[str]) -> None:
    # D18: a burst of five, then one summary when the period is over; then a new burst.
    stack = _connected(tmp_path)
    answers = stack.server.open_unrequested("127.0.0.1", 4242, count=10_000)
    stack.pump.flush()
    assert len(result_of(answers)) == 10_000
    refused = "refused forwarded-tcpip for 127.0.0.1:4242, which we did not request"
    assert warnings == [refused] * 5
    stack.reactor.advance(60)
    assert warnings[5:] == [f"Not shown: 9995 more like this in 60 s, the last: {refused}"]
    stack.server.open_unrequested("127.0.0.1", 4243)
    stack.pump.flush()
    assert warnings[6:] == [refused.replace("4242", "4243")]
    assert not stack.reactor.getDelayedCalls() or all(
        "summary" not in repr(c.func) for c in stack.reactor.getDelayedCalls()
    )


def test_a_summary_is_not_lost_with_the_connection(tmp_path: Path, warnings: list[str]) -> None:
    stack = _connected(tmp_path)
    stack.server.open_unrequested("127.0.0.1", 4242, count=8)
    stack.pump.flush()
    stack.reactor.advance(2)
    stack.server.drop_connections()
    stack.pump.flush()
    assert warnings[5:6] == [
        "Not shown: 3 more like this in 2 s, the last: refused forwarded-tcpip for "
        "127.0.0.1:4242, which we did not request"
    ]


def test_banner_lines_are_kept_and_escaped(tmp_path: Path, logged: list[str]) -> None:
    stack = Stack(tmp_path)
    stack.server.set_banner(BANNER)
    result_of(stack.connect())
    banners = [text for text in logged if text.startswith("Welcome")]
    assert banners == ["\n".join(BANNER_SHOWN)]


def test_a_huge_banner_is_capped(tmp_path: Path, logged: list[str]) -> None:
    stack = Stack(tmp_path)
    stack.server.set_banner(("\x1b[5m" + "B" * 70 + "\r\n") * 500)  # 38 KB
    result_of(stack.connect())
    (banner,) = [text for text in logged if text.startswith("\\x1b[5mB")]
    assert 4000 < len(banner) <= 4096 + 64 * 4 + 3
    assert "\x1b" not in banner and banner.endswith("...")


def test_version_and_debug_text_are_escaped(tmp_path: Path, logged: list[str]) -> None:
    stack = Stack(tmp_path)
    stack.server.set_version(b"SSH-2.0-Evil\x1b[31m\x07\xff")
    result_of(stack.connect())
    assert stack.tunnel.server_version == "SSH-2.0-Evil\\x1b[31m\\x07\\xff"
    stack.server.send_debug("look\r\n\x1b[2Jhere")
    stack.pump.flush()
    assert "Server version: SSH-2.0-Evil\\x1b[31m\\x07\\xff" in logged
    assert "SSH debug message from the peer: look\\r\\n\\x1b[2Jhere" in logged


def test_disconnect_text_is_escaped(tmp_path: Path) -> None:
    stack = _connected(tmp_path)
    reasons: list[Exception | None] = []
    statuses: list[str] = []

    class Watch(TunnelObserver):
        def disconnected(self, reason: Exception | None) -> None:
            reasons.append(reason)

        def connection_status(self, event: str, status_code: int, description: str) -> None:
            statuses.append(description)

    stack.tunnel.add_observer(Watch())
    stack.server.drop_connections("bye\x1b[2J\r\nrtunnel: forged")
    stack.pump.flush()
    shown = "The server disconnected: 'bye\\x1b[2J\\r\\nrtunnel: forged' (SSH reason code 11)."
    assert [str(r) for r in reasons] == [shown]
    assert statuses[-1] == shown


def test_method_names_are_escaped(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.server.add_user("alice", auth_methods="\x1b[31mevil\x07")
    with pytest.raises(AuthenticationError) as caught:
        result_of(stack.connect())
    assert str(caught.value) == "Permission denied (\\x1b[31mevil\\x07)."


# -- through the command ----------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def echo_port() -> AsyncIterator[int]:
    """A local echo server: the forwards' target."""
    listening: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(Echo), interface="127.0.0.1"
    )
    try:
        yield listening.getHost().port  # type: ignore[attr-defined]
    finally:
        await listening.stopListening()


def _only_line_breaks(stderr: bytes) -> bool:
    """No control character (C0 but LF, DEL, C1) anywhere in the output."""
    text = stderr.decode("utf-8")
    return all(c == "\n" or c.isprintable() for c in text)


@pytest_twisted.ensureDeferred
async def test_the_command_escapes_a_forged_address(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    echo_port: int,
    tmp_path: Path,
) -> None:
    """
    At the default level: the Allocated line, then one warning line for the hostile
    open, exactly as shown, and no control byte but the line breaks.
    """
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        tmp_path / "home",
        "-R",
        f"0:127.0.0.1:{echo_port}",
    )
    await child.wait_for(b"Allocated port ")
    answers = await ssh_test_server.open_unrequested(FORGED, 4242)
    assert answers == ["no such forward"]
    await child.wait_for(b"which we did not request\n")
    assert await child.stop() == 0
    lines = child.stderr.decode("utf-8").splitlines()
    assert re.fullmatch(
        rf"Allocated port \d+ for remote forward to 127\.0\.0\.1:{echo_port}", lines[0]
    )
    assert lines[1:] == [
        f"refused forwarded-tcpip for {FORGED_SHOWN}:4242, which we did not request"
    ]
    assert _only_line_breaks(child.stderr)


@pytest_twisted.ensureDeferred
async def test_the_command_escapes_banner_version_and_debug_at_v(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    echo_port: int,
    tmp_path: Path,
) -> None:
    """
    At -v: the banner's lines as lines, escaped; the version and a debug message
    escaped; the disconnect text escaped in the last line.
    """
    ssh_test_server.set_banner(BANNER)
    ssh_test_server.set_version("SSH-2.0-Evil\x1b[31m\x07")
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        tmp_path / "home",
        "-v",
        # The command would reconnect after the server's DISCONNECT; its last line is
        # what this test reads.
        "-o",
        "AutoReconnect=no",
        "-R",
        f"0:127.0.0.1:{echo_port}",
    )
    await child.wait_for(b"Allocated port ")
    ssh_test_server.send_debug("look\r\n\x1b[2Jhere")
    await child.wait_for(b"SSH debug message")
    await ssh_test_server.drop_connections("bye\x1b[2J\r\nrtunnel: forged")
    assert await child.ended.addTimeout(10, reactor) == 255
    lines = child.stderr.decode("utf-8").splitlines()
    assert "Server version: SSH-2.0-Evil\\x1b[31m\\x07" in lines
    start = lines.index("Welcome")
    assert lines[start : start + 3] == BANNER_SHOWN
    assert "SSH debug message from the peer: look\\r\\n\\x1b[2Jhere" in lines
    disconnected = "rtunnel: The server disconnected: 'bye\\x1b[2J\\r\\nrtunnel: forged'"
    assert f"{disconnected} (SSH reason code 11)." in lines, lines
    assert _only_line_breaks(child.stderr)


@pytest_twisted.ensureDeferred
async def test_ten_thousand_refused_opens_through_the_command(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    echo_port: int,
    tmp_path: Path,
) -> None:
    """
    D18: 10,000 opens for a port never asked for made 662 KB of warnings; now five
    lines and one summary (when the command stops, within the 60 s period).
    """
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        tmp_path / "home",
        "-R",
        f"0:127.0.0.1:{echo_port}",
    )
    await child.wait_for(b"Allocated port ")
    answers = await ssh_test_server.open_unrequested("127.0.0.1", 4242, count=10_000)
    assert answers == ["no such forward"] * 10_000
    assert await child.stop() == 0
    lines = child.stderr.decode("utf-8").splitlines()
    refused = "refused forwarded-tcpip for 127.0.0.1:4242, which we did not request"
    assert lines[1:6] == [refused] * 5
    assert re.fullmatch(
        rf"Not shown: 9995 more like this in \d+ s, the last: {refused}", lines[6]
    ), lines[6:]
    assert len(lines) == 7
    assert len(child.stderr) < 1024


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class _UntilClosed(Protocol):
    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802 (Protocol)
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_connections_to_a_dead_target_make_five_errors_and_a_summary(
    ssh_test_server: SSHTestServer,
    ssh_user: str,
    ssh_client_key: Path,
    ssh_known_hosts: Path,
    tmp_path: Path,
) -> None:
    """D18: each connection to a forward whose target is down was one error line."""
    dead = _closed_port()
    child = spawn_command(
        ssh_test_server,
        ssh_user,
        ssh_client_key,
        ssh_known_hosts,
        tmp_path / "home",
        *["-R", f"0:127.0.0.1:{dead}"],
    )
    await child.wait_for(b"Allocated port ")
    port = int(child.stderr.split()[2])
    for _ in range(50):
        client = _UntilClosed()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        await client.closed.addTimeout(10, reactor)
    assert await child.stop() == 0
    lines = child.stderr.decode().splitlines()
    failed = f"connect to 127.0.0.1 port {dead} failed: Connection refused."
    assert lines[1:6] == [f"Channel {n}: {failed}" for n in range(5)], lines
    assert re.fullmatch(
        rf"Not shown: 45 more like this in \d+ s, the last: Channel 49: {re.escape(failed)}",
        lines[6],
    ), lines[6:]
    assert len(lines) == 7
