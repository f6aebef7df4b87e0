"""What a project's member may not ask of the host (app.services.restrictions): each is a
403 `forbidden` naming the field, and nothing is stored; an admin may. A member's boot
files must resolve (symlinks followed, `..` gone) inside the tenants' images directory and
are stored resolved. Stopped VMs: no qemu runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import Network, PortForward, Tap, Vm
from app.db.session import Database
from app.settings import Settings
from tests.tenancy import auth, make_project, make_token

FORBIDDEN = "urn:kvmnetd:problem:forbidden"


def _db(api: TestClient) -> Database:
    db: Database = api.app.state.context.db  # type: ignore[attr-defined]
    return db


def member_of(api: TestClient, name: str = "acme") -> tuple[str, dict[str, str]]:
    """A project and a member token's headers."""
    project = make_project(_db(api), name)
    return project, auth(make_token(_db(api), project, "member"))


def rows(api: TestClient, model: Any, project: str) -> int:
    with _db(api).reading() as session:
        query = select(func.count()).select_from(model).where(model.project_id == project)
        return int(session.scalar(query) or 0)


def image(settings: Settings, name: str = "disk.img") -> str:
    """A file in the tenants' images directory (the default: STATE_DIR/images)."""
    settings.images_dir.mkdir(exist_ok=True)
    path = settings.images_dir / name
    path.write_bytes(b"\0" * 512)
    return str(path)


def vm_body(disk: str, name: str = "vm1", **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory_mib": 32, "boot": {"disk": disk}, "power_state": "stopped"} | (
        extra
    )


def assert_forbidden(answer: Any, field: str) -> None:
    assert answer.status_code == 403, answer.text
    problem = answer.json()
    assert problem["type"] == FORBIDDEN and problem["field"] == field, problem
    assert "for admins only" in problem["detail"] and field in problem["detail"]


def test_run_as_is_for_admins_on_create_and_patch(api: TestClient, settings: Settings) -> None:
    project, member = member_of(api)
    disk = image(settings)
    root = {"uid": 0}
    assert_forbidden(api.post("/v1/vms", json=vm_body(disk, run_as=root), headers=member), "run_as")
    assert rows(api, Vm, project) == 0
    made = api.post("/v1/vms", json=vm_body(disk), headers=member)
    assert made.status_code == 202, made.text
    vm = made.json()
    answer = api.patch(f"/v1/vms/{vm['id']}", json={"run_as": root}, headers=member)
    assert_forbidden(answer, "run_as")
    after = api.get(f"/v1/vms/{vm['id']}").json()
    assert (after["run_as"], after["generation"]) == (None, vm["generation"])
    # null is the unprivileged qemu user: anyone's; an admin gives any uid, also on a
    # member's VM
    assert api.patch(f"/v1/vms/{vm['id']}", json={"run_as": None}, headers=member).is_success
    answer = api.patch(f"/v1/vms/{vm['id']}", json={"run_as": {"uid": 0, "gid": 5}})
    assert answer.is_success and answer.json()["run_as"] == {"uid": 0, "gid": 5}, answer.text
    admins = api.post("/v1/vms", json=vm_body(disk, "vm2", run_as=root))
    assert admins.status_code == 202 and admins.json()["run_as"] == {"uid": 0, "gid": 0}


def test_a_taps_owner_is_for_admins(api: TestClient) -> None:
    project, member = member_of(api)
    for field in ("owner_uid", "owner_gid"):
        answer = api.post("/v1/taps", json={"name": "t1", field: 0}, headers=member)
        assert_forbidden(answer, field)
    assert rows(api, Tap, project) == 0
    made = api.post("/v1/taps", json={"name": "t1", "owner_uid": None}, headers=member)
    assert made.status_code == 202, made.text
    tap = made.json()
    answer = api.patch(f"/v1/taps/{tap['id']}", json={"owner_gid": 0}, headers=member)
    assert_forbidden(answer, "owner_gid")
    after = api.get(f"/v1/taps/{tap['id']}").json()
    assert (after["owner_gid"], after["generation"]) == (None, tap["generation"])
    answer = api.patch(f"/v1/taps/{tap['id']}", json={"owner_uid": 0, "owner_gid": 0})
    assert answer.is_success and answer.json()["owner_uid"] == 0, answer.text
    assert api.post("/v1/taps", json={"name": "t2", "owner_uid": 0}).status_code == 202


