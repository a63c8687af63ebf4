"""
The control socket and ``rtunnel status`` (issue #14), after ``ssh -O check``: a running
rtunnel asked to (``-o ControlSocket=auto|PATH``) listens on a Unix socket that only its
user can open, and ``rtunnel status [--json]`` asks it how its tunnels are.

Where: ``auto`` is ``$XDG_RUNTIME_DIR/rtunnel/PID.sock`` (else ``~/.rtunnel/PID.sock``), in
a directory of mode 0700 that this module creates and checks; the socket itself is 0600.
Anyone who can open the socket can read the status, so a directory others can enter is
refused rather than silently used.

The protocol: one JSON object per line each way. The client sends
``{"command": "status"}``; the server answers ``{"ok": true, "now": T, "pid": N,
"tunnels": [...]}`` (the :class:`~rtunnel.operations.status.TunnelStatus` snapshots as
objects) or ``{"ok": false, "error": "..."}``. The server reads at most 4 KiB per line.

The client side (:func:`query`, :func:`status_main`) is plain blocking sockets: the
command answers in a few milliseconds and needs no reactor.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rtunnel.operations.status import (
    ForwardStatus,
    GroupMember,
    GroupStatus,
    StatusSource,
    TunnelStatus,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUNIX

    class _UnixReactor(IReactorUNIX, IReactorTime):
        """A reactor with Unix sockets and a clock (the real ones are both)."""


__all__ = [
    "ControlError",
    "check_directory",
    "default_directory",
    "format_status",
    "handle_request",
    "listen_control",
    "query",
    "resolve_socket_path",
    "status_from_json",
    "status_main",
    "status_to_json",
]

#: The longest request line the server reads.
MAX_REQUEST = 4096

#: What ``rtunnel status`` prints for ``--help``.
STATUS_USAGE = """\
usage: rtunnel status [--json] [-S control_socket]

