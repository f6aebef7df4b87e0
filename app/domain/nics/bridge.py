"""The `bridge` backend: a tap the daemon makes for the NIC (named after the VM and the NIC's
position), which the VM worker creates owned by qemu's user and attaches to one of our
bridges (the how-to's tap1 and tap2 on br0)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from app.domain.nics.registry import HostLink, NicClaims, register
from app.domain.nics.spec import NicSpec
from app.domain.nics.tap import TapNetdev


@register
class BridgeDriver(TapNetdev):
    name: ClassVar[str] = "bridge"
    host_link: ClassVar[HostLink] = HostLink.VM_TAP

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        return replace(nic, tap=claims.vm_tap(str(request["bridge"])))
