"""
The life of one remote forward, as data (after h11's ``_state.py``): every state a forward
can be in, every event that moves it, and one table of the moves. All changes of
``Forward.state`` made by the forward table go through :func:`next_state`; a pair the
table does not list is a bug in rtunnel and raises :class:`ForwardTransitionError`.

::

    new --> PENDING ---- AGREED ---> ACTIVE
             | ^  ^                    |
             | |  `------- LOST -------'   (after the reconnect it is asked again)
   RETRY_    | |
   LATER     v | REQUEST, LOST
            RETRYING

    PENDING -- REQUEST, LOST --> PENDING
    PENDING -- REFUSED --> FAILED
    PENDING, ACTIVE, RETRYING -- STOPPED_FAILING --> FAILED
    PENDING, ACTIVE, RETRYING -- CANCEL, STOPPED --> CANCELLED
    PENDING, RETRYING -- ABANDON --> CANCELLED

FAILED and CANCELLED are final. There is no "cancelling" state: a cancel marks the
forward CANCELLED before the server answers, so that channel opens racing the
``cancel-tcpip-forward`` are refused at once (RELIABILITY.md B4).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

__all__ = [
    "TRANSITIONS",
    "ForwardEvent",
    "ForwardState",
    "ForwardTransitionError",
    "accepts_channels",
    "allows",
    "match_forward",
    "match_socket_forward",
    "next_state",
]


class ForwardState(enum.Enum):
    """Where a forward is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ForwardEvent(enum.Enum):
    """What happens to a forward (see the drawing at the top of the module)."""

    #: ``tcpip-forward`` (or ``streamlocal-forward@openssh.com``) sent on a live connection.
    REQUEST = "request"
    #: The server agreed (REQUEST_SUCCESS).
    AGREED = "agreed"
    #: The request ended without the server's agreement and is not tried again: refused
    #: on first asking, its caller gone meanwhile, or re-asking given up after the retries.
    REFUSED = "refused"
    #: A re-request after a reconnect was refused: a stale session of ours may still hold
    #: the port (RELIABILITY.md A9), so it is asked again on its own schedule.
    RETRY_LATER = "retry later"
    #: The connection ended; the forward is asked for again after the reconnect.
    LOST = "lost"
    #: ``cancel_forwarding()``: the forward is forgotten at once.
    CANCEL = "cancel"
    #: The caller of ``request_forwarding()`` cancelled its Deferred while the forward
    #: waited for a reconnect.
    ABANDON = "abandon"
    #: The tunnel stopped by a logoff.
    STOPPED = "stopped"
    #: The tunnel stopped on an error (reconnect off or given up).
    STOPPED_FAILING = "stopped failing"


_P, _A, _R = ForwardState.PENDING, ForwardState.ACTIVE, ForwardState.RETRYING
_F, _C = ForwardState.FAILED, ForwardState.CANCELLED
_E = ForwardEvent

#: (state, event) -> the next state. Every pair not listed is refused.
TRANSITIONS: Mapping[tuple[ForwardState, ForwardEvent], ForwardState] = {
    (_P, _E.REQUEST): _P,
    (_R, _E.REQUEST): _P,
    (_P, _E.AGREED): _A,
    (_P, _E.REFUSED): _F,
    (_P, _E.RETRY_LATER): _R,
    (_P, _E.LOST): _P,
    (_A, _E.LOST): _P,
    (_R, _E.LOST): _P,
    (_P, _E.CANCEL): _C,
    (_A, _E.CANCEL): _C,
    (_R, _E.CANCEL): _C,
    (_P, _E.ABANDON): _C,
    (_R, _E.ABANDON): _C,
    (_P, _E.STOPPED): _C,
    (_A, _E.STOPPED): _C,
    (_R, _E.STOPPED): _C,
    (_P, _E.STOPPED_FAILING): _F,
    (_A, _E.STOPPED_FAILING): _F,
    (_R, _E.STOPPED_FAILING): _F,
}


class ForwardTransitionError(RuntimeError):
    """A forward was moved in a way the table does not allow: a bug in rtunnel, not a
    user mistake."""

    def __init__(self, state: ForwardState, event: ForwardEvent) -> None:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        super().__init__(
            f"Internal error: a {state.value} forward cannot take the event "
            f"{event.value!r} (allowed: {', '.join(allowed) or 'none, the state is final'})."
        )
        self.state = state
        self.event = event


def next_state(state: ForwardState, event: ForwardEvent) -> ForwardState:
    """The state ``event`` moves a forward in ``state`` to; raises
    :class:`ForwardTransitionError` for a pair the table does not list."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise ForwardTransitionError(state, event) from None


def allows(state: ForwardState, event: ForwardEvent) -> bool:
    """Whether the table lets ``event`` move a forward in ``state``."""
    return (state, event) in TRANSITIONS


def accepts_channels(state: ForwardState) -> bool:
    """Whether a forward in ``state`` takes inbound channels: only an active one (a
    cancelled forward refuses opens racing its cancel, B4)."""
    return state is ForwardState.ACTIVE


class _Listening(Protocol):
    """What the matching below reads of a forward (rtunnel._model.Forward has it)."""

    @property
    def state(self) -> ForwardState: ...
    @property
    def bind_address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def listen_path(self) -> str | None: ...


_F_co = TypeVar("_F_co", bound=_Listening)


def match_socket_forward(forwards: Iterable[_F_co], path: str) -> _F_co | None:
    """The forward a ``forwarded-streamlocal@openssh.com`` open for ``path`` names."""
    return next(
        (f for f in forwards if accepts_channels(f.state) and f.listen_path == path),
        None,
    )


def match_forward(forwards: Iterable[_F_co], address: str, port: int) -> _F_co | None:
    """
    The forward a ``forwarded-tcpip`` open for ``address:port`` names (ARCHITECTURE.md,
    the data path, step 2): the active TCP forward on that port and address, else the only
    active one on that port.
    """
    candidates = [
        f
        for f in forwards
        if accepts_channels(f.state) and f.port == port and f.listen_path is None
    ]
    for forward in candidates:
        if forward.bind_address == address:
            return forward
    # Some servers report the address they bound rather than the string we sent
    # (e.g. "127.0.0.1" for "localhost"); the port alone is then unambiguous if only
    # one forward listens on it. The destination always comes from our forward.
    if len(candidates) == 1:
        return candidates[0]
    return None
