"""
Private key formats Conch does not read: PuTTY's ``.ppk`` (versions 2 and 3) and
PKCS#12 (``.pfx``/``.p12``), and the public key of an encrypted key file read without
its passphrase. Pure: bytes in, ``cryptography`` key objects out.

PPK is documented in the PuTTY manual, appendix C ("PPK file format"): a text file with
the public key in clear and the private key encrypted with AES-256-CBC under a key
derived from the passphrase (version 2: SHA-1; version 3: Argon2), both covered by a MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "KeyFormatError",
    "PassphraseNeeded",
    "WrongPassphrase",
    "is_pkcs12",
    "is_ppk",
    "load_pkcs12",
    "load_ppk",
    "public_blob",
]

PrivateKeyObject = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyFormatError(ValueError):
    """The data is not a key in the format it claims, or holds a key rtunnel cannot use."""


class PassphraseNeeded(KeyFormatError):
    """The key is encrypted and no passphrase was given."""


class WrongPassphrase(KeyFormatError):
    """The passphrase given does not decrypt the key."""


_CURVES: dict[bytes, ec.EllipticCurve] = {
    b"nistp256": ec.SECP256R1(),
    b"nistp384": ec.SECP384R1(),
    b"nistp521": ec.SECP521R1(),
}


class _Reader:
    """RFC 4251 section 5 fields, read in order; running out is a KeyFormatError."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    def string(self) -> bytes:
        if self._offset + 4 > len(self._data):
            raise KeyFormatError(f"{self._what} is truncated")
        (size,) = struct.unpack_from(">L", self._data, self._offset)
        start = self._offset + 4
        if start + size > len(self._data):
            raise KeyFormatError(f"{self._what} is truncated")
        self._offset = start + size
        return self._data[start : start + size]

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)

    def uint32(self) -> int:
        if self._offset + 4 > len(self._data):
            raise KeyFormatError(f"{self._what} is truncated")
        (value,) = struct.unpack_from(">L", self._data, self._offset)
        self._offset += 4
        return int(value)


