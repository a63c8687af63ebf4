"""
Host key verification end to end against OpenSSH sshd (the ``server`` fixture's sshd
variant): fingerprints and keys given directly, an asynchronous callback, @revoked and a
hashed global file. The same against the bundled server, in memory, and the verifier's
unit tests: tests/memory/test_verify.py.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from e2e_support import Server, openssh_only
from twisted.conch.ssh.keys import Key
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rtunnel import HostKeyError
from rtunnel.client.hostkeys.known_hosts import fingerprint, fingerprint_matches, hash_host_name
from rtunnel.client.hostkeys.verify import HostKeyInfo


def colon_hex(algorithm: str, blob: bytes) -> str:
    return ":".join(f"{b:02x}" for b in hashlib.new(algorithm, blob).digest())


def server_blob(server: Server) -> bytes:
    line = server.known_hosts.read_text().splitlines()[0]
    return base64.b64decode(line.split()[2])


@openssh_only
@pytest_twisted.ensureDeferred
async def test_e2e_accepted_fingerprint_and_key(server: Server, tmp_path: Path) -> None:
    blob = server_blob(server)
    empty = tmp_path / "empty"
    for kw in [
        {"accepted_fingerprints": [fingerprint(blob)]},
        {"accepted_fingerprints": [colon_hex("md5", blob)]},
        {"accepted_host_keys": [Key.fromString(blob)]},
    ]:
        t = server.tunnel(known_hosts=empty, global_known_hosts=[], **kw)
        await t.logon()
        await t.logoff()
    with pytest.raises(HostKeyError, match="Host key verification failed") as e:
        await server.tunnel(
            known_hosts=empty, global_known_hosts=[], accepted_fingerprints=[fingerprint(b"x")]
        ).logon()
    assert e.value.code == 1030
    assert not empty.exists()


@openssh_only
@pytest_twisted.ensureDeferred
async def test_e2e_async_callback(server: Server, tmp_path: Path) -> None:
    blob = server_blob(server)
    seen: list[HostKeyInfo] = []

    def decide(info: HostKeyInfo) -> Any:
        seen.append(info)
        return deferLater(reactor, 0.01, lambda: info.blob == blob)

    t = server.tunnel(known_hosts=tmp_path / "kh", host_key_callback=decide)
    await t.logon()
    await t.logoff()
    assert seen[0].fingerprint == fingerprint(blob)
    with pytest.raises(HostKeyError, match="refused by the host key callback"):
        await server.tunnel(host_key_callback=lambda info: False).logon()


@openssh_only
@pytest_twisted.ensureDeferred
async def test_e2e_revoked_and_hashed_global(server: Server, tmp_path: Path) -> None:
    blob = server_blob(server)
    line = server.known_hosts.read_text().splitlines()[0]
    name, key_type, b64 = line.split()[:3]
    revoked = tmp_path / "revoked"
    revoked.write_text(f"@revoked * {key_type} {b64}\n{line}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        await server.tunnel(known_hosts=revoked).logon()
    glob = tmp_path / "global"
    glob.write_text(f"{hash_host_name(name)} {key_type} {b64}\n")
    t = server.tunnel(known_hosts=tmp_path / "none", global_known_hosts=glob)
    await t.logon()
    await t.logoff()
    assert fingerprint_matches(blob, fingerprint(blob))
