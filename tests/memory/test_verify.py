"""
Host key verification policies: fingerprints in every form, keys given directly, the
callback (synchronous and asynchronous), @revoked, the global file and hashed accept-new
writing; unit tests on HostKeyVerifier, and end to end against the bundled server in
memory (MemoryPair). Against OpenSSH sshd: tests/interop/test_verify_openssh.py.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh.keys import FingerprintFormats, Key
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from rtunnel import HostKeyError
from rtunnel.client.hostkeys.known_hosts import (
    HostKeyCheck,
    KnownHosts,
    fingerprint,
    fingerprint_matches,
    hash_host_name,
)
from rtunnel.client.hostkeys.verify import HostKeyInfo, HostKeyVerifier
from rtunnel.errors import SpecError
from rtunnel.testing import MemoryPair, host_key

KEY = host_key("ed25519").public()
BLOB = KEY.blob()
OTHER = host_key("ecdsa").public()
LINE = KEY.toString("openssh").decode()


def sha256_b64(blob: bytes) -> str:
    return base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def colon_hex(algorithm: str, blob: bytes) -> str:
    return ":".join(f"{b:02x}" for b in hashlib.new(algorithm, blob).digest())


# -- fingerprints -------------------------------------------------------------------------


def test_fingerprint_forms() -> None:
    assert fingerprint(BLOB) == "SHA256:" + sha256_b64(BLOB)
    conch = KEY.fingerprint(format=FingerprintFormats.SHA256_BASE64)  # padded base64
    assert fingerprint(BLOB) == "SHA256:" + conch.rstrip("=")
    assert fingerprint(BLOB, "md5") == "MD5:" + colon_hex("md5", BLOB)
    assert fingerprint(BLOB, "md5", form="hex") == KEY.fingerprint()  # Conch's MD5 hex
    assert fingerprint(BLOB, "sha1", form="hex") == colon_hex("sha1", BLOB)
    with pytest.raises(ValueError, match="sha512"):
        fingerprint(BLOB, "sha512")


@pytest.mark.parametrize(
    "text",
    [
        "SHA256:" + sha256_b64(BLOB),
        "SHA256:" + sha256_b64(BLOB) + "=",  # padded
        "sha256:" + sha256_b64(BLOB),
        colon_hex("sha256", BLOB),
        colon_hex("sha256", BLOB).upper(),
        colon_hex("sha1", BLOB),
        colon_hex("md5", BLOB),
        "MD5:" + colon_hex("md5", BLOB),
        colon_hex("md5", BLOB).replace(":", ""),
        "  " + colon_hex("md5", BLOB) + " ",
    ],
)
def test_fingerprint_matches(text: str) -> None:
    assert fingerprint_matches(BLOB, text)
    assert not fingerprint_matches(OTHER.blob(), text)


@pytest.mark.parametrize(
    "text", ["", "SHA256:", "SHA256:!!!", "zz:zz", "00:11:22", "MD5:" + "00:" * 15 + "00"]
)
def test_fingerprint_garbage_never_matches(text: str) -> None:
    assert not fingerprint_matches(BLOB, text)


def test_hashed_host_names_round_trip() -> None:
    field = hash_host_name("[127.0.0.1]:2222")
    assert field.startswith("|1|") and "127.0.0.1" not in field
    known = KnownHosts.from_files([])
    known.entries = []
    from rtunnel.client.hostkeys.known_hosts import parse_known_hosts

    entries = parse_known_hosts(f"{field} {LINE}\n", "kh")
    assert KnownHosts(entries).check("127.0.0.1", 2222, "ssh-ed25519", BLOB)[0] is (
        HostKeyCheck.MATCH
    )
    assert KnownHosts(entries).check("127.0.0.1", 2223, "ssh-ed25519", BLOB)[0] is (
        HostKeyCheck.UNKNOWN
    )


# -- the verifier, in memory ---------------------------------------------------------------


def verifier(tmp_path: Path, **kw: Any) -> HostKeyVerifier:
    kw.setdefault("global_known_hosts", [])
    return HostKeyVerifier(
        "127.0.0.1", 2222, [tmp_path / "known_hosts"], kw.pop("policy", "strict"), **kw
    )


def test_unknown_key_refused_in_openssh_words(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match=r"Host key verification failed\.$") as e:
        verifier(tmp_path).check(BLOB)
    assert e.value.code == 1030
    assert e.value.fingerprint == fingerprint(BLOB)
    assert "[127.0.0.1]:2222" in str(e.value)


@pytest.mark.parametrize(
    "accepted",
    [
        {"accepted_fingerprints": ["SHA256:" + sha256_b64(BLOB)]},
        {"accepted_fingerprints": ["nonsense", colon_hex("md5", BLOB)]},
        {"accepted_fingerprints": [colon_hex("sha1", BLOB)]},
        {"accepted_keys": [KEY]},
        {"accepted_keys": [LINE]},
        {"accepted_keys": [f"[127.0.0.1]:2222 {LINE}"]},
        {"accepted_keys": [BLOB]},
    ],
)
def test_accepted_keys_and_fingerprints(tmp_path: Path, accepted: dict[str, Any]) -> None:
    assert verifier(tmp_path, **accepted).check(BLOB) is True
    # Only that key.
    with pytest.raises(HostKeyError):
        verifier(tmp_path, **accepted).check(OTHER.blob())


def test_bad_accepted_key_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="Not a public key"):
        verifier(tmp_path, accepted_keys=["not a key"])


def test_revoked_key_refused_even_if_accepted_or_callback_says_yes(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text(f"@revoked * {LINE}\n[127.0.0.1]:2222 {LINE}\n")
    v = verifier(tmp_path, accepted_keys=[KEY], callback=lambda info: True, policy="accept-any")
    with pytest.raises(HostKeyError, match=r"revoked in .*known_hosts:1\. Host key verif"):
        v.check(BLOB)
    failure = v.verify(BLOB)
    assert isinstance(failure.result.value, HostKeyError)  # type: ignore[attr-defined]
    failure.addErrback(lambda _: None)


def test_global_file_is_read_not_written(tmp_path: Path) -> None:
    glob = tmp_path / "ssh_known_hosts"
    glob.write_text(f"[127.0.0.1]:2222 {LINE}\n")
    v = verifier(tmp_path, global_known_hosts=[glob], policy="accept-new")
    assert v.check(BLOB) is True
    assert not (tmp_path / "known_hosts").exists()
    # A changed key in the global file is a changed key, naming that file and line.
    glob.write_text(f"# comment\n[127.0.0.1]:2222 {OTHER.toString('openssh').decode()}\n")
    other_ed = Key.fromString(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    )
    glob.write_text(f"[127.0.0.1]:2222 {other_ed.toString('openssh').decode()}\n")
    with pytest.raises(HostKeyError, match=f"CHANGED.*{glob}:1"):
        v.check(BLOB)


def test_accept_new_writes_hashed_when_asked(tmp_path: Path) -> None:
    v = verifier(tmp_path, policy="accept-new", hash_known_hosts=True)
    assert v.check(BLOB) is True
    text = (tmp_path / "known_hosts").read_text()
    assert text.startswith("|1|") and "127.0.0.1" not in text
    # ... and it is found again, strictly.
    assert verifier(tmp_path).check(BLOB) is True


def test_fingerprint_hash_choice_in_messages(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match="MD5:") as e:
        verifier(tmp_path, fingerprint_hash="md5").check(BLOB)
    assert e.value.fingerprint == fingerprint(BLOB)  # the attribute stays SHA256
    with pytest.raises(SpecError):
        verifier(tmp_path, fingerprint_hash="sha512")


def _settle(clock: Clock, d: Deferred[Any]) -> Any:
    """What ``d`` fires with once ``clock``'s due calls have run (or its exception)."""
    box: list[Any] = []
    d.addBoth(box.append)
    clock.advance(0)
    assert box, "not settled"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def test_callback_sees_the_key_and_decides(tmp_path: Path) -> None:
    clock = Clock()
    seen: list[HostKeyInfo] = []

    async def decide(info: HostKeyInfo) -> bool:
        seen.append(info)
        await deferLater(clock, 0, lambda: None)
        return info.fingerprints["md5-hex"] == colon_hex("md5", BLOB)

    v = verifier(tmp_path, callback=decide, fingerprint_hash="sha1")
    assert _settle(clock, v.verify(BLOB)) is True
    info = seen[0]
    assert (info.algorithm, info.blob, info.key) == ("ssh-ed25519", BLOB, KEY)
    assert info.fingerprint == fingerprint(BLOB, "sha1")
    assert info.fingerprints["sha256"] == fingerprint(BLOB)
    assert info.fingerprints["sha256-hex"] == colon_hex("sha256", BLOB)
    assert info.known is HostKeyCheck.UNKNOWN and info.accepted is False
    assert "Host key verification failed" in info.status
    with pytest.raises(HostKeyError, match="refused by the host key callback"):
        _settle(clock, v.verify(OTHER.blob()))
    # The callback can also refuse a key known_hosts trusts.
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:2222 {LINE}\n")
    with pytest.raises(HostKeyError, match="refused by the host key callback"):
        _settle(clock, verifier(tmp_path, callback=lambda info: False).verify(BLOB))
    assert _settle(clock, verifier(tmp_path, callback=lambda info: info.accepted).verify(BLOB))