def _ns(data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + data


_PPK_ALGORITHMS = frozenset(
    {"ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"}
)

# -- PPK ------------------------------------------------------------------------------


def is_ppk(data: bytes) -> bool:
    """Whether ``data`` is a PuTTY private key file."""
    return data.lstrip().startswith(b"PuTTY-User-Key-File-")


def _ppk_fields(data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """The format version, the header fields, and the public and private blobs."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError("PPK file is not text") from None
    # PuTTY writes LF and accepts CR LF and CR (appendix C.2).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fields: dict[str, str] = {}
    blobs: dict[str, bytes] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip():
            continue
        name, sep, value = line.partition(": ")
        if not sep:
            raise KeyFormatError(f"PPK line {index} is not 'Name: value': {line[:40]!r}")
        if name in ("Public-Lines", "Private-Lines"):
            try:
                count = int(value)
            except ValueError:
                raise KeyFormatError(f"PPK {name} is not a number: {value!r}") from None
            chunk = "".join(lines[index : index + count])
            index += count
            try:
                blobs[name] = base64.b64decode(chunk, validate=True)
            except ValueError:
                raise KeyFormatError(f"PPK {name} data is not base64") from None
        else:
            fields[name] = value
    header = next((n for n in fields if n.startswith("PuTTY-User-Key-File-")), None)
    if header is None:
        raise KeyFormatError("not a PPK file")
    version_text = header.removeprefix("PuTTY-User-Key-File-")
    if version_text not in ("2", "3"):
        raise KeyFormatError(
            f"PPK format version {version_text} is not supported (versions 2 and 3 are); "
            "convert the key with puttygen"
        )
    fields["Algorithm"] = fields.pop(header)
    for needed in ("Encryption", "Private-MAC"):
        if needed not in fields:
            raise KeyFormatError(f"PPK file has no {needed} line")
    for needed in ("Public-Lines", "Private-Lines"):
        if needed not in blobs:
            raise KeyFormatError(f"PPK file has no {needed} section")
    return int(version_text), fields, blobs["Public-Lines"], blobs["Private-Lines"]


def _argon2(fields: dict[str, str], passphrase: bytes) -> bytes:
    """PPK 3 (appendix C.5): Argon2 gives 80 bytes: cipher key, IV, MAC key."""
    flavour = fields.get("Key-Derivation", "")
    names = {"Argon2id": "Argon2id", "Argon2i": "Argon2i", "Argon2d": "Argon2d"}
    if flavour not in names:
        raise KeyFormatError(f"PPK key derivation {flavour!r} is not supported")
    try:
        from cryptography.hazmat.primitives.kdf import argon2
    except ImportError:
        argon2 = None  # type: ignore[assignment]
    kdf_class: Any = getattr(argon2, names[flavour], None) if argon2 is not None else None
    if kdf_class is None:
        raise KeyFormatError(
            f"an encrypted PPK version 3 key ({flavour}) needs a newer 'cryptography' "
            "package (Argon2id is in 44 and later, Argon2i/Argon2d later still): upgrade "
            "it, or convert the key with puttygen (e.g. to OpenSSH format)"
        )
    try:
        memory = int(fields["Argon2-Memory"])
        passes = int(fields["Argon2-Passes"])
        lanes = int(fields["Argon2-Parallelism"])
        salt = bytes.fromhex(fields["Argon2-Salt"])
    except (KeyError, ValueError) as e:
        raise KeyFormatError(f"PPK Argon2 parameters are missing or malformed ({e})") from None
    kdf = kdf_class(salt=salt, length=80, iterations=passes, lanes=lanes, memory_cost=memory)
    derived: bytes = kdf.derive(passphrase)
    return derived


def _ppk_keys(
    version: int, fields: dict[str, str], passphrase: bytes | None
) -> tuple[bytes | None, bytes | None, bytes]:
    """(cipher key, IV, MAC key) for the file's encryption and version."""
    encryption = fields["Encryption"]
    if encryption == "none":
        if version == 2:
            return None, None, hashlib.sha1(b"putty-private-key-file-mac-key").digest()
        return None, None, b""
    if encryption != "aes256-cbc":
        raise KeyFormatError(f"PPK encryption {encryption!r} is not supported")
    if passphrase is None:
        raise PassphraseNeeded("PPK key is encrypted")
    if version == 2:
        # Appendix C.4: two SHA-1 hashes of a counter and the passphrase; IV zero.
        key = (
            hashlib.sha1(b"\0\0\0\0" + passphrase).digest()
            + hashlib.sha1(b"\0\0\0\1" + passphrase).digest()
        )[:32]
        mac_key = hashlib.sha1(b"putty-private-key-file-mac-key" + passphrase).digest()
        return key, bytes(16), mac_key
    derived = _argon2(fields, passphrase)
    return derived[:32], derived[32:48], derived[48:]


def load_ppk(data: bytes, passphrase: bytes | None) -> PrivateKeyObject:
    """
    The private key of a PPK file (versions 2 and 3).

    :raises PassphraseNeeded: encrypted and no passphrase given.
    :raises WrongPassphrase: the MAC does not match after decrypting with it.
    :raises KeyFormatError: anything else wrong, in words.
    """
    version, fields, public, private = _ppk_fields(data)
    algorithm = fields["Algorithm"]
    if algorithm not in _PPK_ALGORITHMS:
        # Said before asking for a passphrase that could not help.
        raise KeyFormatError(
            f"PPK key type {algorithm} is not supported (rtunnel uses RSA, ECDSA and Ed25519 keys)"
        )
    cipher_key, iv, mac_key = _ppk_keys(version, fields, passphrase)
    if cipher_key is not None and iv is not None:
        if len(private) % 16:
            raise KeyFormatError("PPK private data is not a whole number of AES blocks")
        decryptor = Cipher(algorithms.AES(cipher_key), modes.CBC(iv)).decryptor()
        private = decryptor.update(private) + decryptor.finalize()
    mac_data = (
        _ns(algorithm.encode())
        + _ns(fields["Encryption"].encode())
        + _ns(fields.get("Comment", "").encode())
        + _ns(public)
        + _ns(private)
    )
    digest = hashlib.sha1 if version == 2 else hashlib.sha256
    mac = hmac.new(mac_key, mac_data, digest).hexdigest()
    if not hmac.compare_digest(mac, fields["Private-MAC"].strip().lower()):
        if cipher_key is not None:
            raise WrongPassphrase("incorrect passphrase")
        raise KeyFormatError("PPK file is corrupt (its Private-MAC does not match)")
    return _ppk_private_key(algorithm, public, private)


def _ppk_private_key(algorithm: str, public: bytes, private: bytes) -> PrivateKeyObject:
    pub = _Reader(public, "PPK public key")
    kind = pub.string().decode("ascii", "replace")
    if kind != algorithm:
        raise KeyFormatError(f"PPK public key is {kind}, header says {algorithm}")
    priv = _Reader(private, "PPK private key")
    if kind == "ssh-rsa":
        e, n = pub.mpint(), pub.mpint()
        d, p, q, iqmp = priv.mpint(), priv.mpint(), priv.mpint(), priv.mpint()
        if p * q != n:
            raise KeyFormatError("PPK RSA key is inconsistent (p*q != n)")
        numbers = rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), iqmp, rsa.RSAPublicNumbers(e, n)
        )
        return numbers.private_key()
    if kind.startswith("ecdsa-sha2-"):
        curve = _CURVES.get(pub.string())
        if curve is None:
            raise KeyFormatError(f"PPK {kind} key is on a curve rtunnel does not know")
        point = pub.string()
        ec_key = ec.derive_private_key(priv.mpint(), curve)
        if (
            ec_key.public_key().public_numbers()
            != ec.EllipticCurvePublicKey.from_encoded_point(curve, point).public_numbers()
        ):
            raise KeyFormatError("PPK ECDSA private key does not match its public key")
        return ec_key
    if kind == "ssh-ed25519":
        public_bytes = pub.string()
        ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(priv.string())
        if ed_key.public_key().public_bytes_raw() != public_bytes:
            raise KeyFormatError("PPK Ed25519 private key does not match its public key")
        return ed_key
    raise KeyFormatError(
        f"PPK key type {kind} is not supported (rtunnel uses RSA, ECDSA and Ed25519 keys)"
    )


