"""Pure codec tests for rtunnel._core.wire."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtunnel._core import wire


def test_tcpip_forward_payload() -> None:
    assert wire.encode_tcpip_forward("localhost", 8080) == (
        b"\x00\x00\x00\x09localhost" + struct.pack(">L", 8080)
    )
    assert wire.encode_tcpip_forward("", 0) == b"\x00" * 8


@pytest.mark.parametrize(
    ("requested", "payload", "expected"),
    [
        (0, struct.pack(">L", 40000), 40000),
        (8080, b"", 8080),
        # OpenSSH 6.8 sends the port for a fixed-port request too (RELIABILITY B6).
        (8080, struct.pack(">L", 8080), 8080),
        (8080, struct.pack(">L", 1234), 8080),
    ],
)
def test_forward_reply(requested: int, payload: bytes, expected: int) -> None:
    assert wire.decode_tcpip_forward_reply(requested, payload) == expected


@pytest.mark.parametrize(
    "payload", [b"", b"\x00\x00", struct.pack(">L", 0), struct.pack(">L", 70000)]
)
def test_forward_reply_bad_allocated_port(payload: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_tcpip_forward_reply(0, payload)


@given(
    st.text(max_size=60),
    st.integers(0, 65535),
    st.text(max_size=60),
    st.integers(0, 65535),
)
def test_forwarded_tcpip_round_trip(addr: str, port: int, origin: str, oport: int) -> None:
    info = wire.ForwardedTcpip(addr, port, origin, oport)
    assert wire.decode_forwarded_tcpip(wire.encode_forwarded_tcpip(info)) == info


@given(st.binary(max_size=64))
def test_forwarded_tcpip_garbage_never_escapes(data: bytes) -> None:
    # Any byte string either decodes or raises WireError: never struct.error/IndexError.
    with contextlib.suppress(wire.WireError):
        wire.decode_forwarded_tcpip(data)


def test_forwarded_tcpip_caps_addresses() -> None:
    huge = wire.ForwardedTcpip("a" * 5000, 1, "b", 2)
    with pytest.raises(wire.WireError, match="too long"):
        wire.decode_forwarded_tcpip(wire.encode_forwarded_tcpip(huge))


def test_forwarded_tcpip_port_range() -> None:
    data = (
        wire.encode_string(b"x") + struct.pack(">L", 70000) + wire.encode_string(b"y") + b"\0\0\0\1"
    )
    with pytest.raises(wire.WireError, match="out of range"):
        wire.decode_forwarded_tcpip(data)
