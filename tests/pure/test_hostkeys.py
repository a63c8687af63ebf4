"""known_hosts matching and fingerprints (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from rtunnel.client.hostkeys.known_hosts import (
    HostKeyCheck,
    KnownHosts,
    fingerprint_sha256,
    host_key_line,
    parse_known_hosts,
)

KEY_A = b"\x00\x00\x00\x0bssh-ed25519" + b"A" * 36
KEY_B = b"\x00\x00\x00\x0bssh-ed25519" + b"B" * 36
A64 = base64.b64encode(KEY_A).decode()
B64 = base64.b64encode(KEY_B).decode()


def hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def check(text: str, host: str, port: int, blob: bytes = KEY_A) -> HostKeyCheck:
    return KnownHosts(parse_known_hosts(text, "kh")).check(host, port, "ssh-ed25519", blob)[0]


@pytest.mark.parametrize(
    ("text", "host", "port", "expected"),
    [
        (f"example.com ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.MATCH),
        (f"EXAMPLE.com ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.MATCH),
        (f"example.com ssh-ed25519 {A64}", "example.com", 2222, HostKeyCheck.UNKNOWN),
        (f"[example.com]:2222 ssh-ed25519 {A64}", "example.com", 2222, HostKeyCheck.MATCH),
        (f"[127.0.0.1]:40000 ssh-ed25519 {A64}", "127.0.0.1", 40000, HostKeyCheck.MATCH),
        (f"[127.0.0.1]:40000 ssh-ed25519 {A64}", "127.0.0.1", 40001, HostKeyCheck.UNKNOWN),
        (f"a.com,example.com ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.MATCH),
        (f"*.example.com ssh-ed25519 {A64}", "www.example.com", 22, HostKeyCheck.MATCH),
        (f"*.example.com ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.UNKNOWN),
        (f"host? ssh-ed25519 {A64}", "host1", 22, HostKeyCheck.MATCH),
        (f"host? ssh-ed25519 {A64}", "host12", 22, HostKeyCheck.UNKNOWN),
        (
            f"*.example.com,!bad.example.com ssh-ed25519 {A64}",
            "bad.example.com",
            22,
            HostKeyCheck.UNKNOWN,
        ),
        (f"{hashed('example.com')} ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.MATCH),
        (f"{hashed('[h]:2200')} ssh-ed25519 {A64}", "h", 2200, HostKeyCheck.MATCH),
        (f"{hashed('other.com')} ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.UNKNOWN),
        (f"example.com ssh-ed25519 {B64}", "example.com", 22, HostKeyCheck.CHANGED),
        (
            f"example.com ssh-ed25519 {B64}\nexample.com ssh-ed25519 {A64}",
            "example.com",
            22,
            HostKeyCheck.MATCH,
        ),
        # A CA line never counts as a plain trusted key.
        (f"@cert-authority example.com ssh-ed25519 {A64}", "example.com", 22, HostKeyCheck.UNKNOWN),
        (
            f"@revoked * ssh-ed25519 {A64}\nexample.com ssh-ed25519 {A64}",
            "example.com",
            22,
            HostKeyCheck.REVOKED,
        ),
        (
            "# comment\n\n garbage\nexample.com ssh-ed25519 !!notbase64",
            "example.com",
            22,
            HostKeyCheck.UNKNOWN,
        ),
    ],
)
def test_matching(text: str, host: str, port: int, expected: HostKeyCheck) -> None:
    assert check(text, host, port) is expected


def test_changed_names_the_old_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# first\nexample.com ssh-ed25519 {B64}\n")
    outcome, entry = KnownHosts.from_files([path, tmp_path / "missing"]).check(
        "example.com", 22, "ssh-ed25519", KEY_A
    )
    assert outcome is HostKeyCheck.CHANGED
    assert entry is not None and entry.path == str(path) and entry.line == 2


def test_fingerprint_matches_openssh_form() -> None:
    digest = hashlib.sha256(KEY_A).digest()
    assert fingerprint_sha256(KEY_A) == "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    assert "=" not in fingerprint_sha256(KEY_A)


def test_host_key_line_round_trips() -> None:
    line = host_key_line("127.0.0.1", 2022, "ssh-ed25519", KEY_A)
    assert line.startswith("[127.0.0.1]:2022 ssh-ed25519 ")
    assert check(line, "127.0.0.1", 2022) is HostKeyCheck.MATCH
    assert host_key_line("h", 22, "ssh-ed25519", KEY_A).startswith("h ")


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        # Off port 22 a key unknown for [host]:port is looked up for the plain name
        # (OpenSSH sshconnect.c: "checking without port identifier").
        (f"example.com ssh-ed25519 {A64}", 2222, HostKeyCheck.MATCH),
        (f"example.com ssh-ed25519 {B64}", 2222, HostKeyCheck.UNKNOWN),  # not "changed"
        (f"[example.com]:2222 ssh-ed25519 {B64}\nexample.com ssh-ed25519 {A64}", 2222,
         HostKeyCheck.CHANGED),
        (f"@revoked example.com ssh-ed25519 {A64}", 2222, HostKeyCheck.REVOKED),
        (f"example.com ssh-ed25519 {B64}", 22, HostKeyCheck.CHANGED),
    ],
)  # fmt: skip
def test_check_host_falls_back_to_the_plain_name(
    text: str, port: int, expected: HostKeyCheck
) -> None:
    known = KnownHosts(parse_known_hosts(text, "kh"))
    assert known.check_host("example.com", port, "ssh-ed25519", KEY_A)[0] is expected


def test_marker_lookups() -> None:
    known = KnownHosts(
        parse_known_hosts(
            f"@cert-authority *.com ssh-ed25519 {A64}\n"
            f"@revoked example.com ssh-ed25519 {B64}\n"
            f"[example.com]:2222 ecdsa-sha2-nistp256 {A64}\n",
            "kh",
        )
    )
    assert [e.line for e in known.certificate_authorities("example.com", 2222)] == [1]
    assert known.certificate_authorities("example.org", 22) == []
    assert known.revoked("example.com", 2222, [KEY_A, KEY_B]) is not None
    assert known.revoked("example.com", 2222, [KEY_A]) is None
    assert known.key_types("example.com", 2222) == {"ecdsa-sha2-nistp256"}
    assert known.key_types("example.com", 22) == set()
