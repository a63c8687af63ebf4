"""
rtunnel's transport in memory: every cipher against the bundled server, strict key exchange
and its violations (D14), negotiation failures (code 1003), rekeying on demand, by volume
and from the server, with data intact across it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_stack import Stack, result_of
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import NS
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from rtunnel import (
    ConnectionLostError,
    HostKeyError,
    NegotiationError,
    ProtocolError,
    ReverseTunnel,
    SpecError,
)
from rtunnel.client import _algorithms
from rtunnel.client._packet import make_sealer
from rtunnel.client.transport import ClientTransport
from rtunnel.testing._server import _ServerTransport


@pytest.mark.parametrize("cipher", _algorithms.SUPPORTED_CIPHERS)
@pytest.mark.parametrize("mac", ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512"])
def test_every_cipher_against_the_bundled_server(tmp_path: Path, cipher: str, mac: str) -> None:
    stack = Stack(tmp_path, ciphers=[cipher], macs=[mac])
    result_of(stack.connect())
    for side in (stack.client, stack.server_transport):
        assert side.strict_kex
        assert side.currentEncryptions.outCipType == cipher.encode()
        assert side.currentEncryptions.inMACType == mac.encode()
    stack.forward_upper()
    assert stack.round_trip(b"x" * 100_000) == b"X" * 100_000


def test_strict_kex_resets_sequence_numbers_at_newkeys(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    client, server = stack.client, stack.server_transport
    # Both directions count from 0 at NEWKEYS: what follows is the service request, the
    # authentication and the connection start, a handful of packets, not the 3-4 of the
    # key exchange plus those.
    assert client.outgoingPacketSequence == server.incomingPacketSequence
    assert server.outgoingPacketSequence == client.incomingPacketSequence
    before = client.outgoingPacketSequence
    result_of_rekey = stack.tunnel.rekey()
    stack.pump.flush()
    result_of(result_of_rekey)
    assert client.key_exchanges == 2
    assert client.outgoingPacketSequence < before + 1
    assert client.outgoingPacketSequence == server.incomingPacketSequence


def test_without_server_support_no_strict_kex_unless_required(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    stack.reactor.tcpServers[0][1].offer_strict_kex = False
    result_of(stack.connect())
    assert not stack.client.strict_kex and not stack.server_transport.strict_kex
    assert stack.tunnel.connected

    stack = Stack(tmp_path, require_strict_kex=True)
    stack.reactor.tcpServers[0][1].offer_strict_kex = False
    with pytest.raises(NegotiationError, match="Strict key exchange is required") as info:
        result_of(stack.connect())
    assert info.value.code == 1003 and info.value.kind == "strict kex"


def test_no_common_mac_names_what_each_side_offered(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ciphers="aes128-ctr", macs="hmac-sha2-512")
    stack.reactor.tcpServers[0][1].macs = [b"hmac-sha1"]
    with pytest.raises(NegotiationError) as info:
        result_of(stack.connect())
    error = info.value
    assert (error.code, error.kind, error.ours, error.theirs) == (
        1003,
        "mac",
        ("hmac-sha2-512",),
        ("hmac-sha1",),
    )
    assert "We offered: hmac-sha2-512. The server offered: hmac-sha1." in str(error)


def test_rekey_on_demand_by_volume_and_from_the_server_keeps_data_intact(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path, rekey_bytes=200_000)
    result_of(stack.connect())
    stack.forward_upper()
    client, server = stack.client, stack.server_transport
    host_key = client._first_host_key
    # By volume: 1 MB through a 200 kB limit.
    data = bytes(range(97, 123)) * 40_000
    assert stack.round_trip(data) == data.upper()
    by_volume = client.key_exchanges
    assert by_volume >= 5
    # On demand.
    d = stack.tunnel.rekey()
    stack.pump.flush()
    result_of(d)
    assert client.key_exchanges == by_volume + 1
    # From the server (A10 in memory); the service is not requested again.
    userauth = client.userauth
    d = server.rekey()
    stack.pump.flush()
    result_of(d)
    assert client.key_exchanges == by_volume + 2
    assert client.userauth is userauth
    assert client._first_host_key == host_key
    assert stack.round_trip(b"still there") == b"STILL THERE"


def test_rekey_when_not_logged_on_fails(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    with pytest.raises(Exception, match="Not logged on"):
        result_of(stack.tunnel.rekey())


# -- a scripted server: strict kex violations (D14) ------------------------------------


def _client() -> tuple[ClientTransport, StringTransport, list[Failure]]:
    lost: list[Failure] = []
    t = ClientTransport(
        user="alice",
        keys_to_try=[],
        passwords=[],
        verify_host_key=lambda blob: succeed(True),
        connection=SimpleNamespace(protocol_error=None),  # type: ignore[arg-type]
        on_lost=lambda _t, reason: lost.append(reason),
    )
    wire = StringTransport()
    t.makeConnection(wire)
    return t, wire, lost


def _kexinit(strict: bool) -> bytes:
    kex = b"curve25519-sha256" + (b",kex-strict-s-v00@openssh.com" if strict else b"")
    lists = [kex, b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr"]
    lists += [b"hmac-sha2-256", b"hmac-sha2-256", b"none", b"none", b"", b""]
    return bytes((conch.MSG_KEXINIT,)) + bytes(16) + b"".join(NS(x) for x in lists) + bytes(5)


def _server_stream(*payloads: bytes) -> bytes:
    sealer = make_sealer(b"none", b"", b"", None, b"")
    return b"SSH-2.0-OpenSSH_9.6\r\n" + b"".join(
        sealer.seal(seq, p) for seq, p in enumerate(payloads)
    )


IGNORE = bytes((conch.MSG_IGNORE,)) + NS(b"")


def _sent_payloads(wire: StringTransport) -> list[bytes]:
    """The client's packets, unencrypted (nothing here gets past the first KEXINIT)."""
    data = wire.value().split(b"\r\n", 1)[1]
    payloads = []
    while data:
        length, pad = struct.unpack(">IB", data[:5])
        payloads.append(data[5 : 4 + length - pad])
        data = data[4 + length :]
    return payloads


