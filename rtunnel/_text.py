"""
Text that came from the peer, made safe to put in a log line, an event or an exception
message (RELIABILITY.md D15): decoded without failing, control and other non-printable
characters escaped, and the length capped, so that a hostile server cannot forge log lines,
drive a terminal, or fill memory with a megabyte banner. Pure: no I/O.
"""

from __future__ import annotations

__all__ = ["printable"]

#: How much of one peer string is kept by default.
DEFAULT_LIMIT = 256


def printable(value: bytes | str, limit: int = DEFAULT_LIMIT) -> str:
    """
    ``value`` as one line of printable text: bytes decoded as UTF-8 (invalid bytes as
    ``\\xNN``), every non-printable character (``\\r``, ``\\n``, ``\\x1b``, ...) escaped,
    at most ``limit`` characters of the original kept (``...`` marks a cut).
    """
    if isinstance(value, bytes):
        cut = len(value) > limit * 4
        # A UTF-8 character is at most 4 bytes: decode no more than can be shown.
        text = value[: limit * 4].decode("utf-8", "backslashreplace")
    else:
        cut = False
        text = value
    if len(text) > limit:
        text, cut = text[:limit], True
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return text + "..." if cut else text


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
