"""The `bridge` segment kind: one of our bridges, a flat L2 segment (the how-to's br0). The
bridge carries L3 itself, NIC taps join it untagged, and the path probe puts its throwaway
port on it (waiting out the STP forward delay when STP is on). The base's behaviour, but
for one join rule: a tap resource does not join a bridge that was never created."""

from __future__ import annotations

from typing import ClassVar

from app.domain.segments.driver import (
    Joiner,
    SegmentDriver,
    SegmentKind,
    SegmentObject,
    register,
)


@register
class BridgeSegment(SegmentDriver):
    kind: ClassVar[str] = SegmentKind.BRIDGE.value
    label: ClassVar[str] = "bridge"

    def join_refusal(self, obj: SegmentObject, joiner: Joiner) -> str | None:
        """A bridge in error that never held a kernel link stands for no link at all (the
        name it asked for may be someone else's): a tap resource is not put on it. Only
        tap resources are refused so far; a VM NIC's tap and a network are not (as before
        this rule moved here)."""
        if joiner is Joiner.TAP and obj.never_created:
            return (
                f"bridge {obj.name!r} was never created ({obj.status_reason}); a tap cannot join it"
            )
        return None
