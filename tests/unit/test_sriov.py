"""SR-IOV's pure half (app.domain.sriov, app.domain.nics.sriov) from plain data: which VF a
NIC gets and why none, when a VF count may change, the sriov driver's stored options (damaged
ones refused), its validation and its qemu arguments (a vfio-pci device, no -netdev)."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.errors import Conflict, InvalidInput
from app.domain.nics import dump_options, load_options, present_options
from app.domain.nics.spec import NicSpec, VfSpec
from app.domain.qemu_argv import qemu_argv
from app.domain.sriov import PhysicalFunction, VirtualFunction, free_vf, validate_num_vfs
from app.domain.vlans import HostLacksFeature
from app.domain.vms import (
    Accelerator,
    BootSpec,
    Machine,
    VmSpec,
    validate_passthrough_bus,
    validate_vm,
)

MAC = "52:54:00:00:00:01"


def pf(name: str, *groups: int | None, total: int = 8) -> PhysicalFunction:
    bus = 1 if name == "eth0" else 2
    vfs = tuple(
        VirtualFunction(i, f"0000:0{bus}:1{i}.0", "igbvf", None, g, None)
        for i, g in enumerate(groups)
    )
    return PhysicalFunction(name, "0000:01:00.0", "igb", total, len(vfs), vfs)


def test_a_nic_gets_the_first_unclaimed_vf_of_its_pf_or_of_any() -> None:
    pfs = [pf("eth0", 5, 6), pf("eth1", 7)]
    assert free_vf(pfs, set(), None)[1].pci_address == "0000:01:10.0"
    assert free_vf(pfs, {"0000:01:10.0"}, "eth0")[1].index == 1
    found_pf, vf = free_vf(pfs, {"0000:01:10.0", "0000:01:11.0"}, None)
    assert (found_pf.name, vf.index) == ("eth1", 0)


@pytest.mark.parametrize(
    ("pfs", "claimed", "wanted", "reason"),
    [
        ([], set(), None, "this host has no SR-IOV physical function"),
        ([pf("eth0", 5)], set(), "eth9", "eth9 is not an SR-IOV physical function"),
        ([pf("eth0")], set(), "eth0", "eth0 has no free virtual function"),
        ([pf("eth0", 5)], {"0000:01:10.0"}, None, "any physical function has no free"),
        ([pf("eth0", None, None)], set(), "eth0", "in no IOMMU group"),
    ],
)
def test_no_free_vf_is_409_saying_why(
    pfs: list[PhysicalFunction], claimed: set[str], wanted: str | None, reason: str
) -> None:
    with pytest.raises(Conflict, match=reason):
        free_vf(pfs, claimed, wanted)


def test_a_vf_count_changes_only_within_the_device_and_while_no_nic_holds_a_vf() -> None:
    eth0 = pf("eth0", 5, 6, total=7)
    validate_num_vfs(eth0, 7, set())
    validate_num_vfs(eth0, 2, {1})  # the same count: nothing changes
    for bad in (-1, 8, True):
        with pytest.raises(InvalidInput, match="between 0 and 7"):
            validate_num_vfs(eth0, bad, set())
    for wanted in (0, 1, 3):  # any change removes every VF (a count changes through 0)
        with pytest.raises(Conflict, match="held by VM NICs"):
            validate_num_vfs(eth0, wanted, {0})


def _nic(vf: VfSpec | None, **kw: Any) -> NicSpec:
    return NicSpec(id="n0", model="vfio-pci", mac=MAC, backend="sriov", vf=vf, **kw)


def test_the_sriov_driver_stores_validates_and_passes_the_vf_to_qemu() -> None:
    vf = VfSpec("eth0", "0000:01:10.0", 0, vlan=100, spoof_check=True, trust=False)
    stored = dump_options(_nic(vf))
    assert stored == {
        "pf": "eth0",
        "vf": "0000:01:10.0",
        "vf_index": 0,
        "vf_vlan": 100,
        "spoof_check": True,
        "trust": False,
    }
    assert load_options(_nic(None), stored).vf == vf
    assert present_options("sriov", stored)["vf"] == "0000:01:10.0"
    spec = VmSpec(id="v1", name="vm1", boot=BootSpec(kernel="/k"), nics=(_nic(vf),))
    validate_vm(spec, ["virtio-net-pci"])
    argv = qemu_argv(spec, "qemu-system-x86_64", Accelerator.TCG)
    assert argv[argv.index("-device") + 1] == "vfio-pci,host=0000:01:10.0,id=nic0"
    assert "-netdev" not in argv
    for bad in (
        {**stored, "vf": None},
        {**stored, "vf_index": "x"},
        {**stored, "trust": "yes"},
        {k: v for k, v in stored.items() if k != "pf"},
    ):
        with pytest.raises(InvalidInput, match="stored sriov options cannot be used"):
            load_options(_nic(None), bad)
    for nic, reason in (
        (_nic(None), "needs a virtual function"),
        (_nic(VfSpec("eth0", "01:10.0", 0)), "not a PCI address"),
        (_nic(VfSpec("eth0", "0000:01:10.0", 0, vlan=4095)), "vf_vlan must be between"),
        (_nic(vf, mtu=1500), "vfio-pci cannot carry it"),
        (NicSpec(id="n0", model="e1000", mac=MAC, backend="sriov", vf=vf), "is vfio-pci"),
    ):
        bad_spec = VmSpec(id="v1", name="vm1", boot=BootSpec(kernel="/k"), nics=(nic,))
        with pytest.raises(InvalidInput, match=reason):
            validate_vm(bad_spec, ["virtio-net-pci", "e1000"])


def test_a_vf_is_a_pci_device_so_isapc_refuses_an_sriov_nic() -> None:
    vf = VfSpec("eth0", "0000:01:10.0", 0)
    spec = VmSpec(
        id="v1", name="vm1", machine=Machine.ISAPC, boot=BootSpec(kernel="/k"), nics=(_nic(vf),)
    )
    with pytest.raises(InvalidInput, match=r"^nics\[0\]: the isapc machine has no PCI bus"):
        validate_vm(spec, ["ne2k_isa"])
    with pytest.raises(InvalidInput, match="vfio-pci device cannot be used there"):
        validate_passthrough_bus("sriov", Machine.ISAPC)  # before a VF is claimed
    validate_passthrough_bus("sriov", Machine.PC)
    validate_passthrough_bus("bridge", Machine.ISAPC)  # its model decides (validate_nic_model)


def test_no_sriov_on_the_host_is_host_lacks_feature_a_full_pool_a_conflict() -> None:
    with pytest.raises(HostLacksFeature) as refused:
        free_vf([pf("eth0", 5)], set(), "eth9")
    (missing,) = refused.value.extra["missing_features"]
    assert missing["feature"] == "sriov" and missing["reason"].startswith("eth9 is not")
    with pytest.raises(Conflict) as full:
        free_vf([pf("eth0")], set(), "eth0")
    assert not isinstance(full.value, HostLacksFeature)