@pytest.mark.parametrize(
    ("payloads", "message"),
    [
        ((IGNORE, _kexinit(True)), "KEXINIT was not the first packet"),
        ((_kexinit(True), IGNORE), "unexpected packet type 2"),
        ((_kexinit(True), _kexinit(True)), "unexpected packet type 20"),
        ((_kexinit(True), bytes((conch.MSG_SERVICE_ACCEPT,)) + NS(b"x")), "type 6"),
    ],
)
def test_strict_kex_violation_is_a_protocol_error_disconnect(
    payloads: tuple[bytes, ...], message: str
) -> None:
    t, wire, _lost = _client()
    t.dataReceived(_server_stream(*payloads))
    assert isinstance(t.error, ProtocolError)
    assert message in str(t.error)
    assert wire.disconnecting
    # The DISCONNECT (reason 2, protocol error) went out last, in the clear.
    assert _sent_payloads(wire)[-1][:5] == struct.pack(
        ">BI", conch.MSG_DISCONNECT, conch.DISCONNECT_PROTOCOL_ERROR
    )


def test_without_strict_kex_an_ignore_before_kexinit_is_fine() -> None:
    t, wire, _lost = _client()
    t.dataReceived(_server_stream(IGNORE, _kexinit(False)))
    assert t.error is None and not wire.disconnecting
    assert not t.strict_kex


