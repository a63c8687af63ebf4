"""
Key exchanges as OpenSSH logs them at debug level (``ssh -v``, sshd ``LogLevel DEBUG``
and above): kex.c logs "SSH2_MSG_KEXINIT sent", "SSH2_MSG_KEXINIT received" and
"SSH2_MSG_NEWKEYS received" once per exchange, in the order they happen.
"""

from __future__ import annotations


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
