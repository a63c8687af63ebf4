"""
Hostile server input against the whole client stack in memory: a property test of the
connection layer (random and mutated CHANNEL_* and GLOBAL_REQUEST messages, RFC 4254) and
floods of IGNORE, DEBUG and want-reply global requests (RELIABILITY.md D8, D12, D16).

Every message must end in a documented ignore or reply, or a protocol-error disconnect;
never in an exception escaping a handler (which the transport's catch-all would turn into
"malformed message of type N"). Short by default: a few seconds in the test command.
"""

from __future__ import annotations

import struct
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_stack import Stack, result_of
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import NS

from rtunnel import ConnectionLostError, ProtocolError, ReconnectPolicy

_stack: Stack | None = None


def _live_stack() -> Stack:
    """A connected stack with one forward, reused until an example breaks it."""
    global _stack
    if _stack is None or not _stack.tunnel.connected:
        _stack = Stack(Path(tempfile.mkdtemp()), reconnect=ReconnectPolicy.off())
        result_of(_stack.connect())
        _stack.forward_upper()
    return _stack


def _u32(n: int) -> bytes:
    return struct.pack(">L", n & 0xFFFFFFFF)


_channel = st.sampled_from([0, 1, 2, 0xFFFFFFFF, 7])
_u32s = st.integers(0, 0xFFFFFFFF)
_tail = st.binary(max_size=24)

# Well-formed heads with random tails, so that the fuzzer gets past the first field.
_connection_messages = st.one_of(
    st.tuples(st.integers(80, 100), st.binary(max_size=48)),
    st.tuples(
        st.just(80),
        st.builds(
            lambda name, reply, tail: NS(name) + bytes([reply]) + tail,
            st.sampled_from([b"keepalive@openssh.com", b"tcpip-forward", b"x" * 300, b""]),
            st.integers(0, 2),
            _tail,
        ),
    ),
    st.tuples(
        st.just(90),
        st.builds(
            lambda kind, a, b, c, tail: NS(kind) + _u32(a) + _u32(b) + _u32(c) + tail,
            st.sampled_from([b"forwarded-tcpip", b"session", b"x11", b"auth-agent@openssh.com"]),
            _u32s,
            _u32s,
            st.integers(0, 70000),
            st.one_of(
                _tail,
                st.builds(
                    lambda port: NS(b"127.0.0.1") + _u32(port) + NS(b"203.0.113.9") + _u32(1),
                    st.sampled_from([8080, 0, 1, 70000]),
                ),
            ),
        ),
    ),
    st.tuples(
        st.integers(91, 100),
        st.builds(lambda ch, n, tail: _u32(ch) + _u32(n) + tail, _channel, _u32s, _tail),
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(messages=st.lists(_connection_messages, min_size=1, max_size=4))
def test_fuzz_connection_layer_messages(messages: list[tuple[int, bytes]]) -> None:
    stack = _live_stack()
    client = stack.client
    for number, payload in messages:
        stack.server_transport.sendPacket(number, payload)
    stack.pump.flush()
    error = client.error or client.connection.protocol_error
    if stack.tunnel.connected:
        assert error is None
        # Still answering: a keepalive-style request goes out and its reply comes back.
        d = client.connection.send_global_request(b"keepalive@openssh.com", b"")
        d.addErrback(lambda _f: None)
        stack.pump.flush()
        assert d.called
    else:
        # Ours, or the bundled server's (it has no replies pending for a raw request).
        assert isinstance(error, ProtocolError | ConnectionLostError), error
    if isinstance(error, ProtocolError):
        assert "malformed message of type" not in str(error)


def test_a_flood_of_ignore_debug_and_global_requests_is_harmless(tmp_path: Path) -> None:
    # D12: memory stays bounded (nothing is kept per message) and the tunnel answers.
    stack = Stack(tmp_path, keepalive_interval=0)
    result_of(stack.connect())
    stack.forward_upper()
    client, server = stack.client, stack.server_transport
    replies: list[Any] = []
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(3000):
            server.sendPacket(conch.MSG_IGNORE, NS(b"i" * 1000))
            server.sendPacket(conch.MSG_DEBUG, b"\x01" + NS(b"debug %d\x1b[2J" % i) + NS(b""))
            d = server.service.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=1)
            d.addBoth(lambda _r: replies.append(None))
            if i % 500 == 0:
                stack.pump.flush()
        stack.pump.flush()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # Every request was answered (with failure, as OpenSSH's client does).
    assert len(replies) == 3000
    assert stack.tunnel.connected and client.error is None
    assert len(client._reader.buf) == 0
    stats = after.compare_to(before, "filename")
    grown = sum(s.size_diff for s in stats)
    assert grown < 2 << 20, grown  # 3000 x 1 KiB IGNORE alone would be 3 MiB
    assert stack.round_trip(b"still here") == b"STILL HERE"
