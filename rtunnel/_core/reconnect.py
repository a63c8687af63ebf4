"""
The life of a tunnel's connection: logon, reconnect and logoff as one state machine.
Every state transition of :class:`~rtunnel.ReverseTunnel`'s connection lives here, as data
(after h11's ``_state.py`` and the states of Twisted's ``ClientService``); the tunnel
feeds it events, runs the timers on its injected clock and asks
:func:`after_failure` what a failure leads to. Pure: no reactor, no clock.

::

    STOPPED --logon--> LOGGING_ON --logged_on--> CONNECTED --lost_retry--> WAITING
                        |     ^                    ^                        |   ^
                  retry |     | timer    logged_on |                  timer |   | retry
                        v     |                    |                        v   |
                       LOGON_WAIT                  `---------------- RECONNECTING

    fail (from LOGGING_ON, WAITING, RECONNECTING), lost (from CONNECTED) --> STOPPED
    logoff (from every state) --> LOGGING_OFF --logged_off--> STOPPED

While LOGGING_OFF, what the logon or the connection reports (it fails, it logs on, the
connection ends) changes nothing: logoff decides what comes next.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = [
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "State",
    "after_failure",
    "next_state",
]


class State(enum.Enum):
    """Where the tunnel's connection is."""

    STOPPED = "stopped"  # nothing connected or scheduled: new, logged off, or given up
    LOGGING_ON = "logging on"  # logon(): the first connection is being made
    LOGON_WAIT = "waiting to retry the logon"  # reconnect mode "always", before a retry
    CONNECTED = "connected"  # logged on (forwards may still be being re-established)
    WAITING = "waiting to reconnect"  # the connection was lost; a retry is on the clock
    RECONNECTING = "reconnecting"  # a reconnect's logon is under way
    LOGGING_OFF = "logging off"  # logoff() is under way


class Event(enum.Enum):
    """What happens to the connection."""

    LOGON = "logon() called"
    LOGGED_ON = "logged on"
    RETRY = "the logon failed; a retry is scheduled"
    FAIL = "the logon failed for good"
    TIMER = "the wait before a retry is over"
    LOST_RETRY = "the connection was lost; a reconnect is scheduled"
    LOST = "the connection was lost for good"
    LOGOFF = "logoff() called"
    LOGGED_OFF = "logoff() finished"


_S, _E = State, Event

#: (state, event) -> next state: every transition there is. A pair not listed is a bug.
TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (_S.STOPPED, _E.LOGON): _S.LOGGING_ON,
    (_S.LOGGING_ON, _E.LOGGED_ON): _S.CONNECTED,
    (_S.LOGGING_ON, _E.RETRY): _S.LOGON_WAIT,
    (_S.LOGGING_ON, _E.FAIL): _S.STOPPED,
    (_S.LOGON_WAIT, _E.TIMER): _S.LOGGING_ON,
    (_S.CONNECTED, _E.LOST_RETRY): _S.WAITING,
    (_S.CONNECTED, _E.LOST): _S.STOPPED,
    (_S.WAITING, _E.TIMER): _S.RECONNECTING,
    # The reconnect was cancelled or over its limit before its wait began.
    (_S.WAITING, _E.FAIL): _S.STOPPED,
    (_S.RECONNECTING, _E.LOGGED_ON): _S.CONNECTED,
    (_S.RECONNECTING, _E.RETRY): _S.WAITING,
    (_S.RECONNECTING, _E.FAIL): _S.STOPPED,
    **{(state, _E.LOGOFF): _S.LOGGING_OFF for state in State},
    # What a logon given up by logoff, or the connection logoff closes, reports meanwhile.
    **{
        (_S.LOGGING_OFF, event): _S.LOGGING_OFF
        for event in (_E.LOGGED_ON, _E.RETRY, _E.FAIL, _E.LOST, _E.LOST_RETRY, _E.TIMER)
    },
    (_S.LOGGING_OFF, _E.LOGGED_OFF): _S.STOPPED,
}


class IllegalTransition(RuntimeError):
    """An event that cannot happen in the current state: a bug in rtunnel, not a fault."""


def next_state(state: State, event: Event) -> State:
    """
    The state ``event`` leads to from ``state``.

    :raises IllegalTransition: when the table has no such transition.
    """
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(
            f"internal error: {event.value!r} cannot happen while {state.value}"
        ) from None


def after_failure(state: State, *, mode: str, retryable: bool) -> Event:
    """
    What a failed logon or a lost connection leads to, before the backoff policy and the
    observers have their say (they may still turn a retry into :attr:`Event.FAIL`).

    :param state: where the failure happened: LOGGING_ON or RECONNECTING (a logon
        failed), CONNECTED (the connection was lost), LOGGING_OFF (logoff's doing:
        nothing follows but the end of the logoff).
    :param mode: the reconnect mode: ``"off"``, ``"on-loss"`` or ``"always"``.
    :param retryable: whether the error may go away by itself (a network fault, a
        timeout, a server restart), not a refusal.
    """
    if state is State.LOGGING_ON:
        return Event.RETRY if mode == "always" and retryable else Event.FAIL
    if state is State.RECONNECTING:
        return Event.RETRY if retryable else Event.FAIL
    if state is State.CONNECTED:
        return Event.LOST_RETRY if mode != "off" and retryable else Event.LOST
    if state is State.LOGGING_OFF:
        return Event.LOST
    raise IllegalTransition(f"internal error: no logon or connection can fail while {state.value}")