Show how the tunnels of a running rtunnel are: for each tunnel its server, state and
since when, reconnects and last error; for each forward its state, listen address,
channels open/total and bytes each way. The running rtunnel must have been started with
-o ControlSocket=auto (or =PATH, then give -S PATH here).

  -S control_socket
            Ask the rtunnel listening on this socket. Default: every rtunnel of yours
            with ControlSocket=auto ($XDG_RUNTIME_DIR/rtunnel/*.sock, else
            ~/.rtunnel/*.sock).
  --json    One JSON object: {"rtunnels": [{"socket": ..., "pid": ..., "now": ...,
            "tunnels": [...]}]}, the fields as docs/operations.md describes.

Exit status: 0 when every rtunnel answered, 255 when none runs or one did not answer.
"""


class ControlError(Exception):
    """The control socket cannot be used: the message says why and what to do."""


# -- where ---------------------------------------------------------------------------


def default_directory(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/rtunnel`` when that is set, else ``~/.rtunnel``."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "rtunnel"
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".rtunnel"


def resolve_socket_path(
    setting: str, *, pid: int | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """
    The path ``-o ControlSocket=setting`` names: None for ``none``, ``DIR/PID.sock`` in
    :func:`default_directory` for ``auto``, else the path given (``~`` expanded).
    """
    if setting.lower() == "none":
        return None
    if setting.lower() == "auto":
        return default_directory(environ) / f"{os.getpid() if pid is None else pid}.sock"
    return Path(os.path.expanduser(setting))


def check_directory(directory: Path, *, create: bool) -> None:
    """
    Make sure only this user can enter ``directory``: create it with mode 0700 when
    ``create`` (and it is missing), and refuse one that another user owns or that group
    or others may enter.

    :raises ControlError: with what is wrong and what to do.
    """
    if create:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ControlError(
                f"cannot create the control socket directory {directory}: {e.strerror}"
            ) from None
    try:
        info = directory.stat()
    except OSError as e:
        raise ControlError(f"control socket directory {directory}: {e.strerror}") from None
    if info.st_uid != os.getuid():
        raise ControlError(
            f"control socket directory {directory} belongs to another user: choose another "
            "path with -o ControlSocket=PATH"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ControlError(
            f"control socket directory {directory} is open to others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run chmod 700 {directory}"
        )


# -- the snapshot as JSON --------------------------------------------------------------


def status_to_json(tunnel: TunnelStatus) -> dict[str, Any]:
    """One tunnel's snapshot as a JSON object (its fields, and ``ready``)."""
    data = asdict(tunnel)
    data["ready"] = tunnel.ready
    # A group's fields (issue #15) only for a group: one server's object is as before.
    if tunnel.group is None:
        del data["group"]
        for forward in data["forwards"]:
            del forward["servers"]
    return data


def status_from_json(data: Mapping[str, Any]) -> TunnelStatus:
    """The snapshot :func:`status_to_json` wrote (``ready`` is computed again)."""
    forwards = tuple(
        ForwardStatus(
            name=str(f["name"]),
            state=str(f["state"]),
            listen=str(f["listen"]),
            allocated_port=None if f["allocated_port"] is None else int(f["allocated_port"]),
            channels_open=int(f["channels_open"]),
            channels_total=int(f["channels_total"]),
            bytes_in=int(f["bytes_in"]),
            bytes_out=int(f["bytes_out"]),
            # Issue #15; absent from an older rtunnel's answer.
            policy=str(f.get("policy", "")),
            refused={str(k): int(v) for k, v in dict(f.get("refused") or {}).items()},
            servers=tuple(str(n) for n in f.get("servers", ())),
        )
        for f in data["forwards"]
    )
    return TunnelStatus(
        name=str(data["name"]),
        server=str(data["server"]),
        state=str(data["state"]),
        since=float(data["since"]),
        reconnects=int(data["reconnects"]),
        key_exchanges=int(data["key_exchanges"]),
        last_error=None if data["last_error"] is None else str(data["last_error"]),
        last_error_time=None if data["last_error_time"] is None else float(data["last_error_time"]),
        forwards=forwards,
        group=_group_from_json(data.get("group")),
    )


def _group_from_json(data: Mapping[str, Any] | None) -> GroupStatus | None:
    if data is None:
        return None
    return GroupStatus(
        mode=str(data["mode"]),
        serving=None if data["serving"] is None else str(data["serving"]),
        ready=bool(data["ready"]),
        members=tuple(
            GroupMember(
                name=str(m["name"]),
                server=str(m["server"]),
                role=str(m["role"]),
                state=str(m["state"]),
                since=float(m["since"]),
                reconnects=int(m["reconnects"]),
                last_error=None if m["last_error"] is None else str(m["last_error"]),
                forwards=tuple(str(n) for n in m["forwards"]),
            )
            for m in data["members"]
        ),
    )


# -- the server --------------------------------------------------------------------------


def handle_request(line: bytes, source: StatusSource, now: float) -> dict[str, Any]:
    """The answer to one request line (pure: the protocol without the socket)."""
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "a request is one JSON object per line"}
    command = request.get("command") if isinstance(request, dict) else None
    if command != "status":
        return {"ok": False, "error": 'unknown command: send {"command": "status"}'}
    return {
        "ok": True,
        "now": now,
        "pid": os.getpid(),
        "tunnels": [status_to_json(t) for t in source.status()],
    }


def listen_control(reactor: _UnixReactor, path: Path, source: StatusSource) -> IListeningPort:
    """
    Listen on the control socket ``path`` (an ``IReactorUNIX``'s ``listenUNIX``): the
    directory checked (created for the default one), a stale socket left by an rtunnel
    that was killed replaced, one that answers refused.

    :return: the listening port (``stopListening()`` removes the socket file).
    :raises ControlError: the directory is not private, or another rtunnel listens there.
    """
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineOnlyReceiver
    from typing_extensions import override

    check_directory(path.parent, create=path.parent == default_directory())
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ControlError(f"{path} exists and is not a socket: remove it or choose another")
        if _answers(path):
            raise ControlError(f"another rtunnel already listens on the control socket {path}")
        path.unlink()

    class _Control(LineOnlyReceiver):
        delimiter = b"\n"
        MAX_LENGTH = MAX_REQUEST

        @override
        def lineReceived(self, line: bytes) -> None:
            answer = handle_request(line, source, reactor.seconds())
            self.sendLine(json.dumps(answer).encode())

        @override
        def lineLengthExceeded(self, line: bytes) -> None:
            self.sendLine(json.dumps({"ok": False, "error": "request too long"}).encode())
            assert self.transport is not None
            self.transport.loseConnection()

    # The socket file is created 0600 (umask), not chmod'ed after bind(): no moment
    # when others could connect, even in a directory given with ControlSocket=PATH.
    old = os.umask(0o177)
    try:
        return reactor.listenUNIX(str(path), Factory.forProtocol(_Control), mode=0o600)
    except OSError as e:
        raise ControlError(f"cannot listen on the control socket {path}: {e}") from None
    finally:
        os.umask(old)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


# -- the client --------------------------------------------------------------------------


def query(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """
    Ask the rtunnel on the control socket ``path`` for its status.

    :return: its answer (``ok`` true).
    :raises ControlError: nothing runs there, or the answer is not one.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no rtunnel running at {path}") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"no rtunnel running at {path} (a socket left behind: remove it)"
            ) from None
        except PermissionError:
            raise ControlError(f"cannot open {path}: permission denied") from None
        except OSError as e:
            raise ControlError(f"cannot open {path}: {e.strerror or e}") from None
        try:
            s.sendall(b'{"command": "status"}\n')
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except OSError as e:
            raise ControlError(f"the rtunnel at {path} did not answer: {e}") from None
    try:
        data = json.loads(answer)
    except ValueError:
        raise ControlError(f"the rtunnel at {path} did not answer") from None
    if not isinstance(data, dict) or not data.get("ok"):
        why = data.get("error") if isinstance(data, dict) else None
        raise ControlError(f"the rtunnel at {path} refused: {why}")
    return data


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_status(tunnels: Sequence[TunnelStatus], now: float) -> str:
    """
    The readable table ``rtunnel status`` prints: a block per tunnel, a row per forward.
    ``now`` is the running rtunnel's clock, for the "for how long".
    """
    lines: list[str] = []
    for t in tunnels:
        lines.append(
            f"{t.name}  {t.server}  {t.state} since {_when(t.since)} "
            f"({_duration(now - t.since)})  reconnects {t.reconnects}"
        )
        if t.last_error is not None and t.last_error_time is not None:
            lines.append(f"  last error {_when(t.last_error_time)}: {t.last_error}")
        if t.group is not None:
            lines.extend(_group_lines(t.group, now))
        rows: list[tuple[str, ...]] = [
            ("FORWARD", "STATE", "LISTEN", "CHANNELS", "BYTES IN", "BYTES OUT")
        ]
        rows += [
            (
                f.name,
                f.state,
                f.listen,
                f"{f.channels_open}/{f.channels_total}",
                str(f.bytes_in),
                str(f.bytes_out),
            )
            for f in t.forwards
        ]
        if t.group is not None:
            # Which servers serve each forward (issue #15).
            rows = [(*rows[0], "ON")] + [
                (*row, ",".join(f.servers) or "-")
                for row, f in zip(rows[1:], t.forwards, strict=True)
            ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [
                row[i].ljust(widths[i]) if i < 3 or i > 5 else row[i].rjust(widths[i])
                for i in range(len(row))
            ]
            lines.append("  " + "  ".join(cells).rstrip())
        for f in t.forwards:
            if f.policy:
                # Issue #15: a line per forward with a policy, under the table.
                refused = ", ".join(f"{k} {v}" for k, v in f.refused.items()) or "none"
                lines.append(f"  {f.name} policy: {f.policy}; refused: {refused}")
    return "\n".join(lines) + ("\n" if lines else "")


def _group_lines(group: GroupStatus, now: float) -> list[str]:
    """A tunnel group's servers, a row each, under its tunnel's line."""
    serving = f", serving {group.serving}" if group.serving is not None else ""
    lines = [f"  group {group.mode}{serving}, {'ready' if group.ready else 'not ready'}"]
    rows = [("SERVER", "ADDRESS", "ROLE", "STATE", "FOR")]
    rows += [(m.name, m.server, m.role, m.state, _duration(now - m.since)) for m in group.members]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append(
            "    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return lines


def status_main(
    argv: Sequence[str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """``rtunnel status [--json] [-S PATH]``; the exit status."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    as_json = False
    paths: list[Path] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--json":
            as_json = True
        elif arg in ("-h", "--help"):
            out.write(STATUS_USAGE)
            return 0
        elif arg == "-S" or arg.startswith("-S"):
            value = arg[2:] or (args.pop(0) if args else "")
            if not value:
                err.write("rtunnel status: option requires an argument -- S\n")
                return 255
            paths.append(Path(os.path.expanduser(value)))
        else:
            err.write(f"rtunnel status: unexpected argument {arg!r}\n{STATUS_USAGE}")
            return 255
    if not paths:
        directory = default_directory(environ)
        paths = sorted(directory.glob("*.sock")) if directory.is_dir() else []
        if not paths:
            err.write(
                f"rtunnel status: no rtunnel running (no control socket in {directory}; "
                "start rtunnel with -o ControlSocket=auto)\n"
            )
            return 255
    answers: list[dict[str, Any]] = []
    status = 0
    for path in paths:
        try:
            answer = query(path)
        except ControlError as e:
            err.write(f"rtunnel status: {e}\n")
            status = 255
            continue
        answer["socket"] = str(path)
        answers.append(answer)
    if as_json:
        shown = [{k: a[k] for k in ("socket", "pid", "now", "tunnels") if k in a} for a in answers]
        out.write(json.dumps({"rtunnels": shown}, indent=2) + "\n")
    else:
        for index, answer in enumerate(answers):
            if len(paths) > 1:
                out.write(
                    ("\n" if index else "") + f"rtunnel {answer.get('pid')} ({answer['socket']})\n"
                )
            tunnels = [status_from_json(t) for t in answer["tunnels"]]
            out.write(format_status(tunnels, float(answer["now"])))
    out.flush()
    return status
