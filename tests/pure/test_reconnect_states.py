"""The connection's state machine (rtunnel/_core/reconnect.py), as plain functions."""

from __future__ import annotations

import itertools
import re

import pytest

from rtunnel._core.reconnect import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    after_failure,
    next_state,
)

S, E = State, Event

# The table written out once more by hand, so that a changed row is a visible test change.
EXPECTED = {
    (S.STOPPED, E.LOGON): S.LOGGING_ON,
    (S.LOGGING_ON, E.LOGGED_ON): S.CONNECTED,
    (S.LOGGING_ON, E.RETRY): S.LOGON_WAIT,
    (S.LOGGING_ON, E.FAIL): S.STOPPED,
    (S.LOGON_WAIT, E.TIMER): S.LOGGING_ON,
    (S.CONNECTED, E.LOST_RETRY): S.WAITING,
    (S.CONNECTED, E.LOST): S.STOPPED,
    (S.WAITING, E.TIMER): S.RECONNECTING,
    (S.WAITING, E.FAIL): S.STOPPED,
    (S.RECONNECTING, E.LOGGED_ON): S.CONNECTED,
    (S.RECONNECTING, E.RETRY): S.WAITING,
    (S.RECONNECTING, E.FAIL): S.STOPPED,
    **{(state, E.LOGOFF): S.LOGGING_OFF for state in S},
    (S.LOGGING_OFF, E.LOGGED_ON): S.LOGGING_OFF,
    (S.LOGGING_OFF, E.RETRY): S.LOGGING_OFF,
    (S.LOGGING_OFF, E.FAIL): S.LOGGING_OFF,
    (S.LOGGING_OFF, E.LOST): S.LOGGING_OFF,
    (S.LOGGING_OFF, E.LOST_RETRY): S.LOGGING_OFF,
    (S.LOGGING_OFF, E.TIMER): S.LOGGING_OFF,
    (S.LOGGING_OFF, E.LOGGED_OFF): S.STOPPED,
}


def test_the_table_is_the_one_drawn() -> None:
    assert dict(TRANSITIONS) == EXPECTED
    assert len(TRANSITIONS) == 12 + 7 + 7


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_every_pair_either_moves_or_is_refused(state: State, event: Event) -> None:
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[state, event]
    else:
        with pytest.raises(
            IllegalTransition, match=re.escape(f"{event.value!r} cannot happen while")
        ):
            next_state(state, event)


def test_a_refusal_names_the_event_and_the_state() -> None:
    with pytest.raises(IllegalTransition) as caught:
        next_state(S.STOPPED, E.TIMER)
    assert str(caught.value) == (
        "internal error: 'the wait before a retry is over' cannot happen while stopped"
    )


def test_every_state_is_reached_and_every_state_can_be_left() -> None:
    reached = {S.STOPPED} | set(TRANSITIONS.values())
    assert reached == set(S)
    for state in S:
        assert any(after is not state for (s, _), after in TRANSITIONS.items() if s is state)


def test_logoff_ends_every_state_in_stopped() -> None:
    for state in S:
        assert next_state(next_state(state, E.LOGOFF), E.LOGGED_OFF) is S.STOPPED


def test_an_outage_goes_round_until_the_logon_works() -> None:
    # connect -> logged on -> lost -> waiting -> connect (fails) -> waiting -> connect -> ...
    state = S.STOPPED
    for event in (E.LOGON, E.LOGGED_ON, E.LOST_RETRY, E.TIMER, E.RETRY, E.TIMER, E.LOGGED_ON):
        state = next_state(state, event)
    assert state is S.CONNECTED


@pytest.mark.parametrize(
    ("state", "mode", "retryable", "then"),
    [
        # The first logon is retried only in mode "always", and only for a passing fault.
        (S.LOGGING_ON, "always", True, E.RETRY),
        (S.LOGGING_ON, "always", False, E.FAIL),
        (S.LOGGING_ON, "on-loss", True, E.FAIL),
        (S.LOGGING_ON, "off", True, E.FAIL),
        # A reconnect under way keeps going while the fault may pass.
        (S.RECONNECTING, "on-loss", True, E.RETRY),
        (S.RECONNECTING, "always", True, E.RETRY),
        (S.RECONNECTING, "on-loss", False, E.FAIL),
        # A lost connection is reconnected unless reconnecting is off or it was a refusal.
        (S.CONNECTED, "on-loss", True, E.LOST_RETRY),
        (S.CONNECTED, "always", True, E.LOST_RETRY),
        (S.CONNECTED, "off", True, E.LOST),
        (S.CONNECTED, "on-loss", False, E.LOST),
        # While logging off nothing is retried.
        (S.LOGGING_OFF, "always", True, E.LOST),
    ],
)
def test_what_a_failure_leads_to(state: State, mode: str, retryable: bool, then: Event) -> None:
    assert after_failure(state, mode=mode, retryable=retryable) is then
    # ... and the table takes it from there.
    next_state(state, then)


@pytest.mark.parametrize("state", [S.STOPPED, S.LOGON_WAIT, S.WAITING])
def test_nothing_can_fail_where_nothing_is_under_way(state: State) -> None:
    with pytest.raises(IllegalTransition, match="no logon or connection can fail while"):
        after_failure(state, mode="always", retryable=True)
