"""
rtunnel's transport in memory: every cipher against the bundled server, strict key exchange
and its violations (D14), negotiation failures (code 1003), rekeying on demand, by volume
and from the server, with data intact across it.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_stack import Stack, result_of
from twisted.conch.ssh import keys
from twisted.conch.ssh import transport as conch
from twisted.conch.ssh.common import MP, NS
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

import rtunnel
import twisted
from rtunnel import (
    ConnectionLostError,
    DecompressError,
    DecryptError,
    ECDHKeyExchangeError,
    HostKeyError,
    HostKeySignatureError,
    KeyExchangeError,
    NegotiationError,
    ProtocolError,
    ReconnectPolicy,
    ReverseTunnel,
    SpecError,
    TunnelObserver,
    TunnelOptions,
    VersionError,
)
from rtunnel._core.text import printable
from rtunnel.client.transport import _algorithms, _groups, _kex
from rtunnel.client.transport._packet import make_sealer
from rtunnel.client.transport.client_transport import ClientTransport
from rtunnel.testing.server._transport import _ServerTransport


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
    # By volume: 1.04 MB each way through a 200 kB limit per direction: 5 (±1) rekeys.
    data = bytes(range(97, 123)) * 40_000
    assert stack.round_trip(data) == data.upper()
    by_volume = client.key_exchanges
    assert 4 <= client.rekeys_by_us <= 6
    assert client.rekeys_by_peer == 0
    assert by_volume == 1 + client.rekeys_by_us
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
        ("-aes*-ctr", [c for c in _algorithms.DEFAULT_CIPHERS if not c.endswith("-ctr")]),
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


@pytest.mark.parametrize(
    "spec", ["", "twofish-cbc", "+nope", "^nope", "-*", "rijndael-cbc@lysator.liu.se"]
)
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
        ReverseTunnel(MemoryReactorClock(), "h", options=TunnelOptions.create(ciphers="nope"))


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
    assert type(client.error) is ConnectionLostError  # our timeout, not a protocol error
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
    assert isinstance(t.error, DecompressError) and t.error.code == 1016
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
    data = b"0123456789" * 100_000  # 1 MB each way: 6.7 limits in each direction
    assert stack.round_trip(data) == data
    server = stack.server_transport
    assert 5 <= server.rekeys_by_us <= 7
    assert (server.rekeys_by_peer, stack.client.rekeys_by_us) == (0, 0)
    assert stack.client.rekeys_by_peer == server.rekeys_by_us
    assert stack.client.key_exchanges == server.key_exchanges == 1 + server.rekeys_by_us


# -- key exchange methods (issue 6) -----------------------------------------------------


def _pi_bits(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula in integers (independent of any library)."""
    scale = 1 << (bits + 32)

    def arctan_inv(x: int) -> int:
        total, term, n, sign = 0, scale // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n += 2
            sign = -sign
        return total

    return (16 * arctan_inv(5) - 4 * arctan_inv(239)) >> 32


@pytest.mark.parametrize(
    ("prime", "bits", "k"),
    [
        (_groups.GROUP14, 2048, 124476),
        (_groups.GROUP16, 4096, 240904),
        (_groups.GROUP18, 8192, 4743158),
    ],
)
def test_fixed_group_primes_are_rfc_3526s(prime: int, bits: int, k: int) -> None:
    # RFC 3526: p = 2^N - 2^(N-64) - 1 + 2^64 * (floor(2^(N-130) * pi) + k).
    expected = (1 << bits) - (1 << (bits - 64)) - 1 + (1 << 64) * (_pi_bits(bits - 130) + k)
    assert prime == expected


