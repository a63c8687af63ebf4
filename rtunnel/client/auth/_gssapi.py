"""
GSSAPI user authentication, ``gssapi-with-mic`` (RFC 4462 section 3), with Kerberos 5.

The wire pieces (mechanism OIDs in DER, the target name, the data the MIC covers, the
server's error message) are plain functions; :class:`GSSExchange` drives one GSSAPI
security context through python-gssapi (MIT krb5's ``libgssapi_krb5``), imported only when
a :class:`~rtunnel.GSSAPI` credential is used: ``pip install 'rtunnel[gssapi]'``.

The ``ssh-userauth`` client (:mod:`rtunnel.client.auth.userauth`) sends the request, feeds the
server's messages 60-66 to the exchange while this method is in progress, and sends what
comes out.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rtunnel.errors import CredentialError, SpecError

__all__ = [
    "KRB5_MECH",
    "MAX_ROUNDS",
    "MAX_TOKEN",
    "GSSAPIFailure",
    "GSSExchange",
    "TargetName",
    "check_spn",
    "der_oid",
    "load_gssapi",
    "mic_data",
    "parse_der_oid",
    "parse_error",
    "request_data",
    "require_gssapi",
    "target_name",
]

#: Kerberos 5's GSSAPI mechanism (RFC 1964), the only one rtunnel offers, as OpenSSH does.
KRB5_MECH = "1.2.840.113554.1.2.2"

# RFC 4462 section 3: the method-specific messages of gssapi-with-mic.
MSG_USERAUTH_GSSAPI_RESPONSE = 60
MSG_USERAUTH_GSSAPI_TOKEN = 61
MSG_USERAUTH_GSSAPI_EXCHANGE_COMPLETE = 63
MSG_USERAUTH_GSSAPI_ERROR = 64
MSG_USERAUTH_GSSAPI_ERRTOK = 65
MSG_USERAUTH_GSSAPI_MIC = 66

#: How many gssapi-with-mic messages one attempt takes from the server before it is given
#: up: Kerberos needs two (RESPONSE, then the AP-REP token); a server that keeps sending
#: tokens or errors must not keep us going forever.
MAX_ROUNDS = 20

#: The largest token accepted from the server. Kerberos tokens are a few KB; with a
#: Windows PAC up to 48000 bytes (MaxTokenSize), never more than 64 KiB.
MAX_TOKEN = 65536

_INSTALL_HINT = "pip install 'rtunnel[gssapi]'"


class GSSAPIFailure(Exception):
    """GSSAPI refused (no ticket, unknown server principal, a bad token): the message says
    what GSSAPI said."""


def _string(data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + data


def der_oid(dotted: str) -> bytes:
    """
    An object identifier in ASN.1 DER, tag and length included, as RFC 4462 section 3.2
    wants the mechanism OIDs (``06 09 2A 86 48 86 F7 12 01 02 02`` for Kerberos 5).

    :raises ValueError: for what is not a dotted OID.
    """
    try:
        arcs = [int(part) for part in dotted.split(".")]
    except ValueError:
        raise ValueError(f"not an object identifier: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or min(arcs) < 0:
        raise ValueError(f"not an object identifier: {dotted!r}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        # Base 128, most significant group first, the high bit set on all but the last.
        groups = [arc & 0x7F]
        arc >>= 7
        while arc:
            groups.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(groups))
    if len(body) > 127:
        raise ValueError(f"object identifier too long: {dotted!r}")
    return bytes((0x06, len(body))) + bytes(body)


def parse_der_oid(data: bytes) -> str:
    """
    The dotted form of a DER-encoded object identifier (the server's
    ``SSH_MSG_USERAUTH_GSSAPI_RESPONSE``).

    :raises ValueError: when ``data`` is not exactly one well-formed OID.
    """
    if len(data) < 3 or data[0] != 0x06 or data[1] != len(data) - 2 or data[1] > 127:
        raise ValueError("not a DER object identifier")
    body = data[2:]
    if body[-1] & 0x80:
        raise ValueError("truncated DER object identifier")
    arcs: list[int] = []
    value = 0
    start = True
    for byte in body:
        if start and byte == 0x80:
            raise ValueError("non-minimal DER object identifier")
        value = (value << 7) | (byte & 0x7F)
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def request_data(mechanisms: Sequence[str] = (KRB5_MECH,)) -> bytes:
    """
    What follows the method name in the ``gssapi-with-mic`` USERAUTH_REQUEST (RFC 4462
    section 3.2): ``uint32`` count, then each mechanism OID as a ``string`` of its DER.
    """
    return struct.pack(">L", len(mechanisms)) + b"".join(_string(der_oid(m)) for m in mechanisms)


def mic_data(session_id: bytes, user: bytes, service: bytes) -> bytes:
    """
    What the client's MIC covers (RFC 4462 section 3.5): ``string`` session identifier,
    ``byte`` SSH_MSG_USERAUTH_REQUEST (50), ``string`` user name, ``string`` service,
    ``string`` ``"gssapi-with-mic"``.
    """
    return (
        _string(session_id)
        + bytes((50,))
        + _string(user)
        + _string(service)
        + _string(b"gssapi-with-mic")
    )


def parse_error(packet: bytes) -> tuple[int, int, str]:
    """
    ``SSH_MSG_USERAUTH_GSSAPI_ERROR`` (RFC 4462 section 3.8; message number stripped):
    ``uint32`` major status, ``uint32`` minor status, ``string`` message, ``string``
    language tag.

    :return: (major, minor, message); what cannot be read is 0 or empty.
    """
    major, minor = struct.unpack(">LL", packet[:8]) if len(packet) >= 8 else (0, 0)
    message = b""
    if len(packet) >= 12:
        (length,) = struct.unpack(">L", packet[8:12])
        message = packet[12 : 12 + length]
    return major, minor, message.decode("utf-8", "replace")


@dataclass(frozen=True)
class TargetName:
    """
    The GSSAPI name of the SSH server.

    :ivar text: the name.
    :ivar hostbased: True for a host-based service name (``service@host``,
        GSS_C_NT_HOSTBASED_SERVICE, which krb5 turns into ``service/host@<the host's
        realm>``); False for a Kerberos principal name (``service/host@REALM``,
        KRB5_NT_PRINCIPAL_NAME).
    """

    text: str
    hostbased: bool


def check_spn(spn: str) -> None:
    """
    :raises SpecError: unless ``spn`` is ``service@host`` or ``service/host[@REALM]``.
    """
    service, slash, rest = spn.partition("/")
    if slash:
        host = rest.partition("@")[0]
        if service and host and not any(c.isspace() for c in spn):
            return
    else:
        service, at, host = spn.partition("@")
        if at and service and host and not any(c.isspace() for c in spn):
            return
    raise SpecError(
        f"Kerberos SPN {spn!r} is neither a host-based service name (host@gw.example.com) "
        "nor a principal name (host/gw.example.com@REALM)."
    )


def target_name(host: str, spn: str | None = None, realm: str | None = None) -> TargetName:
    """
    The name to ask a ticket for. By default ``host@HOST`` (host-based, as OpenSSH's
    ``ssh_gssapi_import_name``). ``spn`` overrides it: ``service@host`` is host-based,
    ``service/host[@REALM]`` a principal. ``realm`` (the reference's KerberosRealm, for a
    server in another realm than the client's) makes it the principal
    ``service/host@REALM``; a principal ``spn`` that names its realm keeps it.
    """
    if spn is None:
        service, host_part = "host", host
    else:
        check_spn(spn)
        if "/" in spn:
            if realm is not None and "@" not in spn:
                return TargetName(f"{spn}@{realm}", hostbased=False)
            return TargetName(spn, hostbased=False)
        service, _, host_part = spn.partition("@")
    if realm is not None:
        return TargetName(f"{service}/{host_part}@{realm}", hostbased=False)
    return TargetName(f"{service}@{host_part}", hostbased=True)


def require_gssapi() -> None:
    """
    Fail as :func:`load_gssapi` would when python-gssapi is not installed, without
    importing it: a plain start that only may use GSSAPI (Debian's ssh_config turns it on
    for every host) does not pay for the import (about 17 ms, issue #17).

    :raises CredentialError: when it is not installed, saying how to install it.
    """
    import importlib.util

    if importlib.util.find_spec("gssapi") is None:
        load_gssapi()


def load_gssapi() -> Any:
    """
    python-gssapi, imported on first use.

    :raises CredentialError: when it is not installed, saying how to install it.
    """
    try:
        import gssapi
    except ImportError as e:
        raise CredentialError(
            f"GSSAPI authentication needs python-gssapi ({e}): {_INSTALL_HINT} "
            "(it builds against MIT Kerberos: on Debian, apt-get install libkrb5-dev "
            "gcc first)."
        ) from None
    return gssapi


def describe(error: BaseException) -> str:
    """A GSSAPI error as one line: the minor status's text, which names the cause."""
    gen = getattr(error, "gen_message", None)
    text = str(gen()) if callable(gen) else str(error)
    # python-gssapi: "Major (N): <routine error>, Minor (M): <mechanism's reason>".
    major, _, minor = text.partition(", Minor (")
    if minor:
        reason = minor.partition("): ")[2].strip()
        routine = major.partition("): ")[2].strip()
        if reason and reason != "Unknown error":
            return reason
        return routine or text
    return text.strip()


class GSSExchange:
    """
    One GSSAPI security context for ``gssapi-with-mic``, the client side.

    :ivar target: the server's name.
    :ivar delegate: whether to ask for credential delegation (GSS_C_DELEG_FLAG).
    :ivar rounds: the gssapi-with-mic messages taken from the server so far.
    """

    def __init__(
        self,
        target: TargetName,
        delegate: bool,
        principal: str | None = None,
        password: str | None = None,
    ) -> None:
        """
        :param principal: with ``password``: the client principal to get a ticket for,
            instead of using the credentials cache's.
        :param password: that principal's password.
        """
        self.target = target
        self.delegate = delegate
        self.principal = principal
        self._password = password
        self.rounds = 0
        self._gssapi = load_gssapi()
        self._context: Any = None

    @property
    def complete(self) -> bool:
        """Whether the context is established."""
        return self._context is not None and bool(self._context.complete)

    @property
    def delegated(self) -> bool:
        """Whether the established context delegated our credentials to the server."""
        if not self.complete:
            return False
        return bool(self._context.actual_flags & self._gssapi.RequirementFlag.delegate_to_peer)

    def start(self) -> bytes:
        """
        Create the context and its first token. With Kerberos this is where the service
        ticket is fetched from the KDC (blocking: call it from a thread), so a missing or
        expired ticket or an unknown server principal fails here, before anything is sent,
        as in OpenSSH (sshconnect2.c, ``ssh_gssapi_check_mechanism``).

        :raises GSSAPIFailure: with GSSAPI's reason.
        """
        gssapi = self._gssapi
        flags = gssapi.RequirementFlag
        wanted = flags.mutual_authentication | flags.integrity
        if self.delegate:
            wanted |= flags.delegate_to_peer
        kind = (
            gssapi.NameType.hostbased_service
            if self.target.hostbased
            else gssapi.NameType.kerberos_principal
        )
        try:
            name = gssapi.Name(self.target.text, name_type=kind)
            creds = None
            if self._password is not None:
                # The reference's "alternate credentials": a TGT for the principal from its
                # password (MIT's gss_acquire_cred_with_password), in memory only.
                client = gssapi.Name(
                    self.principal or "", name_type=gssapi.NameType.kerberos_principal
                )
                acquired = gssapi.raw.acquire_cred_with_password(
                    client,
                    self._password.encode("utf-8"),
                    usage="initiate",
                    mechs=[gssapi.OID.from_int_seq(KRB5_MECH)],
                )
                creds = gssapi.Credentials(acquired.creds)
            self._context = gssapi.SecurityContext(
                name=name,
                usage="initiate",
                flags=wanted,
                mech=gssapi.OID.from_int_seq(KRB5_MECH),
                creds=creds,
            )
            token = self._context.step()
        except gssapi.exceptions.GSSError as e:
            raise GSSAPIFailure(describe(e)) from None
        return bytes(token or b"")

    def step(self, token: bytes) -> bytes:
        """
        Feed the server's token; return the token to send back (empty: none).

        :raises GSSAPIFailure: with GSSAPI's reason (a bad token, a failed mutual
            authentication), or when the context is already complete.
        """
        if self._context is None or self.complete:
            raise GSSAPIFailure("the server sent a token after the context was established")
        if len(token) > MAX_TOKEN:
            raise GSSAPIFailure(f"the server sent a token of {len(token)} bytes")
        try:
            out = self._context.step(token)
        except self._gssapi.exceptions.GSSError as e:
            raise GSSAPIFailure(describe(e)) from None
        return bytes(out or b"")

    def mic(self, data: bytes) -> bytes:
        """The MIC over ``data`` (:func:`mic_data`), once the context is complete."""
        try:
            return bytes(self._context.get_signature(data))
        except self._gssapi.exceptions.GSSError as e:
            raise GSSAPIFailure(describe(e)) from None
