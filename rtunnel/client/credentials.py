"""
Credentials a tunnel logs on with. The objects only describe where a secret is; they are
read when the tunnel logs on, so a missing or unreadable key file is reported then, as an
error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing_extensions import override

__all__ = ["Credential", "Password", "PrivateKeyFile"]


@dataclass(frozen=True)
class PrivateKeyFile:
    """
    Public-key authentication with a private key file (OpenSSH format or PEM).

    :ivar path: the key file.
    :ivar passphrase: the passphrase of an encrypted key, if any.
    """

    path: Path
    passphrase: str | None = None

    def __init__(self, path: str | Path, passphrase: str | None = None) -> None:
        object.__setattr__(self, "path", Path(path).expanduser())
        object.__setattr__(self, "passphrase", passphrase)


@dataclass(frozen=True)
class Password:
    """
    Password authentication.

    :ivar password: the password.
    """

    password: str

    @override
    def __repr__(self) -> str:
        return "Password(<hidden>)"


Credential = PrivateKeyFile | Password
