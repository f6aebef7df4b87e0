"""Rate limits of a VM NIC through the API (issue 13): set with the VM, read back from the
kernel through pyroute2 while qemu runs (SeaBIOS over an empty disk: no guest kernel needed
for tc on its tap), changed by PATCH /v1/vms/{id}/nics/{index} on the running qemu without a
restart, repaired after a `tc qdisc del` by hand, gone with the VM's taps; and refused with
422 (nothing changed) when they do not make sense."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.domain.rate_limits import ifb_name
from tests.api.test_isolation_api import until
from tests.api.vm_lab import Lab, create, get, settled, wait_vm
from tests.api.vm_lab import lab as lab
from tests.host.test_rate_limits import kernel_view
from tests.netns_tools import in_netns, links


def root_rate(ns: str, tap: str) -> int | None:
    root = kernel_view(ns, tap)["root"]
    return None if root is None else int(root[1])


@pytest.mark.timeout(180)
def test_limits_follow_the_nic_on_a_running_vm(lab: Lab) -> None:
    with lab.app() as client:
        client.app.state.vm_worker.resync_interval = 0.5  # type: ignore[attr-defined]
        r = client.post("/v1/bridges?wait=10", json={"name": "br0"})
        assert r.status_code == 201, r.text
        nics = [
            {"backend": "bridge", "bridge": "br0", "ingress_kbps": 10000, "egress_kbps": 2000},
            {"backend": "bridge", "bridge": "br0"},
        ]
        vm = create(lab, client, nics=nics)
        vm = wait_vm(client, vm["id"], settled("running"), timeout=60)
        limited, free = (n["tap_name"] for n in vm["nics"])
        shown = {k: vm["nics"][0][k] for k in ("ingress_kbps", "egress_kbps", "burst_kib")}
        assert shown == {"ingress_kbps": 10000, "egress_kbps": 2000, "burst_kib": None}
        view = kernel_view(lab.netns, limited)
        assert view["root"][:2] == ("tbf", 10000 * 125)
        assert view["ingress"] and view["ifb"] is not None and view["ifb"][2] == [2000 * 125]
        assert kernel_view(lab.netns, free) == {"root": None, "ingress": [], "ifb": None}
        pid = vm["pid"]

        # changed on the running qemu: no restart, no restart_pending
        url = f"/v1/vms/{vm['id']}/nics/0?wait=20"
        r = client.patch(url, json={"ingress_kbps": 20000, "egress_kbps": None})
        assert r.status_code == 200, r.text
        vm = r.json()
        assert vm["pid"] == pid and vm["restart_pending"] is False
        assert vm["nics"][0]["ingress_kbps"] == 20000 and vm["nics"][0]["egress_kbps"] is None
        assert root_rate(lab.netns, limited) == 20000 * 125
        assert kernel_view(lab.netns, limited)["ingress"] == []
        assert ifb_name(limited) not in links(lab.netns)
        r = client.patch(url, json={"egress_kbps": 4000, "burst_kib": 32})
        assert r.status_code == 200, r.text
        assert kernel_view(lab.netns, limited)["ifb"][2] == [4000 * 125]

        # drift: the qdiscs deleted by hand come back at the next check of the taps
        in_netns(lab.netns, "tc", "qdisc", "del", "dev", limited, "root")
        in_netns(lab.netns, "tc", "qdisc", "del", "dev", limited, "ingress")
        until(lambda: root_rate(lab.netns, limited) == 20000 * 125, 10, "root tbf back")
        until(lambda: kernel_view(lab.netns, limited)["ingress"] != [], 10, "redirect back")

        # bad input changes nothing
        before = get(client, vm["id"])
        for body in (
            {"mtu": 1400},
            {"ingress_kbps": 7},
            {"ingress_kbps": "100"},
            {"ingress_kbps": True},
            {"ingress_kbps": 1.5},
            {"burst_kib": 1},
            {"ingress_kbps": None, "egress_kbps": None},  # the burst would be left alone
            {"egress_kbps": 8, "burst_kib": 1048576},  # 1 GiB at 1000 bytes/s
            None,
        ):
            r = client.patch(f"/v1/vms/{vm['id']}/nics/0", json=body)
            assert r.status_code == 422, (body, r.text)
        assert client.patch(f"/v1/vms/{vm['id']}/nics/2", json={}).status_code == 404
        r = client.patch(f"/v1/vms/{vm['id']}/nics/0", json={"mtu": 1400})
        assert "only ingress_kbps, egress_kbps and burst_kib change" in r.text
        after = get(client, vm["id"])
        assert after["generation"] == before["generation"] and after["nics"] == before["nics"]

        # the VM's taps go when it stops, and the ifb with them
        r = client.post(f"/v1/vms/{vm['id']}/kill?wait=30")
        assert r.status_code in (200, 202), r.text
        wait_vm(client, vm["id"], settled("stopped"), timeout=30)
        until(lambda: ifb_name(limited) not in links(lab.netns), 10, "ifb removed")


def nic(**extra: Any) -> dict[str, Any]:
    return {"backend": "bridge", "bridge": "br0", **extra}


def test_nonsense_limits_are_422_at_create(api: TestClient) -> None:
    r = api.post("/v1/bridges?wait=10", json={"name": "br0"})
    assert r.status_code == 201, r.text
    bad: list[dict[str, Any]] = [
        {"backend": "user", "ingress_kbps": 1000},  # no tap of its own
        nic(burst_kib=64),  # a burst without a rate
        nic(egress_kbps=34_000_001),
        nic(ingress_kbps=1000, burst_kib=1, mtu=1500),
        nic(ingress_kbps=1000, mtu=9000, burst_kib=8),  # smaller than one 9000-byte frame
        nic(ingress_kbps=8, burst_kib=4096),  # 4 MiB at 1000 bytes/s: 4194 s
    ]
    for body in bad:
        vm = {"name": "v", "power_state": "stopped", "boot": {"disk": "/x"}, "nics": [body]}
        r = api.post("/v1/vms", json=vm)
        assert r.status_code == 422, (body, r.text)
    assert api.get("/v1/vms").json()["items"] == []
    vm = {
        "name": "v",
        "power_state": "stopped",
        "boot": {"disk": "/x"},
        "nics": [{"backend": "user"}, nic(ingress_kbps=8)],
    }
    r = api.post("/v1/vms?wait=10", json=vm)
    assert r.status_code in (201, 202), r.text
    vm_id = r.json()["id"]
    r = api.patch(f"/v1/vms/{vm_id}/nics/0", json={"egress_kbps": 1000})
    assert r.status_code == 422 and "the user backend" in r.text, r.text
    r = api.patch(f"/v1/vms/{vm_id}/nics/0", json={"egress_kbps": None})
    assert r.status_code == 200, r.text  # nothing to change
    r = api.patch(f"/v1/vms/{vm_id}/nics/1", json={"burst_kib": 2, "ingress_kbps": 16})
    assert r.status_code in (200, 202), r.text
    assert r.json()["nics"][1]["burst_kib"] == 2
    # null in each: the default burst, then no limit at all
    r = api.patch(f"/v1/vms/{vm_id}/nics/1", json={"burst_kib": None})
    assert r.status_code in (200, 202), r.text
    limits = ("ingress_kbps", "egress_kbps", "burst_kib")
    assert [r.json()["nics"][1][k] for k in limits] == [16, None, None]
    r = api.patch(f"/v1/vms/{vm_id}/nics/1", json={"ingress_kbps": None, "egress_kbps": None})
    assert r.status_code in (200, 202), r.text
    assert [r.json()["nics"][1][k] for k in limits] == [None, None, None]


@pytest.mark.timeout(180)
def test_limits_the_kernel_refuses_stay_on_their_nic(lab: Lab) -> None:
    """A link of the ifb's name that is not ours: that NIC's limits are not applied (named
    in the VM's status_reason), the VM runs, the other NIC gets its limits; once the link is
    gone, the next check of the taps applies them and the reason clears."""
    with lab.app() as client:
        client.app.state.vm_worker.resync_interval = 0.5  # type: ignore[attr-defined]
        r = client.post("/v1/bridges?wait=10", json={"name": "br0"})
        assert r.status_code == 201, r.text
        nics = [nic(egress_kbps=3000), nic(egress_kbps=5000)]
        vm = create(lab, client, nics=nics, power_state="stopped")
        blocked, fine = (n["tap_name"] for n in vm["nics"])
        in_netns(lab.netns, "ip", "link", "add", ifb_name(blocked), "type", "ifb")
        r = client.post(f"/v1/vms/{vm['id']}/start?wait=30")
        assert r.status_code in (200, 202), r.text
        vm = wait_vm(client, vm["id"], lambda v: bool(v["status_reason"]), timeout=60)
        assert vm["status"] == "running", vm
        assert f"rate limits not applied: tap {blocked}" in vm["status_reason"]
        assert "not ours" in vm["status_reason"] and fine not in vm["status_reason"]
        assert kernel_view(lab.netns, fine)["ifb"][2] == [5000 * 125]
        assert kernel_view(lab.netns, blocked)["ifb"][1] is None  # the foreign link: untouched
        in_netns(lab.netns, "ip", "link", "del", ifb_name(blocked))
        vm = wait_vm(client, vm["id"], lambda v: v["status_reason"] is None, timeout=20)
        assert kernel_view(lab.netns, blocked)["ifb"][2] == [3000 * 125]
        r = client.post(f"/v1/vms/{vm['id']}/kill?wait=30")
        assert r.status_code in (200, 202), r.text
