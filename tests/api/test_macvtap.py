"""The macvtap NIC backend (issue 13 item 5) on the real kernel with a real qemu (SeaBIOS over
an empty disk: no guest kernel is needed to hold the device): the macvtap read back through
pyroute2 (kind, mode, parent, MAC, our mark), qemu holding its /dev/tapN (the device number of
a descriptor in /proc/PID/fd), a macvtap set down by hand brought up again and one deleted by
hand reported on the VM, and the links gone with the VM. Bad parents and bad input are
refused and change nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyroute2 import IPRoute

from app.settings import Settings
from tests.api.test_isolation_api import until
from tests.api.test_tenant_restrictions import assert_forbidden, image, member_of, vm_body
from tests.api.vm_lab import Lab, create, get, settled, wait_vm
from tests.api.vm_lab import lab as lab
from tests.netns_tools import in_namespace, in_netns, ip


def macvtap_link(netns: str, name: str) -> dict[str, Any] | None:
    """A link as netlink reports it: kind, IFLA_MACVLAN_MODE, parent name, MAC, ifalias."""

    def read() -> dict[str, Any] | None:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            (msg,) = ipr.link("get", index=found[0])
            info = msg.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA")
            (parent,) = ipr.link("get", index=msg.get_attr("IFLA_LINK"))
            return {
                "kind": info.get_attr("IFLA_INFO_KIND"),
                "mode": data.get_attr("IFLA_MACVTAP_MODE") if data else None,
                "parent": parent.get_attr("IFLA_IFNAME"),
                "mac": msg.get_attr("IFLA_ADDRESS"),
                "alias": msg.get_attr("IFLA_IFALIAS"),
                "index": msg["index"],
                "up": bool(msg["flags"] & 1),
            }

    return in_namespace(netns, read)


def char_device(netns: str, name: str, index: int) -> int:
    """The macvtap's device number as sysfs mounted in its namespace shows it."""
    text = in_netns(netns, "cat", f"/sys/class/net/{name}/macvtap/tap{index}/dev").stdout
    major, minor = text.strip().split(":")
    return os.makedev(int(major), int(minor))


