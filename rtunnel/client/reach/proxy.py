"""
Reaching the SSH server through a proxy: the reference's firewall settings.

- :class:`Proxy` says which proxy (FirewallType, FirewallHost, FirewallPort, FirewallUser,
  FirewallPassword, and FirewallData's extra HTTP headers); :meth:`Proxy.from_url` reads
  one from a URL, :meth:`Proxy.from_environment` from ``ALL_PROXY`` and ``NO_PROXY``
  (FirewallAutoDetect).
- :func:`bypasses` decides whether a host is reached directly (ProxyExceptionsList).
- :func:`proxy_endpoint` is a Twisted client endpoint: it connects to the proxy, runs the
  handshake (:mod:`rtunnel.client.reach._proxywire`), and only then connects the caller's
  protocol, on the same TCP connection.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import unquote, urlsplit

from twisted.internet import error
from twisted.internet.address import HostnameAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IReactorCore,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from rtunnel._core.text import printable
from rtunnel.client.channels.forwarder import connect_failure_text, tcp_endpoint
from rtunnel.client.reach._proxywire import (
    Handshake,
    HandshakeFailed,
    Kind,
    encode_destination_name,
    encode_http_connect,
)
from rtunnel.errors import ProxyAuthenticationError, ProxyError, SpecError

__all__ = ["DEFAULT_PORTS", "KINDS", "Proxy", "ProxyEndpoint", "bypasses", "proxy_endpoint"]

#: The proxy kinds, as the reference's FirewallType values fwTunnel (1), fwSOCKS4 (2),
#: fwSOCKS4A (10) and fwSOCKS5 (3).
KINDS: Final = ("http", "socks4", "socks4a", "socks5")

#: The port used when none is given (the reference sets FirewallPort to these).
DEFAULT_PORTS: Final = {"http": 80, "socks4": 1080, "socks4a": 1080, "socks5": 1080}

#: URL schemes -> kinds. ``socks5h`` (curl: "the proxy resolves the name") is what socks5
#: does here anyway.
_SCHEMES: Final = {
    "http": "http",
    "socks4": "socks4",
    "socks4a": "socks4a",
    "socks5": "socks5",
    "socks5h": "socks5",
}

_SCHEME_LIST = "http://, socks4://, socks4a://, socks5:// or socks5h://"


@dataclass(frozen=True)
class Proxy:
    """
    A proxy to reach the SSH server through.

    :ivar kind: ``"http"`` (an HTTP CONNECT tunnelling proxy), ``"socks4"``, ``"socks4a"``
        or ``"socks5"``.
    :ivar host: the proxy's name or IP address (an IPv6 address without brackets).
    :ivar port: the proxy's port; 0 when constructing means the kind's default (80 for
        HTTP, 1080 for SOCKS), which is what the attribute then holds.
    :ivar user: the user name (SOCKS5, HTTP Basic), or the user id (SOCKS4 and 4A, which
        have no password).
    :ivar password: the password (SOCKS5, HTTP only).
    :ivar headers: extra ``(name, value)`` header fields sent with an HTTP CONNECT (the
        reference's FirewallData); HTTP only.
    :raises rtunnel.errors.SpecError: for an unknown kind, a bad host or port, or
        credentials or headers the kind cannot carry.
    """

    kind: str
    host: str
    port: int = 0
    user: str | None = None
    password: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        kind = self.kind.lower() if isinstance(self.kind, str) else self.kind
        if kind not in KINDS:
            raise SpecError(
                f"unknown proxy kind {self.kind!r}: use 'http', 'socks4', 'socks4a' or 'socks5'"
            )
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "host", _proxy_host(self.host))
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise SpecError(
                f"proxy port must be 1 to 65535 (or 0 for the default, "
                f"{DEFAULT_PORTS[kind]} for {kind}), not {port!r}"
            )
        object.__setattr__(self, "port", port or DEFAULT_PORTS[kind])
        headers = tuple((str(name), str(value)) for name, value in self.headers)
        object.__setattr__(self, "headers", headers)
        self._check_credentials()
        if headers:
            if kind != "http":
                raise SpecError(
                    f"extra headers (FirewallData) are sent only to an HTTP proxy, not {kind}"
                )
            try:
                encode_http_connect("h", 1, headers=headers)
            except ValueError as e:
                raise SpecError(f"proxy header: {e}") from None

    def _check_credentials(self) -> None:
        user, password = self.user, self.password
        if password is not None and user is None:
            raise SpecError("a proxy password needs a user name")
        if user is None:
            return
        if self.kind in ("socks4", "socks4a"):
            if password is not None:
                raise SpecError(
                    f"a {self.kind} proxy takes a user id but no password (SOCKS4 has only a "
                    f"USERID field): use a socks5 or http proxy for a user name and password"
                )
            if "\0" in user:
                raise SpecError("a SOCKS4 user id cannot contain a NUL character")
        elif self.kind == "socks5":
            for what, value in (("user name", user), ("password", password or "")):
                if not 1 <= len(value.encode()) <= 255:
                    raise SpecError(
                        f"a SOCKS5 proxy {what} must be 1 to 255 bytes in UTF-8 (RFC 1929 "
                        f"username/password authentication)"
                    )
        elif ":" in user:
            raise SpecError("an HTTP proxy user name cannot contain ':' (RFC 7617 Basic)")

    @override
    def __repr__(self) -> str:
        # Never the password.
        parts = [f"kind={self.kind!r}", f"host={self.host!r}", f"port={self.port}"]
        if self.user is not None:
            parts.append(f"user={self.user!r}")
        if self.password is not None:
            parts.append("password='***'")
        if self.headers:
            parts.append(f"headers=({len(self.headers)} header(s))")
        return f"Proxy({', '.join(parts)})"

    @property
    def address(self) -> str:
        """``host:port``, an IPv6 address in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """How messages name the proxy: ``"socks5 proxy 127.0.0.1:1080"``."""
        return f"{self.kind} proxy {self.address}"

    @classmethod
    def from_url(cls, text: str, headers: Iterable[tuple[str, str]] = ()) -> Proxy:
        """
        Read a proxy URL: ``SCHEME://[USER[:PASSWORD]@]HOST[:PORT][/]`` with SCHEME
        ``http``, ``socks4``, ``socks4a``, ``socks5`` or ``socks5h`` (the same as
        ``socks5``: the proxy always resolves the SSH server's name); USER and PASSWORD
        percent-decoded; an IPv6 HOST in brackets; PORT defaulting to the kind's.

        :param headers: extra HTTP headers (FirewallData), for an ``http`` URL.
        :raises rtunnel.errors.SpecError: naming what is wrong (the password is never
            repeated in the message).
        """
        shown = _redact(text)
        if not isinstance(text, str) or not text.isprintable() or any(c.isspace() for c in text):
            raise SpecError(f"proxy URL {shown!r} contains spaces or control characters")
        if "://" not in text:
            raise SpecError(
                f"proxy URL {shown!r} has no scheme: write it as {_SCHEME_LIST} "
                f"followed by host:port, e.g. socks5://proxy.example:1080"
            )
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as e:
            raise SpecError(f"proxy URL {shown!r}: {e}") from None
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise SpecError(
                f"proxy URL {shown!r}: HTTPS proxies (TLS to the proxy) are not supported; "
                f"use an http:// proxy (the SSH connection through it is encrypted anyway)"
            )
        kind = _SCHEMES.get(scheme)
        if kind is None:
            raise SpecError(
                f"proxy URL {shown!r}: unsupported scheme {parts.scheme!r}; use {_SCHEME_LIST}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise SpecError(
                f"proxy URL {shown!r}: a proxy URL is only scheme://host:port, with no path, "
                f"query or fragment"
            )
        if not parts.hostname:
            raise SpecError(f"proxy URL {shown!r} has no host")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if user is None and password:
            raise SpecError(f"proxy URL {shown!r}: a password needs a user name")
        if user is None:
            password = None
        try:
            return cls(kind, parts.hostname, port or 0, user, password, tuple(headers))
        except SpecError as e:
            raise SpecError(f"proxy URL {shown!r}: {e}") from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], host: str) -> Proxy | None:
        """
        The proxy the environment names for connecting to ``host`` (the reference's
        FirewallAutoDetect; on Unix the "system settings" are the variables curl reads).

        Exactly this is read, as curl 7.88 reads it:

        - ``all_proxy``, else ``ALL_PROXY``: a proxy URL (see :meth:`from_url`); without a
          scheme, ``http://`` is assumed, as curl does. A variable that is set wins over the
          other spelling even when empty, and empty means no proxy.
        - ``no_proxy``, else ``NO_PROXY``: comma-separated hosts reached directly, matched
          as :func:`bypasses` does.

        ``http_proxy`` / ``https_proxy`` are not read: they name the proxy for HTTP and
        HTTPS URLs only, and an SSH connection is neither.

        :param environ: the environment, e.g. ``os.environ``.
        :param host: the SSH server's host.
        :return: the proxy, or ``None`` for a direct connection.
        :raises rtunnel.errors.SpecError: if the variable holds an unusable URL (the message
            names the variable).
        """
        name = "all_proxy" if "all_proxy" in environ else "ALL_PROXY"
        url = environ.get(name, "").strip()
        if not url:
            return None
        no_proxy = environ.get("no_proxy", environ.get("NO_PROXY", ""))
        if _bypassed(no_proxy.split(","), host):
            return None
        if "://" not in url:
            url = "http://" + url
        try:
            return cls.from_url(url)
        except SpecError as e:
            raise SpecError(f"{name}: {e}") from None


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """
    Extra HTTP headers written as text, one ``Name: value`` per line (CRLF or LF), as the
    reference's FirewallData holds them.

    :raises rtunnel.errors.SpecError: for a line without ``:``.
    """
    headers = []
    for line in re.split(r"\r?\n", text):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise SpecError(f"proxy header line {printable(line, 80)!r} is not 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return tuple(headers)


def bypasses(exceptions: str | Sequence[str], host: str) -> bool:
    """
    Whether ``host`` is reached directly rather than through the proxy (the reference's
    ProxyExceptionsList).

    Each entry (a sequence, or one string separated by ``;``, as the reference's, or
    ``,``) is matched case-insensitively, as curl matches ``NO_PROXY``:

    - ``*`` alone: every host.
    - a name: that name and its subdomains (``example.com`` and ``.example.com`` both
      match ``example.com`` and ``ssh.example.com``, not ``badexample.com``);
    - a name with ``*``, ``?`` or ``[...]``: shell-style wildcards over the whole host
      (``*.example.com``, ``10.0.*``);
    - an IP address (IPv6 with or without brackets): that address, when ``host`` is an IP
      literal (names are not resolved to match);
    - a CIDR block (``10.0.0.0/8``, ``fd00::/8``): the addresses in it.

    A ``:port`` after an entry is ignored.

    :param exceptions: the entries.
    :param host: the SSH server's host name or IP literal.
    """
    if isinstance(exceptions, str):
        exceptions = re.split(r"[;,]", exceptions)
    return _bypassed(exceptions, host)


def _bypassed(entries: Iterable[str], host: str) -> bool:
    target = _normal_host(host)
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(target)
    except ValueError:
        address = None
    return any(_matches(entry, target, address) for entry in entries)


def _matches(
    entry: str, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> bool:
    entry = entry.strip().lower()
    if entry == "*":
        return True
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    entry = entry.rstrip(".")
    if not entry:
        return False
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
        return address is not None and address in network
    if any(c in entry for c in "*?["):
        return fnmatch.fnmatchcase(host, entry)
    try:
        listed = ipaddress.ip_address(entry)
    except ValueError:
        entry = entry.lstrip(".")
        return address is None and (host == entry or host.endswith("." + entry))
    return address is not None and address == listed


def _normal_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def _proxy_host(host: object) -> str:
    if not isinstance(host, str):
        raise SpecError(f"proxy host must be a string, not {host!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not host.isprintable() or any(c.isspace() or c in "/@[]" for c in host):
        raise SpecError(f"proxy host {printable(host, 80)!r} is not a host name or IP address")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SpecError(
                f"proxy host {printable(host, 80)!r} is not a host name or IP address (give the "
                f"port separately, or use Proxy.from_url)"
            ) from None
    return host


def _redact(text: object) -> str:
    # The URL as messages show it: no password, printable, capped.
    if not isinstance(text, str):
        return repr(text)
    scheme, sep, rest = text.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = userinfo.partition(":")[0] + ":***@" + hostport
    return printable(scheme + sep + authority + slash + tail, 200)


# -- the endpoint ----------------------------------------------------------------------------


class _HandshakeProtocol(Protocol):
    """
    The TCP connection to the proxy: runs the :class:`Handshake`, then passes everything
    on to the caller's protocol (:meth:`attach`).

    States: ``HANDSHAKE -> SUCCEEDED -> ATTACHED``, or ``HANDSHAKE -> FAILED``.
    ``SUCCEEDED`` lasts only until :meth:`attach` (bytes arriving then are kept for it).
    """

    def __init__(self, handshake: Handshake) -> None:
        self._handshake = handshake
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self._wrapped: IProtocol | None = None
        self._pending = b""
        self._lost: Failure | None = None
        self.state = "HANDSHAKE"

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._handshake.start())

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        if self.state == "SUCCEEDED":
            self._pending += data
            return
        if self.state != "HANDSHAKE":
            return
        try:
            progress = self._handshake.receive(data)
        except HandshakeFailed as e:
            self._fail(e)
            return
        except Exception as e:  # never raise out of dataReceived
            self._fail(HandshakeFailed(f"could not read its reply ({e!r})", "protocol"))
            return
        if progress.send:
            assert self.transport is not None
            self.transport.write(progress.send)
        if progress.leftover is not None:
            self.state = "SUCCEEDED"
            self.done.callback(progress.leftover)

    @override
    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
            return
        if self.state == "SUCCEEDED":
            self._lost = reason
            return
        if self.state == "HANDSHAKE":
            self.state = "FAILED"
            if reason.check(error.ConnectionDone):
                text = "the proxy closed the connection during the handshake"
            else:
                text = (
                    f"the connection to the proxy was lost during the handshake: "
                    f"{printable(reason.getErrorMessage(), 200)}"
                )
            self.done.errback(HandshakeFailed(text, "protocol"))

    def attach(self, wrapped: IProtocol, leftover: bytes) -> None:
        """
        Connect ``wrapped`` to this TCP connection and give it the bytes that followed the
        proxy's reply.
        """
        assert self.transport is not None
        self._wrapped = wrapped
        self.state = "ATTACHED"
        data, self._pending = leftover + self._pending, b""
        wrapped.makeConnection(self.transport)
        if data:
            wrapped.dataReceived(data)
        if self._lost is not None:
            wrapped.connectionLost(self._lost)

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None and self._lost is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _fail(self, failure: HandshakeFailed) -> None:
        self.state = "FAILED"
        self.abort()
        if not self.done.called:
            self.done.errback(failure)

    def _cancel(self, _: Deferred[bytes]) -> None:
        self.state = "FAILED"
        self.abort()


class _HandshakeFactory(Factory):
    noisy = False  # no "Starting factory <...>" line per connection

    def __init__(self, handshake: Handshake) -> None:
        self.handshake = handshake

    @override
    def buildProtocol(self, addr: IAddress | None) -> _HandshakeProtocol:
        return _HandshakeProtocol(self.handshake)


@implementer(IStreamClientEndpoint)
class ProxyEndpoint:
    """
    A client endpoint that reaches ``host:port`` through a proxy. See :func:`proxy_endpoint`.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        proxy: Proxy,
        host: str,
        port: int,
        timeout: float,
        bind_address: tuple[str, int] | None = None,
        *,
        clock: IReactorTime | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SpecError(f"destination port must be 1 to 65535, not {port!r}")
        if not timeout > 0:
            raise SpecError(f"proxy timeout must be more than 0 seconds, not {timeout!r}")
        if not _is_ip(host) and proxy.kind != "socks4":
            try:
                encode_destination_name(host)
            except ValueError as e:
                raise SpecError(f"cannot ask the {proxy.label} for {host!r}: {e}") from None
        self.reactor = reactor
        self.clock = clock if clock is not None else cast(IReactorTime, reactor)
        self.proxy = proxy
        self.host = host
        self.port = port
        self.timeout = timeout
        self.bind_address = bind_address

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """
        Connect to the proxy, run the handshake, then connect ``protocolFactory``'s protocol.

        :return: a Deferred firing with the protocol once it is connected (after its
            ``makeConnection`` and, if the proxy's reply was followed by bytes, its first
            ``dataReceived``).
        """
        attempt = _Attempt(self)
        connecting = Deferred.fromCoroutine(attempt.run(protocolFactory))
        return connecting.addTimeout(self.timeout, self.clock, onTimeoutCancel=attempt.timed_out)


class _Attempt:
    """One :meth:`ProxyEndpoint.connect`: ``RESOLVE (socks4) -> CONNECT -> HANDSHAKE``."""

    def __init__(self, endpoint: ProxyEndpoint) -> None:
        self.endpoint = endpoint
        self.phase = "CONNECT"

    async def run(self, factory: IProtocolFactory) -> IProtocol:
        ep, proxy = self.endpoint, self.endpoint.proxy
        destination = ep.host
        if proxy.kind == "socks4":
            destination = await self._socks4_address()
        try:
            handshake = Handshake(
                cast(Kind, proxy.kind),
                destination,
                ep.port,
                proxy.user,
                proxy.password,
                proxy.headers,
            )
        except ValueError as e:
            raise ProxyError(f"{proxy.label}: {e}") from None
        tcp = tcp_endpoint(ep.reactor, proxy.host, proxy.port, ep.timeout, ep.bind_address)
        self.phase = "CONNECT"
        try:
            connected = await tcp.connect(_HandshakeFactory(handshake))
        except (CancelledError, error.ConnectingCancelledError):
            raise CancelledError() from None
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            why = connect_failure_text(e)
            raise ProxyError(
                f"connect to {proxy.kind} proxy {proxy.host} port {proxy.port}: {why}"
            ) from None
        protocol = cast(_HandshakeProtocol, connected)
        self.phase = "HANDSHAKE"
        try:
            leftover = await protocol.done
        except HandshakeFailed as e:
            raise self._failure(e) from None
        try:
            wrapped = factory.buildProtocol(HostnameAddress(ep.host.encode(), ep.port))
            if wrapped is None:
                raise error.NoProtocol()
            protocol.attach(wrapped, leftover)
        except BaseException:
            protocol.abort()
            raise
        return wrapped

    async def _socks4_address(self) -> str:
        # SOCKS4 carries only an IPv4 address: resolve the name here (without blocking:
        # IReactorCore.resolve), unless it is a literal already.
        ep, proxy = self.endpoint, self.endpoint.proxy
        try:
            literal = ipaddress.ip_address(ep.host)
        except ValueError:
            pass
        else:
            if literal.version != 4:
                raise ProxyError(
                    f"{proxy.label}: SOCKS4 cannot reach the IPv6 address {ep.host}; use a "
                    f"socks5 (or http) proxy"
                )
            return ep.host
        self.phase = "RESOLVE"
        # Cancelling this (Twisted's ThreadedResolver has no canceller) makes the Deferred
        # swallow the late answer.
        resolving = cast(IReactorCore, ep.reactor).resolve(ep.host)
        try:
            address = await resolving
        except CancelledError:
            raise
        except Exception as e:  # any resolver failure is reported the same
            why = connect_failure_text(e)
            raise ProxyError(
                f"{proxy.label}: could not resolve {ep.host} to an IPv4 address, which "
                f"SOCKS4 needs ({why}); socks4a and socks5 let the proxy resolve it"
            ) from None
        try:
            if ipaddress.ip_address(address).version == 4:
                return address
        except ValueError:
            pass
        raise ProxyError(
            f"{proxy.label}: {ep.host} resolved to {printable(str(address), 64)}, not an IPv4 "
            f"address, which SOCKS4 needs; use socks4a or socks5"
        )

    def _failure(self, e: HandshakeFailed) -> ProxyError:
        ep, proxy = self.endpoint, self.endpoint.proxy
        if e.category == "authentication":
            return ProxyAuthenticationError(f"{proxy.label}: {e.reason}")
        if e.category == "refused":
            return ProxyError(
                f"{proxy.label} would not connect to {ep.host} port {ep.port}: {e.reason}"
            )
        return ProxyError(f"{proxy.label}: {e.reason}")

    def timed_out(self, result: object, timeout: float) -> Failure:
        """The ``onTimeoutCancel`` of the whole attempt: say which phase took too long."""
        ep, proxy = self.endpoint, self.endpoint.proxy
        if self.phase == "RESOLVE":
            text = f"{proxy.label}: could not resolve {ep.host} in {timeout:g} s"
        elif self.phase == "CONNECT":
            text = (
                f"connect to {proxy.kind} proxy {proxy.host} port {proxy.port}: Connection "
                f"timed out (no connection in {timeout:g} s)"
            )
        else:
            text = f"{proxy.label}: the proxy did not answer in {timeout:g} s"
        return Failure(ProxyError(text))


def proxy_endpoint(
    reactor: IReactorTCP,
    proxy: Proxy,
    host: str,
    port: int,
    timeout: float,
    bind_address: tuple[str, int] | None = None,
    *,
    clock: IReactorTime | None = None,
) -> IStreamClientEndpoint:
    """
    A client endpoint that reaches ``host:port`` through ``proxy``.

    ``connect(factory)`` connects to the proxy (from ``bind_address`` if given), runs the
    handshake, and then connects the factory's protocol to the same TCP connection: its
    ``makeConnection``, then ``dataReceived`` with whatever came right after the proxy's
    reply. The Deferred fires with that protocol, or fails with:

    - :class:`~rtunnel.errors.ProxyAuthenticationError`: SOCKS5 credentials refused or
      required, HTTP 407;
    - :class:`~rtunnel.errors.ProxyError`: the proxy unreachable (``connect to socks5 proxy
      H port P: Connection refused``), closing or breaking the protocol during the
      handshake, refusing the destination (with its reason), or not done within
      ``timeout``;
    - :class:`~twisted.internet.defer.CancelledError` when cancelled (the connection is
      aborted).

    A name in ``host`` is sent to SOCKS4A, SOCKS5 and HTTP proxies for them to resolve;
    for SOCKS4, which carries only an IPv4 address, it is resolved here with
    ``reactor.resolve`` (:class:`~twisted.internet.interfaces.IReactorCore`).

    :param reactor: the reactor to connect (and, without ``clock``, time) with.
    :param proxy: the proxy.
    :param host: the destination (the SSH server).
    :param port: the destination port.
    :param timeout: seconds for everything: resolving, the TCP connect and the handshake.
    :param bind_address: the local ``(host, port)`` to connect from.
    :param clock: the clock for ``timeout``; default ``reactor``.
    :raises rtunnel.errors.SpecError: at once, for a destination that cannot be sent (a
        port out of range, a name longer than 255 bytes) or a timeout not above 0.
    """
    return ProxyEndpoint(reactor, proxy, host, port, timeout, bind_address, clock=clock)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
