"""Observer dispatch on its own (rtunnel/_observers.py), as plain function calls."""

from __future__ import annotations

from rtunnel._core.policy import ReconnectPolicy
from rtunnel._model import ReconnectAttempt, TunnelObserver
from rtunnel._observers import Observers


class _Seen(TunnelObserver):
    def __init__(self, cancel: bool = False, fail: bool = False) -> None:
        self.lines: list[tuple[int, str]] = []
        self.attempts: list[ReconnectAttempt] = []
        self.cancel = cancel
        self.fail = fail

    def log(self, level: int, message: str) -> None:
        if self.fail:
            raise RuntimeError("observer bug")
        self.lines.append((level, message))

    def reconnect_attempt(self, attempt: ReconnectAttempt) -> None:
        self.attempts.append(attempt)
        if self.cancel:
            attempt.cancelled = True


def test_an_observer_that_raises_does_not_stop_the_others() -> None:
    level = [2]
    observers = Observers(lambda: level[0])
    broken, good = _Seen(fail=True), _Seen()
    observers.add(broken)
    observers.add(good)
    observers.log(2, "verbose")
    observers.log(3, "debug, above the level")
    level[0] = 3
    observers.log(3, "debug")
    assert good.lines == [(2, "verbose"), (3, "debug")]
    observers.remove(broken)
    assert list(observers) == [good] and len(observers) == 1


def test_next_retry_tells_observers_and_they_may_cancel() -> None:
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=8.0, jitter=0.0, max_retries=3)
    observers = Observers(lambda: 1)
    seen = _Seen()
    observers.add(seen)
    delays = [observers.next_retry(policy, ("h", 22), "ssh", n, OSError("x")) for n in (1, 2, 3)]
    assert delays == [policy.delay(1), policy.delay(2), policy.delay(3)]
    assert [a.retries_remaining for a in seen.attempts] == [2, 1, 0]
    assert observers.next_retry(policy, ("h", 22), "ssh", 4, OSError("x")) is None
    assert len(seen.attempts) == 3  # an exhausted policy tells nobody
    seen.cancel = True
    assert observers.next_retry(policy, ("h", 22), "tunnel", 1, OSError("x"), 7000) is None
    assert seen.attempts[-1].remote_port == 7000


class _Events(TunnelObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def connection_status(self, event: str, status_code: int, description: str) -> None:
        self.seen.append(("status", event, status_code, description))

    def log(self, level: int, message: str) -> None:
        self.seen.append(("log", level, message))

    def disconnected(self, reason: Exception | None) -> None:
        self.seen.append(("disconnected", reason))


def test_a_clean_end_and_a_loss_are_told_in_order() -> None:
    from rtunnel.errors import ConnectionLostError, KeepaliveError

    observers = Observers(lambda: 1)
    events = _Events()
    observers.add(events)
    observers.connection_ended("h port 22", ConnectionLostError("x"), clean=True)
    assert events.seen == [
        ("status", "disconnected", 0, "Logged off from h port 22."),
        ("disconnected", None),
    ]
    events.seen.clear()
    timeout = KeepaliveError("Timeout, server h not responding.")
    observers.connection_ended("h port 22", timeout, clean=False)
    assert events.seen == [
        ("status", "broken", KeepaliveError.code, str(timeout)),
        ("log", 1, f"Connection to h port 22 lost: {timeout}"),
        ("disconnected", timeout),
    ]
    events.seen.clear()
    other = OSError("not an rtunnel error")
    observers.connection_ended("h port 22", other, clean=False)
    assert events.seen[0] == ("status", "broken", ConnectionLostError.code, str(other))
