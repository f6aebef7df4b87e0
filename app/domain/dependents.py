"""In-use protection: what depends on a resource that a client asks to delete.

The dependency graph (a delete without `?force=true` is refused while any edge exists):

- network  <- VM NICs with a fixed address on it; port forwards on it
- bridge   <- VM NICs on it (`bridge` backend); taps attached to it; the network on it;
              its uplink; the VLANs it is the trunk of and the networks on them
- tap      <- the VM NIC that uses it (`tap` backend); the network on it (a routed tap)
- VM       <- port forwards to its NICs; other VMs' socket NICs that connect to its
              listening socket NICs
- VLAN     <- VM NICs that are access ports of it or trunk NICs carrying its VID; taps
              that are access ports of it; the network on it

What `?force=true` does to each dependent (the `action` of a Dependent), chosen so that no
guest silently keeps a NIC whose backend is gone (compare Neutron, which refuses a network
delete with ports in use, NetworkInUse 409, and Nova, which unplugs a deleted port):

- a VM NIC whose bridge, tap or socket peer goes is `removed` from its VM's desired state
  (its MAC, fixed address and forwards go with it; the remaining NICs keep their order and
  addresses), and a VM that was running is `stopped`: it starts again without that NIC;
- a VM NIC on a deleted network keeps its bridge or tap and loses only its fixed address
  (`address_released`); a tap on a deleted bridge or VLAN is `detached` and stays (off
  the VLAN and off its trunk: on the trunk untagged it would land on another segment);
- a VM NIC on a deleted VLAN is `removed` like one on a deleted bridge, a trunk NIC
  carrying the VLAN's VID too (a NIC's VLANs are fixed at creation);
- a port forward, the network on a deleted link, a bridge's uplink and the VLANs on a
  deleted trunk are `deleted` (the uplink first moves the host's configuration back onto
  its NIC; a VLAN cannot outlive its trunk, as a Neutron segment cannot its network, and
  takes the network on it along).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class DependentKind(enum.StrEnum):
    VM = "vm"
    VM_NIC = "vm_nic"
    TAP = "tap"
    NETWORK = "network"
    UPLINK = "uplink"
    PORT_FORWARD = "port_forward"
    VLAN = "vlan"
    PORT = "port"
    BRIDGE = "bridge"  # what a project holds (its delete is refused while it holds any)


class ForceAction(enum.StrEnum):
    """What a forced delete did to one dependent."""

    REMOVED = "removed"
    STOPPED = "stopped"
    DETACHED = "detached"
    DELETED = "deleted"
    ADDRESS_RELEASED = "address_released"


@dataclass(frozen=True)
class Dependent:
    """One thing that depends on a resource. A VM NIC is named `<vm name>/<nic index>`
    (the notation socket peers use) and carries its VM's id."""

    kind: DependentKind
    id: str
    name: str
    vm_id: str | None = None
    action: ForceAction | None = None

    def as_dict(self) -> dict[str, str]:
        fields = {"kind": self.kind.value, "id": self.id, "name": self.name}
        if self.vm_id is not None:
            fields["vm_id"] = self.vm_id
        if self.action is not None:
            fields["action"] = self.action.value
        return fields


def describe(
    dependents: Sequence[Dependent],
    limit: int = 10,
    words: Mapping[DependentKind, str] | None = None,
) -> str:
    """`vm_nic web/0, tap tap1` (the first `limit`, then how many more); `words` names kinds
    otherwise (the Neutron API's: app.domain.neutron.NEUTRON_KINDS)."""
    words = words or {}
    shown = [f"{words.get(d.kind, d.kind.value)} {d.name}" for d in dependents[:limit]]
    more = len(dependents) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
