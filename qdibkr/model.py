"""The words of trading qdibkr uses everywhere, each written once: signal types, sides, signal statuses
and the transitions a signal's status may make.

They are ``StrEnum``s, so they are stored, compared and shown as the plain strings users type
(``"open_long"``, ``"BUY"``, ``"filled"``), and a misspelling is an error where it is made.
"""

from enum import StrEnum

from .errors import QdibkrError


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class SignalType(StrEnum):
    """What a strategy asks for. Only long positions: opening a short is not a signal qdibkr has."""

    OPEN_LONG = "open_long"
    ADD_LONG = "add_long"
    CLOSE_LONG = "close_long"  # quantity None: the strategy's whole position
    REDUCE_LONG = "reduce_long"

    @property
    def side(self) -> Side:
        return Side.BUY if self in (SignalType.OPEN_LONG, SignalType.ADD_LONG) else Side.SELL


class SignalStatus(StrEnum):
    STAGED = "staged"  # emitted by a notebook run still in progress: not the runner's yet
    PENDING = "pending"  # waiting for the runner
    HELD = "held"  # the gate or the trading hours hold it; the runner tries again
    SUBMITTING = "submitting"  # recorded before the order is sent: a restart looks for it at TWS
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in FINAL


FINAL = frozenset({SignalStatus.FILLED, SignalStatus.CANCELLED, SignalStatus.REJECTED})
IN_FLIGHT = (SignalStatus.SUBMITTING, SignalStatus.SUBMITTED, SignalStatus.PARTIALLY_FILLED)
WAITING = (SignalStatus.PENDING, SignalStatus.HELD)

_S = SignalStatus
# Where each status may go. Staying put (to change other columns) is always allowed.
TRANSITIONS: dict[SignalStatus, frozenset[SignalStatus]] = {
    _S.STAGED: frozenset({_S.PENDING, _S.CANCELLED}),
    _S.PENDING: frozenset({_S.HELD, _S.SUBMITTING, _S.CANCELLED, _S.REJECTED}),
    _S.HELD: frozenset({_S.PENDING, _S.SUBMITTING, _S.CANCELLED, _S.REJECTED}),
    # Back to pending only when the reconcile finds TWS never received it.
    _S.SUBMITTING: frozenset({_S.PENDING, _S.SUBMITTED, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.REJECTED}),
    _S.SUBMITTED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.REJECTED}),
    _S.PARTIALLY_FILLED: frozenset({_S.FILLED, _S.CANCELLED, _S.REJECTED}),
    _S.FILLED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.REJECTED: frozenset(),
}


class IllegalTransition(QdibkrError):
    """A signal's status was asked to change in a way its life does not allow (a bug, never the user's)."""


def check_transition(signal_id: str, old: str, new: str):
    old, new = SignalStatus(old), SignalStatus(new)
    if new != old and new not in TRANSITIONS[old]:
        raise IllegalTransition(f"signal {signal_id[:8]} cannot go from {old} to {new}")