def test_failing_callback_refuses(tmp_path: Path) -> None:
    def boom(info: HostKeyInfo) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(HostKeyError, match=r"callback failed.*boom"):
        _settle(Clock(), verifier(tmp_path, callback=boom).verify(BLOB))


# -- end to end: the bundled server, in memory (sshd: tests/interop/test_verify_openssh.py)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[MemoryPair]:
    pair = MemoryPair(tmp_path / "pair")
    yield pair
    pair.close()


def server_blob(pair: MemoryPair) -> bytes:
    return bytes(pair.server.host_key.blob())


def test_e2e_accepted_fingerprint_and_key(pair: MemoryPair, tmp_path: Path) -> None:
    blob = server_blob(pair)
    empty = tmp_path / "empty"
    for kw in [
        {"accepted_fingerprints": [fingerprint(blob)]},
        {"accepted_fingerprints": [colon_hex("md5", blob)]},
        {"accepted_host_keys": [Key.fromString(blob)]},
    ]:
        t = pair.make_tunnel(known_hosts=empty, global_known_hosts=[], **kw)
        pair.run(t.logon())
        pair.run(t.logoff())
    with pytest.raises(HostKeyError, match="Host key verification failed") as e:
        pair.run(
            pair.make_tunnel(
                known_hosts=empty, global_known_hosts=[], accepted_fingerprints=[fingerprint(b"x")]
            ).logon()
        )
    assert e.value.code == 1030
    assert not empty.exists()


