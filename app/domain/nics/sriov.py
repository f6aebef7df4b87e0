"""The `sriov` backend: an SR-IOV virtual function (VF) of a host NIC given to the guest whole,
as libvirt's `<interface type='hostdev'>` and Neutron's `vnic_type=direct` do.

At creation the NIC claims a free VF (of `pf`, or of any physical function with one; the
claim is a row, so two NICs never get one VF). At each launch the VM worker sets the VF's MAC
(the NIC's), VLAN, spoof check and trust through netlink on the PF, binds the VF to vfio-pci,
hands /dev/vfio/<group> to the qemu user and passes the VF to qemu as
`-device vfio-pci,host=<PCI address>,id=nicN` (no -netdev: the guest drives the VF itself,
with igbvf, iavf, mlx5, ...). When qemu ends the VF goes back to its own driver with the
settings of a free VF (app/host/sriov.py); its claim goes with the NIC (or the VM).

No emulated model (the guest device is the VF; `model` is vfio-pci), no queues, MTU, vhost,
rate limits or port security of kvmnetd's (frames leave through the NIC's embedded switch,
past every bridge and rule of ours; spoof_check is the NIC's own MAC anti-spoofing). Not
hot-pluggable here: stop the VM to add or remove one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from app.domain.errors import InvalidInput
from app.domain.names import validate_link_name
from app.domain.nics.registry import HostLink, NicClaims, NicDriver, register
from app.domain.nics.spec import NicSpec, VfSpec, bounded
from app.domain.sriov import VFIO_DRIVER, VLAN_RANGE, validate_pci_address


def stored_vf(options: Mapping[str, Any]) -> VfSpec:
    """The VF from an sriov NIC's stored options (KeyError/TypeError/ValueError: damaged)."""
    vlan = options.get("vf_vlan")
    spoof, trust = options.get("spoof_check", True), options.get("trust", False)
    pf, address = options["pf"], options["vf"]
    if not isinstance(spoof, bool) or not isinstance(trust, bool):
        raise TypeError("spoof_check and trust are booleans")
    if not isinstance(pf, str) or not isinstance(address, str):
        raise TypeError("pf and vf are strings")
    return VfSpec(
        pf=pf,
        pci_address=address,
        index=int(options["vf_index"]),
        vlan=None if vlan is None else int(vlan),
        spoof_check=spoof,
        trust=trust,
    )


def _fields(vf: VfSpec) -> dict[str, Any]:
    """A VF as stored options (what stored_vf reads back) and as the API shows them."""
    return {
        "pf": vf.pf,
        "vf": vf.pci_address,
        "vf_index": vf.index,
        "vf_vlan": vf.vlan,
        "spoof_check": vf.spoof_check,
        "trust": vf.trust,
    }


@register
class SriovDriver(NicDriver):
    name: ClassVar[str] = "sriov"
    host_link: ClassVar[HostLink] = HostLink.VF
    joins_hub: ClassVar[bool] = False
    device_model: ClassVar[str | None] = VFIO_DRIVER
    mtu_refused: ClassVar[str | None] = (
        "an SR-IOV NIC's MTU is the guest's to set on its VF (qemu passes the device through)"
    )

    def admit(self, nic: NicSpec, request: Mapping[str, Any], claims: NicClaims) -> NicSpec:
        """Claims a free VF (409 naming why there is none)."""
        pf, address, index = claims.virtual_function(request.get("pf"))
        spoof, trust = request.get("spoof_check"), request.get("trust")
        vf = VfSpec(
            pf=pf,
            pci_address=address,
            index=index,
            vlan=request.get("vf_vlan"),
            spoof_check=True if spoof is None else bool(spoof),
            trust=bool(trust),
        )
        return replace(nic, model=VFIO_DRIVER, vf=vf)

    def validate(self, nic: NicSpec) -> None:
        if nic.vf is None:
            raise InvalidInput("the sriov backend needs a virtual function")
        validate_link_name(nic.vf.pf)
        validate_pci_address(nic.vf.pci_address)
        if nic.vf.vlan is not None:
            bounded("vf_vlan", nic.vf.vlan, VLAN_RANGE)

    def load(self, nic: NicSpec, options: Mapping[str, Any]) -> NicSpec:
        return replace(nic, vf=stored_vf(options))

    def dump(self, nic: NicSpec) -> dict[str, Any]:
        assert nic.vf is not None
        return _fields(nic.vf)

    def present(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The stored fields as read back (damaged options raise, as stored_vf says)."""
        return _fields(stored_vf(options))

    def qemu_args(self, index: int, nic: NicSpec) -> list[str] | None:
        """QEMU's vfio-pci device (`-device vfio-pci,host=<address>`): the VF whole."""
        assert nic.vf is not None
        return ["-device", f"vfio-pci,host={nic.vf.pci_address},id=nic{index}"]
