"""The `tap` backend: one of our tap resources (made and kept by the link worker, on a bridge
or routed), handed to qemu as `-netdev tap`. TapNetdev is the part every tap-backed backend
shares (the bridge backend too): the tap's name, multiqueue and vhost-net."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from app.domain.errors import InvalidInput
from app.domain.names import validate_link_name
from app.domain.nics.registry import HostLink, NicClaims, NicDriver, register
from app.domain.nics.spec import NicSpec, Vhost
from app.domain.qemu_options import qemu_options


class TapNetdev(NicDriver):
    """A backend whose NIC is a kernel tap (QEMU's `-netdev tap`, qemu-options.hx)."""

    multiqueue: ClassVar[bool] = True
    vnet_hdr: ClassVar[bool] = True
    hotplug: ClassVar[bool] = True

    def validate(self, nic: NicSpec) -> None:
        if nic.tap is None:
            raise InvalidInput(f"NIC {nic.id}: the {nic.backend} backend needs a tap")
        validate_link_name(nic.tap)

    def netdev(
        self, netdev_id: str, nic: NicSpec, vhost_net: bool, fds: Sequence[int] | None = None
    ) -> str:
        """By name (qemu opens the tap), or by descriptors the daemon opened and passes on."""
        vhost = {Vhost.ON: "on", Vhost.OFF: "off", Vhost.AUTO: "on" if vhost_net else "off"}
        assert nic.tap is not None
        if fds:
            handles = {"fd": str(fds[0])} if len(fds) == 1 else {"fds": ":".join(map(str, fds))}
            return qemu_options(f"tap,id={netdev_id}", **handles, vhost=vhost[nic.vhost])
        return qemu_options(
            f"tap,id={netdev_id}",
            ifname=nic.tap,
            script="no",
            downscript="no",
            queues=nic.queues if nic.queues > 1 else None,
            vhost=vhost[nic.vhost],
        )

    def netdev_qmp(
        self, netdev_id: str, nic: NicSpec, vhost_net: bool, fd_names: Sequence[str]
    ) -> dict[str, object]:
        """QAPI's NetdevTapOptions (qapi/net.json): `fd` or `fds` name descriptors given to
        the monitor by `getfd` (one per queue), `vhost` a boolean."""
        vhost = {Vhost.ON: True, Vhost.OFF: False, Vhost.AUTO: vhost_net}[nic.vhost]
        handles = {"fd": fd_names[0]} if len(fd_names) == 1 else {"fds": ":".join(fd_names)}
        return {"type": "tap", "id": netdev_id, **handles, "vhost": vhost}


@register
class TapDriver(TapNetdev):
    name: ClassVar[str] = "tap"
    host_link: ClassVar[HostLink] = HostLink.TAP
    option: ClassVar[str | None] = "tap"

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        return replace(nic, tap=claims.tap_resource(str(request["tap"]), nic.queues))
