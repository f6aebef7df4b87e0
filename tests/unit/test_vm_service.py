"""Creating VMs in the database: allocation and clash rules (SQLite, no qemu)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from app.db.models import HostPort, LinkName, Vm, VmNic
from app.db.repositories import vm_spec
from app.db.session import Database
from app.domain.errors import (
    BeingDeleted,
    Conflict,
    DomainError,
    InUse,
    InvalidInput,
    NameTaken,
    NotFound,
)
from app.domain.nics.macvtap import ARPHRD_ETHER, ParentLink, macvtap_name
from app.domain.qemu_argv import qemu_argv
from app.domain.vms import QEMU_DEFAULT_MAC, Accelerator
from app.schemas.vms import VmCreate
from app.services.vms import HostFacts, VmPowerService, VmService, vm_tap_name

HOST = HostFacts(
    nic_models=frozenset({"virtio-net-pci", "e1000", "rtl8139", "ne2k_pci", "pcnet", "ne2k_isa"}),
    vhost_missing="not probed",
    kvm_runs_guests=False,
)
BOOT = {"kernel": "/k/vmlinuz", "initrd": "/k/initrd", "cmdline": "console=ttyS0"}


def create(db: Database, name: str, *nics: dict[str, Any], **kw: Any) -> tuple[Any, list[VmNic]]:
    # as the API receives it: JSON (strict models take enum values as strings only there)
    body = VmCreate.model_validate_json(
        json.dumps({"name": name, "boot": BOOT, "nics": list(nics), **kw})
    )
    with db.unit_of_work() as s:
        vm, rows, _ = VmService(s).create(body, HOST)
        return vm, rows


def test_bridge_nic_gets_a_claimed_tap_name_and_a_fresh_mac(db: Database) -> None:
    vm, (nic,) = create(db, "vm1", {"backend": "bridge", "bridge": "br0"})
    assert nic.tap_name == vm_tap_name(vm.id, 0)
    assert len(nic.tap_name) <= 15
    assert nic.mac.startswith("52:54:00:") and nic.mac != QEMU_DEFAULT_MAC
    with db.reading() as s:
        claim = s.get(LinkName, nic.tap_name)
        assert claim is not None and claim.resource_id == vm.id


def test_macs_are_unique_across_vms(db: Database) -> None:
    create(db, "vm1", {"backend": "user", "mac": "52:54:00:aa:00:01"})
    with pytest.raises(Conflict, match="already used"):
        create(db, "vm2", {"backend": "user", "mac": "52:54:00:aa:00:01"})
    _, nics = create(db, "vm3", {"backend": "user"}, {"backend": "user"})
    assert len({n.mac for n in nics}) == 2


def test_port_forward_clashes_are_refused(db: Database) -> None:
    fwd = {"backend": "user", "user": {"forwards": [{"host_port": 5555, "guest_port": 22}]}}
    create(db, "vm1", fwd)
    with pytest.raises(Conflict, match="clashes"):
        create(db, "vm2", fwd)
    wildcard = {
        "backend": "user",
        "user": {"forwards": [{"host_address": "0.0.0.0", "host_port": 5555, "guest_port": 22}]},
    }
    with pytest.raises(Conflict, match="clashes"):
        create(db, "vm3", wildcard)
    other = {"backend": "user", "user": {"forwards": [{"host_port": 5556, "guest_port": 22}]}}
    create(db, "vm4", other)
    with db.reading() as s:
        assert {p.port for p in s.query(HostPort)} == {5555, 5556}


def test_socket_pair_as_in_the_howto(db: Database) -> None:
    _, (listen,) = create(db, "vm1", {"backend": "socket", "socket": {"mode": "listen"}})
    port = listen.options["socket"]["port"]
    assert 40000 <= port < 50000
    _, (connect,) = create(
        db,
        "vm2",
        {"backend": "socket", "model": "e1000", "socket": {"mode": "connect", "peer": "vm1/0"}},
    )
    assert connect.options["socket"]["port"] == port
    with pytest.raises(InvalidInput, match="not a listening"):
        create(db, "vm3", {"backend": "socket", "socket": {"mode": "connect", "peer": "vm2/0"}})
    # a VM on its way out takes no new peer (it would connect to a port nobody listens on)
    with db.unit_of_work() as s:
        VmPowerService(s).delete("vm1", force=True)
    with pytest.raises(BeingDeleted, match="being deleted"):
        create(db, "vm4", {"backend": "socket", "socket": {"mode": "connect", "peer": "vm1/0"}})


@pytest.mark.parametrize(
    ("nics", "kw", "error", "why"),
    [
        ([{"backend": "tap", "tap": "nope"}], {}, NotFound, "no tap"),
        ([{"backend": "bridge", "bridge": "nope"}], {}, NotFound, "no bridge"),
        ([{"backend": "user", "model": "ne2k_isa"}], {}, InvalidInput, "isapc"),
        ([{"backend": "user", "model": "e1000"}], {"machine": "isapc"}, InvalidInput, "PCI"),
        ([{"backend": "tap", "tap": "tap1", "queues": 2}], {}, InvalidInput, "multi_queue"),
        ([], {"accelerator": "kvm"}, InvalidInput, "KVM does not run guests"),
    ],
)
def test_refusals(
    db: Database, nics: list[dict[str, Any]], kw: dict[str, Any], error: type[DomainError], why: str
) -> None:
    with pytest.raises(error, match=why):
        create(db, "vmx", *nics, **kw)
    with db.reading() as s:  # nothing half-written
        assert s.query(VmNic).count() == 0


def test_a_tap_serves_one_vm_and_names_are_unique(db: Database) -> None:
    create(db, "vm1", {"backend": "tap", "tap": "tap1"})
    with pytest.raises(InUse, match="already used"):
        create(db, "vm2", {"backend": "tap", "tap": "tap1"})
    with pytest.raises(NameTaken):
        create(db, "vm1")
    with pytest.raises(NameTaken, match=r"'vm1'.*RFC 4343"):  # host names ignore case
        create(db, "VM1")


def test_stored_vm_turns_back_into_the_qemu_command_line(db: Database) -> None:
    vm, _ = create(
        db,
        "vm1",
        {"backend": "bridge", "bridge": "br0", "mac": "52:54:00:aa:00:01"},
        {
            "backend": "user",
            "model": "e1000",
            "mac": "52:54:00:aa:00:02",
            "user": {"forwards": [{"host_port": 5555, "guest_port": 22}]},
        },
        {
            "backend": "socket",
            "model": "rtl8139",
            "mac": "52:54:00:aa:00:03",
            "socket": {"mode": "listen", "port": 41000},
        },
        {"backend": "hub", "model": "pcnet", "mac": "52:54:00:aa:00:04", "hub": 3},
    )
    with db.reading() as s:
        spec = vm_spec(s.get(Vm, vm.id), VmService(s).nics(vm.id))
    argv = qemu_argv(spec, "qemu-system-x86_64", Accelerator.TCG)
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == [
        f"tap,id=net0,ifname={vm_tap_name(vm.id, 0)},script=no,downscript=no,vhost=off",
        "user,id=net1,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,hostfwd=tcp:127.0.0.1:5555-:22",
        "socket,id=net2,listen=127.0.0.1:41000",
        "hubport,id=net3,hubid=3",
    ]
    assert argv[argv.index("-kernel") + 1] == "/k/vmlinuz"


def test_host_facts_from_the_capability_probe() -> None:
    caps = {
        "qemu": {"nic_models": [{"model": "e1000"}, {"model": "virtio-net-pci"}]},
        "vhost_net": {"available": False, "reason": "no /dev/vhost-net"},
        "accelerators": {"kvm": {"available": True, "runs_guests": False}},
    }
    facts = HostFacts.from_capabilities(caps)
    models = frozenset({"e1000", "virtio-net-pci"})
    assert facts == HostFacts(models, "no /dev/vhost-net", False)


def test_a_macvtap_nic_claims_its_link_name_and_needs_a_kernel_that_makes_macvtaps(
    db: Database,
) -> None:
    eth0 = ParentLink("eth0", 2, None, ARPHRD_ETHER, loopback=False)
    body = VmCreate.model_validate_json(
        json.dumps({"name": "mv", "boot": BOOT, "nics": [{"backend": "macvtap", "parent": "eth0"}]})
    )
    lacking = replace(HOST, macvtap_missing="Operation not supported", parents={"eth0": eth0})
    with pytest.raises(Conflict, match="macvtap links") as refused, db.unit_of_work() as s:
        VmService(s).create(body, lacking)
    assert refused.value.kind == "host-lacks-feature"
    with db.unit_of_work() as s:
        vm, (nic,), _ = VmService(s).create(body, replace(HOST, parents={"eth0": eth0}))
        assert (nic.tap_name, nic.options) == (
            macvtap_name(vm.id, 0),
            {"parent": "eth0", "macvtap_mode": "bridge"},
        )
    with db.reading() as s:
        claim = s.get(LinkName, nic.tap_name)
        assert claim is not None and (claim.resource, claim.resource_id) == ("vm", vm.id)