def test_oversized_packet_length_disconnects() -> None:
    t, wire, _lost = _client()
    t.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n" + struct.pack(">I", 1 << 30) + bytes(12))
    assert isinstance(t.error, ProtocolError) and "bad packet length" in str(t.error)
    assert wire.disconnecting


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("aes128-ctr", ["aes128-ctr"]),
        ("aes128-ctr,aes256-ctr", ["aes128-ctr", "aes256-ctr"]),
        ("+aes128-cbc", [*_algorithms.DEFAULT_CIPHERS, "aes128-cbc"]),
        ("+aes128-ctr", list(_algorithms.DEFAULT_CIPHERS)),
        (
            "-aes*-ctr",
            ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        ),
        (
            "-chacha20-poly1305@openssh.com,aes128-gcm@openssh.com",
            ["aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"],
        ),
        (
            "^aes256-ctr",
            ["aes256-ctr", *[c for c in _algorithms.DEFAULT_CIPHERS if c != "aes256-ctr"]],
        ),
        ("aes*-cbc", ["aes128-cbc", "aes192-cbc", "aes256-cbc"]),
        (" aes128-ctr , aes128-ctr ", ["aes128-ctr"]),
    ],
)
def test_openssh_list_modifiers(spec: str, expected: list[str]) -> None:
    assert _algorithms.resolve("cipher", spec) == expected


@pytest.mark.parametrize("spec", ["", "blowfish-cbc", "+nope", "^nope", "-*", "3des-cbc"])
def test_bad_algorithm_lists_are_spec_errors(spec: str) -> None:
    with pytest.raises(SpecError):
        _algorithms.resolve("cipher", spec)


def test_lists_for_every_kind() -> None:
    assert _algorithms.resolve("mac", None) == list(_algorithms.DEFAULT_MACS)
    assert _algorithms.resolve("mac", "+hmac-sha1")[-1] == "hmac-sha1"
    assert _algorithms.resolve("kex", "^diffie-hellman-group14-sha1")[0] == (
        "diffie-hellman-group14-sha1"
    )
    assert _algorithms.resolve("host key", ["ssh-ed25519"]) == ["ssh-ed25519"]
    with pytest.raises(SpecError):
        ReverseTunnel(MemoryReactorClock(), "h", ciphers="nope")


def test_rekey_by_time_on_the_tunnel_clock(tmp_path: Path) -> None:
    stack = Stack(tmp_path, rekey_seconds=60.0)
    result_of(stack.connect())
    stack.forward_upper()
    assert stack.client.key_exchanges == 1
    stack.reactor.advance(30)
    assert stack.round_trip(b"a") == b"A"
    assert stack.client.key_exchanges == 1
    stack.reactor.advance(31)
    assert stack.round_trip(b"b") == b"B"
    assert stack.client.key_exchanges == 2


def test_both_sides_start_a_rekey_at_once(tmp_path: Path) -> None:
    # A11: the two KEXINITs cross (RFC 4253 §7.1); one key exchange results, on both sides.
    stack = Stack(tmp_path)
    result_of(stack.connect())
    stack.forward_upper()
    client_done = stack.tunnel.rekey()
    server_done = stack.server_transport.rekey()
    stack.pump.flush()
    result_of(client_done)
    result_of(server_done)
    assert stack.client.key_exchanges == stack.server_transport.key_exchanges == 2
    assert stack.round_trip(b"after") == b"AFTER"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(
        st.tuples(st.integers(0, 255), st.binary(max_size=64)), min_size=1, max_size=6
    ),
    strict_first=st.booleans(),
)
def test_fuzz_packet_dispatch_never_raises(
    packets: list[tuple[int, bytes]], strict_first: bool
) -> None:
    # D8/D14/D16: whatever the server sends before or during the key exchange, the client
    # ignores it, answers UNIMPLEMENTED or disconnects; nothing escapes dataReceived.
    t, wire, _lost = _client()
    payloads = [bytes((kind,)) + body for kind, body in packets]
    if strict_first:
        payloads.insert(0, _kexinit(True))
    stream = _server_stream(*payloads)
    for i in range(0, len(stream), 7):
        t.dataReceived(stream[i : i + 7])
    if wire.disconnecting:
        assert t.error is not None


