"""
The command's prompts (``SSH_ASKPASS``, the terminal) through :mod:`rtunnel.blocking`: its
reactor is a private one in a thread of its own, so a prompt must hand its answer back
through the tunnel's reactor, not the global one (which nobody runs here). Issue #17.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from sync_support import options_for, reactor_threads

from rtunnel import ForwardState, PrivateKeyFile
from rtunnel.blocking import Tunnel
from rtunnel.client.auth.askpass import password_source
from rtunnel.testing._openssh import OpenSSHServer


def test_a_key_passphrase_asked_through_askpass_under_rtunnel_blocking(
    tmp_path: Path, openssh_sshd: str
) -> None:
    key = tmp_path / "id_ecdsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "sesame", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    server = OpenSSHServer(
        tmp_path / "sshd",
        authorized_keys=[key.with_name(key.name + ".pub").read_text().strip()],
        sshd_path=openssh_sshd,
    )
    record = tmp_path / "asked"
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{record}'\necho sesame\n")
    askpass.chmod(askpass.stat().st_mode | stat.S_IXUSR)
    source = password_source(
        batch_mode=False,
        environ={"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"},
        tty=False,
    )
    assert source is not None
    server.start()
    try:
        options = options_for(server, key, auth=[PrivateKeyFile(key, passphrase=source)])
        # Before the fix the answer went to the global reactor, which never ran it: the
        # logon waited until this timeout.
        with Tunnel(server.host, server.port, options=options, timeout=20) as tunnel:
            forward = tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", 9)
            assert forward.state is ForwardState.ACTIVE
    finally:
        server.stop()
    assert record.read_text() == f"Enter passphrase for key '{key}': \n"
    assert reactor_threads() == 0
