"""
Runs the ``rtunnel`` command many times quickly, for property tests over its arguments
(tests/test_hardening.py): imported once, then forked per run, each run the real
``rtunnel.cli.main`` with its stderr and stdout captured and its exit status taken.

Reads one JSON argument list per line on stdin and writes one JSON line per run:
``{"status": N, "output": "..."}``. Name lookups fail as for an unknown name, so no name
leaves the machine (run it under ``unshare -n`` as well, so no address does either).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any, NoReturn

#: Seconds one run may take before it is killed (and reported as status -9).
RUN_TIMEOUT = 20


def _no_lookup(*args: Any, **kwargs: Any) -> NoReturn:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _run(argv: list[str]) -> dict[str, Any]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the command, once
        os.close(read)
        os.dup2(write, 1)
        os.dup2(write, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.setsid()  # no controlling terminal: nothing can ask for a password
        signal.alarm(RUN_TIMEOUT)
        import rtunnel.cli

        try:
            rtunnel.cli.main(argv)
        except SystemExit as e:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return {
        "status": os.waitstatus_to_exitcode(status),
        "output": b"".join(chunks).decode("utf-8", "backslashreplace"),
    }


def main() -> None:
    socket.getaddrinfo = _no_lookup  # type: ignore[assignment]
    # Imported before the first fork, so each run starts in milliseconds.
    import rtunnel.cli  # noqa: F401

    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
