"""
GSSAPI user authentication (``gssapi-with-mic``, RFC 4462 section 3) with Kerberos 5.

Three layers: the wire pieces of :mod:`rtunnel.client.auth._gssapi` as plain functions; the
``ssh-userauth`` client driven packet by packet against a real GSSAPI acceptor in this
process (python-gssapi with the test KDC's keytab), for what a real sshd never sends (a
wrong mechanism, floods, oversized tokens); and the real thing: an MIT KDC
(:class:`rtunnel.testing._kdc.KerberosKDC`) and OpenSSH's sshd, started once for the module,
with ReverseTunnel and the ``rtunnel`` command logging on as the test user.

Notes on Debian 12's sshd (OpenSSH 9.2p1) with GSSAPI, which the tests rely on:

- ``GSSAPIStrictAcceptorCheck no``: sshd otherwise accepts only ``host/$(hostname)``,
  and the tests connect to ``localhost``.
- At ``LogLevel DEBUG3`` it logs "Received some client credentials" when the client
  delegated its credentials, "Got no client credentials" otherwise (gss-serv.c).
- The principal ``USER@RTUNNEL.TEST`` of the default realm maps to the local account
  ``USER`` (krb5_kuserok, no ``.k5login``): "Authorized to root, krb5 principal ...".
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.service import SSHService
from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

import rtunnel
from rtunnel import (
    GSSAPI,
    AuthenticationError,
    CredentialError,
    PrivateKey,
    ReverseTunnel,
    SpecError,
    TunnelOptions,
)
from rtunnel.client.auth._gssapi import (
    KRB5_MECH,
    TargetName,
    der_oid,
    mic_data,
    parse_der_oid,
    parse_error,
    request_data,
    target_name,
)
from rtunnel.client.auth.credentials import UserAuthSettings
from rtunnel.testing._kdc import KerberosKDC, find_kdc
from rtunnel.testing._openssh import OpenSSHServer

REALM = "RTUNNEL.TEST"
PASSWORD = "rtunnel-test-password"


# --------------------------------------------------------------------------------------
# Pure: OIDs, names, the MIC's data


@pytest.mark.parametrize(
    ("dotted", "der"),
    [
        # RFC 4462 section 3.2's example, Kerberos 5 (RFC 1964).
        (KRB5_MECH, "06092a864886f712010202"),
        # SPNEGO, 1.3.6.1.5.5.2.
        ("1.3.6.1.5.5.2", "06062b0601050502"),
        # X.690 section 8.19.5's example: the first two arcs 2.999 make 1079.
        ("2.999.3", "0603883703"),
        ("0.0", "060100"),
        ("1.2.128", "0603" + "2a8100"),
    ],
)
def test_oid_der(dotted: str, der: str) -> None:
    assert der_oid(dotted).hex() == der
    assert parse_der_oid(bytes.fromhex(der)) == dotted


def test_oid_der_matches_python_gssapi() -> None:
    gssapi = pytest.importorskip("gssapi")
    # python-gssapi's OID bytes are the DER content, without tag and length.
    assert der_oid(KRB5_MECH) == b"\x06\x09" + bytes(gssapi.MechType.kerberos)


@pytest.mark.parametrize(
    "bad", ["", "1", "3.1", "1.40", "1.2.x", "1.-2", "1." + ".".join(["9"] * 130)]
)
def test_oid_der_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        der_oid(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0609",  # no content
        "05092a864886f712010202",  # not the OID tag
        "06082a864886f712010202",  # length says 8, 9 follow
        "060a2a864886f712010202",  # length says 10, 9 follow
        "06022a86",  # the last group has its continuation bit set
        "0603802a01",  # a leading 0x80: not minimal
    ],
)
def test_parse_der_oid_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_der_oid(bytes.fromhex(bad))


def test_request_data() -> None:
    # RFC 4462 section 3.2: uint32 count, then one string per mechanism.
    assert request_data() == (
        b"\x00\x00\x00\x01" + b"\x00\x00\x00\x0b" + bytes.fromhex("06092a864886f712010202")
    )


def test_mic_data_layout() -> None:
    # RFC 4462 section 3.5, byte for byte.
    assert mic_data(b"\x01\x02\x03", b"alice", b"ssh-connection") == (
        b"\x00\x00\x00\x03\x01\x02\x03"
        + b"\x32"
        + b"\x00\x00\x00\x05alice"
        + b"\x00\x00\x00\x0essh-connection"
        + b"\x00\x00\x00\x0fgssapi-with-mic"
    )


def _hostbased(text: str) -> TargetName:
    return TargetName(text, hostbased=True)


def _principal(text: str) -> TargetName:
    return TargetName(text, hostbased=False)


@pytest.mark.parametrize(
    ("host", "spn", "realm", "expected"),
    [
        # OpenSSH's default: the host-based service "host" on the host given.
        ("gw.example.com", None, None, _hostbased("host@gw.example.com")),
        ("gw", "host@other.example.com", None, _hostbased("host@other.example.com")),
        ("gw", "host/gw.example.com@EX.COM", None, _principal("host/gw.example.com@EX.COM")),
        ("gw", "host/gw.example.com", None, _principal("host/gw.example.com")),
        # KerberosRealm: the principal in that realm.
        ("gw.example.com", None, "CORP.EX", _principal("host/gw.example.com@CORP.EX")),
        ("gw", "ssh@gw.example.com", "CORP.EX", _principal("ssh/gw.example.com@CORP.EX")),
        ("gw", "host/gw.example.com", "CORP.EX", _principal("host/gw.example.com@CORP.EX")),
        # A principal that names its realm keeps it.
        ("gw", "host/gw@A.EX", "B.EX", _principal("host/gw@A.EX")),
    ],
)
def test_target_name(host: str, spn: str | None, realm: str | None, expected: TargetName) -> None:
    assert target_name(host, spn, realm) == expected


@pytest.mark.parametrize("spn", ["host", "@gw", "host@", "/gw", "host/", "host/@R", "host@g w"])
def test_bad_spn_is_a_spec_error(spn: str) -> None:
    with pytest.raises(SpecError, match="Kerberos SPN"):
        GSSAPI(spn=spn)


@pytest.mark.parametrize("realm", ["", "A@B", "A/B", "A B"])
def test_bad_realm_is_a_spec_error(realm: str) -> None:
    with pytest.raises(SpecError, match="Kerberos realm"):
        GSSAPI(realm=realm)


def test_parse_error() -> None:
    packet = struct.pack(">LL", 0xD0000, 0x96C73A07) + NS(b"Bad ticket\n") + NS(b"en")
    assert parse_error(packet) == (0xD0000, 0x96C73A07, "Bad ticket\n")
    assert parse_error(b"\x00\x01") == (0, 0, "")


def test_gssapi_is_tried_first_by_default() -> None:
    # OpenSSH's default PreferredAuthentications (readconf.c): gssapi-with-mic first.
    assert UserAuthSettings().preferred[0] == "gssapi-with-mic"


def test_missing_python_gssapi(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtunnel.client.auth.userauth import load_credentials

    monkeypatch.setitem(sys.modules, "gssapi", None)  # import gssapi raises ImportError
    with pytest.raises(CredentialError, match=r"pip install 'rtunnel\[gssapi\]'"):
        load_credentials([GSSAPI()])
    # Without a GSSAPI credential, python-gssapi is not needed.
    assert load_credentials([]) == ([], [])


def test_importing_rtunnel_does_not_import_gssapi() -> None:
    code = "import sys, rtunnel, rtunnel.client.auth.userauth; sys.exit('gssapi' in sys.modules)"
    source = Path(rtunnel.__file__).parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=source, check=False).returncode == 0


# --------------------------------------------------------------------------------------
# The KDC and the sshd, once for the module


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _require_kerberos() -> None:
    """Skip, or fail in CI, without MIT Kerberos or python-gssapi."""
    problem = find_kdc()
    try:
        import gssapi  # noqa: F401
    except ImportError:
        problem = (problem + "; " if problem else "") + (
            "python-gssapi is not installed: pip install 'rtunnel[gssapi]' (needs libkrb5-dev)"
        )
    if problem is None:
        return
    message = f"GSSAPI interop tests need a KDC and python-gssapi: {problem}"
    if _in_ci():
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(message)


@dataclass
class Kerberos:
    kdc: KerberosKDC
    user: str
    keytab: Path
    ccache: Path


@pytest.fixture(scope="module")
def kerberos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kerberos]:
    """
    A KDC for RTUNNEL.TEST with ``host/localhost`` in a keytab and the test user (the
    account sshd logs in as) with a password and a forwardable ticket. This process
    uses its ``krb5.conf``, ticket cache and keytab through the environment.
    """
    _require_kerberos()
    directory = tmp_path_factory.mktemp("kdc")
    kdc = KerberosKDC(directory / "kdc", REALM)
    kdc.start()
    try:
        keytab = directory / "sshd.keytab"
        kdc.add_principal("host/localhost", keytab=keytab)
        # Known to the KDC, but sshd has no key for it.
        kdc.add_principal("host/elsewhere")
        # The account sshd logs in as (OpenSSHServer.user): this process's.
        user = pwd.getpwuid(os.geteuid()).pw_name
        principal = kdc.add_principal(user, password=PASSWORD)
        ccache = directory / "ccache"
        kdc.kinit(principal, PASSWORD, ccache)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("KRB5_CONFIG", str(kdc.config_path))
            patch.setenv("KRB5CCNAME", f"FILE:{ccache}")
            # For the in-process acceptor of the packet-level tests.
            patch.setenv("KRB5_KTNAME", f"FILE:{keytab}")
            yield Kerberos(kdc, user, keytab, ccache)
    finally:
        kdc.stop()


@dataclass
class Sshd:
    server: OpenSSHServer
    known_hosts: Path
    key: keys.Key

    def log_offset(self) -> int:
        return len(self.server.log_text())

    def log_since(self, offset: int) -> str:
        return self.server.log_text()[offset:]

    def wait_for_log(self, offset: int, text: str, timeout: float = 10.0) -> str:
        """sshd's monitor may write a line just after the client saw the result."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_since(offset)
            if text in log or time.monotonic() > deadline:
                assert text in log, f"no {text!r} after {timeout:g} s:\n" + self.server.log_tail(60)
                return log
            time.sleep(0.05)


