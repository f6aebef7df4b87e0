"""POST/DELETE /v1/vms/{id}/nics with real qemu (no guest: SeaBIOS over an empty disk) in a
throwaway namespace: a stopped VM stores its NIC changes for its next start; a running one
gets a NIC hot-plugged (its tap read back through netlink, the device through QMP
query-pci and qom-list), keeps it across a daemon restart (qemu re-adopted, nothing
re-plugged), and a NIC whose device the guest never releases says so on the VM. The guest's
own view (a new interface, DHCP, ping, and its removal) is tests/e2e/test_hotplug_guest.py."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from app.domain.pcie import SPARE_ROOT_PORTS
from app.host.qemu.identity import LaunchRecord
from app.host.qemu.rundir import RunPaths
from tests.api.vm_lab import Lab, create, get, settled, wait_vm
from tests.api.vm_lab import lab as lab
from tests.netns_tools import links

NIC = {"backend": "bridge", "bridge": "br0"}


def _qmp(client: TestClient, vm_id: str, command: str, **args: object) -> Any:
    """A QMP command on the VM's qemu, through the worker's own connection (qemu serves
    one monitor client at a time)."""
    return client.app.state.vm_worker.execute(vm_id, command, args or None)  # type: ignore[attr-defined]


def _pci_nics(client: TestClient, vm_id: str) -> dict[str, int]:
    """qom id -> PCI slot of every device qemu's query-pci shows with an id nic<i>."""
    found = {}
    for bus in _qmp(client, vm_id, "query-pci"):
        for device in bus["devices"]:
            if device.get("qdev_id", "").startswith("nic"):
                found[device["qdev_id"]] = device["slot"]
    return found


def _peripherals(client: TestClient, vm_id: str) -> set[str]:
    listing = _qmp(client, vm_id, "qom-list", path="/machine/peripheral")
    return {item["name"] for item in listing if item["name"].startswith("nic")}


def _bridge(client: TestClient) -> None:
    answer = client.post("/v1/bridges?wait=10", json={"name": "br0"})
    assert answer.status_code == 201, answer.text


def test_a_stopped_vm_stores_nic_changes_with_stable_indexes(lab: Lab) -> None:
    with lab.app() as client:
        _bridge(client)
        vm = create(lab, client, power_state="stopped", nics=[NIC])
        vm = wait_vm(client, vm["id"], settled("stopped"))
        # any backend on a stopped VM (a user NIC cannot be hot-plugged, but it is stored)
        added = client.post(f"/v1/vms/{vm['id']}/nics?wait=10", json={"backend": "user"})
        assert added.status_code == 201, added.text
        assert added.json()["index"] == 1 and added.json()["backend"] == "user"
        third = client.post(f"/v1/vms/{vm['id']}/nics?wait=10", json=NIC).json()
        assert third["index"] == 2 and third["tap_name"].endswith("-2")
        assert client.delete(f"/v1/vms/{vm['id']}/nics/1?wait=10").status_code == 200
        gone = client.delete(f"/v1/vms/{vm['id']}/nics/{third['id']}?wait=10")  # by id
        assert gone.status_code == 200, gone.text
        assert [n["index"] for n in gone.json()["nics"]] == [0]
        # an index is never given twice while the VM exists
        again = client.post(f"/v1/vms/{vm['id']}/nics?wait=10", json=NIC).json()
        assert again["index"] == 3
        missing = client.delete(f"/v1/vms/{vm['id']}/nics/2")
        assert missing.status_code == 404, missing.text
        # an index is ASCII digits: "③", "²" and Arabic-Indic 3 are no NIC (never a 500)
        for ref in ("\u2462", "\u00b2", "\u0663", "-3", "3.0"):
            for method, extra in (("DELETE", {}), ("PATCH", {"json": {"ingress_kbps": 100}})):
                r = client.request(method, f"/v1/vms/{vm['id']}/nics/{ref}", **extra)
                assert r.status_code == 404, (method, ref, r.text)
            link = client.put(f"/v1/vms/{vm['id']}/nics/{ref}/link", json={"up": False})
            assert link.status_code == 404, (ref, link.text)
        bad = client.post(f"/v1/vms/{vm['id']}/nics", json={"backend": "bridge"})
        assert bad.status_code == 422, bad.text  # the create path's validation
        after = get(client, vm["id"])
        assert [n["index"] for n in after["nics"]] == [0, 3]
        assert after["status"] == "stopped" and after["restart_pending"] is False