def test_a_key_exchange_that_stalls_times_out(tmp_path: Path) -> None:
    # D13: the peer never answers our KEXINIT; after kex_timeout the connection ends.
    stack = Stack(tmp_path)
    result_of(stack.connect())
    client = stack.client
    done = stack.tunnel.rekey()  # not pumped: the server never sees it
    stack.reactor.advance(59)
    assert not done.called
    stack.reactor.advance(2)
    stack.pump.flush()
    with pytest.raises(ConnectionLostError):
        result_of(done)
    assert isinstance(client.error, ProtocolError)
    assert "key exchange not finished" in str(client.error)
    assert not stack.tunnel.connected


def test_a_different_host_key_at_rekey_disconnects(tmp_path: Path) -> None:
    # A15: the key presented in a later key exchange must be the first one.
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    stack = Stack(tmp_path)
    result_of(stack.connect())
    client = stack.client
    other = keys.Key(ed25519.Ed25519PrivateKey.generate())
    stack.server_factory.privateKeys = {b"ssh-ed25519": other}
    stack.server_factory.publicKeys = {b"ssh-ed25519": other.public()}
    done = stack.tunnel.rekey()
    stack.pump.flush()
    with pytest.raises(ConnectionLostError):
        result_of(done)
    assert isinstance(client.error, HostKeyError)
    assert not stack.tunnel.connected


@pytest.mark.parametrize("method", [b"zlib@openssh.com", b"zlib"])
def test_compression_across_authentication_and_rekeys(
    tmp_path: Path, method: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = Stack(tmp_path, compression=True)
    monkeypatch.setattr(_ServerTransport, "supportedCompressions", [method])
    result_of(stack.connect())
    client, server = stack.client, stack.server_transport
    assert client.outgoingCompressionType == method
    assert client.outgoingCompression is not None and client.incomingCompression is not None
    assert server.outgoingCompression is not None
    stack.forward_upper()
    data = b"compressible " * 50_000
    assert stack.round_trip(data) == data.upper()
    d = stack.tunnel.rekey()
    stack.pump.flush()
    result_of(d)
    assert stack.round_trip(data) == data.upper()


def test_a_compression_bomb_is_refused() -> None:
    # D11: inflate output is bounded; a packet that inflates past it ends the connection.
    import zlib

    t, wire, _lost = _client()
    t.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
    t.incomingCompression = zlib.decompressobj()
    bomb = zlib.compressobj()
    packet = bomb.compress(bytes((conch.MSG_IGNORE,)) + NS(bytes(10 << 20)))
    packet += bomb.flush(zlib.Z_SYNC_FLUSH)
    t.dataReceived(make_sealer(b"none", b"", b"", None, b"").seal(0, packet))
    assert wire.disconnecting
    assert _sent_payloads(wire)[-1][:5] == struct.pack(
        ">BI", conch.MSG_DISCONNECT, conch.DISCONNECT_COMPRESSION_ERROR
    )


def test_a_server_offering_only_zlib_fails_cleanly_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # D11.
    monkeypatch.setattr(_ServerTransport, "supportedCompressions", [b"zlib"])
    with pytest.raises(NegotiationError, match="compression"):
        result_of(Stack(tmp_path).connect())
    stack = Stack(tmp_path, compression=True)
    result_of(stack.connect())
    assert stack.client.incomingCompressionType == b"zlib"


def test_the_bundled_server_rekeys_by_volume(tmp_path: Path) -> None:
    # RekeyLimit on the server side, for users' tests.
    stack = Stack(tmp_path, rekey_bytes=0)
    stack.reactor.tcpServers[0][1].rekey_bytes = 150_000
    result_of(stack.connect())
    stack.forward_upper()
    data = b"0123456789" * 100_000
    assert stack.round_trip(data) == data
    assert stack.server_transport.key_exchanges >= 5
    assert stack.client.key_exchanges == stack.server_transport.key_exchanges