def _sshd(directory: Path, sshd_path: str, kerberos: Kerberos, extra: list[str]) -> Sshd:
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    server = OpenSSHServer(
        directory,
        sshd_path=sshd_path,
        authorized_keys=[key.public().toString("openssh").decode()],
        extra_config=extra,
        env={
            "KRB5_CONFIG": str(kerberos.kdc.config_path),
            "KRB5_KTNAME": f"FILE:{kerberos.keytab}",
        },
    )
    server.start()
    # Connected to as "localhost", the name the host principal has.
    known_hosts = directory / "known_hosts.localhost"
    known_hosts.write_text(
        "".join(f"[localhost]:{server.port} {k}\n" for k in server.host_public_keys())
    )
    return Sshd(server, known_hosts, key)


@pytest.fixture(scope="module")
def sshd(
    tmp_path_factory: pytest.TempPathFactory, openssh_sshd: str, kerberos: Kerberos
) -> Iterator[Sshd]:
    """sshd offering gssapi-with-mic and publickey."""
    server = _sshd(
        tmp_path_factory.mktemp("sshd-gssapi"),
        openssh_sshd,
        kerberos,
        [
            "GSSAPIAuthentication yes",
            "GSSAPICleanupCredentials yes",
            "GSSAPIStrictAcceptorCheck no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
        ],
    )
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture(scope="module")
def sshd_without_gssapi(
    tmp_path_factory: pytest.TempPathFactory, openssh_sshd: str, kerberos: Kerberos
) -> Iterator[Sshd]:
    """sshd offering publickey only."""
    server = _sshd(
        tmp_path_factory.mktemp("sshd-plain"), openssh_sshd, kerberos, ["GSSAPIAuthentication no"]
    )
    try:
        yield server
    finally:
        server.server.stop()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """rtunnel's log messages during the test."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        text = formatEvent(event)
        if text:
            lines.append(text)

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def _tunnel(sshd: Sshd, kerberos: Kerberos, auth: list[Any], **kw: Any) -> ReverseTunnel:
    return ReverseTunnel(
        reactor,
        "localhost",
        sshd.server.port,
        options=TunnelOptions.create(
            user=kerberos.user, auth=auth, known_hosts=sshd.known_hosts, **kw
        ),
    )


async def _logon_forward_logoff(tunnel: ReverseTunnel) -> None:
    await tunnel.logon()
    try:
        forward = await tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9)
        assert forward.port > 0
    finally:
        await tunnel.logoff()


# --------------------------------------------------------------------------------------
# Against OpenSSH's sshd


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_logon_with_kerberos_ticket(sshd: Sshd, kerberos: Kerberos) -> None:
    offset = sshd.log_offset()
    await _logon_forward_logoff(_tunnel(sshd, kerberos, [GSSAPI()]))
    log = sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user} from 127.0.0.1")
    assert f"krb5 principal {kerberos.user}@{REALM}" in log
    assert "Got no client credentials" in log
    assert "Received some client credentials" not in log
    assert "tcpip-forward" in log


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_delegation(sshd: Sshd, kerberos: Kerberos) -> None:
    offset = sshd.log_offset()
    await _logon_forward_logoff(_tunnel(sshd, kerberos, [GSSAPI(delegate=True)]))
    log = sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user}")
    assert "Received some client credentials" in log


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_spn_and_realm(sshd: Sshd, kerberos: Kerberos) -> None:
    """The SPN given as a principal, and the realm given separately, reach the same key."""
    for credential in [
        GSSAPI(spn=f"host/localhost@{REALM}"),
        GSSAPI(spn="host@localhost", realm=REALM),
        GSSAPI(realm=REALM),
    ]:
        offset = sshd.log_offset()
        await _logon_forward_logoff(_tunnel(sshd, kerberos, [credential]))
        sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user}")


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_unknown_spn_is_skipped(sshd: Sshd, kerberos: Kerberos, logged: list[str]) -> None:
    """The KDC does not know the SPN: no request is sent, and the reason is logged."""
    offset = sshd.log_offset()
    tunnel = _tunnel(sshd, kerberos, [GSSAPI(spn="host@nowhere.invalid")])
    with pytest.raises(AuthenticationError, match=r"Permission denied \(.*gssapi-with-mic"):
        await tunnel.logon()
    assert any(
        "gssapi-with-mic: no Kerberos ticket for host@nowhere.invalid" in line
        and "not found in Kerberos database" in line
        for line in logged
    ), logged
    assert "method gssapi-with-mic" not in sshd.log_since(offset)


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_spn_sshd_has_no_key_for(sshd: Sshd, kerberos: Kerberos, logged: list[str]) -> None:
    """
    A ticket for a principal the KDC knows but sshd's keytab lacks: sshd refuses it (with
    an error token), and the method fails with Permission denied.
    """
    offset = sshd.log_offset()
    tunnel = _tunnel(sshd, kerberos, [GSSAPI(spn=f"host/elsewhere@{REALM}")])
    with pytest.raises(AuthenticationError, match=r"Permission denied \(.*gssapi-with-mic"):
        await tunnel.logon()
    # sshd 9.2 answers with an error token (a KRB-ERROR), which names the cause.
    assert "gssapi-with-mic: the server's error token: The ticket isn't for us" in logged
    log = sshd.log_since(offset)
    assert "method gssapi-with-mic" in log
    assert "not found in keytab" in log
    assert "Accepted gssapi-with-mic" not in log


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_no_ticket_falls_back_to_publickey(
    sshd: Sshd,
    kerberos: Kerberos,
    logged: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-such-ccache'}")
    offset = sshd.log_offset()
    # Only GSSAPI: skipped cleanly, and the refusal stands.
    with pytest.raises(AuthenticationError, match=r"Permission denied \(.*gssapi-with-mic"):
        await _tunnel(sshd, kerberos, [GSSAPI()]).logon()
    assert any(
        "gssapi-with-mic: no Kerberos ticket for host@localhost" in line
        and "No Kerberos credentials available" in line
        for line in logged
    ), logged
    assert "method gssapi-with-mic" not in sshd.log_since(offset)
    # With a key as well: the key logs on.
    await _logon_forward_logoff(_tunnel(sshd, kerberos, [GSSAPI(), PrivateKey(sshd.key)]))
    log = sshd.wait_for_log(offset, f"Accepted publickey for {kerberos.user}")
    assert "method gssapi-with-mic" not in log


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_alternate_credentials_with_a_password(
    sshd: Sshd,
    kerberos: Kerberos,
    logged: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The reference's amGSSAPIWithMic with SSHPassword: no ticket in any cache, the
    password gets one for the SSH user (or ``principal``), and nothing is written."""
    ccache = tmp_path / "never-written"
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{ccache}")
    offset = sshd.log_offset()
    await _logon_forward_logoff(_tunnel(sshd, kerberos, [GSSAPI(password=PASSWORD)]))
    sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user} from 127.0.0.1")
    principal = f"{kerberos.user}@{REALM}"
    offset = sshd.log_offset()
    await _logon_forward_logoff(
        _tunnel(sshd, kerberos, [GSSAPI(password=PASSWORD, principal=principal)])
    )
    sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user} from 127.0.0.1")
    assert not ccache.exists()
    # A wrong password: skipped with the KDC's reason, never sent to the server.
    offset = sshd.log_offset()
    with pytest.raises(AuthenticationError, match="Permission denied"):
        await _tunnel(sshd, kerberos, [GSSAPI(password="wrong")]).logon()
    # MIT krb5 1.20 says "Decrypt integrity check failed" without preauthentication.
    assert any(
        f"with the password given for {kerberos.user}" in line
        and line.endswith(": Decrypt integrity check failed; trying the next method.")
        for line in logged
    ), [line for line in logged if "gssapi" in line.lower()]
    assert "method gssapi-with-mic" not in sshd.log_since(offset)
    assert "wrong" not in repr(GSSAPI(password="wrong"))
    with pytest.raises(SpecError, match="password"):
        GSSAPI(principal=principal)


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_order(sshd: Sshd, kerberos: Kerberos) -> None:
    auth = [PrivateKey(sshd.key), GSSAPI()]
    # OpenSSH's default order: gssapi-with-mic before publickey, whatever auth= says.
    offset = sshd.log_offset()
    await _logon_forward_logoff(_tunnel(sshd, kerberos, auth))
    log = sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user}")
    assert "method publickey" not in log
    # preferred_authentications reorders it.
    offset = sshd.log_offset()
    preferred = ["publickey", "gssapi-with-mic"]
    await _logon_forward_logoff(_tunnel(sshd, kerberos, auth, preferred_authentications=preferred))
    log = sshd.wait_for_log(offset, f"Accepted publickey for {kerberos.user}")
    assert "method gssapi-with-mic" not in log


