"""L2 segments (issue 10, step 1): what a managed network or a VM NIC attaches to, as one
driver per kind (app.domain.segments.driver). The built-in kinds are imported here; a new
kind is a new module in this package plus its import below, and its storage in
app.db.repositories.segments."""

from __future__ import annotations

from app.domain.segments import bridge, tap, vlan
from app.domain.segments.driver import (
    Joiner,
    Segment,
    SegmentDriver,
    SegmentKind,
    SegmentObject,
    describe,
    find_driver,
    kinds,
    register,
    registered,
    segment_driver,
    unregister,
)

BUILT_IN = (bridge, tap, vlan)

__all__ = [
    "BUILT_IN",
    "Joiner",
    "Segment",
    "SegmentDriver",
    "SegmentKind",
    "SegmentObject",
    "describe",
    "find_driver",
    "kinds",
    "register",
    "registered",
    "segment_driver",
    "unregister",
]
