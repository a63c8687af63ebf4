"""
OpenSSH's ``ssh -N -R`` as the benchmarks run it beside rtunnel: no configuration file,
agent or other keys, the server's host key only, and a failed forward fatal.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol


class _Server(Protocol):
    host: str
    port: int
    user: str
    known_hosts_path: Path


def ssh_reverse_command(server: _Server, key: Path, forward: str, *options: str) -> list[str]:
    """``ssh [options] -N -R forward user@host`` against ``server`` with ``key``."""
    ssh = shutil.which("ssh")
    assert ssh is not None, "ssh is not installed"
    return [
        ssh,
        *options,
        "-N",
        "-F",
        "none",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={server.known_hosts_path}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-p",
        str(server.port),
        "-R",
        forward,
        f"{server.user}@{server.host}",
    ]
