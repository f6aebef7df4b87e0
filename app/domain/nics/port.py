"""The `port` backend: one of our port resources (app.db.models.Port, Neutron's port),
plugged into the guest the way Nova plugs a Neutron port: qemu gets the port's tap (made
and kept by the link worker, as a tap resource's: `-netdev tap`, the daemon opening it and
handing qemu the descriptors as libvirt does), the guest's MAC is the port's, and so is its
fixed address (the port's static DHCP lease)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from app.domain.nics.registry import HostLink, NicClaims, register
from app.domain.nics.spec import NicSpec
from app.domain.nics.tap import TapNetdev


@register
class PortDriver(TapNetdev):
    name: ClassVar[str] = "port"
    host_link: ClassVar[HostLink] = HostLink.TAP
    option: ClassVar[str | None] = "port"
    fields: ClassVar[tuple[str, ...]] = ("ipv4",)  # must be the port's
    plugs_port: ClassVar[bool] = True
    multiqueue: ClassVar[bool] = False  # a port's tap is made with one queue

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        """Plugs the port (claims.plug_port: 409 when another VM uses it), taking its tap
        and MAC (a NIC `mac` other than the port's: 422)."""
        requested = request.get("mac")
        tap, mac, port_id = claims.plug_port(str(request["port"]), nic.queues, requested)
        return replace(nic, tap=tap, mac=mac, port=port_id)

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        return replace(nic, port=str(options["port"]))

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        return {"port": nic.port}

    def present(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"port": str(options["port"])}
