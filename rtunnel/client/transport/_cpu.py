"""
Whether this machine's processor has AES instructions (x86 AES-NI, the ARMv8 Cryptography
Extensions), which decides the default cipher order (:mod:`rtunnel.client.transport._algorithms`).

With them, opening a 32 KiB AES-GCM packet costs about a third of a ChaCha20-Poly1305 one
(4.6 against 13 µs here), and the tunnel needs about two thirds of the CPU per GiB (0.68
against 1.03 s, ``benchmarks/run.py``); without them, AES is slow and its table lookups leak
timing, so ChaCha20-Poly1305 comes first as in OpenSSH. The same rule as Go's crypto/tls
(``hasAESGCMHardwareSupport``) and BoringSSL's cipher preference.
"""

from __future__ import annotations

import platform

__all__ = ["HAS_AES_INSTRUCTIONS", "aes_instructions"]


def aes_instructions(cpuinfo: str | None, system: str, machine: str) -> bool:
    """
    True when the processor has AES instructions.

    :param cpuinfo: the text of Linux's ``/proc/cpuinfo`` (None where there is none).
    :param system: ``platform.system()``.
    :param machine: ``platform.machine()``.
    """
    if cpuinfo is not None:
        # x86 lists "flags", arm64 "Features"; "aes" is a whole word in both.
        for line in cpuinfo.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                return "aes" in value.split()
        return False
    # Every Apple silicon processor has the ARMv8 Cryptography Extensions.
    return system == "Darwin" and machine == "arm64"


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


#: Read once, when rtunnel is imported.
HAS_AES_INSTRUCTIONS = aes_instructions(_read_cpuinfo(), platform.system(), platform.machine())