@pytest.mark.openssh
@pytest_twisted.ensureDeferred
async def test_not_offered_not_tried(sshd_without_gssapi: Sshd, kerberos: Kerberos) -> None:
    sshd = sshd_without_gssapi
    offset = sshd.log_offset()
    await _logon_forward_logoff(_tunnel(sshd, kerberos, [GSSAPI(), PrivateKey(sshd.key)]))
    log = sshd.wait_for_log(offset, f"Accepted publickey for {kerberos.user}")
    assert "gssapi-with-mic" not in log


# --------------------------------------------------------------------------------------
# The rtunnel command


def _run_cli(sshd: Sshd, kerberos: Kerberos, home: Path, *args: str) -> str:
    """Run rtunnel until it reports the forward, then stop it with SIGTERM; its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(home)
    # The rtunnel under test, whatever checkout an editable install points to.
    source = str(Path(rtunnel.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "rtunnel.cli",
        *["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}"],
        *["-p", str(sshd.server.port), "-R", "0:127.0.0.1:9"],
        *args,
        f"{kerberos.user}@localhost",
    ]
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=home, text=True
    )
    assert process.stderr is not None
    stderr = ""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while "Allocated port" not in stderr and time.monotonic() < deadline:
                if selector.select(timeout=0.5):
                    line = process.stderr.readline()
                    if not line:
                        break
                    stderr += line
        assert "Allocated port" in stderr, stderr
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=15)
        assert process.returncode == 0, stderr + rest
        return stderr + rest
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


@pytest.mark.openssh
@pytest.mark.parametrize(
    ("args", "delegated"),
    [
        (["-o", "GSSAPIAuthentication=yes"], False),
        (["-o", "GSSAPIAuthentication=yes", "-o", "GSSAPIDelegateCredentials=yes"], True),
        (["-K"], True),
    ],
)
def test_cli(
    sshd: Sshd, kerberos: Kerberos, tmp_path: Path, args: list[str], delegated: bool
) -> None:
    offset = sshd.log_offset()
    _run_cli(sshd, kerberos, tmp_path, *args)
    log = sshd.wait_for_log(offset, f"Accepted gssapi-with-mic for {kerberos.user}")
    expected = "Received some client credentials" if delegated else "Got no client credentials"
    assert expected in log


@pytest.mark.openssh
def test_cli_gssapi_off_by_default(sshd: Sshd, kerberos: Kerberos, tmp_path: Path) -> None:
    """As ssh: without GSSAPIAuthentication=yes, a ticket is not used."""
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(sshd.key.toString("openssh"))
    key_file.chmod(0o600)
    offset = sshd.log_offset()
    # -F none: Debian's /etc/ssh/ssh_config says GSSAPIAuthentication yes for every host,
    # and the command reads it as ssh does (issue #14).
    _run_cli(sshd, kerberos, tmp_path, "-F", "none", "-i", str(key_file))
    log = sshd.wait_for_log(offset, f"Accepted publickey for {kerberos.user}")
    assert "method gssapi-with-mic" not in log


# --------------------------------------------------------------------------------------
# Packet by packet, against a GSSAPI acceptor in this process


class _Wire:
    """What UserAuthClient needs of the SSH transport: it records what is sent."""

    sessionID = bytes(range(32))  # noqa: N815 (Conch's name)
    peerExtensions: dict[bytes, bytes] = {}  # noqa: N815

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.disconnected: tuple[int, bytes] | None = None
        self.unimplemented = 0

    def sendPacket(self, number: int, payload: bytes) -> None:  # noqa: N802 (Conch)
        self.sent.append((number, bytes(payload)))

    def sendDisconnect(self, code: int, reason: bytes) -> None:  # noqa: N802 (Conch)
        self.disconnected = (code, reason)

    def sendUnimplemented(self) -> None:  # noqa: N802 (Conch)
        self.unimplemented += 1


class _Connection(SSHService):
    name = b"ssh-connection"


def _request(user: str, method: bytes, data: bytes) -> tuple[int, bytes]:
    return (50, NS(user.encode()) + NS(b"ssh-connection") + NS(method) + data)


async def _client(
    kerberos: Kerberos, *auth: Any, methods: bytes = b"gssapi-with-mic"
) -> tuple[Any, _Wire]:
    """A UserAuthClient that got the server's list of methods and sent its request."""
    from rtunnel.client.auth.userauth import UserAuthClient, load_credentials

    credentials = auth or (GSSAPI(),)
    loaded, passwords = load_credentials(credentials)
    options = UserAuthSettings(credentials=tuple(credentials), host="localhost", reactor=reactor)
    client = UserAuthClient(kerberos.user, _Connection(), loaded, passwords, options)
    wire = _Wire()
    client.transport = wire
    await client.ssh_USERAUTH_FAILURE(NS(methods) + b"\x00")
    return client, wire


