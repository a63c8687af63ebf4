"""
The waits in tests/support give up and say what they waited for (issue #16: a wait with
no limit hung a new user's first test for ten minutes): ``eventually`` quotes its
condition, ``wait_for_log`` names the text and shows the log's tail.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from openssh_log import wait_for_log
from sockets import eventually


@pytest_twisted.ensureDeferred
async def test_eventually_gives_up_after_its_timeout_quoting_the_condition() -> None:
    things: list[int] = []
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"^not true after 0.2 s: lambda: len\(things\) == 3"):
        await eventually(lambda: len(things) == 3, timeout=0.2)
    # Gave up at the deadline: polled every 0.02 s, with room for a loaded machine.
    assert 0.2 <= time.monotonic() - start < 2.0


@pytest_twisted.ensureDeferred
async def test_eventually_returns_once_the_condition_holds() -> None:
    await eventually(lambda: True, timeout=0)


class _Log:
    """Stands in for OpenSSHServer's log: wait_for_log reads only these two."""

    def __init__(self, text: str) -> None:
        self.text = text

    def log_text(self) -> str:
        return self.text

    def log_tail(self, lines: int) -> str:
        return "\n".join(self.text.splitlines()[-lines:])


def test_wait_for_log_gives_up_naming_the_text_and_showing_the_tail() -> None:
    log = _Log("Server listening on 127.0.0.1 port 2222.\nAccepted publickey for bob\n")
    start = time.monotonic()
    with pytest.raises(AssertionError) as raised:
        wait_for_log(log, "Accepted password for alice", timeout=0.2)  # type: ignore[arg-type]
    assert 0.2 <= time.monotonic() - start < 2.0
    assert str(raised.value) == (
        "sshd's log has no 'Accepted password for alice' after 0.2 s; its tail:\n"
        "Server listening on 127.0.0.1 port 2222.\nAccepted publickey for bob"
    )
    assert wait_for_log(log, "Accepted publickey for bob", timeout=0) is log.text