def test_e2e_async_callback(pair: MemoryPair, tmp_path: Path) -> None:
    blob = server_blob(pair)
    seen: list[HostKeyInfo] = []

    def decide(info: HostKeyInfo) -> Any:
        seen.append(info)
        return deferLater(pair.reactor, 0.01, lambda: info.blob == blob)

    t = pair.make_tunnel(known_hosts=tmp_path / "kh", host_key_callback=decide)
    pair.run(t.logon())
    pair.run(t.logoff())
    assert seen[0].fingerprint == fingerprint(blob)
    with pytest.raises(HostKeyError, match="refused by the host key callback"):
        pair.run(pair.make_tunnel(host_key_callback=lambda info: False).logon())


def test_e2e_revoked_and_hashed_global(pair: MemoryPair, tmp_path: Path) -> None:
    blob = server_blob(pair)
    line = pair.known_hosts.read_text().splitlines()[0]
    name, key_type, b64 = line.split()[:3]
    revoked = tmp_path / "revoked"
    revoked.write_text(f"@revoked * {key_type} {b64}\n{line}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        pair.run(pair.make_tunnel(known_hosts=revoked).logon())
    glob = tmp_path / "global"
    glob.write_text(f"{hash_host_name(name)} {key_type} {b64}\n")
    t = pair.make_tunnel(known_hosts=tmp_path / "none", global_known_hosts=glob)
    pair.run(t.logon())
    pair.run(t.logoff())
    assert fingerprint_matches(blob, fingerprint(blob))