def test_a_running_vm_gets_a_nic_plugged_kept_across_a_restart_and_unplugged(lab: Lab) -> None:
    with lab.app() as client:
        _bridge(client)
        vm = create(lab, client, nics=[NIC], machine="pc")
        vm = wait_vm(client, vm["id"], settled("running"))
        refused = client.post(f"/v1/vms/{vm['id']}/nics", json={"backend": "user"})
        assert refused.status_code == 409, refused.text
        assert "cannot be plugged into a running qemu" in refused.json()["detail"]

        started = time.monotonic()
        answer = client.post(f"/v1/vms/{vm['id']}/nics?wait=20", json=NIC)
        assert answer.status_code == 201, answer.text
        print(f"hotplug POST to settled (no guest): {time.monotonic() - started:.2f} s")
        nic = answer.json()
        assert nic["index"] == 1
        slots = _pci_nics(client, vm["id"])
        assert set(slots) == {"nic0", "nic1"} and slots["nic0"] != slots["nic1"], slots
        tap = links(lab.netns)[nic["tap_name"]]
        assert tap.kind == "tun" and tap.master == "br0" and tap.up
        devices = client.get(f"/v1/vms/{vm['id']}/devices").json()
        assert [(d["id"], d["mac"]) for d in devices][1] == ("nic1", nic["mac"])
        vm = get(client, vm["id"])
        assert vm["status"] == "running" and vm["status_reason"] is None
        assert vm["restart_pending"] is False
        pid = vm["pid"]

    with lab.app() as client:  # a daemon restart: qemu re-adopted with its hot-plugged NIC
        vm = wait_vm(client, vm["id"], settled("running"))
        assert vm["pid"] == pid and vm["restart_pending"] is False, vm
        assert vm["status_reason"] is None, vm
        assert _peripherals(client, vm["id"]) == {"nic0", "nic1"}
        # its launch record still shows the launch argv (one NIC) and was not taken as drift
        record = LaunchRecord.read(RunPaths(lab.base / "run" / "vms" / vm["id"]))
        assert record is not None and record.pid == pid
        assert "nic1" not in " ".join(record.argv)

        client.app.state.vm_worker.unplug_timeout = 1.0  # type: ignore[attr-defined]
        answer = client.delete(f"/v1/vms/{vm['id']}/nics/{nic['id']}?wait=20")
        assert answer.status_code == 200, answer.text
        vm = answer.json()
        assert [n["index"] for n in vm["nics"]] == [0]
        # SeaBIOS is no ACPI OS: nothing releases the device, and the VM says so
        assert "has not released the device" in (vm["status_reason"] or ""), vm
        assert _peripherals(client, vm["id"]) == {"nic0", "nic1"}

        # its next start has exactly its stored NICs, and the removed NIC's tap is gone
        stopped = client.post(f"/v1/vms/{vm['id']}/stop?wait=20")
        assert stopped.status_code == 200, stopped.text
        assert nic["tap_name"] not in links(lab.netns)
        answer = client.post(f"/v1/vms/{vm['id']}/start?wait=20")
        assert answer.status_code == 200, answer.text
        assert _peripherals(client, vm["id"]) == {"nic0"}
        assert answer.json()["status_reason"] is None


def test_a_network_booted_vm_keeps_a_nic_to_boot_from(lab: Lab) -> None:
    """A VM that boots from the network cannot lose its last NIC with an iPXE option ROM
    (409, nothing changed); one of two can go, and the last can once it boots otherwise."""
    with lab.app() as client:
        _bridge(client)
        vm = create(
            lab,
            client,
            power_state="stopped",
            boot={"network": True},
            nics=[NIC, {"backend": "user", "model": "e1000"}],
        )
        vm = wait_vm(client, vm["id"], settled("stopped"))
        gone = client.delete(f"/v1/vms/{vm['id']}/nics/0?wait=10")
        assert gone.status_code == 200, gone.text
        last = client.delete(f"/v1/vms/{vm['id']}/nics/1?wait=10")
        assert last.status_code == 409, last.text
        assert last.headers["content-type"] == "application/problem+json"
        assert "boots from the network through NIC 1" in last.json()["detail"]
        assert [n["index"] for n in get(client, vm["id"])["nics"]] == [1]
        patched = client.patch(
            f"/v1/vms/{vm['id']}?wait=10", json={"boot": {"disk": lab.disk("empty.img")}}
        )
        assert patched.status_code == 200, patched.text
        assert client.delete(f"/v1/vms/{vm['id']}/nics/1?wait=10").status_code == 200


def _behind_root_ports(client: TestClient, vm_id: str) -> dict[str, str]:
    """nic<i> -> the device qemu says its bus belongs to (QOM parent_bus: .../rp1/rp1)."""
    found = {}
    for nic in sorted(_peripherals(client, vm_id)):
        path = f"/machine/peripheral/{nic}"
        bus = _qmp(client, vm_id, "qom-get", path=path, property="parent_bus")
        found[nic] = bus.rstrip("/").split("/")[-2]
    return found


def test_a_running_q35_vm_gets_nics_plugged_on_its_spare_root_ports(lab: Lab) -> None:
    """q35 (no guest: SeaBIOS): its NIC sits on a PCIe root port of its own; NICs added while
    it runs take the spare ports (app.domain.pcie), and one more than the spares waits for
    the next start, said on the VM."""
    with lab.app() as client:
        _bridge(client)
        vm = create(lab, client, nics=[NIC], machine="q35")
        vm = wait_vm(client, vm["id"], settled("running"))
        assert _behind_root_ports(client, vm["id"]) == {"nic0": "rp0"}
        for index in range(1, SPARE_ROOT_PORTS + 1):
            answer = client.post(f"/v1/vms/{vm['id']}/nics?wait=20", json=NIC)
            assert answer.status_code == 201, answer.text
            assert answer.json()["index"] == index
        behind = _behind_root_ports(client, vm["id"])
        assert behind == {f"nic{i}": f"rp{i}" for i in range(SPARE_ROOT_PORTS + 1)}
        assert get(client, vm["id"])["status_reason"] is None
        extra = client.post(f"/v1/vms/{vm['id']}/nics?wait=20", json=NIC)
        assert extra.status_code == 201, extra.text
        vm = get(client, vm["id"])
        assert "no free PCIe root port" in (vm["status_reason"] or ""), vm
        # its next start: every NIC on a port of its own, the spares empty again
        assert client.post(f"/v1/vms/{vm['id']}/stop?wait=20").status_code == 200
        started = client.post(f"/v1/vms/{vm['id']}/start?wait=20")
        assert started.status_code == 200, started.text
        behind = _behind_root_ports(client, vm["id"])
        assert behind == {f"nic{i}": f"rp{i}" for i in range(SPARE_ROOT_PORTS + 2)}, started.text
        assert get(client, vm["id"])["status_reason"] is None
