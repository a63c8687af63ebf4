"""
The forward's transition table (rtunnel/_core/forwards.py) and the forward matching, as
plain functions: every (state, event) pair either moves to the state drawn in the module's
comment or is refused with ForwardTransitionError.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import pytest

import rtunnel
from rtunnel._core.forwards import (
    TRANSITIONS,
    ForwardEvent,
    ForwardState,
    ForwardTransitionError,
    accepts_channels,
    allows,
    match_forward,
    match_socket_forward,
    next_state,
)

P, A, R = ForwardState.PENDING, ForwardState.ACTIVE, ForwardState.RETRYING
F, C = ForwardState.FAILED, ForwardState.CANCELLED
E = ForwardEvent

# The drawing at the top of rtunnel/_core/forwards.py, written out by hand: one row per
# event, the state it moves each state to (None: refused).
EXPECTED: dict[ForwardEvent, dict[ForwardState, ForwardState | None]] = {
    E.REQUEST: {P: P, A: None, R: P, F: None, C: None},
    E.AGREED: {P: A, A: None, R: None, F: None, C: None},
    E.REFUSED: {P: F, A: None, R: None, F: None, C: None},
    E.RETRY_LATER: {P: R, A: None, R: None, F: None, C: None},
    E.LOST: {P: P, A: P, R: P, F: None, C: None},
    E.CANCEL: {P: C, A: C, R: C, F: None, C: None},
    E.ABANDON: {P: C, A: None, R: C, F: None, C: None},
    E.STOPPED: {P: C, A: C, R: C, F: None, C: None},
    E.STOPPED_FAILING: {P: F, A: F, R: F, F: None, C: None},
}


def test_the_expected_table_names_every_pair() -> None:
    assert set(EXPECTED) == set(ForwardEvent)
    assert all(set(row) == set(ForwardState) for row in EXPECTED.values())


@pytest.mark.parametrize(
    ("state", "event"), list(product(ForwardState, ForwardEvent)), ids=lambda x: x.value
)
def test_every_pair_moves_or_is_refused(state: ForwardState, event: ForwardEvent) -> None:
    expected = EXPECTED[event][state]
    assert allows(state, event) is (expected is not None)
    if expected is not None:
        assert next_state(state, event) is expected
        return
    with pytest.raises(ForwardTransitionError) as raised:
        next_state(state, event)
    assert raised.value.state is state and raised.value.event is event
    text = str(raised.value)
    assert text.startswith("Internal error: a ") and repr(event.value) in text


def test_the_table_has_exactly_the_expected_moves() -> None:
    moves = {(s, e): t for e, row in EXPECTED.items() for s, t in row.items() if t is not None}
    assert dict(TRANSITIONS) == moves
    assert len(TRANSITIONS) == 19


def test_final_states_take_no_event_and_the_refusal_says_so() -> None:
    for state in (F, C):
        assert not any(allows(state, e) for e in ForwardEvent)
    with pytest.raises(ForwardTransitionError, match="none, the state is final"):
        next_state(C, E.AGREED)
    with pytest.raises(ForwardTransitionError, match=r"allowed: abandon, cancel, lost, request"):
        next_state(R, E.AGREED)


def test_every_state_is_reachable_from_pending() -> None:
    seen, frontier = {P}, [P]
    while frontier:
        state = frontier.pop()
        for (source, _event), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(ForwardState)


def test_the_public_name_is_the_core_enum() -> None:
    assert rtunnel.ForwardState is ForwardState
    assert [s.value for s in ForwardState] == [
        "pending",
        "active",
        "retrying",
        "failed",
        "cancelled",
    ]


@dataclass
class Row:
    bind_address: str
    port: int
    state: ForwardState = A
    listen_path: str | None = None


def test_only_active_forwards_take_channels() -> None:
    assert [s for s in ForwardState if accepts_channels(s)] == [A]


def test_match_forward_by_address_and_port() -> None:
    a = Row("localhost", 8080)
    b = Row("127.0.0.1", 8080)
    other = Row("localhost", 9090)
    assert match_forward([a, b, other], "127.0.0.1", 8080) is b
    assert match_forward([a, b, other], "localhost", 8080) is a
    # Two on the port and neither named: ambiguous, refused.
    assert match_forward([a, b, other], "0.0.0.0", 8080) is None
    # One on the port: the server's idea of the address does not matter.
    assert match_forward([a, other], "::1", 9090) is other
    assert match_forward([a, other], "localhost", 7070) is None


def test_match_forward_skips_forwards_not_active_and_socket_forwards() -> None:
    rows = [
        Row("localhost", 8080, P),
        Row("localhost", 8080, R),
        Row("localhost", 8080, C),
        Row("localhost", 8080, F),
        Row("/s", 0, A, "/s"),
    ]
    assert match_forward(rows, "localhost", 8080) is None
    assert match_forward(rows, "/s", 0) is None
    live = Row("localhost", 8080)
    assert match_forward([*rows, live], "localhost", 8080) is live


def test_match_socket_forward() -> None:
    cancelled = Row("/run/a", 0, C, "/run/a")
    live = Row("/run/a", 0, A, "/run/a")
    tcp = Row("/run/b", 0, A)
    assert match_socket_forward([cancelled], "/run/a") is None
    assert match_socket_forward([cancelled, live, tcp], "/run/a") is live
    assert match_socket_forward([cancelled, live, tcp], "/run/b") is None