def _acceptor() -> Any:
    """sshd's side: accepts with host/localhost's key (KRB5_KTNAME)."""
    gssapi = pytest.importorskip("gssapi")
    return gssapi.SecurityContext(usage="accept", creds=gssapi.Credentials(usage="accept"))


def _string(payload: bytes) -> bytes:
    (length,) = struct.unpack(">L", payload[:4])
    assert len(payload) == 4 + length
    return payload[4:]


KRB5_RESPONSE = NS(der_oid(KRB5_MECH))


@pytest.mark.parametrize("delegate", [False, True])
@pytest_twisted.ensureDeferred
async def test_exchange_and_mic(kerberos: Kerberos, delegate: bool) -> None:
    client, wire = await _client(kerberos, GSSAPI(delegate=delegate))
    assert wire.sent == [_request(kerberos.user, b"gssapi-with-mic", request_data())]
    client.packetReceived(60, KRB5_RESPONSE)
    number, payload = wire.sent[-1]
    assert number == 61
    acceptor = _acceptor()
    reply = acceptor.step(_string(payload))
    assert acceptor.complete
    client.packetReceived(61, NS(reply))
    number, payload = wire.sent[-1]
    assert number == 66
    # The MIC covers RFC 4462 section 3.5's data: checked by GSSAPI itself.
    acceptor.verify_signature(
        mic_data(_Wire.sessionID, kerberos.user.encode(), b"ssh-connection"), _string(payload)
    )
    gssapi = pytest.importorskip("gssapi")
    with pytest.raises(gssapi.exceptions.BadMICError):
        acceptor.verify_signature(
            mic_data(b"other", kerberos.user.encode(), b"x"), _string(payload)
        )
    assert (acceptor.delegated_creds is not None) is delegate
    # After the MIC the server owes SUCCESS or FAILURE: anything else is ignored.
    sent = len(wire.sent)
    for _ in range(100):
        client.packetReceived(61, NS(b"late"))
    assert len(wire.sent) == sent
    assert wire.disconnected is None and wire.unimplemented == 0


