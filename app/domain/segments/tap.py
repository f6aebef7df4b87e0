"""The `tap` segment kind: one of our tap resources, routed (the how-to's tap1 with
192.168.105.1/24 on it): the tap carries L3, and the one NIC on it uses the tap itself (the
tap backend), so there is no bridge to join and nothing for the path probe to join."""

from __future__ import annotations

from typing import ClassVar

from app.domain.segments.driver import SegmentDriver, SegmentKind, SegmentObject, register


@register
class TapSegment(SegmentDriver):
    kind: ClassVar[str] = SegmentKind.TAP.value
    label: ClassVar[str] = "tap"

    def master(self, obj: SegmentObject) -> str | None:
        return None