# -- PKCS#12 --------------------------------------------------------------------------

# PFX (RFC 7292 section 4): SEQUENCE { version INTEGER 3, authSafe ContentInfo with the
# PKCS#7 data or signedData OID (1.2.840.113549.1.7.1/2), macData }.
_PKCS7_OID_PREFIX = bytes.fromhex("06092a864886f70d0107")


def is_pkcs12(data: bytes) -> bool:
    """Whether ``data`` looks like a DER PKCS#12 (PFX) file."""
    head = data[:40]
    return head[:1] == b"\x30" and b"\x02\x01\x03\x30" in head and _PKCS7_OID_PREFIX in head


def load_pkcs12(data: bytes, passphrase: bytes | None) -> PrivateKeyObject:
    """
    The private key of a PKCS#12 file (its certificates are not used: OpenSSH servers
    take no X.509 user certificates).

    :raises PassphraseNeeded: it does not open without a passphrase.
    :raises WrongPassphrase: it does not open with the one given.
    :raises KeyFormatError: no private key in it, or one of a kind rtunnel cannot use.
    """
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        if passphrase is None:
            try:
                key, _cert, _others = pkcs12.load_key_and_certificates(data, None)
            except ValueError:
                # Some tools protect "no password" with the empty one.
                key, _cert, _others = pkcs12.load_key_and_certificates(data, b"")
        else:
            key, _cert, _others = pkcs12.load_key_and_certificates(data, passphrase)
    except ValueError:
        if passphrase is None:
            raise PassphraseNeeded("PKCS#12 file is protected by a password") from None
        raise WrongPassphrase("incorrect passphrase (or not a PKCS#12 file)") from None
    if key is None:
        raise KeyFormatError("the PKCS#12 file holds no private key, only certificates")
    if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        return key
    raise KeyFormatError(
        f"the PKCS#12 file holds a {type(key).__name__.removeprefix('_')} key; rtunnel "
        "uses RSA, ECDSA (P-256/384/521) and Ed25519 keys"
    )


# -- public keys without the passphrase -------------------------------------------------


def public_blob(data: bytes) -> bytes | None:
    """
    The public key (wire form) stored in clear in a private key file: PPK's public lines,
    or the first public key of OpenSSH's ``openssh-key-v1`` format (PROTOCOL.key). None
    for other formats (PEM encrypts all of it).
    """
    try:
        if is_ppk(data):
            return _ppk_fields(data)[2]
        marker = b"-----BEGIN OPENSSH PRIVATE KEY-----"
        if marker not in data:
            return None
        body = data.split(marker, 1)[1].split(b"-----END", 1)[0]
        raw = base64.b64decode(b"".join(body.split()))
        magic = b"openssh-key-v1\0"
        if not raw.startswith(magic):
            return None
        reader = _Reader(raw[len(magic) :], "OpenSSH key")
        reader.string()  # cipher
        reader.string()  # kdf
        reader.string()  # kdf options
        if reader.uint32() < 1:
            return None
        return reader.string()
    except (KeyFormatError, ValueError):
        return None
