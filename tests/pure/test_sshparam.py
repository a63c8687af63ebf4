"""
The reference's SSH packet helpers (SetSSHParam, GetSSHParam, GetSSHParamBytes,
EncodePacket, DecodePacket) as pure functions: every field type, the text and native
forms, and errors that say what is wrong.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.conch.ssh.common import MP, NS

from rtunnel import (
    SpecError,
    decode_packet,
    encode_packet,
    get_ssh_param,
    get_ssh_param_bytes,
    read_ssh_params,
    set_ssh_param,
)


@pytest.mark.parametrize(
    ("field_type", "value", "wire"),
    [
        ("s", "alice", NS(b"alice")),
        ("s", "é", NS("é".encode())),
        ("s", b"\x00\xff", NS(b"\x00\xff")),
        ("sb", "A1B23C", NS(b"\xa1\xb2\x3c")),
        ("sb", "a1b23c", NS(b"\xa1\xb2\x3c")),
        ("sb", b"\x01\x02", NS(b"\x01\x02")),
        ("m", "0", b"\x00\x00\x00\x00"),
        ("m", "1234", MP(1234)),
        ("m", "0x80", MP(0x80)),  # a leading zero byte keeps it positive
        ("m", 2**255, MP(2**255)),
        ("m", "-1", b"\x00\x00\x00\x01\xff"),  # RFC 4251 section 5's own example
        ("m", "-0xdeadbeef", b"\x00\x00\x00\x05\xff\x21\x52\x41\x11"),  # ditto
        ("m", "-128", b"\x00\x00\x00\x01\x80"),
        ("i", "1234", struct.pack(">L", 1234)),
        ("i", "0xFFFFFFFF", b"\xff\xff\xff\xff"),
        ("i", 7, struct.pack(">L", 7)),
        ("l", "1234", struct.pack(">Q", 1234)),
        ("l", 2**64 - 1, b"\xff" * 8),
        ("b", "123", b"\x7b"),
        ("b", "0x32", b"\x32"),
        ("f", "true", b"\x01"),
        ("f", "FALSE", b"\x00"),
        ("f", True, b"\x01"),
    ],
)
def test_set_ssh_param_encodes_each_type(field_type: str, value: object, wire: bytes) -> None:
    assert set_ssh_param(b"head", field_type, value) == b"head" + wire  # type: ignore[arg-type]


def test_a_userauth_request_built_and_read_back() -> None:
    packet = b""
    for kind, value in [
        ("b", "50"),
        ("s", "alice"),
        ("s", "ssh-connection"),
        ("s", "password"),
        ("f", "false"),
        ("s", "s3cret"),
    ]:
        packet = set_ssh_param(packet, kind, value)
    # RFC 4252 section 8's layout, byte for byte.
    assert packet == (
        b"\x32" + NS(b"alice") + NS(b"ssh-connection") + NS(b"password") + b"\x00" + NS(b"s3cret")
    )
    assert get_ssh_param(packet, "%b") == "50"
    assert get_ssh_param(packet, "%b,s") == "alice"
    assert get_ssh_param(packet, "b,s,s,s") == "password"
    assert get_ssh_param(packet, "%b,s,s,s,f") == "false"
    assert get_ssh_param(packet, "%b,s,s,s,f,sb") == b"s3cret".hex().upper()
    assert get_ssh_param_bytes(packet, "%b,s,s,s,f,s") == b"s3cret"
    assert get_ssh_param_bytes(packet, "%b") == b"\x32"
    assert read_ssh_params(packet, "b,s,s,s,f,s") == [
        50,
        "alice",
        "ssh-connection",
        "password",
        False,
        "s3cret",
    ]
    assert read_ssh_params(packet, ["b", "sb"]) == [50, b"alice"]


def test_numbers_read_back_in_text_and_bytes() -> None:
    payload = set_ssh_param(b"", "i", "0x10")
    payload = set_ssh_param(payload, "l", "99")
    payload = set_ssh_param(payload, "m", "-5")
    assert get_ssh_param(payload, "i") == "16"
    assert get_ssh_param(payload, "i,l") == "99"
    assert get_ssh_param(payload, "i,l,m") == "-5"
    assert get_ssh_param_bytes(payload, "i") == b"\x00\x00\x00\x10"
    assert get_ssh_param_bytes(payload, "i,l,m") == b"\xfb"
    assert read_ssh_params(set_ssh_param(b"", "m", 0), "m") == [0]


@pytest.mark.parametrize(
    ("field_type", "value", "message"),
    [
        ("x", "1", "Unknown SSH field type 'x'"),
        ("i", "abc", "needs an integer"),
        ("i", str(2**32), "does not fit SSH field type 'i'"),
        ("b", "256", "does not fit SSH field type 'b'"),
        ("b", "-1", "does not fit"),
        ("l", 2**64, "does not fit"),
        ("f", "yes", "needs 'true' or 'false'"),
        ("sb", "xyz", "needs hex text"),
        ("sb", 5, "needs hex text or bytes"),
        ("s", 5, "needs text"),
    ],
)
def test_bad_values_are_spec_errors(field_type: str, value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        set_ssh_param(b"", field_type, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        (b"\x32", "b,s", r"field 2 \('s'\) needs a 4-byte length at offset 1"),
        (b"\x00\x00\x00\x09abc", "s", r"field 1 \('s'\) needs 9 bytes at offset 4"),
        (b"\x00\x00", "i", r"needs 4 bytes"),
        (b"", "b", r"needs 1 bytes"),
        (b"\x01", "", "Bad SSH field list"),
        (b"\x01", "b,,b", "Bad SSH field list"),
        (b"\x01", "%q", "Unknown SSH field type 'q'"),
    ],
)
def test_reading_too_far_or_bad_lists_are_spec_errors(
    payload: bytes, field: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        get_ssh_param(payload, field)


def test_encode_and_decode_packet() -> None:
    assert encode_packet(b"\x32\x00\xab") == "3200AB"
    assert decode_packet("3200ab") == b"\x32\x00\xab"
    assert decode_packet(" 32 00\nAB ") == b"\x32\x00\xab"
    with pytest.raises(SpecError, match="Not a hex-encoded SSH packet"):
        decode_packet("32z0")
    with pytest.raises(SpecError, match="Not a hex-encoded SSH packet"):
        decode_packet("320")


_FIELDS = st.one_of(
    st.tuples(st.just("s"), st.text()),
    st.tuples(st.just("sb"), st.binary()),
    st.tuples(st.just("m"), st.integers(min_value=-(2**600), max_value=2**600)),
    st.tuples(st.just("i"), st.integers(min_value=0, max_value=2**32 - 1)),
    st.tuples(st.just("l"), st.integers(min_value=0, max_value=2**64 - 1)),
    st.tuples(st.just("b"), st.integers(min_value=0, max_value=255)),
    st.tuples(st.just("f"), st.booleans()),
)


@given(st.lists(_FIELDS, max_size=8))
def test_native_values_round_trip(fields: list[tuple[str, object]]) -> None:
    payload = b""
    for kind, value in fields:
        payload = set_ssh_param(payload, kind, value)  # type: ignore[arg-type]
    assert read_ssh_params(payload, [kind for kind, _ in fields]) == [v for _, v in fields]
    # And through the reference's text forms.
    for index, (kind, _) in enumerate(fields):
        path = ",".join(k for k, _ in fields[: index + 1])
        text = get_ssh_param(payload, "%" + path)
        again = set_ssh_param(b"", kind, text)
        assert get_ssh_param_bytes(again, kind) == get_ssh_param_bytes(payload, path)
    assert decode_packet(encode_packet(payload)) == payload


@given(st.integers(min_value=1, max_value=2**1024))
def test_positive_mpints_match_conch(number: int) -> None:
    assert set_ssh_param(b"", "m", number) == MP(number)
