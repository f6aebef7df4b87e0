"""Resource statuses and the table of transitions the daemon allows between them.

The API writes desired state and bumps `generation`; the supervisor writes the observed
status. A resource has settled when `observed_generation == generation` and its status is
not `pending`/`deleting`.
"""

from __future__ import annotations

import enum

from app.domain.errors import DomainError


class Status(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    ERROR = "error"
    DELETING = "deleting"


ALLOWED_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.PENDING, Status.ACTIVE, Status.ERROR, Status.DELETING}),
    Status.ACTIVE: frozenset({Status.ACTIVE, Status.PENDING, Status.ERROR, Status.DELETING}),
    Status.ERROR: frozenset({Status.ERROR, Status.PENDING, Status.ACTIVE, Status.DELETING}),
    Status.DELETING: frozenset({Status.DELETING}),
}


class IllegalTransition(DomainError):
    kind = "illegal-transition"
    status = 409
    title = "State transition not allowed"


def check_transition(current: Status, target: Status) -> Status:
    """Return `target` when the move is allowed, else raise IllegalTransition."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"cannot go from {current.value} to {target.value}")
    return target


def is_settled(status: Status, generation: int, observed_generation: int) -> bool:
    """True when the supervisor has applied the latest desired state (or failed to)."""
    if status in (Status.PENDING, Status.DELETING):
        return False
    return observed_generation >= generation
