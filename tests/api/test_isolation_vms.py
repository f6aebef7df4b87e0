"""Bridge port isolation on a VM's bridge NIC (issue 11): the tap the VM worker makes is an
isolated port of its bridge when the NIC asks, read back with iproute2 while qemu runs
(SeaBIOS over an empty disk: no guest kernel needed for the port), and a change by hand is
repaired at the worker's next check of the VM's taps."""

from __future__ import annotations

import pytest

from tests.api.test_isolation_api import port_isolated, until
from tests.api.vm_lab import Lab, create, settled, wait_vm
from tests.api.vm_lab import lab as lab
from tests.netns_tools import in_netns


@pytest.mark.timeout(180)
def test_a_bridge_nic_asking_for_isolation_gets_an_isolated_tap(lab: Lab) -> None:
    with lab.app() as client:
        client.app.state.vm_worker.resync_interval = 0.5  # type: ignore[attr-defined]
        r = client.post("/v1/bridges?wait=10", json={"name": "br0"})
        assert r.status_code == 201, r.text
        nics = [
            {"backend": "bridge", "bridge": "br0", "isolated": True},
            {"backend": "bridge", "bridge": "br0", "isolated": None},  # null: false
        ]
        vm = create(lab, client, nics=nics)
        assert [n["isolated"] for n in vm["nics"]] == [True, False]
        vm = wait_vm(client, vm["id"], settled("running"), timeout=60)
        one, two = (n["tap_name"] for n in vm["nics"])
        assert port_isolated(lab.netns, one) is True
        assert port_isolated(lab.netns, two) is False
        ports = {p["name"]: p["isolated"] for p in client.get("/v1/bridges/br0").json()["ports"]}
        assert ports == {one: True, two: False}  # the bridge's view: as the kernel says now
        in_netns(lab.netns, "bridge", "link", "set", "dev", one, "isolated", "off")
        until(lambda: port_isolated(lab.netns, one) is True, 10, f"{one} isolated again")
        assert port_isolated(lab.netns, two) is False
        r = client.post(f"/v1/vms/{vm['id']}/kill?wait=30")
        assert r.status_code in (200, 202), r.text
