"""
Keys for tests: host keys for the test server and client keys for the tests' users.

Key material is generated once per process and per kind and then reused (RSA 2048
generation takes a noticeable fraction of a second; a test suite would pay it per test).
Host keys and client keys live in separate caches so a client key is never also the
server's host key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh.keys import Key

__all__ = ["KeyKind", "client_key", "generate_client_key", "host_key"]

#: The kinds of key the test server and its users can have: Ed25519, ECDSA on NIST P-256
#: and RSA 2048.
KeyKind = Literal["ed25519", "ecdsa", "rsa"]

_KINDS: tuple[str, ...] = get_args(KeyKind)
_cache: dict[tuple[str, str], Key] = {}


def _generate(kind: str) -> Key:
    if kind == "ed25519":
        return Key(ed25519.Ed25519PrivateKey.generate())
    if kind == "ecdsa":
        return Key(ec.generate_private_key(ec.SECP256R1()))
    if kind == "rsa":
        return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    raise ValueError(f"unknown key kind {kind!r}: use one of {', '.join(_KINDS)}")


def _cached(role: str, kind: str) -> Key:
    key = _cache.get((role, kind))
    if key is None:
        key = _cache[role, kind] = _generate(kind)
    return key


def host_key(kind: KeyKind = "ed25519") -> Key:
    """
    The process-wide host private key of one kind.

    :param kind: ``"ed25519"``, ``"ecdsa"`` (P-256) or ``"rsa"`` (2048 bits).
    :return: a private :class:`~twisted.conch.ssh.keys.Key`, the same object on every call.
    """
    return _cached("host", kind)


def client_key(kind: KeyKind = "ed25519") -> Key:
    """
    The process-wide client private key of one kind (never equal to a host key).

    :param kind: ``"ed25519"``, ``"ecdsa"`` (P-256) or ``"rsa"`` (2048 bits).
    :return: a private :class:`~twisted.conch.ssh.keys.Key`; pass ``.public()`` to
        :meth:`~rtunnel.testing.SSHTestServer.add_user`.
    """
    return _cached("client", kind)


def generate_client_key(kind: KeyKind, directory: Path | str) -> Path:
    """
    Write the client key of one kind as OpenSSH files: ``id_<kind>`` (the private key in
    the ``openssh-key-v1`` format, mode 0600, which OpenSSH insists on) and
    ``id_<kind>.pub`` beside it.

    The key material is :func:`client_key`, so every call for one kind in a process
    writes the same key.

    :param kind: ``"ed25519"``, ``"ecdsa"`` (P-256) or ``"rsa"`` (2048 bits).
    :param directory: where to write; created if missing.
    :return: the path of the private key file (for ``ssh -i``).
    """
    key = client_key(kind)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"id_{kind}"
    private = key.toString("openssh", subtype="v1")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    # O_CREAT's mode does not apply to a file that already existed.
    path.chmod(0o600)
    public = key.public().toString("openssh", comment=b"rtunnel-test-" + kind.encode())
    path.with_name(path.name + ".pub").write_bytes(public + b"\n")
    return path
