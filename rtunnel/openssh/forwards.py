"""
Remote forwards as ``ssh -R`` and ``-o RemoteForward`` take them (readconf.c,
``parse_forward``): ``[bind_address:]port:host:hostport``, a remote dynamic forward, and
Unix-domain sockets on either side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NamedTuple

from typing_extensions import override

from rtunnel._core.forward_policy import ForwardPolicy
from rtunnel._core.syntax import to_port
from rtunnel.errors import SpecError

__all__ = ["RemoteForwardSpec", "forward_or_reason", "parse_remote_forward"]

# NI_MAXHOST: parse_forward (readconf.c) refuses host names this long or longer.
_NI_MAXHOST: Final = 1025
# isspace() in the C locale: parse_forward skips these before the first field.
_C_WHITESPACE: Final = " \t\n\v\f\r"


# --------------------------------------------------------------------------------------
# Remote forwards: -R [bind_address:]port:host:hostport


@dataclass(frozen=True)
class RemoteForwardSpec:
    """
    One remote forward, as ``ssh -R`` takes it.

    :ivar bind_address: the address string sent in ``tcpip-forward`` (RFC 4254 section
        7.1). ``"localhost"`` when the spec gave none (the server listens on loopback
        only, as OpenSSH asks); ``""`` for all interfaces (written ``*`` or left empty in
        the spec).
    :ivar port: the port the server should listen on; 0 lets the server choose.
    :ivar host: the local host each inbound connection is forwarded to (``"socks"`` for a
        dynamic forward, as ssh names it).
    :ivar host_port: the local port (1-65535; 0 for a dynamic forward).
    :ivar dynamic: ``-R [bind_address:]port`` alone: a remote dynamic (SOCKS) forward.
    :ivar target_path: ``-R [bind_address:]port:/path/to/socket``: a local Unix-domain
        socket as the target (``host`` is then ``""`` and ``host_port`` 0).
    :ivar policy: the forward's policy (issue #15; None: none).
    """

    bind_address: str
    port: int
    host: str
    host_port: int
    dynamic: bool = False
    target_path: str | None = None
    listen_path: str | None = None
    # Issue #15: what the forward lets in (-o ForwardPolicy, a config file's forward
    # table); not part of which forward it is.
    policy: ForwardPolicy | None = field(default=None, compare=False)

    @classmethod
    def unix_target(cls, bind_address: str, port: int, path: str) -> RemoteForwardSpec:
        """A forward to the local Unix-domain socket ``path``."""
        return cls(bind_address, port, "", 0, target_path=path)

    @classmethod
    def unix_listener(
        cls,
        listen_path: str,
        host: str = "",
        host_port: int = 0,
        target_path: str | None = None,
    ) -> RemoteForwardSpec:
        """A forward from the socket ``listen_path`` on the server's side."""
        return cls(
            listen_path, 0, host, host_port, target_path=target_path, listen_path=listen_path
        )

    @classmethod
    def socks(cls, bind_address: str, port: int) -> RemoteForwardSpec:
        """A remote dynamic forward; ssh calls its target ``socks:0``."""
        return cls(bind_address, port, "socks", 0, dynamic=True)

    def __post_init__(self) -> None:
        if self.bind_address == "*":
            # "*" and "" both mean all interfaces (channels.c, channel_rfwd_bind_host);
            # keep one spelling so equal forwards compare equal.
            object.__setattr__(self, "bind_address", "")
        if not 0 <= self.port <= 65535:
            raise SpecError(f"Bad remote forwarding port {self.port} (must be 0-65535)")
        if self.dynamic:
            return
        if self.listen_path is not None and not self.listen_path:
            raise SpecError("Bad remote forward: the listen socket path is empty")
        if self.target_path is not None:
            if not self.target_path:
                raise SpecError("Bad remote forward: the target socket path is empty")
            return
        if not 1 <= self.host_port <= 65535:
            raise SpecError(f"Bad target port {self.host_port} (must be 1-65535)")
        if not self.host:
            raise SpecError("Bad remote forward: the target host is empty")

    def to_spec(self) -> str:
        """
        The spec in ``-R`` syntax, always with the bind address (``*`` for all
        interfaces); :func:`parse_remote_forward` reads it back to an equal object.
        """
        if self.listen_path is not None:
            listen = _quote_path(self.listen_path)
            if self.target_path is not None:
                return f"{listen}:{_quote_path(self.target_path)}"
            return f"{listen}:{_quote_field(self.host)}:{self.host_port}"
        bind = "*" if self.bind_address == "" else _quote_field(self.bind_address)
        if self.dynamic:
            return f"{bind}:{self.port}"
        if self.target_path is not None:
            return f"{bind}:{self.port}:{_quote_path(self.target_path)}"
        return f"{bind}:{self.port}:{_quote_field(self.host)}:{self.host_port}"

    @override
    def __str__(self) -> str:
        return self.to_spec()


