"""
The soak harness's arithmetic, with no processes or sockets: what ``sshd``'s log says
about key exchanges, what the rekey count should be, which failed transfers a fault
explains, and the checks themselves. Tested as plain functions (``tests/harness/test_soak.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Check",
    "Failure",
    "FaultWindow",
    "KexLog",
    "count_logons",
    "growth",
    "rekey_band",
    "rekey_check",
    "split_failures",
    "verdict_lines",
]

#: What OpenSSH's sshd (checked with Debian's 9.2p1) logs at ``LogLevel DEBUG1`` for every
#: key exchange (kex.c, kex_send_kexinit and kex_input_kexinit). The side that starts an
#: exchange sends its KEXINIT first; the other answers one, so the order of the two lines
#: says who started it. The first exchange of a session is logged with ``[preauth]``
#: (both sides send KEXINIT at once there).
KEXINIT_SENT = "SSH2_MSG_KEXINIT sent"
KEXINIT_RECEIVED = "SSH2_MSG_KEXINIT received"
PREAUTH = "[preauth]"
#: sshd's line for a successful log-on (auth.c, auth_log).
ACCEPTED = "Accepted publickey for "


@dataclass
class KexLog:
    """
    Reads ``sshd``'s log (fed in pieces, as it grows) and counts key exchanges: the first
    one of each session, and the later ones by who started them. Meant for a log of one
    session at a time: the lines carry no process id, so two sessions rekeying at once
    would be mixed up.
    """

    initial: int = 0
    by_client: int = 0
    by_server: int = 0
    _pending: str | None = None
    _partial: str = ""

    @property
    def rekeys(self) -> int:
        """Key exchanges after the first of each session."""
        return self.by_client + self.by_server

    def feed(self, text: str) -> None:
        """More of the log (may end in the middle of a line)."""
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.line(line)

    def line(self, line: str) -> None:
        """One line of the log."""
        if KEXINIT_SENT in line:
            which = "sent"
        elif KEXINIT_RECEIVED in line:
            which = "received"
        else:
            return
        if PREAUTH in line:
            if which == "received":
                self.initial += 1
            return
        if self._pending is None or self._pending == which:
            self._pending = which
            return
        # The second of a pair: whoever's KEXINIT came first started the exchange.
        if self._pending == "sent":
            self.by_server += 1
        else:
            self.by_client += 1
        self._pending = None


def count_logons(log_text: str) -> int:
    """Successful log-ons in an sshd log."""
    return log_text.count(ACCEPTED)


@dataclass(frozen=True)
class Check:
    """One line of the verdict."""

    name: str
    ok: bool
    detail: str = ""


def verdict_lines(checks: Iterable[Check]) -> list[str]:
    """``PASS``/``FAIL`` lines."""
    return [
        f"{'PASS' if c.ok else 'FAIL'}  {c.name}" + (f": {c.detail}" if c.detail else "")
        for c in checks
    ]


def rekey_band(
    nbytes: int, limit: int, early: int = 0, late: int = 0, tolerance: int = 2
) -> tuple[float, float, float]:
    """
    How many rekeys ``nbytes`` in one direction call for: ``nbytes / limit``, and the
    range allowed when each exchange may come up to ``early`` bytes before the limit or
    ``late`` bytes after it (see :func:`rekey_check`), widened by ``tolerance``.

    :return: (bytes / limit, lowest, highest).
    """
    nominal = nbytes / limit
    low = nbytes / (limit + late) - tolerance
    high = nbytes / max(1, limit - early) + tolerance
    return nominal, max(0.0, low), high


def rekey_check(
    tunnel: str,
    limited: str,
    direction: str,
    nbytes: int,
    limit: int,
    rekeys: int,
    client: tuple[int, int],
    server_log: tuple[int, int],
    early: int = 0,
    late: int = 0,
    tolerance: int = 2,
) -> list[Check]:
    """
    The key exchanges of one tunnel whose traffic went mostly one way: ``nbytes`` in that
    direction crossed ``nbytes / limit`` limits, so that many exchanges are due (within
    ``tolerance``), all started by the side (``"client"`` or ``"server"``) whose limit was
    the small one. OpenSSH's rule (packet.c, ssh_packet_need_rekeying) is per direction,
    and an exchange resets both directions' counts, so the echoes that crossed the tunnel
    both ways add to the busy direction's count only.

    Where the side that starts the exchange is the one *sending* the busy direction, it
    stops sending at once and ``early``/``late`` are (nearly) 0. Where it is the one
    *receiving*, the sender goes on until the KEXINIT reaches it, up to what its windows
    allow, and those bytes still count to the old keys: ``late`` is that much.

    :param rekeys: key exchanges after each session's first, by the tunnel's count.
    :param client: of those, the ones the tunnel started and the ones the server started,
        by the tunnel's count.
    :param server_log: rekeys the client started and sshd started, by sshd's log.
    """
    nominal, low, high = rekey_band(nbytes, limit, early, late, tolerance)
    checks = []
    for who, (by_client, by_server) in (("rtunnel", client), ("sshd log", server_log)):
        total = rekeys if who == "rtunnel" else by_client + by_server
        wrong = by_server if limited == "client" else by_client
        checks.append(
            Check(
                f"{tunnel}: key exchanges = {direction} bytes / limit ({who})",
                low <= total <= high,
                f"{total} after the first; {nbytes / 2**20:.1f} MiB / {limit / 2**20:g} MiB "
                f"= {nominal:.1f}, allowed {low:.1f}-{high:.1f}",
            )
        )
        checks.append(
            Check(
                f"{tunnel}: every rekey started by the {limited} ({who})",
                wrong == 0,
                f"{by_client} by the client, {by_server} by the server",
            )
        )
    return checks


@dataclass(frozen=True)
class FaultWindow:
    """From a fault's injection until its forward was back (plus a grace period)."""

    start: float
    end: float


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a transfer."""

    tunnel: str
    kind: str
    start: float
    end: float
    error: str
    corrupted: bool = False


@dataclass
class Split:
    """Failed attempts sorted by what explains them."""

    cut: list[Failure] = field(default_factory=list)
    lost: list[Failure] = field(default_factory=list)
    corrupted: list[Failure] = field(default_factory=list)


def split_failures(failures: Iterable[Failure], windows: Sequence[FaultWindow]) -> Split:
    """
    A failed attempt that overlaps a fault window was cut by the fault (retried, and
    reported as cut); any other is a loss. Wrong bytes are corruption wherever they
    happen: a fault may cut a transfer short, never change what arrives.
    """
    split = Split()
    for failure in failures:
        if failure.corrupted:
            split.corrupted.append(failure)
        elif any(failure.start <= w.end and failure.end >= w.start for w in windows):
            split.cut.append(failure)
        else:
            split.lost.append(failure)
    return split


def growth(baseline: float | None, later: Sequence[float]) -> float:
    """How far the later samples rose above the baseline (0 when none did)."""
    if baseline is None or not later:
        return 0.0
    return max(0.0, max(later) - baseline)
