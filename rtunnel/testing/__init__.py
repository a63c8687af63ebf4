"""
Test helpers for code that uses SSH reverse tunnels: a real in-process SSH server that
implements the server side of remote forwarding, with fault controls (:class:`SSHTestServer`),
a fault-injecting TCP proxy (:class:`FaultProxy`), cached keys, a harness for a real
OpenSSH ``sshd`` (:class:`OpenSSHServer`), and a pytest plugin
(fixtures ``ssh_test_server``, ``ssh_client_key`` and ``ssh_known_hosts``).

The names are imported on first use (PEP 562): pytest imports this package to load the
plugin before pytest-twisted installs its reactor, and Conch's ``userauth`` module
imports the global reactor, which would install the default one too early.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtunnel.testing._certs import certificate_line, make_certificate
    from rtunnel.testing._keys import KeyKind, client_key, generate_client_key, host_key
    from rtunnel.testing._memory import InboundConnection, MemoryPair
    from rtunnel.testing._openssh import OpenSSHServer
    from rtunnel.testing._proxy import FaultProxy
    from rtunnel.testing._waiting import WaitTimeoutError
    from rtunnel.testing.server import ForwardListener, KbdIntPrompt, SSHTestServer

__all__ = [
    "FaultProxy",
    "ForwardListener",
    "InboundConnection",
    "KbdIntPrompt",
    "KeyKind",
    "MemoryPair",
    "OpenSSHServer",
    "SSHTestServer",
    "WaitTimeoutError",
    "certificate_line",
    "client_key",
    "generate_client_key",
    "host_key",
    "make_certificate",
]

_WHERE = {
    "FaultProxy": "rtunnel.testing._proxy",
    "OpenSSHServer": "rtunnel.testing._openssh",
    "ForwardListener": "rtunnel.testing.server",
    "SSHTestServer": "rtunnel.testing.server",
    "KbdIntPrompt": "rtunnel.testing.server",
    "WaitTimeoutError": "rtunnel.testing._waiting",
    "MemoryPair": "rtunnel.testing._memory",
    "InboundConnection": "rtunnel.testing._memory",
    "KeyKind": "rtunnel.testing._keys",
    "client_key": "rtunnel.testing._keys",
    "generate_client_key": "rtunnel.testing._keys",
    "host_key": "rtunnel.testing._keys",
    "certificate_line": "rtunnel.testing._certs",
    "make_certificate": "rtunnel.testing._certs",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
