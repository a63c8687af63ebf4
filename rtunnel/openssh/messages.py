"""
The lines ``ssh`` prints that scripts read, word for word, so that a script written
against ``ssh`` keeps working against ``rtunnel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = [
    "HOST_KEY_VERIFICATION_FAILED",
    "format_allocated",
    "format_forward_failure",
    "format_permission_denied",
]

#: sshconnect2.c, verify_host_key_callback: the last line ``ssh`` prints when it refuses
#: a host key.
HOST_KEY_VERIFICATION_FAILED: Final = "Host key verification failed."


def format_allocated(port: int, host: str, host_port: int, path: str | None = None) -> str:
    """
    ``ssh``'s line for a forward the server allocated a port for (ssh.c,
    ``ssh_confirm_remote_forward``: ``"Allocated port %u for remote forward to %s:%d"``;
    the host is printed as given, IPv6 without brackets; a Unix-socket target's path
    followed by ``:-2``, as ssh 9.2 prints it).
    """
    if path is not None:
        # OpenSSH 9.2 prints the path with its internal port for sockets, PORT_STREAMLOCAL
        # (-2): "... to /run/app.sock:-2". Scripts read the line, so it is kept as is.
        return f"Allocated port {port} for remote forward to {path}:-2"
    return f"Allocated port {port} for remote forward to {host}:{host_port}"


def format_forward_failure(listen_port: int, *, fatal: bool, listen_path: str | None = None) -> str:
    """
    ``ssh``'s line for a refused remote forward (ssh.c, ``ssh_confirm_remote_forward``):
    ``Error: ...`` when ``ExitOnForwardFailure`` makes it fatal, ``Warning: ...``
    otherwise. ``listen_port`` is the port asked for (0 when the server was to choose);
    a socket on the server's side is named by its ``listen_path``.
    """
    prefix = "Error" if fatal else "Warning"
    if listen_path is not None:
        return f"{prefix}: remote port forwarding failed for listen path {listen_path}"
    return f"{prefix}: remote port forwarding failed for listen port {listen_port}"


def format_permission_denied(user: str, host: str, methods: Sequence[str]) -> str:
    """
    ``ssh``'s line when authentication failed (sshconnect2.c, ``userauth``:
    ``"%s@%s: Permission denied (%s)."``, the methods comma-separated).
    """
    return f"{user}@{host}: Permission denied ({','.join(methods)})."
