"""
Repeated warnings, rate-limited and summarised (RELIABILITY.md D18): a server that opens
ten thousand channels nobody asked for must not turn stderr into a flood (it made 662 KB
of warnings before). Pure: the caller says what time it is.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RepeatLimiter"]


@dataclass
class _Window:
    start: float
    shown: int = 0
    suppressed: int = 0
    last: str = ""


class RepeatLimiter:
    """
    Lets at most ``burst`` messages of one kind through per ``period`` seconds and counts
    the rest; once the period is over, :meth:`summaries` gives one line saying how many
    were held back, with the last of them.

    :param burst: messages of one kind shown per period.
    :param period: seconds.
    """

    def __init__(self, burst: int = 5, period: float = 60.0) -> None:
        if burst < 1 or period <= 0:
            raise ValueError("burst must be at least 1 and period positive")
        self.burst = burst
        self.period = period
        self._windows: dict[str, _Window] = {}

    def allow(self, kind: str, message: str, now: float) -> bool:
        """
        Whether to show ``message`` (of ``kind``) now. Call :meth:`summaries` first, so
        that a period that is over is summarised before a new one starts.
        """
        window = self._windows.get(kind)
        if window is None or now - window.start >= self.period:
            window = self._windows[kind] = _Window(now)
        if window.shown < self.burst:
            window.shown += 1
            return True
        window.suppressed += 1
        window.last = message
        return False

    def summaries(self, now: float, *, final: bool = False) -> list[tuple[str, str]]:
        """
        ``(kind, line)`` for each kind whose period is over (every kind when ``final``:
        at the end) and that held messages back; those periods are forgotten.
        """
        lines = []
        for kind, window in list(self._windows.items()):
            if not final and now - window.start < self.period:
                continue
            del self._windows[kind]
            if window.suppressed:
                seconds = min(now - window.start, self.period)
                lines.append(
                    (
                        kind,
                        f"Not shown: {window.suppressed} more like this in {seconds:.0f} s, "
                        f"the last: {window.last}",
                    )
                )
        return lines

    def next_due(self) -> float | None:
        """When the next summary is due (None: nothing held back)."""
        due = [w.start + self.period for w in self._windows.values() if w.suppressed]
        return min(due) if due else None
