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
from app.domain.nics.spec import NicSpec
from app.domain.qemu_options import qemu_options


class TapNetdev(NicDriver):
    """A backend whose NIC is a kernel tap (QEMU's `-netdev tap`, qemu-options.hx)."""

    multiqueue: ClassVar[bool] = True
    vnet_hdr: ClassVar[bool] = True
    hotplug: ClassVar[bool] = True
    vhost: ClassVar[bool] = True

    def validate(self, nic: NicSpec) -> None:
        if nic.tap is None:
            raise InvalidInput(f"the {nic.backend} backend needs a tap")
        validate_link_name(nic.tap)

    def netdev(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fds: Sequence[int] | None = None,
        vhost_fds: Sequence[int] = (),
    ) -> str:
        """By name (qemu opens the tap), or by descriptors the daemon opened and passes on,
        with /dev/vhost-net's next to them where the NIC uses vhost-net (qemu-options.hx:
        `fd`+`vhostfd`, or `fds`+`vhostfds` for several queues; without them qemu opens
        /dev/vhost-net itself)."""
        on = self.uses_vhost(nic, vhost_net)
        vhost = "on" if on else "off"
        assert nic.tap is not None
        if fds:
            handles = _handles(fds, "fd")
            if on and vhost_fds:
                handles |= _handles(vhost_fds, "vhostfd")
            return qemu_options(f"tap,id={netdev_id}", **handles, vhost=vhost)
        return qemu_options(
            f"tap,id={netdev_id}",
            ifname=nic.tap,
            script="no",
            downscript="no",
            queues=nic.queues if nic.queues > 1 else None,
            vhost=vhost,
        )

    def netdev_qmp(
        self,
        netdev_id: str,
        nic: NicSpec,
        vhost_net: bool,
        fd_names: Sequence[str],
        vhost_fd_names: Sequence[str] = (),
    ) -> dict[str, object]:
        """QAPI's NetdevTapOptions (qapi/net.json): `fd` or `fds` name descriptors given to
        the monitor by `getfd` (one per queue), `vhostfd` or `vhostfds` those of
        /dev/vhost-net, `vhost` a boolean."""
        on = self.uses_vhost(nic, vhost_net)
        handles = _handles(fd_names, "fd")
        if on and vhost_fd_names:
            handles |= _handles(vhost_fd_names, "vhostfd")
        return {"type": "tap", "id": netdev_id, **handles, "vhost": on}


def _handles(fds: Sequence[int] | Sequence[str], key: str) -> dict[str, str]:
    """`{key: fd}` for one descriptor, `{keys: a:b:...}` for several (qemu's `fd`/`fds`,
    `vhostfd`/`vhostfds`)."""
    if len(fds) == 1:
        return {key: str(fds[0])}
    return {f"{key}s": ":".join(map(str, fds))}


@register
class TapDriver(TapNetdev):
    name: ClassVar[str] = "tap"
    host_link: ClassVar[HostLink] = HostLink.TAP
    option: ClassVar[str | None] = "tap"
    fields: ClassVar[tuple[str, ...]] = ("ipv4",)

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        return replace(nic, tap=claims.tap_resource(str(request["tap"]), nic.queues))
