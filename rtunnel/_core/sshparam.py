"""
The reference's SSH packet helpers (SetSSHParam, GetSSHParam, GetSSHParamBytes,
EncodePacket, DecodePacket) as pure functions, for custom authentication
(:class:`~rtunnel.CustomAuth`): build a payload field by field, read fields back, and
convert a packet to and from the reference's hex text.

Field types (RFC 4251 section 5 encodings):

====  ==========================================  ========================================
type  on the wire                                 value given / read as text
====  ==========================================  ========================================
s     string (uint32 length + bytes)              text, UTF-8 encoded
sb    string                                      the bytes in hex (``"A1B23C"``)
m     mpint (two's complement, minimal length)    an integer (``"1234"`` or ``"0x4D2"``)
i     uint32                                      an integer
l     uint64                                      an integer
b     byte                                        an integer 0-255
f     boolean (one byte, 0 or 1)                  ``"true"`` or ``"false"``
====  ==========================================  ========================================

Besides the reference's text forms, :func:`set_ssh_param` takes native values (``bytes``
for ``s``/``sb``, ``int`` for the numbers, ``bool`` for ``f``), and
:func:`read_ssh_params` reads several fields as native values at once.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Sequence

from rtunnel.errors import SpecError

__all__ = [
    "FIELD_TYPES",
    "decode_packet",
    "encode_packet",
    "get_ssh_param",
    "get_ssh_param_bytes",
    "read_ssh_params",
    "set_ssh_param",
]

#: The field types the helpers know.
FIELD_TYPES = ("s", "sb", "m", "i", "l", "b", "f")

_INT_BITS = {"i": 32, "l": 64, "b": 8}

SSHParamValue = str | bytes | int | bool


def _check_type(field_type: str) -> str:
    kind = field_type.strip()
    if kind not in FIELD_TYPES:
        raise SpecError(
            f"Unknown SSH field type {field_type!r}: use one of {', '.join(FIELD_TYPES)}."
        )
    return kind


def _integer(kind: str, value: SSHParamValue) -> int:
    if isinstance(value, bool):
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        try:
            # The reference: "0x" prefix for hexadecimal, decimal otherwise.
            negative = text.startswith("-")
            digits = text[1:] if negative else text
            hexadecimal = digits[:2].lower() == "0x"
            number = int(digits[2:], 16) if hexadecimal else int(digits, 10)
            number = -number if negative else number
        except ValueError:
            raise SpecError(f"SSH field type {kind!r} needs an integer, not {text!r}.") from None
    bits = _INT_BITS.get(kind)
    if bits is not None and not 0 <= number < (1 << bits):
        raise SpecError(f"{number} does not fit SSH field type {kind!r} ({bits}-bit unsigned).")
    return number


def _mpint(number: int) -> bytes:
    # RFC 4251 section 5: two's complement, big-endian, no unneeded leading bytes; zero is
    # the empty string.
    if number == 0:
        return b""
    length = (number.bit_length() + 8) // 8  # room for the sign bit
    data = number.to_bytes(length, "big", signed=True)
    # Drop a redundant leading 0x00 / 0xff (to_bytes with the sign bit may add one).
    while len(data) > 1 and (
        (data[0] == 0 and data[1] < 0x80) or (data[0] == 0xFF and data[1] >= 0x80)
    ):
        data = data[1:]
    return data


def _string(data: bytes) -> bytes:
    return struct.pack(">L", len(data)) + data


def _hex_bytes(value: SSHParamValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise SpecError(f"SSH field type 'sb' needs hex text or bytes, not {value!r}.")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise SpecError(
            f"SSH field type 'sb' needs hex text (e.g. 'A1B23C'), not {value!r}."
        ) from None


def set_ssh_param(payload: bytes, field_type: str, value: SSHParamValue) -> bytes:
    """
    ``payload`` with one field added at the end (the reference's SetSSHParam).

    :param payload: what was built so far (``b""`` to start).
    :param field_type: ``s``, ``sb``, ``m``, ``i``, ``l``, ``b`` or ``f`` (see the module).
    :param value: the reference's text form, or a native value.
    :raises SpecError: for an unknown type or a value that does not fit it.
    """
    kind = _check_type(field_type)
    if kind == "s":
        if isinstance(value, bool | int):
            raise SpecError(f"SSH field type 's' needs text, not {value!r}.")
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        return payload + _string(data)
    if kind == "sb":
        return payload + _string(_hex_bytes(value))
    if kind == "f":
        if isinstance(value, bool):
            flag = value
        else:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            word = text.strip().lower()
            if word not in ("true", "false"):
                raise SpecError(f"SSH field type 'f' needs 'true' or 'false', not {text!r}.")
            flag = word == "true"
        return payload + (b"\x01" if flag else b"\x00")
    number = _integer(kind, value)
    if kind == "m":
        return payload + _string(_mpint(number))
    if kind == "b":
        return payload + bytes((number,))
    return payload + struct.pack(">L" if kind == "i" else ">Q", number)


def _field_types(field: str) -> list[str]:
    # The reference: "%s,f" reads an s, then an f, and returns the last; the "%" marks a
    # field list (its named fields are for channel requests, which a reverse tunnel never
    # gets), so it is optional here.
    spec = field.strip().removeprefix("%")
    kinds = [part.strip() for part in spec.split(",")]
    if not spec or any(not part for part in kinds):
        raise SpecError(f"Bad SSH field list {field!r}: give types like '%b,s,s'.")
    return [_check_type(kind) for kind in kinds]


def _read(payload: bytes, offset: int, kind: str, index: int) -> tuple[bytes, int]:
    """The raw bytes of one field at ``offset`` and the offset after it."""
    size = {"i": 4, "l": 8, "b": 1, "f": 1}.get(kind)
    if size is None:
        if offset + 4 > len(payload):
            raise SpecError(
                f"SSH packet too short: field {index + 1} ({kind!r}) needs a 4-byte length at "
                f"offset {offset}; the packet has {len(payload)} bytes."
            )
        (size,) = struct.unpack_from(">L", payload, offset)
        offset += 4
    if offset + size > len(payload):
        raise SpecError(
            f"SSH packet too short: field {index + 1} ({kind!r}) needs {size} bytes at "
            f"offset {offset}; the packet has {len(payload)} bytes."
        )
    return payload[offset : offset + size], offset + size


def _native(kind: str, raw: bytes) -> SSHParamValue:
    if kind == "s":
        return raw.decode("utf-8", "replace")
    if kind == "sb":
        return raw
    if kind == "f":
        return raw != b"\x00"
    if kind == "m":
        return int.from_bytes(raw, "big", signed=True) if raw else 0
    return int.from_bytes(raw, "big")


def read_ssh_params(payload: bytes, field_types: str | Sequence[str]) -> list[SSHParamValue]:
    """
    Read fields from the start of ``payload`` as native values: ``s`` as ``str``, ``sb``
    as ``bytes``, ``m``/``i``/``l``/``b`` as ``int``, ``f`` as ``bool``.

    :param field_types: ``"b,s,f"`` (a leading ``%`` is allowed) or a sequence of types.
    :raises SpecError: for an unknown type or a packet too short for the fields.
    """
    kinds = (
        _field_types(field_types)
        if isinstance(field_types, str)
        else [_check_type(k) for k in field_types]
    )
    values: list[SSHParamValue] = []
    offset = 0
    for index, kind in enumerate(kinds):
        raw, offset = _read(payload, offset, kind, index)
        values.append(_native(kind, raw))
    return values


def _last_field(payload: bytes, field: str) -> tuple[str, bytes]:
    kinds = _field_types(field)
    offset = 0
    raw = b""
    for index, kind in enumerate(kinds):
        raw, offset = _read(payload, offset, kind, index)
    return kinds[-1], raw


def get_ssh_param(payload: bytes, field: str) -> str:
    """
    The last of the fields ``field`` lists, read from the start of ``payload``, in the
    text form :func:`set_ssh_param` takes (the reference's GetSSHParam): e.g.
    ``get_ssh_param(packet, "%b,s")`` is the first string after the message type.

    :raises SpecError: for an unknown type or a packet too short for the fields.
    """
    kind, raw = _last_field(payload, field)
    value = _native(kind, raw)
    if kind == "sb":
        return raw.hex().upper()
    if kind == "f":
        return "true" if value else "false"
    return str(value)


def get_ssh_param_bytes(payload: bytes, field: str) -> bytes:
    """
    Like :func:`get_ssh_param`, but the field's raw bytes (the reference's
    GetSSHParamBytes): a string's contents without its length, an mpint's two's
    complement bytes, a number's big-endian bytes, a boolean's byte.
    """
    return _last_field(payload, field)[1]


def encode_packet(packet: bytes) -> str:
    """A packet as the reference's hex text (EncodePacket): ``b"\\x32\\x00"`` is ``"3200"``."""
    return packet.hex().upper()


def decode_packet(text: str) -> bytes:
    """
    The packet that hex ``text`` stands for (DecodePacket); case and white space do not
    matter.

    :raises SpecError: if ``text`` is not hex.
    """
    try:
        return binascii.unhexlify("".join(text.split()))
    except (binascii.Error, ValueError):
        raise SpecError(f"Not a hex-encoded SSH packet: {text[:40]!r}.") from None
