"""The `bridge` segment kind: one of our bridges, a flat L2 segment (the how-to's br0). The
bridge carries L3 itself, NIC taps join it untagged, and the path probe puts its throwaway
port on it (waiting out the STP forward delay when STP is on). The base's behaviour."""

from __future__ import annotations

from typing import ClassVar

from app.domain.segments.driver import SegmentDriver, SegmentKind, register


@register
class BridgeSegment(SegmentDriver):
    kind: ClassVar[str] = SegmentKind.BRIDGE.value
    label: ClassVar[str] = "bridge"