@pytest.mark.parametrize(
    "kex",
    [
        "mlkem768x25519-sha256",
        "diffie-hellman-group14-sha256",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
        "curve25519-sha256",
    ],
)
def test_key_exchange_methods_against_the_bundled_server(
    tmp_path: Path, kex: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundled server is Conch's: its ML-KEM hybrid is an independent implementation
    # of the draft, and the RFC 8268 groups reach it through the same registration.
    monkeypatch.setattr(_ServerTransport, "supportedKeyExchanges", [kex.encode()])
    stack = Stack(tmp_path)
    result_of(stack.connect())
    assert stack.client.kexAlg == stack.server_transport.kexAlg == kex.encode()
    stack.forward_upper()
    d = stack.tunnel.rekey()
    stack.pump.flush()
    result_of(d)
    assert stack.round_trip(b"hybrid" * 1000) == b"HYBRID" * 1000


def test_the_default_prefers_the_post_quantum_hybrid(tmp_path: Path) -> None:
    assert _algorithms.DEFAULT_KEX[0] == "mlkem768x25519-sha256"
    stack = Stack(tmp_path)
    result_of(stack.connect())
    assert stack.client.kexAlg == b"mlkem768x25519-sha256"


def _kexinit_for(kex: bytes) -> bytes:
    lists = [kex, b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr"]
    lists += [b"hmac-sha2-256", b"hmac-sha2-256", b"none", b"none", b"", b""]
    return bytes((conch.MSG_KEXINIT,)) + bytes(16) + b"".join(NS(x) for x in lists) + bytes(5)


def _host_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


def _kex_client(kex: str, **kw: Any) -> tuple[ClientTransport, StringTransport]:
    t = ClientTransport(
        user="alice",
        keys_to_try=[],
        passwords=[],
        verify_host_key=lambda blob: succeed(True),
        connection=SimpleNamespace(protocol_error=None),  # type: ignore[arg-type]
        on_lost=lambda _t, reason: None,
        kex_algorithms=[kex],
        **kw,
    )
    wire = StringTransport()
    t.makeConnection(wire)
    t.dataReceived(_server_stream(_kexinit_for(kex.encode())))
    return t, wire


def _reply(t: ClientTransport, payload: bytes) -> None:
    t.dataReceived(make_sealer(b"none", b"", b"", None, b"").seal(1, payload))


@pytest.mark.parametrize(
    ("kex", "body", "error", "code"),
    [
        # f = 1: a predictable shared secret (RFC 4253 §8).
        ("diffie-hellman-group14-sha256", MP(1), KeyExchangeError, 1034),
        ("diffie-hellman-group14-sha256", MP(_groups.GROUP14 - 1), KeyExchangeError, 1034),
        # A curve25519 key of the wrong length, and a low-order point.
        ("curve25519-sha256", NS(bytes(31)), ECDHKeyExchangeError, 1038),
        ("curve25519-sha256", NS(bytes(32)), ECDHKeyExchangeError, 1038),
        ("mlkem768x25519-sha256", NS(bytes(1000)), ECDHKeyExchangeError, 1038),
    ],
)
def test_bad_key_exchange_values_are_typed_errors(
    kex: str, body: bytes, error: type[Exception], code: int
) -> None:
    t, wire = _kex_client(kex)
    key = _host_key()
    _reply(t, bytes((31,)) + NS(key.public().blob()) + body + NS(key.sign(b"x")))
    assert isinstance(t.error, error) and t.error.code == code
    assert wire.disconnecting
    assert _sent_payloads(wire)[-1][:5] == struct.pack(
        ">BI", conch.MSG_DISCONNECT, conch.DISCONNECT_KEY_EXCHANGE_FAILED
    )


def test_a_bad_exchange_signature_is_host_key_signature_error() -> None:
    t, wire = _kex_client("diffie-hellman-group14-sha256")
    key = _host_key()
    f = pow(2, 12345, _groups.GROUP14)
    _reply(t, bytes((31,)) + NS(key.public().blob()) + MP(f) + NS(key.sign(b"not H")))
    assert isinstance(t.error, HostKeySignatureError) and t.error.code == 1031
    assert wire.disconnecting


@pytest.mark.parametrize("bits", [1024, 4096])
def test_group_exchange_refuses_a_group_outside_what_was_asked(bits: int) -> None:
    # OpenSSH kexgexc.c: "DH_GEX group out of range". With aes128-ctr and hmac-sha2-256
    # (a 32-byte MAC key) we ask, as OpenSSH would, for 2048-8192-8192.
    t, wire = _kex_client("diffie-hellman-group-exchange-sha256")
    request = _sent_payloads(wire)[-1]
    assert request[0] == 34 and struct.unpack(">LLL", request[1:]) == (2048, 8192, 8192)
    p = {1024: (1 << 1023) + 1, 4096: _groups.GROUP16}[bits]
    _reply(t, bytes((31,)) + MP(p) + MP(2))
    if bits == 1024:
        assert isinstance(t.error, KeyExchangeError) and "1024-bit" in str(t.error)
        assert wire.disconnecting
    else:
        assert t.error is None and _sent_payloads(wire)[-1][0] == 32  # KEX_DH_GEX_INIT


@pytest.mark.parametrize(
    ("preferred", "need", "expected"),
    [
        (None, 16, (2048, 3072, 8192)),  # aes128: 128 bits
        (None, 64, (2048, 8192, 8192)),  # chacha20-poly1305's 64-byte key
        (None, 14, (2048, 2048, 8192)),
        (None, 24, (2048, 7680, 8192)),
        (1024, 64, (1024, 1024, 8192)),
        (4096, 16, (2048, 4096, 8192)),
    ],
)
def test_dh_group_request(preferred: int | None, need: int, expected: tuple[int, int, int]) -> None:
    assert _algorithms.dh_group_request(preferred, need) == expected


def test_preferred_dh_group_bits_is_checked() -> None:
    with pytest.raises(SpecError, match="1024 to 8192"):
        ReverseTunnel(
            MemoryReactorClock(), "h", options=TunnelOptions.create(preferred_dh_group_bits=512)
        )


# -- rekeying before the RFC 4344 limits -------------------------------------------------


def test_rekey_byte_limits() -> None:
    assert _algorithms.rekey_byte_limit("ctr", 16) == 64 << 30  # 2^32 AES blocks
    assert _algorithms.rekey_byte_limit("gcm", 16) == 64 << 30
    assert _algorithms.rekey_byte_limit("cbc", 8) == 512 << 10  # 2^16 3DES blocks
    assert _algorithms.rekey_byte_limit("chacha", 8) == 1 << 30  # OpenSSH's
    assert _algorithms.rekey_byte_limit("stream", 8) == 1 << 30
    assert _algorithms.rekey_byte_limit("none", 8) == 0


def test_a_64_bit_block_cipher_rekeys_every_512_kib_even_without_rekey_bytes(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path, ciphers=["3des-cbc"], macs=["hmac-sha2-256"], rekey_bytes=0)
    result_of(stack.connect())
    stack.forward_upper()
    data = b"3des" * 500_000  # 2 MB each way: 3.8 limits in each direction
    assert stack.round_trip(data) == data.upper()
    assert 2 <= stack.client.rekeys_by_us <= 4
    assert stack.client.rekeys_by_peer == 0


def test_rekey_before_the_packet_counter_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RFC 4344 §3.1 (2^31 packets in OpenSSH), scaled down to 50 packets.
    monkeypatch.setattr(_kex, "REKEY_MAX_PACKETS", 50)
    stack = Stack(tmp_path, rekey_bytes=0, keepalive_interval=0)
    result_of(stack.connect())
    stack.forward_upper()
    assert stack.client.key_exchanges == 1
    # About 3 packets each way per round trip: 60 of them cross 51 packets 3 times (±1).
    # The server has the same patched limit, so the two sides' KEXINITs cross.
    for i in range(60):
        assert stack.round_trip(b"%d" % i) == b"%d" % i
    assert 2 <= stack.client.key_exchanges - 1 <= 4
    assert max(stack.client._out_packets, stack.client._in_packets) <= 51


def test_an_idle_connection_is_rekeyed_by_time_once(tmp_path: Path) -> None:
    # OpenSSH (clientloop.c, packet.c): when the time is up, rekey if any packet went
    # either way since the last key exchange, idle or not; if none did, wait for one.
    stack = Stack(tmp_path, rekey_seconds=60.0, keepalive_interval=0)
    result_of(stack.connect())
    stack.forward_upper()
    stack.reactor.advance(61)
    stack.pump.flush()
    assert stack.client.key_exchanges == 2
    stack.reactor.advance(61)
    stack.pump.flush()
    assert stack.client.key_exchanges == 2  # nothing since: no rekey
    assert stack.round_trip(b"x") == b"X"  # the first packet after the time is up
    assert stack.client.key_exchanges == 3


# -- version identity and A3 -------------------------------------------------------------


def _version_client(**kw: Any) -> tuple[ClientTransport, StringTransport]:
    t = ClientTransport(
        user="alice",
        keys_to_try=[],
        passwords=[],
        verify_host_key=lambda blob: succeed(True),
        connection=SimpleNamespace(protocol_error=None),  # type: ignore[arg-type]
        on_lost=lambda _t, reason: None,
        **kw,
    )
    wire = StringTransport()
    t.makeConnection(wire)
    return t, wire


def test_our_version_line_default_and_configured() -> None:
    _t, wire = _version_client()
    assert wire.value().startswith(f"SSH-2.0-rtunnel_{rtunnel.__version__}\r\n".encode())
    _t, wire = _version_client(client_version="SSH-2.0-Acme_2.1 edge")
    assert wire.value().startswith(b"SSH-2.0-Acme_2.1 edge\r\n")


@pytest.mark.parametrize(
    "version", ["SSH-1.99-x", "SSH-2.0-", "SSH-2.0-a-b", "SSH-2.0-x\r\n", "ssh-2.0-x", "SSH-2.0-é"]
)
def test_a_bad_client_version_is_a_spec_error(version: str) -> None:
    with pytest.raises(SpecError):
        ReverseTunnel(
            MemoryReactorClock(), "h", options=TunnelOptions.create(client_version=version)
        )


@pytest.mark.parametrize(
    ("received", "message", "reason"),
    [
        (b"SSH-1.5-OpenSSH_2.1\r\n", "protocol version '1.5' is not supported", 8),
        (b"lines\r\n" * 700 + b"SSH-2.0-late\r\n", "more than 4096 bytes before", 2),
        (b"\x00" * 5000, "more than 4096 bytes without an SSH version line", 2),
    ],
)
def test_unusable_version_lines_are_version_errors(
    received: bytes, message: str, reason: int
) -> None:
    # RELIABILITY.md A3.
    t, wire = _version_client()
    t.dataReceived(received)
    assert isinstance(t.error, VersionError) and t.error.code == 1002
    assert message in str(t.error)
    assert wire.disconnecting
    assert _sent_payloads(wire)[-1][:5] == struct.pack(">BI", conch.MSG_DISCONNECT, reason)


def test_a_non_ssh_server_that_hangs_up_is_a_version_error() -> None:
    t, _wire = _version_client()
    t.dataReceived(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert t.error is None
    t.connectionLost(Failure(ConnectionLostError("closed")))
    assert isinstance(t.error, VersionError)
    assert "without sending an SSH version line" in str(t.error)
    assert "'HTTP/1.1 400 Bad Request\\r\\nContent-Length: 0" in str(t.error)


def test_the_version_pattern_and_lines_before_the_version() -> None:
    # RFC 4253 §4.2: other lines may come first; SSH-1.99 means "2.0 too".
    t, _wire = _version_client()
    t.dataReceived(b"Welcome\r\nto the box\r\nSSH-1.99-Legacy_1\r\n")
    assert t.error is None and t.peer_version == "SSH-1.99-Legacy_1"
    t, _wire = _version_client(server_version_pattern=["*SSH-2.0-OpenSSH*"])
    t.dataReceived(b"SSH-2.0-dropbear_2022.83\r\n")
    assert isinstance(t.error, VersionError) and "*SSH-2.0-OpenSSH*" in str(t.error)


def test_control_characters_in_the_version_line_are_escaped() -> None:
    # D15: kept exactly for the exchange hash, shown escaped.
    seen: list[str] = []
    t, _wire = _version_client(on_server_version=seen.append)
    t.dataReceived(b"SSH-2.0-Evil\x1b[2J\x07 \xff\r\n")
    assert t.otherVersionString == b"SSH-2.0-Evil\x1b[2J\x07 \xff"
    assert seen == [t.peer_version] == ["SSH-2.0-Evil\\x1b[2J\\x07 \\xff"]


def test_a_logon_to_a_non_ssh_server_fails_with_version_error(tmp_path: Path) -> None:
    stack = Stack(tmp_path, reconnect=ReconnectPolicy.off())
    logon = stack.tunnel.logon()
    client = stack.reactor.tcpClients[-1][2].buildProtocol(None)
    wire = StringTransport()
    client.makeConnection(wire)
    client.dataReceived(b"220 mail.example.com ESMTP\r\n")
    client.connectionLost(Failure(ConnectionLostError("closed")))
    with pytest.raises(VersionError, match=r"220 mail\.example\.com ESMTP"):
        result_of(logon)
    assert stack.tunnel.server_version is None


def test_the_tunnel_keeps_the_server_version(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    result_of(stack.connect())
    assert stack.tunnel.server_version == f"SSH-2.0-Twisted_{twisted.__version__}"


# -- D15: peer text in logs and errors ---------------------------------------------------


def test_printable_escapes_and_caps() -> None:
    assert printable(b"ok") == "ok"
    assert printable("a\nb\rc\x1b[31m\u202e") == "a\\nb\\rc\\x1b[31m\\u202e"
    assert printable(b"\xff\xfe") == "\\xff\\xfe"
    assert printable(b"x" * 10_000_000, 10) == "x" * 10 + "..."
    assert printable("y" * 20, 20) == "y" * 20


def test_a_megabyte_disconnect_description_is_capped_and_escaped() -> None:
    t, _wire = _version_client()
    text = b"\x1b]0;pwned\x07" + b"A" * 200_000
    t.dataReceived(
        _server_stream(bytes((conch.MSG_DISCONNECT,)) + struct.pack(">L", 11) + NS(text) + NS(b""))
    )
    assert isinstance(t.error, ConnectionLostError)
    message = str(t.error)
    assert len(message) < 700 and "\x1b" not in message and "\\x1b]0;pwned\\x07" in message


def test_debug_messages_are_logged_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        t, _wire = _version_client()
        t.dataReceived(
            _server_stream(
                bytes((conch.MSG_DEBUG, 1)) + NS(b"hi\x1b[2J" + b"z" * 100_000) + NS(b"")
            )
        )
    finally:
        globalLogPublisher.removeObserver(logged.append)
    texts = [formatEvent(e) for e in logged if "debug message" in formatEvent(e)]
    assert texts and all("\x1b" not in x and len(x) < 400 for x in texts)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux-only")
def test_a_debug_message_is_acked_at_once() -> None:
    # Nothing of ours answers SSH_MSG_DEBUG (sshd sends some right after the logon): the
    # server's next packet must not wait for our delayed ACK (acknowledge_now).
    quickack = socket.TCP_QUICKACK  # type: ignore[attr-defined]
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with sock, accepted:
            t, wire = _version_client()
            wire.getHandle = lambda: sock  # type: ignore[attr-defined]
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 0)
            ignore = _server_stream(IGNORE)
            t.dataReceived(ignore)
            assert sock.getsockopt(socket.IPPROTO_TCP, quickack) == 0
            debug = bytes((conch.MSG_DEBUG, 0)) + NS(b"hi") + NS(b"")
            t.dataReceived(_server_stream(IGNORE, debug)[len(ignore) :])
            assert sock.getsockopt(socket.IPPROTO_TCP, quickack) == 1


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes128-ctr", "3des-cbc"])
def test_a_flipped_bit_is_decrypt_error(tmp_path: Path, cipher: str) -> None:
    # A13 in memory: one bit of the server's ciphertext flipped on the way.
    stack = Stack(tmp_path, ciphers=[cipher], reconnect=ReconnectPolicy.off())
    result_of(stack.connect())
    client = stack.client
    deliver = client.dataReceived

    def corrupt(data: bytes) -> None:
        client.dataReceived = deliver
        deliver(data[:-1] + bytes([data[-1] ^ 0x10]))

    client.dataReceived = corrupt
    stack.server_transport.sendPacket(conch.MSG_IGNORE, NS(b"x" * 100))
    stack.pump.flush()
    assert isinstance(client.error, DecryptError) and client.error.code == 1015
    assert not stack.tunnel.connected


# -- what -v shows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cipher", "mac", "shown"),
    [
        ("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com", "<implicit>"),
        ("aes256-gcm@openssh.com", "hmac-sha2-512", "<implicit>"),
        ("aes128-ctr", "hmac-sha2-256-etm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
    ],
)
def test_the_keys_exchanged_line_names_the_mac_as_openssh_does(
    tmp_path: Path, cipher: str, mac: str, shown: str
) -> None:
    # sshd logs "MAC: <implicit>" for an AEAD cipher: its tag authenticates, and the MAC
    # the lists agreed on is not used (issue 12, "Also found").
    messages: list[str] = []

    class Log(TunnelObserver):
        def log(self, level: int, message: str) -> None:
            messages.append(message)

    stack = Stack(tmp_path, ciphers=[cipher], macs=[mac], log_level=1)
    stack.tunnel.add_observer(Log())
    result_of(stack.connect())
    (line,) = [m for m in messages if m.startswith("Keys exchanged:")]
    assert line.endswith(f"cipher {cipher}, MAC {shown}.")
