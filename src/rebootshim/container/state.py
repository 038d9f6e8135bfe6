"""Process states and the one table of allowed moves.

REBOOTING is a state of its own (DESIGN.md): the old init is gone and the
new one is not yet started.  containerd never sees it; ``to_status``
reports it as RUNNING, the state the container had and will have again.
"""

from __future__ import annotations

from enum import StrEnum

from rebootshim.errors import FailedPrecondition


class State(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    REBOOTING = "rebooting"
    STOPPED = "stopped"
    DELETED = "deleted"


_MOVES: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.RUNNING, State.STOPPED, State.DELETED}),
    State.RUNNING: frozenset({State.PAUSED, State.REBOOTING, State.STOPPED}),
    # A paused init can still die: reboot(2) may have run just before the
    # freeze took hold.
    State.PAUSED: frozenset({State.RUNNING, State.REBOOTING, State.STOPPED}),
    State.REBOOTING: frozenset({State.RUNNING, State.STOPPED}),
    State.STOPPED: frozenset({State.DELETED}),
    State.DELETED: frozenset(),
}

# containerd.v1.types.Status values (api/types/task/task.proto)
STATUS_CREATED = 1
STATUS_RUNNING = 2
STATUS_STOPPED = 3
STATUS_PAUSED = 4

_STATUS = {
    State.CREATED: STATUS_CREATED,
    State.RUNNING: STATUS_RUNNING,
    State.PAUSED: STATUS_PAUSED,
    State.REBOOTING: STATUS_RUNNING,
    State.STOPPED: STATUS_STOPPED,
    State.DELETED: STATUS_STOPPED,
}


def can_move(current: State, new: State) -> bool:
    return new in _MOVES[current]


def transition(current: State, new: State, what: str) -> State:
    """Return ``new`` if the table allows it; else FailedPrecondition."""
    if new not in _MOVES[current]:
        raise FailedPrecondition(f"cannot move {what} from {current} to {new}")
    return new


def to_status(state: State) -> int:
    """The containerd Status enum value reported by State."""
    return _STATUS[state]