def _quote_path(path: str) -> str:
    # A path keeps its "/" unescaped: that is what marks it as one (readconf.c).
    return "".join("\\" + c if c in "\\:" else c for c in path)


def _quote_field(value: str) -> str:
    """
    Write one field so ``parse_fwd_field`` (readconf.c) reads it back unchanged:
    brackets when that is enough (IPv6 addresses), backslash escapes otherwise.
    """
    if ":" in value and "]" not in value and "/" not in value:
        return f"[{value}]"
    out = []
    for index, char in enumerate(value):
        if char in "\\:/" or (index == 0 and char == "[") or (index == 0 and char in _C_WHITESPACE):
            out.append("\\")
        out.append(char)
    return "".join(out)


class _Field(NamedTuple):
    text: str
    is_path: bool


def _split_forward_fields(spec: str) -> list[_Field] | None:
    """
    Split a forwarding spec into at most four fields like OpenSSH's ``parse_forward``
    and ``parse_fwd_field`` (readconf.c):

    - leading C whitespace is skipped;
    - a field in square brackets is taken literally (the ``]`` must end the field);
    - elsewhere a backslash makes the next character literal, and ``:`` ends a field;
    - a ``/`` outside an escape marks the field as a Unix socket path.

    Returns None when the spec is malformed (unmatched bracket, trailing backslash, more
    than four fields).
    """
    rest = spec.lstrip(_C_WHITESPACE)
    fields: list[_Field] = []
    position = 0
    while position < len(rest) and len(fields) < 4:
        if rest[position] == "[":
            end = rest.find("]", position + 1)
            if end == -1:
                return None
            after = end + 1
            if after < len(rest) and rest[after] != ":":
                return None
            content = rest[position + 1 : end]
            fields.append(_Field(content, "/" in content))
            position = after + 1 if after < len(rest) else after
            continue
        chars: list[str] = []
        is_path = False
        while position < len(rest):
            char = rest[position]
            if char == "\\":
                if position + 1 >= len(rest):
                    return None
                chars.append(rest[position + 1])
                position += 2
                continue
            if char == ":":
                position += 1
                break
            if char == "/":
                is_path = True
            chars.append(char)
            position += 1
        fields.append(_Field("".join(chars), is_path))
    if position < len(rest):
        return None  # a fifth field: trailing garbage
    return fields


_REMOTE_SYNTAX: Final = "expected [bind_address:]port:host:hostport"


