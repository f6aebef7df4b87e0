"""Least privilege by default (issue 9 item 8): every qemu runs as the unprivileged system
user `kvmnetd-qemu` (created by `make run`/`make test`/deploy/install.sh, here by the
session fixture) in qemu's strict seccomp sandbox, its bridge taps, run directory and QMP
socket are that user's, root only for a VM that asks (`run_as: {"uid": 0}`), and the API
shows who each qemu really is (from /proc). A missing user is an error on the VM, never a
silent fallback to root. Real qemu without a guest (SeaBIOS over an empty disk)."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.api.vm_lab import Lab, create, settled, wait_vm
from tests.api.vm_lab import lab as lab
from tests.host.test_qemu import live_pids_with_uuid
from tests.netns_tools import links


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Real, effective, saved and filesystem ids of a process, and its Seccomp mode."""
    fields: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Seccomp", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


@pytest.fixture
def client(lab: Lab) -> Iterator[TestClient]:
    with lab.app() as c:
        yield c


def test_qemu_runs_as_the_unprivileged_user_in_its_sandbox(
    lab: Lab, client: TestClient, qemu_user: str
) -> None:
    user = pwd.getpwnam(qemu_user)
    answer = client.post("/v1/bridges?wait=20", json={"name": "br0"})
    assert answer.status_code == 201, answer.text
    vm = create(lab, client, nics=[{"backend": "bridge", "bridge": "br0"}])
    vm = wait_vm(client, vm["id"], settled("running"))
    assert vm["run_as"] is None  # nothing asked: the default user
    assert vm["user"] == {"uid": user.pw_uid, "gid": user.pw_gid, "name": qemu_user}

    ids = proc_ids(vm["pid"])
    assert ids["Uid"] == [user.pw_uid] * 4 and ids["Gid"] == [user.pw_gid] * 4
    assert ids.get("Groups", []) == []  # root's supplementary groups are dropped
    assert ids["Seccomp"] == [2]  # the filter is on (-sandbox on,...)

    run_dir = lab.base / "run" / "vms" / vm["id"]
    st = run_dir.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, user.pw_gid, 0o700)
    qmp = (run_dir / "qmp.sock").stat()
    assert stat.S_ISSOCK(qmp.st_mode) and qmp.st_uid == user.pw_uid

    tap = links(lab.netns)[vm["nics"][0]["tap_name"]]
    assert tap.info.get("IFLA_TUN_OWNER") == user.pw_uid
    assert tap.info.get("IFLA_TUN_GROUP") == user.pw_gid


def test_root_only_when_the_vm_asks(lab: Lab, client: TestClient) -> None:
    vm = create(lab, client, run_as={"uid": 0})
    vm = wait_vm(client, vm["id"], settled("running"))
    assert vm["run_as"] == {"uid": 0, "gid": 0}
    assert vm["user"] == {"uid": 0, "gid": 0, "name": "root"}
    ids = proc_ids(vm["pid"])
    assert ids["Uid"] == [0] * 4 and ids["Gid"] == [0] * 4
    assert ids["Seccomp"] == [2]  # root keeps the sandbox (elevateprivileges=deny...)


def test_patch_run_as_applies_at_the_next_start(lab: Lab, client: TestClient) -> None:
    vm = create(lab, client, run_as={"uid": 0})
    vm = wait_vm(client, vm["id"], settled("running"))
    answer = client.patch(f"/v1/vms/{vm['id']}?wait=10", json={"run_as": None})
    assert answer.status_code == 200, answer.text
    patched: dict[str, Any] = answer.json()
    assert patched["run_as"] is None and patched["restart_pending"] is True
    assert patched["user"]["uid"] == 0 and patched["pid"] == vm["pid"]  # still the old qemu
    client.post(f"/v1/vms/{vm['id']}/kill?wait=10")
    answer = client.post(f"/v1/vms/{vm['id']}/start?wait=20")
    assert answer.status_code == 200, answer.text
    started = answer.json()
    assert started["status"] == "running", started
    assert started["restart_pending"] is False and started["user"]["name"] == "kvmnetd-qemu"
    assert proc_ids(started["pid"])["Uid"][0] == pwd.getpwnam("kvmnetd-qemu").pw_uid


def test_a_missing_qemu_user_fails_the_vm_never_runs_it_as_root(lab: Lab) -> None:
    settings = lab.settings.model_copy(update={"qemu_user": "kvmnetd-nosuchuser"})
    app = create_app(settings, token="test-token", host_netns=lab.netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(10)
        vm = create(lab, client)
        vm = wait_vm(client, vm["id"], settled("error"))
        assert "kvmnetd-nosuchuser" in vm["status_reason"] and "useradd" in vm["status_reason"]
        assert vm["pid"] is None and vm["user"] is None
        assert live_pids_with_uuid({vm["id"]}) == []
        # a VM that explicitly asks for a user still runs
        other = create(lab, client, run_as={"uid": 65534, "gid": 65534})
        other = wait_vm(client, other["id"], settled("running"))
        assert proc_ids(other["pid"])["Uid"][0] == 65534
    assert os.geteuid() == 0  # the test itself runs as root: the refusal is the daemon's