def test_a_members_boot_files_lie_in_the_images_directory(
    api: TestClient, settings: Settings, tmp_path: Path
) -> None:
    project, member = member_of(api)
    disk = image(settings)
    images = settings.images_dir
    outside = tmp_path / "secret.img"
    outside.write_bytes(b"\0" * 512)
    (images / "out.img").symlink_to(outside)  # a symlink out of the directory
    (images / "up").symlink_to(tmp_path)  # a directory symlink out of it
    escapes = {
        "disk": [
            str(outside),  # an absolute path elsewhere
            "/etc/hostname",
            f"{images}/../../secret.img",  # `..` out of it
            "../../secret.img",  # relative: taken within it, and out by `..`
            str(images / "out.img"),
            str(images / "up" / "secret.img"),
            str(images),  # the directory itself is no file in it
        ],
        "kernel": ["/etc/hostname", f"{images}/../../secret.img"],
    }
    for field, paths in escapes.items():
        for path in paths:
            answer = api.post(
                "/v1/vms", json=vm_body(path) | {"boot": {field: path}}, headers=member
            )
            assert_forbidden(answer, f"boot.{field}")
            assert str(outside) not in answer.json()["detail"] or path == str(outside)
    boot = {"kernel": disk, "initrd": str(outside)}
    answer = api.post("/v1/vms", json=vm_body(disk) | {"boot": boot}, headers=member)
    assert_forbidden(answer, "boot.initrd")
    assert rows(api, Vm, project) == 0
    # a file missing there is 422 (a missing one elsewhere is still 403: no probing)
    answer = api.post("/v1/vms", json=vm_body(f"{images}/none.img"), headers=member)
    assert answer.status_code == 422, answer.text
    answer = api.post("/v1/vms", json=vm_body(f"{disk}\0"), headers=member)  # a C string
    assert answer.status_code == 422 and "NUL" in answer.json()["detail"], answer.text
    assert rows(api, Vm, project) == 0

    # inside: stored resolved (a relative path is taken within the directory), so a
    # symlink swapped afterwards does not change what qemu opens
    (images / "current.img").symlink_to(disk)
    made = api.post("/v1/vms", json=vm_body("current.img"), headers=member)
    assert made.status_code == 202, made.text
    vm = made.json()
    assert vm["boot"]["disk"] == os.path.realpath(disk)
    (images / "current.img").unlink()
    (images / "current.img").symlink_to(outside)
    assert api.get(f"/v1/vms/{vm['id']}").json()["boot"]["disk"] == os.path.realpath(disk)

    # PATCH: the same check, nothing changed
    answer = api.patch(f"/v1/vms/{vm['id']}", json={"boot": {"disk": str(outside)}}, headers=member)
    assert_forbidden(answer, "boot.disk")
    after = api.get(f"/v1/vms/{vm['id']}").json()
    assert (after["boot"]["disk"], after["generation"]) == (vm["boot"]["disk"], vm["generation"])
    # an admin keeps any path, on its own VMs and a member's, as given
    answer = api.patch(f"/v1/vms/{vm['id']}", json={"boot": {"disk": str(images / "current.img")}})
    assert answer.is_success and answer.json()["boot"]["disk"] == str(images / "current.img")
    admins = api.post("/v1/vms", json=vm_body(str(outside), "vm2"))
    assert admins.status_code == 202 and admins.json()["boot"]["disk"] == str(outside)


def test_socket_nics_of_members_stay_on_loopback_and_in_the_project(
    api: TestClient, settings: Settings
) -> None:
    project, member = member_of(api)
    disk = image(settings)
    mcast = {"backend": "socket", "socket": {"mode": "mcast", "group": "230.0.0.1", "port": 5000}}
    answer = api.post("/v1/vms", json=vm_body(disk, nics=[mcast]), headers=member)
    assert_forbidden(answer, "nics[0].socket.mode")
    assert rows(api, Vm, project) == 0
    assert api.post("/v1/vms", json=vm_body(disk, "vm9", nics=[mcast])).status_code == 202

    listen = {"backend": "socket", "socket": {"mode": "listen"}}
    admins = api.post("/v1/vms", json=vm_body(disk, "web", nics=[listen]))
    assert admins.status_code == 202, admins.text
    own = api.post("/v1/vms", json=vm_body(disk, "web", nics=[listen]), headers=member)
    assert own.status_code == 202, own.text
    # connect: only to a listening NIC of the project's own VMs (another's is unknown)
    admins_id = admins.json()["id"]
    peer = {"backend": "socket", "socket": {"mode": "connect", "peer": f"{admins_id}/0"}}
    answer = api.post("/v1/vms", json=vm_body(disk, "c1", nics=[peer]), headers=member)
    assert answer.status_code == 404, answer.text
    peer["socket"]["peer"] = "web/0"  # type: ignore[index]
    answer = api.post("/v1/vms", json=vm_body(disk, "c1", nics=[peer]), headers=member)
    assert answer.status_code == 202, answer.text


