"""
Reading OpenSSH's logs in tests: waiting for a line sshd's monitor may write just after
the client saw the result, and key exchanges as OpenSSH logs them at debug level
(``ssh -v``, sshd ``LogLevel DEBUG`` and above): kex.c logs "SSH2_MSG_KEXINIT sent",
"SSH2_MSG_KEXINIT received" and "SSH2_MSG_NEWKEYS received" once per exchange, in the
order they happen.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtunnel.testing import OpenSSHServer


def wait_for_log(server: OpenSSHServer, text: str, timeout: float = 5.0) -> str:
    """
    sshd's log once it holds ``text`` (sshd's monitor may write a line just after the
    client saw the result).

    :raises AssertionError: not there after ``timeout`` seconds; the message names the
        text and shows the log's tail.
    """
    deadline = time.monotonic() + timeout
    while True:
        log = server.log_text()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(
                f"sshd's log has no {text!r} after {timeout:g} s; its tail:\n" + server.log_tail(40)
            )
        time.sleep(0.05)


def kex_initiators(log: str) -> list[str]:
    """
    For each key exchange a debug log shows, in order: ``"self"`` if the logging side sent
    its KEXINIT first (it started the exchange, or both did at once), ``"peer"`` if the
    other side's came first.
    """
    exchanges: list[str] = []
    first: str | None = None
    for line in log.splitlines():
        if "SSH2_MSG_KEXINIT sent" in line:
            first = first or "self"
        elif "SSH2_MSG_KEXINIT received" in line:
            first = first or "peer"
        elif "SSH2_MSG_NEWKEYS received" in line and first is not None:
            exchanges.append(first)
            first = None
    return exchanges