def _denied(client: Any, wire: _Wire) -> None:
    """The method was abandoned and, nothing else left, the logon given up."""
    assert wire.disconnected is not None
    assert isinstance(client.failure, AuthenticationError)
    assert str(client.failure).startswith("Permission denied (gssapi-with-mic)")


@pytest.mark.parametrize(
    ("packets", "reason"),
    [
        ([(60, NS(der_oid("1.3.6.1.5.5.2")))], "the server chose mechanism 1.3.6.1.5.5.2"),
        ([(60, b"\x00\x00\x00\x0b\x06\x09")], "malformed message 60"),
        ([(60, NS(b"\x06\x02\x2a"))], "malformed message 60"),
        ([(61, NS(b"token"))], "the server sent a token before choosing"),
        ([(60, KRB5_RESPONSE), (60, KRB5_RESPONSE)], "the server chose a mechanism twice"),
        ([(60, KRB5_RESPONSE), (61, NS(b"\x00" * 65537))], "a token of 65537 bytes"),
        ([(60, KRB5_RESPONSE), (61, NS(b"\x60\x03garbage"))], "gssapi-with-mic failed: "),
        ([(60, KRB5_RESPONSE), (62, b"")], "the server sent message 62"),
        # A flood: given up after 20 messages (the RESPONSE and 19 more).
        ([(60, KRB5_RESPONSE)] + [(64, NS(b"x"))] * 1000, "more than 20 messages"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_broken_server_messages(
    kerberos: Kerberos,
    logged: list[str],
    packets: list[tuple[int, bytes]],
    reason: str,
) -> None:
    client, wire = await _client(kerberos)
    for number, payload in packets:
        client.packetReceived(number, payload)
    assert any(line.startswith("gssapi-with-mic failed: ") and reason in line for line in logged), (
        logged
    )
    _denied(client, wire)


@pytest_twisted.ensureDeferred
async def test_broken_exchange_moves_on_to_the_next_method(
    kerberos: Kerberos, logged: list[str]
) -> None:
    """A new request ends the exchange (RFC 4252 section 5), once, whatever follows."""
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    client, wire = await _client(
        kerberos, GSSAPI(), PrivateKey(key), methods=b"gssapi-with-mic,publickey"
    )
    client.packetReceived(60, KRB5_RESPONSE)
    for _ in range(1000):
        client.packetReceived(64, struct.pack(">LL", 1, 2) + NS(b"try again") + NS(b""))
    requests = [p for n, p in wire.sent if n == 50]
    assert len(requests) == 2
    assert NS(b"publickey") in requests[1]
    assert wire.disconnected is None
    # The RESPONSE and 19 errors; the 20th error ended it.
    assert logged.count("gssapi-with-mic: the server says: try again (major 0x1, minor 0x2)") == 19


@pytest_twisted.ensureDeferred
async def test_error_token_then_failure(kerberos: Kerberos, logged: list[str]) -> None:
    client, wire = await _client(kerberos)
    client.packetReceived(60, KRB5_RESPONSE)
    sent = len(wire.sent)
    # RFC 4462 section 3.9: read the error token, then wait for the FAILURE.
    client.packetReceived(65, NS(b"\x60\x03bad"))
    # Whatever else comes before the FAILURE is ignored.
    client.packetReceived(61, NS(b"\x60\x03more"))
    assert len(wire.sent) == sent and wire.disconnected is None
    assert any(line.startswith("gssapi-with-mic: the server's error token: ") for line in logged)
    await client.ssh_USERAUTH_FAILURE(NS(b"gssapi-with-mic") + b"\x00")
    _denied(client, wire)


@pytest_twisted.ensureDeferred
async def test_each_gssapi_credential_in_turn(kerberos: Kerberos, logged: list[str]) -> None:
    client, wire = await _client(kerberos, GSSAPI(spn="host@nowhere.invalid"), GSSAPI())
    # The first has no ticket (unknown to the KDC), so the second is the one requested.
    assert wire.sent == [_request(kerberos.user, b"gssapi-with-mic", request_data())]
    assert any("no Kerberos ticket for host@nowhere.invalid" in line for line in logged)
    assert client._gss.exchange.target == TargetName("host@localhost", True)
    # Once that fails, gssapi-with-mic has nothing left to try.
    await client.ssh_USERAUTH_FAILURE(NS(b"gssapi-with-mic") + b"\x00")
    _denied(client, wire)
    # The exchange ended with the FAILURE: a late RESPONSE is not answered.
    sent = len(wire.sent)
    client.packetReceived(60, KRB5_RESPONSE)
    assert len(wire.sent) == sent


def _slow_relay(listener: socket.socket, kdc_port: int, delay: float) -> None:
    """Relay Kerberos-over-TCP exchanges (RFC 4120 section 7.2.2: a 4-byte length, then
    the message) to the KDC, answering each ``delay`` seconds late."""

    def read(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # the test closed the listener
        with (
            client,
            socket.create_connection(("127.0.0.1", kdc_port), timeout=10) as kdc,
            contextlib.suppress(OSError),
        ):
            head = read(client, 4)
            kdc.sendall(head + read(client, struct.unpack(">L", head)[0]))
            head = read(kdc, 4)
            reply = head + read(kdc, struct.unpack(">L", head)[0])
            time.sleep(delay)
            client.sendall(reply)


@pytest_twisted.ensureDeferred
async def test_waiting_for_the_kdc_does_not_block_the_reactor(
    kerberos: Kerberos, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The service ticket is fetched in a thread: a slow KDC holds up the method, not
    the reactor (keepalives, other tunnels)."""
    # A TGT without the service ticket, so the KDC must be asked.
    ccache = tmp_path / "ccache"
    kerberos.kdc.kinit(f"{kerberos.user}@{REALM}", PASSWORD, ccache)
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{ccache}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        relay = threading.Thread(
            target=_slow_relay, args=(listener, kerberos.kdc.port, 1.0), daemon=True
        )
        relay.start()
        config = tmp_path / "krb5.conf"
        config.write_text(
            kerberos.kdc.config_path.read_text().replace(
                f"127.0.0.1:{kerberos.kdc.port}", f"127.0.0.1:{listener.getsockname()[1]}"
            )
        )
        monkeypatch.setenv("KRB5_CONFIG", str(config))
        ticks: list[float] = []
        loop = LoopingCall(lambda: ticks.append(time.monotonic()))
        loop.start(0.05)
        try:
            started = time.monotonic()
            _, wire = await _client(kerberos)
            took = time.monotonic() - started
        finally:
            loop.stop()
            listener.shutdown(socket.SHUT_RDWR)
    # The request went out once the ticket came, a second or more later ...
    assert wire.sent == [_request(kerberos.user, b"gssapi-with-mic", request_data())]
    assert took >= 1.0
    # ... and meanwhile the reactor kept running (20 ticks if nothing else ran).
    assert len(ticks) >= 5, ticks
