"""
The command's blocking prompts (askpass program, terminal) run in a thread of their own and
hand the answer back through the reactor the tunnel gives them, never the global one
(issue #17: under rtunnel.blocking and rtunnel.aio the running reactor is a private one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from rtunnel.client.auth.askpass import BlockingPrompt, UserAsk
from rtunnel.client.auth.userauth import _resolve
from rtunnel.errors import CredentialError


class ThreadCalls:
    """A reactor's ``callFromThread``: records each call and the thread it came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], str]] = []
        self.arrived = threading.Event()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:  # noqa: N802 (Twisted)
        self.calls.append((f, args, threading.current_thread().name))
        self.arrived.set()

    def run_calls(self) -> None:
        for f, args, _ in self.calls:
            f(*args)


def test_the_answer_comes_back_through_the_given_reactor() -> None:
    reactor = ThreadCalls()
    asked_in: list[str] = []

    def ask() -> str:
        asked_in.append(threading.current_thread().name)
        return "sesame"

    result = BlockingPrompt(ask, terminal=False).run(reactor)  # type: ignore[arg-type]
    assert reactor.arrived.wait(10)
    assert asked_in == ["rtunnel-prompt"]
    assert len(reactor.calls) == 1 and reactor.calls[0][2] == "rtunnel-prompt"
    answers: list[object] = []
    result.addCallback(answers.append)
    assert answers == []  # not fired from the prompt's thread...
    reactor.run_calls()
    assert answers == ["sesame"]  # ...but when the reactor runs the call


def test_a_failing_prompt_errbacks_through_the_given_reactor() -> None:
    reactor = ThreadCalls()

    def ask() -> str:
        raise OSError("no terminal")

    result = BlockingPrompt(ask, terminal=False).run(reactor)  # type: ignore[arg-type]
    assert reactor.arrived.wait(10)
    failures: list[Failure] = []
    result.addErrback(failures.append)
    reactor.run_calls()
    assert len(failures) == 1 and failures[0].check(OSError)


def test_user_authentication_runs_a_blocking_prompt_with_its_reactor(tmp_path: Any) -> None:
    askpass = tmp_path / "askpass.sh"
    askpass.write_text('#!/bin/sh\necho "answer to $1"\n')
    askpass.chmod(0o700)
    prompt = UserAsk(str(askpass), {})("pass\x1b[2Jword: ")
    reactor = ThreadCalls()
    resolved: Deferred[Any] = Deferred.fromCoroutine(_resolve(prompt, reactor))
    assert reactor.arrived.wait(10)
    answers: list[object] = []
    resolved.addCallback(answers.append)
    reactor.run_calls()
    # The prompt reached the program escaped (RELIABILITY.md D17).
    assert answers == ["answer to pass\\x1b[2Jword: "]


def test_without_a_reactor_a_blocking_prompt_is_a_clear_error() -> None:
    prompt = BlockingPrompt(lambda: "x", terminal=False)
    failures: list[Failure] = []
    Deferred.fromCoroutine(_resolve(prompt, None)).addErrback(failures.append)
    assert len(failures) == 1
    with pytest.raises(CredentialError, match="needs the tunnel's reactor"):
        failures[0].raiseException()