def held_devices(pid: int) -> set[int]:
    """The device numbers of the character devices qemu holds open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            st = fd.stat()
        except OSError:
            continue
        if st.st_rdev:
            found.add(st.st_rdev)
    return found


def lan_parents(netns: str, *names: str) -> None:
    """Ethernet links to put macvtaps on: veths whose peers stay in the namespace."""
    for name in names:
        ip(netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip(netns, "link", "set", name, "up")
        ip(netns, "link", "set", f"{name}p", "up")


@pytest.mark.timeout(180)
def test_macvtap_nics_are_made_handed_to_qemu_watched_and_removed(lab: Lab) -> None:
    lan_parents(lab.netns, "eth0", "eth1")
    with lab.app() as client:
        client.app.state.vm_worker.resync_interval = 0.3  # type: ignore[attr-defined]
        nics = [
            {"backend": "macvtap", "parent": "eth0", "macvtap_mode": None},  # null: bridge
            {"backend": "macvtap", "parent": "eth1", "macvtap_mode": "vepa", "model": "e1000"},
        ]
        vm = create(lab, client, nics=nics)
        vm = wait_vm(client, vm["id"], settled("running"), timeout=60)
        assert [(n["parent"], n["macvtap_mode"]) for n in vm["nics"]] == [
            ("eth0", "bridge"),
            ("eth1", "vepa"),
        ]
        names = [n["tap_name"] for n in vm["nics"]]
        for nic, parent, mode in zip(vm["nics"], ("eth0", "eth1"), ("bridge", "vepa"), strict=True):
            link = macvtap_link(lab.netns, nic["tap_name"])
            assert link is not None, nic
            assert (link["kind"], link["mode"], link["parent"]) == ("macvtap", mode, parent)
            assert link["mac"] == nic["mac"] and link["up"]
            assert link["alias"] == f"kvmnetd:vm:{vm['id']}"  # ours, as a bridge NIC's tap
            device = char_device(lab.netns, nic["tap_name"], link["index"])
            assert device in held_devices(vm["pid"]), "qemu does not hold the macvtap's device"
        argv = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().split(b"\0")
        netdevs = [a.decode() for a in argv if a.startswith(b"tap,id=net")]
        assert len(netdevs) == 2 and all(",fd=" in a for a in netdevs), netdevs
        interfaces = {i["name"]: i for i in client.get("/v1/host/interfaces").json()}
        assert interfaces[names[0]]["managed_by"] == {"resource": "vm", "id": vm["id"]}

        # drift: set down by hand, brought up again; deleted by hand, reported on the VM
        ip(lab.netns, "link", "set", names[0], "down")
        until(lambda: (macvtap_link(lab.netns, names[0]) or {}).get("up") is True, 10, "up")
        ip(lab.netns, "link", "del", names[1])
        until(lambda: "deleted by hand" in (get(client, vm["id"])["status_reason"] or ""), 10)
        assert names[1] in get(client, vm["id"])["status_reason"]

        r = client.delete(f"/v1/vms/{vm['id']}?force=true&wait=30")
        assert r.status_code in (202, 204), r.text
        until(lambda: client.get(f"/v1/vms/{vm['id']}").status_code == 404, 30, "VM gone")
    assert macvtap_link(lab.netns, names[0]) is None  # the link goes with the VM
    assert not Path(f"/proc/{vm['pid']}").exists()
    assert macvtap_link(lab.netns, "eth0") is not None  # its parent stays


def _vm(nic: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "mv",
        "memory_mib": 32,
        "power_state": "stopped",
        "boot": {"disk": "/dev/null"},
        "nics": [nic],
    }


def test_bad_parents_are_409_and_bad_input_422_and_nothing_changes(
    api: TestClient, netns: str, settings: Settings
) -> None:
    lan_parents(netns, "eth0")
    _, member = member_of(api)  # a project's member: the host's LAN is the operator's
    nic = {"backend": "macvtap", "parent": "eth0"}
    answer = api.post("/v1/vms", json=vm_body(image(settings), nics=[nic]), headers=member)
    assert_forbidden(answer, "nics[0].backend")
    r = api.post("/v1/bridges?wait=10", json={"name": "br0"})
    assert r.status_code == 201, r.text
    r = api.post("/v1/taps?wait=10", json={"name": "tap0"})
    assert r.status_code == 201, r.text
    ip(netns, "link", "set", "eth0p", "master", "br0")  # a (foreign) port of our bridge
    refused = {
        "nope0": "no such interface",
        "lo": "loopback",
        "br0": "kvmnetd's own links",
        "tap0": "kvmnetd's own links",
        "eth0p": "a port of 'br0'",
    }
    for parent, reason in refused.items():
        r = api.post("/v1/vms", json=_vm({"backend": "macvtap", "parent": parent}))
        assert r.status_code == 409, (parent, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert reason in r.json()["detail"], (parent, r.text)
    invalid = [
        {"backend": "macvtap"},
        {"backend": "macvtap", "parent": None},
        {"backend": "macvtap", "parent": ""},
        {"backend": "macvtap", "parent": "a" * 16},  # never truncated
        {"backend": "macvtap", "parent": "eth0/../x"},
        {"backend": "macvtap", "parent": "eth0", "macvtap_mode": "source"},
        {"backend": "macvtap", "parent": "eth0", "macvtap_mode": 1},
        {"backend": "macvtap", "parent": ["eth0"]},
        {"backend": "macvtap", "parent": "eth0", "isolated": True},
        {"backend": "macvtap", "parent": "eth0", "port_security": True},
        {"backend": "macvtap", "parent": "eth0", "queues": 2},  # one descriptor: one queue
        {"backend": "bridge", "bridge": "br0", "parent": "eth0"},
        {"backend": "bridge", "bridge": "br0", "macvtap_mode": "bridge"},
    ]
    for nic in invalid:
        r = api.post("/v1/vms", json=_vm(nic))
        assert r.status_code == 422, (nic, r.text)
    assert api.get("/v1/vms").json()["items"] == []
    kinds = in_namespace(netns, _kinds)
    assert "macvtap" not in kinds.values(), kinds

    # a good one, stopped: stored as asked, no link until it starts
    r = api.post("/v1/vms", json=_vm({"backend": "macvtap", "parent": "eth0"}))
    assert r.status_code == 202, r.text
    (nic,) = r.json()["nics"]
    assert (nic["parent"], nic["macvtap_mode"], nic["port_security"]) == ("eth0", "bridge", False)
    assert nic["tap_name"].startswith("mv") and len(nic["tap_name"]) <= 15
    assert "macvtap" not in in_namespace(netns, _kinds).values()
    caps = api.get("/v1/host/capabilities").json()
    assert caps["links"]["macvtap"]["available"] is True, caps["links"]
    # and one added to that stopped VM (its parent looked up as at create)
    vm_id = r.json()["id"]
    added = api.post(f"/v1/vms/{vm_id}/nics", json={"backend": "macvtap", "parent": "eth0"})
    assert added.status_code == 202, added.text
    assert (added.json()["parent"], added.json()["index"]) == ("eth0", 1)
    nope = api.post(f"/v1/vms/{vm_id}/nics", json={"backend": "macvtap", "parent": "lo"})
    assert nope.status_code == 409 and "loopback" in nope.json()["detail"], nope.text


def _kinds() -> dict[str, str | None]:
    with IPRoute() as ipr:
        result = {}
        for msg in ipr.link("dump"):
            info = msg.get_attr("IFLA_LINKINFO")
            result[msg.get_attr("IFLA_IFNAME")] = info.get_attr("IFLA_INFO_KIND") if info else None
        return result
