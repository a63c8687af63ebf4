"""
Text that came from the peer, made safe to put in a log line, an event or an exception
message (RELIABILITY.md D15, D17): decoded without failing, control and other
non-printable characters escaped (ESC, BEL, CR, LF, DEL, the C1 controls, bidirectional
overrides, ...), and the length capped, so that a hostile server or client cannot forge
log lines, drive a terminal, or fill memory with a megabyte banner. Pure: no I/O.

:func:`printable` makes one line of anything; :func:`printable_lines` keeps the line
structure of text that has some (a user-auth banner, keyboard-interactive instructions)
and escapes everything else.
"""

from __future__ import annotations

__all__ = ["BANNER_LIMIT", "BANNER_LINES", "DEFAULT_LIMIT", "printable", "printable_lines"]

#: How much of one peer string is kept by default.
DEFAULT_LIMIT = 256

#: How much of a multi-line text (a banner) is kept: characters, and lines.
BANNER_LIMIT = 4096
BANNER_LINES = 64


def printable(value: bytes | str, limit: int | None = DEFAULT_LIMIT) -> str:
    """
    ``value`` as one line of printable text: bytes decoded as UTF-8 (invalid bytes as
    ``\\xNN``), every non-printable character (``\\r``, ``\\n``, ``\\x1b``, ...) escaped,
    at most ``limit`` characters of the original kept (``...`` marks a cut; None: no cap).
    """
    text, cut = _decode(value, limit)
    if limit is not None and len(text) > limit:
        text, cut = text[:limit], True
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return text + "..." if cut else text


def printable_lines(
    value: bytes | str, limit: int | None = BANNER_LIMIT, max_lines: int | None = BANNER_LINES
) -> str:
    """
    Multi-line ``value`` (a banner) with its line structure kept: split at LF (a CR before
    it goes too), each line escaped as by :func:`printable` (a lone CR included), trailing
    blank lines dropped, and at most ``limit`` characters and ``max_lines`` lines of the
    original kept (``...`` ends the last line kept after a cut; None: no cap).
    """
    text, cut = _decode(value, limit)
    lines = text.rstrip().split("\n")
    if max_lines is not None and len(lines) > max_lines:
        lines, cut = lines[:max_lines], True
    kept: list[str] = []
    left = limit
    for line in lines:
        line = line.removesuffix("\r")
        if left is not None:
            if left <= 0:
                cut = True
                break
            if len(line) > left:
                line, cut = line[:left], True
            left -= len(line) + 1
        kept.append(printable(line, None))
    shown = "\n".join(kept)
    return shown + "..." if cut else shown


def _decode(value: bytes | str, limit: int | None) -> tuple[str, bool]:
    if isinstance(value, str):
        return value, False
    if limit is None:
        return value.decode("utf-8", "backslashreplace"), False
    # A UTF-8 character is at most 4 bytes: decode no more than can be shown.
    return value[: limit * 4].decode("utf-8", "backslashreplace"), len(value) > limit * 4


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{code:02x}")
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
