"""
rtunnel's transport against a real OpenSSH sshd: every cipher and MAC, strict key exchange,
rekeying both ways, a failed negotiation; what was negotiated is read from sshd's own
DEBUG3 log.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from rtunnel import NegotiationError, PrivateKeyFile, ReverseTunnel
from rtunnel.testing._openssh import OpenSSHServer

MiB = 1024 * 1024


def _tunnel(server: OpenSSHServer, key: Path, **kw: Any) -> ReverseTunnel:
    return ReverseTunnel(
        reactor,
        server.host,
        server.port,
        user=server.user,
        auth=[PrivateKeyFile(key)],
        known_hosts=server.known_hosts_path,
        **kw,
    )


def _in_thread(f: Callable[[], Any]) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            result = f()
        except BaseException as e:
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, daemon=True).start()
    return d


class _Echo:
    """A threaded echo server on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(256 * 1024):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def echo() -> Iterator[_Echo]:
    e = _Echo()
    yield e
    e.sock.close()


def _round_trip(port: int, size: int, seed: int) -> bool:
    """Send ``size`` random bytes through the forward and compare the echo's sha256."""
    payload = random.Random(seed).randbytes(size)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        got: list[bytes] = []

        def read() -> None:
            while data := c.recv(256 * 1024):
                got.append(data)

        reader = threading.Thread(target=read)
        reader.start()
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        reader.join(60)
    return hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(payload).digest()


@pytest.fixture
def sshd(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path, request: pytest.FixtureRequest
) -> Iterator[OpenSSHServer]:
    """An sshd with the sshd_config lines given by indirect parametrization."""
    extra = list(getattr(request, "param", []))
    pub = openssh_client_key.with_name(openssh_client_key.name + ".pub").read_text().strip()
    server = OpenSSHServer(
        tmp_path / "sshd", authorized_keys=[pub], sshd_path=openssh_sshd, extra_config=extra
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("cipher", "mac"),
    [
        ("chacha20-poly1305@openssh.com", None),
        ("aes128-gcm@openssh.com", None),
        ("aes256-gcm@openssh.com", None),
        ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
        ("aes256-ctr", "hmac-sha2-512-etm@openssh.com"),
        ("aes192-ctr", "hmac-sha2-256"),
        ("aes256-ctr", "hmac-sha2-512"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_each_cipher_and_mac_with_strict_kex_and_a_rekey(
    sshd: OpenSSHServer, openssh_client_key: Path, echo: _Echo, cipher: str, mac: str | None
) -> None:
    tunnel = _tunnel(
        sshd,
        openssh_client_key,
        ciphers=[cipher],
        macs=[mac or "hmac-sha2-256-etm@openssh.com"],
        require_strict_kex=True,
    )
    await tunnel.logon()
    try:
        fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo.port)
        assert await _in_thread(lambda: _round_trip(fwd.port, 300_000, 1))
        await tunnel.rekey()
        assert await _in_thread(lambda: _round_trip(fwd.port, 300_000, 2))
    finally:
        await tunnel.logoff()
    log = sshd.log_text()
    shown_mac = "<implicit>" if mac is None else mac
    for direction in ("client->server", "server->client"):
        assert f"kex: {direction} cipher: {cipher} MAC: {shown_mac}" in log
    assert "will use strict KEX ordering" in log
    # The rekey happened (a second KEXINIT from us), and no stray service request after it.
    assert log.count("SSH2_MSG_KEXINIT received") >= 2
    assert "kex_protocol_error" not in log
    assert "protocol error" not in log.lower().replace("kex_protocol_error", "")


@pytest.mark.parametrize("sshd", [["Ciphers aes128-ctr,aes256-ctr"]], indirect=True)
@pytest_twisted.ensureDeferred
async def test_no_common_cipher_is_negotiation_error_naming_both_sides(
    sshd: OpenSSHServer, openssh_client_key: Path
) -> None:
    tunnel = _tunnel(sshd, openssh_client_key, ciphers="aes256-gcm@openssh.com")
    with pytest.raises(NegotiationError) as info:
        await tunnel.logon()
    assert info.value.code == 1003
    assert info.value.kind == "cipher"
    assert "aes256-gcm@openssh.com" in str(info.value)
    assert "aes128-ctr,aes256-ctr" in str(info.value)


@pytest.mark.parametrize("sshd", [["RekeyLimit 1M"]], indirect=True)
@pytest_twisted.ensureDeferred
async def test_server_and_client_rekeys_during_64_mib_each_way(
    sshd: OpenSSHServer, openssh_client_key: Path, echo: _Echo
) -> None:
    # A10/A11 at a size that fits the suite's budget: sshd rekeys every 1 MiB, we rekey
    # every 3 MiB, so the two sides' KEXINITs also cross now and then.
    tunnel = _tunnel(sshd, openssh_client_key, rekey_bytes=3 * MiB)
    await tunnel.logon()
    try:
        fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo.port)
        assert await _in_thread(lambda: _round_trip(fwd.port, 64 * MiB, 3))
        transport = tunnel._transport
        assert transport is not None
        assert transport.key_exchanges > 10
    finally:
        await tunnel.logoff()
    log = sshd.log_text()
    assert len(re.findall(r"SSH2_MSG_KEXINIT received", log)) > 10
    assert "kex_protocol_error" not in log


@pytest_twisted.ensureDeferred
async def test_delayed_compression_with_a_rekey(
    sshd: OpenSSHServer, openssh_client_key: Path, echo: _Echo
) -> None:
    tunnel = _tunnel(sshd, openssh_client_key, compression=True)
    await tunnel.logon()
    try:
        fwd = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", echo.port)
        assert await _in_thread(lambda: _round_trip(fwd.port, 1_000_000, 4))
        await tunnel.rekey()
        assert await _in_thread(lambda: _round_trip(fwd.port, 1_000_000, 5))
    finally:
        await tunnel.logoff()
    log = sshd.log_text()
    assert "compression: zlib@openssh.com" in log
    assert "kex_protocol_error" not in log