def _forward_from_fields(fields: list[_Field]) -> RemoteForwardSpec | str:
    """A spec from split fields, or the reason it is not one."""
    if len(fields) in (2, 3) and fields[-1].is_path and not any(f.is_path for f in fields[:-1]):
        # [bind_address:]port:/local/socket (readconf.c, parse_forward, cases 2 and 3).
        path_port = to_port(fields[-2].text)
        if path_port is None:
            return f"bad listen port '{fields[-2].text}'"
        path_bind = fields[0].text if len(fields) == 3 else None
        return RemoteForwardSpec.unix_target(_bind_host(path_bind), path_port, fields[-1].text)
    if fields and fields[0].is_path:
        # /path/on/server:host:hostport or /path/on/server:/local/socket (readconf.c,
        # parse_forward, cases 3 and 2).
        if len(fields) == 2 and fields[1].is_path:
            return RemoteForwardSpec.unix_listener(fields[0].text, target_path=fields[1].text)
        if len(fields) == 3 and not fields[1].is_path and not fields[2].is_path:
            socket_port = to_port(fields[2].text)
            if socket_port is None or socket_port == 0:
                return f"bad target port '{fields[2].text}'"
            if not fields[1].text:
                return "missing target host"
            return RemoteForwardSpec.unix_listener(fields[0].text, fields[1].text, socket_port)
        return "expected /path/on/server:host:hostport or /path/on/server:/local/socket"
    if any(f.is_path for f in fields):
        return _REMOTE_SYNTAX
    if len(fields) in (1, 2):
        # ssh -R [bind_address:]port alone is a remote dynamic (SOCKS) forward (OpenSSH
        # 7.6; ssh.c tries parse_forward with dynamicfwd=1 after dynamicfwd=0 fails).
        listen_field = fields[-1]
        dyn_port = to_port(listen_field.text)
        if dyn_port is None:
            return f"bad listen port '{listen_field.text}'"
        dyn_bind = fields[0].text if len(fields) == 2 else None
        if dyn_bind is not None and len(dyn_bind) >= _NI_MAXHOST:
            return "host name too long"
        return RemoteForwardSpec.socks(_bind_host(dyn_bind), dyn_port)
    if len(fields) == 3:
        bind: str | None = None
        listen, host, host_port = fields
    elif len(fields) == 4:
        bind_field, listen, host, host_port = fields
        bind = bind_field.text
    else:
        return _REMOTE_SYNTAX
    port = to_port(listen.text)
    if port is None:
        return f"bad listen port '{listen.text}'"
    target_port = to_port(host_port.text)
    if target_port is None or target_port == 0:
        return f"bad target port '{host_port.text}'"
    if not host.text:
        return "missing target host"
    if len(host.text) >= _NI_MAXHOST or (bind is not None and len(bind) >= _NI_MAXHOST):
        return "host name too long"
    return RemoteForwardSpec(_bind_host(bind), port, host.text, target_port)


def forward_or_reason(spec: str) -> RemoteForwardSpec | str:
    """
    The forward ``spec`` describes in OpenSSH's syntax, or the reason it describes none
    (for the caller's message: ``-R`` and ``-o RemoteForward`` say it differently).
    """
    fields = _split_forward_fields(spec)
    return _REMOTE_SYNTAX if fields is None else _forward_from_fields(fields)


def _bind_host(listen_host: str | None) -> str:
    """
    The address sent in ``tcpip-forward``, as OpenSSH's ``channel_rfwd_bind_host``
    (channels.c) picks it: ``localhost`` when none was given (so an ``sshd`` with
    ``GatewayPorts clientspecified`` listens on loopback only), ``""`` (all interfaces)
    for ``*`` or an empty field.
    """
    if listen_host is None:
        return "localhost"
    if listen_host in ("", "*"):
        return ""
    return listen_host


def parse_remote_forward(spec: str) -> RemoteForwardSpec:
    """
    Parse an ``ssh -R`` spec: ``[bind_address:]port:host:hostport``, or
    ``[bind_address:]port`` alone for a remote dynamic (SOCKS) forward.

    IPv6 addresses go in square brackets (``[::1]:8080:[::1]:80``); a backslash escapes
    the next character. Port 0 asks the server to choose. OpenSSH's older slash syntax
    (``port/host/hostport``) is not accepted: since OpenSSH 6.7 a ``/`` marks a
    Unix-domain socket path, which rtunnel does not forward.

    :raises SpecError: ``Bad remote forwarding specification '<spec>': <reason>``; the
        part before the colon is ``ssh``'s own line (ssh.c, case 'R').
    """
    result = forward_or_reason(spec)
    if isinstance(result, str):
        raise SpecError(f"Bad remote forwarding specification '{spec}': {result}")
    return result
