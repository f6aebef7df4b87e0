"""The `hub` backend: the guest NIC sits on a QEMU-internal hub (the how-to's `-net nic,vlan=N`;
today `-netdev hubport`), which other NICs of the same VM join with their own backends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from app.domain.errors import InvalidInput
from app.domain.nics.registry import NicDriver, register
from app.domain.nics.spec import HUBS, NicSpec


@register
class HubDriver(NicDriver):
    name: ClassVar[str] = "hub"
    joins_hub: ClassVar[bool] = False
    owns_hub: ClassVar[bool] = True
    option: ClassVar[str | None] = "hub"

    def validate(self, nic: NicSpec) -> None:
        if nic.hub is None:
            raise InvalidInput(f"a hub NIC needs a hub number between {HUBS[0]} and {HUBS[1]}")

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        return f"hubport,id={netdev_id},hubid={nic.hub}"
