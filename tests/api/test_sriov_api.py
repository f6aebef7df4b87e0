"""The sriov NIC backend and /v1/host/sriov on a host without SR-IOV (this machine): the
capability says why, the pool is empty, setting a VF count names the missing PF, an sriov NIC
is refused with the reason (409), a member's is 403, and hostile or null input is 422; nothing
is stored. The working path (an emulated igb's VFs) is proven in the kernel tier
(tests/kernel/nested/test_sriov_daemon.py)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_tenant_restrictions import assert_forbidden, image, member_of, vm_body


def _vm(nic: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "sr",
        "memory_mib": 32,
        "power_state": "stopped",
        "boot": {"disk": "/dev/null"},
        "nics": [nic],
    }


def test_no_sriov_here_refuses_with_the_reason_and_bad_input_is_422(
    api: TestClient, settings: Settings
) -> None:
    caps = api.get("/v1/host/capabilities").json()
    assert caps["sriov"] == {
        "available": False,
        "reason": "no SR-IOV physical function",
        "kernel_config": None,
        "module": None,
    }, caps["sriov"]
    assert api.get("/v1/host/sriov").json() == []
    for count in (2, 2.0):  # JSON Schema's integer: 2.0 is 2 (the fuzzer sends such)
        r = api.put("/v1/host/sriov/eth0", json={"num_vfs": count})
        assert r.status_code == 404, r.text
        assert "not an SR-IOV physical function" in r.json()["detail"]
    for body in (
        {"num_vfs": -1},
        {"num_vfs": 257},
        {"num_vfs": None},
        {"num_vfs": "2"},
        {"num_vfs": 2.5},
        {},
        {"num_vfs": 1, "extra": 1},
        {"num_vfs": True},
    ):
        r = api.put("/v1/host/sriov/eth0", json=body)
        assert r.status_code == 422, (body, r.text)

    _, member = member_of(api)  # a VF is the operator's hardware
    nic = {"backend": "sriov"}
    answer = api.post("/v1/vms", json=vm_body(image(settings), nics=[nic]), headers=member)
    assert_forbidden(answer, "nics[0].backend")

    for nic in ({"backend": "sriov"}, {"backend": "sriov", "pf": "eth0", "vf_vlan": 100}):
        r = api.post("/v1/vms", json=_vm(nic))
        assert r.status_code == 409, (nic, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "SR-IOV physical function" in r.json()["detail"], r.text
    invalid = [
        {"backend": "sriov", "vf_vlan": 0},
        {"backend": "sriov", "vf_vlan": 4095},
        {"backend": "sriov", "vf_vlan": "100"},
        {"backend": "sriov", "pf": ""},
        {"backend": "sriov", "pf": "a" * 16},  # never truncated
        {"backend": "sriov", "pf": "eth0/../x"},
        {"backend": "sriov", "spoof_check": "yes"},
        {"backend": "sriov", "trust": 1},
        {"backend": "sriov", "model": "e1000"},  # the guest device is the VF itself
        {"backend": "sriov", "queues": 2},
        {"backend": "sriov", "mtu": 9000},
        {"backend": "sriov", "vhost": "on"},
        {"backend": "sriov", "isolated": True},
        {"backend": "sriov", "port_security": True},
        {"backend": "sriov", "ingress_kbps": 1000},
        {"backend": "sriov", "hub": 1},
        {"backend": "bridge", "bridge": "br0", "pf": "eth0"},
        {"backend": "bridge", "bridge": "br0", "vf_vlan": 10},
        {"backend": "user", "spoof_check": False},
        {"backend": "user", "trust": True},
    ]
    for nic in invalid:
        r = api.post("/v1/vms", json=_vm(nic))
        assert r.status_code == 422, (nic, r.text)
    for nic in (
        {
            "backend": "sriov",
            "pf": None,
            "vf_vlan": None,
            "spoof_check": None,
            "trust": None,
            "model": None,
        },
    ):
        r = api.post("/v1/vms", json=_vm(nic))  # null is "not given": still no PF here
        assert r.status_code == 409, (nic, r.text)
    assert api.get("/v1/vms").json()["items"] == []
