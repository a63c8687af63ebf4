"""
JSON-lines logs (issue #14, ``-o LogFormat=json``): one object per event, with ``time``
(ISO 8601, UTC), ``level`` (twisted.logger's names: ``debug``, ``info``, ``warn``,
``error``, ``critical``), ``tunnel`` and ``message``; ``error`` too when the event carries
a failure (its message; the traceback only when asked for). For journald, Loki, or
anything that reads one JSON object per line.

The message is the one the text format shows, escaped the same way
(:func:`rtunnel._core.text.printable_lines`) and capped: the sources cap what the server
sent; this caps the whole message. Only the message is written, never the event's other
fields, so nothing a log call carries beside its text (an options object, a credential)
can reach the output.
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from rtunnel._core.text import printable_lines

__all__ = ["MAX_MESSAGE", "JsonLinesObserver", "json_line"]

#: The longest message written (characters, after escaping).
MAX_MESSAGE = 8192

#: ssh's log levels (the command's own messages) as twisted.logger's.
SSH_LEVELS = {
    "FATAL": LogLevel.critical,
    "ERROR": LogLevel.error,
    "INFO": LogLevel.info,
    "VERBOSE": LogLevel.info,
    "DEBUG1": LogLevel.debug,
    "DEBUG2": LogLevel.debug,
    "DEBUG3": LogLevel.debug,
}


def json_line(
    when: float,
    level: LogLevel,
    tunnel: str | None,
    message: str,
    error: str | None = None,
) -> str:
    """One log line: the JSON object and its newline."""
    record: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
        + f".{int(when % 1 * 1000):03d}Z",
        "level": level.name,
        "tunnel": tunnel,
        "message": printable_lines(message, MAX_MESSAGE, None),
    }
    if error is not None:
        record["error"] = printable_lines(error, MAX_MESSAGE, None)
    return json.dumps(record, ensure_ascii=False) + "\n"


@implementer(ILogObserver)
class JsonLinesObserver:
    """
    Writes each ``twisted.logger`` event as a JSON line.

    :param stream: where.
    :param tunnel: the ``tunnel`` field for events that do not name one (a ``tunnel``
        key in the event wins): the command's single tunnel.
    :param tracebacks: add a failure's traceback to ``error``.
    """

    def __init__(self, stream: TextIO, tunnel: str | None = None, tracebacks: bool = False) -> None:
        self._stream = stream
        self._tunnel = tunnel
        self._tracebacks = tracebacks

    def __call__(self, event: LogEvent) -> None:
        failure = event.get("log_failure")
        error = None
        if isinstance(failure, Failure):
            error = failure.getTraceback() if self._tracebacks else failure.getErrorMessage()
        tunnel = event.get("tunnel", self._tunnel)
        level = event.get("log_level")
        self.write(
            float(event.get("log_time") or time.time()),
            level if isinstance(level, LogLevel) else LogLevel.info,
            str(tunnel) if tunnel is not None else None,
            formatEvent(event),
            error,
        )

    def write(
        self,
        when: float,
        level: LogLevel,
        tunnel: str | None,
        message: str,
        error: str | None = None,
    ) -> None:
        """Write one line now (the command's own messages come this way too); the
        observer's tunnel when ``tunnel`` is None."""
        tunnel = tunnel if tunnel is not None else self._tunnel
        self._stream.write(json_line(when, level, tunnel, message, error))
        self._stream.flush()
