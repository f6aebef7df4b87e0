"""PATCH /v1/vms/{id}: what every field and null means, refusals that change nothing, and
that a PATCH is no power intent (it never starts a stopped VM). Stopped VMs: no qemu runs,
except in the restart-policy test, where a policy change must act on a crashed VM's next
exit, not start it now."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.vm_lab import Lab, create, get, settled, wait_vm
from tests.api.vm_lab import lab as lab


@pytest.fixture
def client(lab: Lab) -> Any:
    with lab.app() as c:
        yield c


def stopped_vm(lab: Lab, client: TestClient, **extra: Any) -> dict[str, Any]:
    vm = create(
        lab,
        client,
        power_state="stopped",
        vcpus=2,
        memory_mib=64,
        machine="q35",
        accelerator="tcg",
        restart_policy="always",
        run_as={"uid": 0},
        **extra,
    )
    return wait_vm(client, vm["id"], settled("stopped"))


NULL_MEANS = {
    "vcpus": 1,
    "memory_mib": 256,
    "machine": "pc",
    "accelerator": "auto",
    "restart_policy": "never",
    "run_as": None,
}


@pytest.mark.parametrize("name", sorted(NULL_MEANS))
def test_null_sets_the_create_default(lab: Lab, client: TestClient, name: str) -> None:
    vm = stopped_vm(lab, client)
    assert vm[name] != NULL_MEANS[name]
    answer = client.patch(f"/v1/vms/{vm['id']}?wait=10", json={name: None})
    assert answer.status_code == 200, answer.text
    after = answer.json()
    assert after[name] == NULL_MEANS[name]
    assert after["generation"] == vm["generation"] + 1
    assert after["status"] == "stopped" and after["power_state"] == "stopped"  # not started
    assert after["restart_pending"] is False  # nothing runs


def test_values_are_stored_and_an_empty_or_same_patch_changes_nothing(
    lab: Lab, client: TestClient
) -> None:
    vm = stopped_vm(lab, client)
    boot = {"disk": lab.disk("other.img"), "snapshot": True}
    body = {"vcpus": 3, "memory_mib": 96, "boot": boot, "run_as": {"uid": 65534, "gid": 65534}}
    answer = client.patch(f"/v1/vms/{vm['id']}?wait=10", json=body)
    assert answer.status_code == 200, answer.text
    after = answer.json()
    assert (after["vcpus"], after["memory_mib"]) == (3, 96)
    assert after["run_as"] == {"uid": 65534, "gid": 65534}
    shown = client.get(f"/v1/vms/{vm['id']}").json()["boot"]  # what it boots can be read back
    assert shown == {"kernel": None, "initrd": None, "cmdline": None, "network": False, **boot}
    for same in ({}, body):
        again = client.patch(f"/v1/vms/{vm['id']}", json=same)
        assert again.status_code == 200, again.text
        assert again.json()["generation"] == after["generation"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"boot": None}, "boot cannot be null"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": "64"}, "memory_mib"),
        ({"name": "other"}, "name"),  # not changeable: unknown fields are refused
        ({"boot": {"kernel": "relative/path"}}, "absolute path"),
        ({"boot": {"initrd": "/x"}}, "exactly one of a kernel"),
        ({"machine": "isapc"}, "no PCI bus"),  # the VM's virtio NIC cannot be on isapc
        ({"run_as": {"gid": 0}}, "uid"),
    ],
)
def test_bad_values_are_refused_and_change_nothing(
    lab: Lab, client: TestClient, body: dict[str, Any], detail: str
) -> None:
    vm = stopped_vm(lab, client, nics=[{"backend": "user"}])
    answer = client.patch(f"/v1/vms/{vm['id']}", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert detail in answer.text
    after = get(client, vm["id"])
    assert {k: after[k] for k in ("generation", "machine", "vcpus", "memory_mib", "run_as")} == {
        k: vm[k] for k in ("generation", "machine", "vcpus", "memory_mib", "run_as")
    }


def test_unknown_vm_is_404(client: TestClient) -> None:
    answer = client.patch("/v1/vms/nosuchvm", json={"vcpus": 2})
    assert answer.status_code == 404, answer.text


def test_one_tap_for_two_nics_is_refused(lab: Lab, client: TestClient) -> None:
    """qemu opens a tap once; a second NIC on it made every start fail with EBUSY."""
    tap = client.post("/v1/taps?wait=10", json={"name": "tapdup"})
    assert tap.status_code == 201, tap.text
    nics = [{"backend": "tap", "tap": "tapdup"}, {"backend": "tap", "tap": tap.json()["id"]}]
    body = {"name": "vmdup", "memory_mib": 32, "power_state": "stopped", "nics": nics}
    answer = client.post("/v1/vms", json={**body, "boot": {"disk": lab.disk("empty.img")}})
    assert answer.status_code == 422, answer.text
    assert "nics[0] and nics[1]" in answer.json()["detail"]
    assert "tapdup" in answer.json()["detail"]
    assert client.get("/v1/vms").json()["items"] == []