def test_a_members_user_nic_is_restricted(api: TestClient, settings: Settings) -> None:
    project, member = member_of(api)
    disk = image(settings)
    for user in (None, {"restrict": False}):
        nic = {"backend": "user", "user": user}
        answer = api.post("/v1/vms", json=vm_body(disk, nics=[nic]), headers=member)
        assert_forbidden(answer, "nics[0].user.restrict")
        assert "restrict" in answer.json()["detail"] and "10.0.2.2" in answer.json()["detail"]
    assert rows(api, Vm, project) == 0
    forward = {"host_port": 20022, "guest_port": 22}
    nic = {"backend": "user", "user": {"restrict": True, "forwards": [forward]}}
    answer = api.post("/v1/vms", json=vm_body(disk, nics=[nic]), headers=member)
    assert answer.status_code == 202, answer.text
    answer = api.post("/v1/vms", json=vm_body(disk, "vm2", nics=[{"backend": "user"}]))
    assert answer.status_code == 202, answer.text


def test_host_level_fields_of_networks_forwards_and_links(
    api: TestClient, settings: Settings
) -> None:
    """A fixed SNAT address, a forward from a privileged host port and an IPv6 host
    address are an admin's; their unrestricted neighbours (IPv4 addresses, out_interface,
    an unprivileged port) are a member's."""
    project, member = member_of(api)
    bridge = api.post(
        "/v1/bridges", json={"name": "mbr", "addresses": ["fd00:9::1/64"]}, headers=member
    )
    assert_forbidden(bridge, "addresses")
    bridge = api.post(
        "/v1/bridges", json={"name": "mbr", "addresses": ["10.8.0.1/24"]}, headers=member
    )
    assert bridge.status_code == 202, bridge.text
    answer = api.patch(
        f"/v1/bridges/{bridge.json()['id']}", json={"addresses": ["fd00:9::1/64"]}, headers=member
    )
    assert_forbidden(answer, "addresses")
    answer = api.post(
        "/v1/taps", json={"name": "t6", "addresses": ["fd00:8::1/64"]}, headers=member
    )
    assert_forbidden(answer, "addresses")
    assert rows(api, Tap, project) == 0
    assert api.get("/v1/bridges/mbr", headers=member).json()["addresses"] == ["10.8.0.1/24"]

    network = {"name": "n", "bridge": "mbr", "subnet": "10.9.0.0/24"}
    snat = {"snat_address": "192.0.2.7"}
    answer = api.post("/v1/networks", json=network | {"nat": snat}, headers=member)
    assert_forbidden(answer, "nat.snat_address")
    assert rows(api, Network, project) == 0
    made = api.post(
        "/v1/networks", json=network | {"nat": {"out_interface": "eth0"}}, headers=member
    )
    assert made.status_code == 202, made.text
    answer = api.patch(f"/v1/networks/{made.json()['id']}", json={"nat": snat}, headers=member)
    assert_forbidden(answer, "nat.snat_address")
    assert api.get("/v1/networks/n", headers=member).json()["nat"]["snat_address"] is None
    answer = api.patch(f"/v1/networks/{made.json()['id']}", json={"nat": snat})
    assert answer.is_success and answer.json()["nat"]["snat_address"] == "192.0.2.7"

    nic = {"backend": "bridge", "bridge": "mbr"}
    vm = api.post("/v1/vms", json=vm_body(image(settings), nics=[nic]), headers=member)
    assert vm.status_code == 202, vm.text
    forward = {"network": "n", "vm": "vm1", "port": 22, "target_port": 22}
    assert_forbidden(api.post("/v1/port-forwards", json=forward, headers=member), "port")
    batch = {"port_forwards": [forward | {"port": 2222}, forward | {"port": 80, "name": "w"}]}
    assert_forbidden(api.post("/v1/port-forwards/batch", json=batch, headers=member), "port")
    assert rows(api, PortForward, project) == 0
    answer = api.post("/v1/port-forwards", json=forward | {"port": 2222}, headers=member)
    assert answer.status_code == 202, answer.text
    answer = api.post("/v1/port-forwards", json=forward | {"project_id": project})
    assert answer.status_code == 202, answer.text
