"""THE isolation test of issue 11: every route of the app, for each role (admin, member,
reader of project `own`) against a resource of its own project and of project `other`,
answers as the table says: a reader's change is 403, a member or reader naming another
project's resource 404 (as an unknown id), an admin-only route 403 for members and readers,
and the admin reaches both projects.

The table is keyed by (method, path template) and must cover every APIRoute of the app:
a route added without an entry fails test_every_route_is_in_the_table ("new route without
scoping"). One app serves the whole module (two projects, one resource of every kind each);
each case sends one request, creating a throwaway resource first where the request would
destroy the shared one (deletes, starts)."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import ApiToken, Operation
from app.domain.tenancy import secret_hash
from tests.api.vm_lab import POWEROFF_BOOT_SECTOR, Lab
from tests.db_template import seed_state_dir
from tests.host.test_qemu import live_pids_with_uuid
from tests.netns_tools import throwaway_netns
from tests.tenancy import auth, make_project, make_token

ROLES = ("admin", "member", "reader")
WHERE = ("own", "other")
OWN_NET, OTHER_NET = "10.61.0.0/24", "10.62.0.0/24"


@dataclass
class World:
    """The app, the two projects, a token per role (of `own`) and each project's resources
    (kind -> id), all named alike in both projects where names are per project."""

    client: TestClient
    lab: Lab
    projects: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)
    disk: str = ""

    def next(self) -> int:
        return next(self.counter)

    def admin_post(self, path: str, body: dict[str, Any], where: str) -> dict[str, Any]:
        """Create as the unix socket's admin, in project `where`, and wait until settled."""
        answer = self.client.post(
            f"{path}?wait=20", json={**body, "project_id": self.projects[where]}
        )
        assert answer.status_code in (200, 201, 202), answer.text
        made: dict[str, Any] = answer.json()
        if path == "/v1/vms":
            self.lab.vm_ids.add(made["id"])
        return made

    # ---- throwaway resources for destructive cases --------------------------------------

    def fresh(self, kind: str, where: str) -> str:
        n = self.next()
        bridge = f"br{where[:2]}"
        if kind == "bridge":
            return self.admin_post("/v1/bridges", {"name": f"fb{n}"}, where)["id"]
        if kind == "tap":
            return self.admin_post("/v1/taps", {"name": f"ft{n}"}, where)["id"]
        if kind == "vlan":
            body = {"name": f"fv{n}", "vlan_id": 2000 + n, "trunk": bridge}
            return self.admin_post("/v1/vlans", body, where)["id"]
        if kind == "network":
            tap = self.fresh("tap", where)
            subnet = f"10.200.{n}.0/24"
            body = {"name": f"fn{n}", "tap": tap, "subnet": subnet}
            return self.admin_post("/v1/networks", body, where)["id"]
        if kind == "subnet":  # a managed network on a bridge: in the Neutron view
            bridge_id = self.fresh("bridge", where)
            body = {"name": f"fs{n}", "bridge": bridge_id, "subnet": f"10.201.{n}.0/24"}
            return self.admin_post("/v1/networks", body, where)["id"]
        if kind == "vm":
            # with a NIC: DELETE /v1/vms/{vm_id}/nics/{index} removes NIC 0
            nics = [{"backend": "user", "user": {"restrict": True}}]
            return self.admin_post("/v1/vms", self.vm_body(f"fvm{n}", nics=nics), where)["id"]
        if kind == "port":
            return self.admin_post("/v1/ports", {"name": f"fpo{n}", "bridge": bridge}, where)["id"]
        if kind == "forward":
            body = {"network": "web", "vm": "web", "port": 30000 + n}
            return self.admin_post("/v1/port-forwards", body, where)["id"]
        if kind == "project":
            answer = self.client.post("/v1/projects", json={"name": f"fp{n}"})
            assert answer.status_code == 201, answer.text
            return str(answer.json()["id"])
        if kind == "token":
            return self.admin_token(where)
        raise AssertionError(kind)

    def admin_token(self, where: str) -> str:
        """A reader token of project `where`, made by the admin through the API: its id."""
        answer = self.client.post(
            f"/v1/projects/{self.projects[where]}/tokens", json={"role": "reader"}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def vm_body(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "memory_mib": 32,
            "boot": {"disk": self.disk},
            "power_state": "stopped",
            **extra,
        }


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="kvt-scope-", dir="/tmp"))  # short: QMP sockets
    base.chmod(0o755)
    seed_state_dir(base / "state")
    with throwaway_netns() as netns:
        lab = Lab(netns, base)
        try:
            with lab.app() as client:
                world = World(client, lab)
                world.disk = lab.disk("poweroff.img", POWEROFF_BOOT_SECTOR)
                _populate(world)
                yield world
        finally:
            for pid in live_pids_with_uuid(lab.vm_ids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(base, ignore_errors=True)


def _vlans_possible(world: World) -> None:
    """The probe's answer says the kernel has 802.1Q and VLAN filtering (this one has
    neither; as tests/api/test_vlans_api.py's vlan_api): the VLAN rows exist, in error."""
    inspector = world.client.app.state.context.inspector  # type: ignore[attr-defined]
    real = inspector.capabilities

    def capabilities() -> dict[str, Any]:
        caps = copy.deepcopy(real())
        for feature in ("vlan_8021q", "vlan_filtering"):
            caps["links"][feature] = {"available": True, "reason": None}
        return caps

    inspector.capabilities = capabilities


def _populate(world: World) -> None:
    db = world.client.app.state.context.db  # type: ignore[attr-defined]
    _vlans_possible(world)
    ranges = {"vlan_ranges": [[100, 3999]]}  # a member's VLAN ids come from them
    world.projects = {
        "own": make_project(db, "own", **ranges),
        "other": make_project(db, "other", **ranges),
    }
    world.tokens = {role: make_token(db, world.projects["own"], role) for role in ROLES}
    for where, subnet in (("own", OWN_NET), ("other", OTHER_NET)):
        bridge = f"br{where[:2]}"
        ids = {"bridge": world.admin_post("/v1/bridges", {"name": bridge}, where)["id"]}
        ids["tap"] = world.admin_post("/v1/taps", {"name": f"tp{where[:2]}"}, where)["id"]
        # the same names in both projects: names are unique per project (issue 11)
        vlan = {"name": "web", "vlan_id": 10, "trunk": bridge, "backend": "bridge_per_vlan"}
        ids["vlan"] = world.admin_post("/v1/vlans", vlan, where)["id"]
        network = {"name": "web", "bridge": bridge, "subnet": subnet}
        ids["network"] = world.admin_post("/v1/networks", network, where)["id"]
        nic = {"backend": "bridge", "bridge": bridge, "model": "virtio-net-pci"}
        vm = world.admin_post("/v1/vms", world.vm_body("web", nics=[nic]), where)
        ids["vm"] = vm["id"]
        port = 18080 if where == "own" else 18081
        forward = {"network": "web", "vm": "web", "port": port}
        ids["forward"] = world.admin_post("/v1/port-forwards", forward, where)["id"]
        ids["port"] = world.admin_post("/v1/ports", {"name": "web", "bridge": bridge}, where)["id"]
        ids["subnet"] = ids["network"]  # on the bridge: a Neutron subnet
        ids["project"] = world.projects[where]
        ids["token"] = world.admin_token(where)
        ids["extension"] = "pagination"
        tagged = world.client.put(f"{NEUTRON}/networks/{ids['bridge']}/tags/scoped")
        assert tagged.status_code == 201, tagged.text
        with db.reading() as session:
            op = session.query(Operation).filter_by(resource_id=ids["bridge"]).first()
            assert op is not None and op.project_id == world.projects[where]
            ids["operation"] = op.id
        world.ids[where] = ids


# ---- the table ------------------------------------------------------------------------------

Body = Callable[[World, str], Any]


@dataclass(frozen=True)
class Case:
    """How to call one route and what an allowed caller gets.

    - `ok`: the statuses of an allowed call (the domain's answer: a stopped VM's devices are
      409, say; never 401/403/404 from scoping);
    - `body`: the JSON body for project `where` (a create names that project);
    - `fresh`: the kind of a throwaway resource to put in the path (destructive calls);
    - `admin_only`: 403 for members and readers whatever the project;
    - `own_forbidden`: 403 for members and readers on their own project (a project's own
      settings), 404 on another (as for everything of another project);
    - `reader_forbidden`: 403 for a reader even where it only reads (a project's tokens);
    - `projectless`: the request names no project or resource (who am I, the list of the
      projects a caller sees): `other` asks the same as `own`;
    - `query`: the query string (`{project}`: the project's id)."""

    ok: frozenset[int]
    body: Body | None = None
    fresh: str | None = None
    admin_only: bool = False
    own_forbidden: bool = False
    reader_forbidden: bool = False
    projectless: bool = False
    query: str = ""
    stream: bool = False


def ok(*codes: int, **kw: Any) -> Case:
    return Case(frozenset(codes), **kw)


def _create(path_body: Callable[[World, str, int], dict[str, Any]]) -> Body:
    def body(world: World, where: str) -> dict[str, Any]:
        return {**path_body(world, where, world.next()), "project_id": world.projects[where]}

    return body


def _network_body(world: World, where: str, n: int) -> dict[str, Any]:
    # a member creates on a tap of its own: a throwaway one the admin makes in that project
    tap = world.fresh("tap", where)
    return {"name": f"n{n}", "tap": tap, "subnet": f"10.201.{n}.0/24"}


def _forward(world: World, where: str, n: int) -> dict[str, Any]:
    return {"network": "web", "vm": "web", "port": 20000 + n}


def _batch(world: World, where: str) -> dict[str, Any]:
    n = world.next()
    item = {**_forward(world, where, n), "project_id": world.projects[where]}
    return {"port_forwards": [item]}


def _attach(world: World, where: str) -> dict[str, Any]:
    return {"bridge": world.ids[where]["bridge"]}


def _uplink(world: World, where: str) -> dict[str, Any]:
    return {"interface": "lo"}


def _neutron_network(world: World, where: str) -> dict[str, Any]:
    return {"network": {"name": f"nn{world.next()}", "project_id": world.projects[where]}}


def _neutron_port(world: World, where: str) -> dict[str, Any]:
    bridge = world.ids[where]["bridge"]
    body = {"name": f"np{world.next()}", "network_id": bridge, "project_id": world.projects[where]}
    return {"port": body}


def _neutron_subnet(world: World, where: str) -> dict[str, Any]:
    n = world.next()
    network = world.admin_post("/v1/bridges", {"name": f"sb{n}"}, where)["id"]
    body = {"network_id": network, "cidr": f"10.202.{n}.0/24", "ip_version": 4}
    return {"subnet": {**body, "project_id": world.projects[where]}}


NEUTRON = "/networking/v2.0"
NEUTRON_NETWORK = f"{NEUTRON}/networks/{{network_id}}"
NEUTRON_PORT = f"{NEUTRON}/ports/{{port_id}}"
NEUTRON_SUBNET = f"{NEUTRON}/subnets/{{subnet_id}}"
NEUTRON_QUOTA = f"{NEUTRON}/quotas/{{project_id}}"
ACCEPTED = (200, 201, 202)
LIST = ok(200, query="?project={project}")

TABLE: dict[tuple[str, str], Case] = {
    ("GET", "/healthz"): ok(200),
    ("GET", "/readyz"): ok(200),
    ("GET", "/docs"): ok(200),
    ("GET", "/docs/oauth2-redirect"): ok(200),
    ("GET", "/redoc"): ok(200),
    # bridges
    ("GET", "/v1/bridges"): LIST,
    ("POST", "/v1/bridges"): ok(*ACCEPTED, body=_create(lambda w, p, n: {"name": f"nb{n}"})),
    ("GET", "/v1/bridges/{bridge_id}"): ok(200),
    ("PATCH", "/v1/bridges/{bridge_id}"): ok(200, body=lambda w, p: {}),
    ("DELETE", "/v1/bridges/{bridge_id}"): ok(202, fresh="bridge"),
    ("GET", "/v1/bridges/{bridge_id}/fdb"): ok(200),
    ("GET", "/v1/bridges/{bridge_id}/vlans"): ok(200),
    ("GET", "/v1/bridges/{bridge_id}/uplink"): ok(404),  # none: "bridge ... has no uplink"
    ("PUT", "/v1/bridges/{bridge_id}/uplink"): ok(
        200, 409, 422, body=_uplink, admin_only=True, query="?dry_run=true"
    ),
    ("DELETE", "/v1/bridges/{bridge_id}/uplink"): ok(404, admin_only=True, query="?dry_run=true"),
    # taps
    ("GET", "/v1/taps"): LIST,
    ("POST", "/v1/taps"): ok(*ACCEPTED, body=_create(lambda w, p, n: {"name": f"nt{n}"})),
    ("GET", "/v1/taps/{tap_id}"): ok(200),
    ("PATCH", "/v1/taps/{tap_id}"): ok(200, body=lambda w, p: {}),
    ("DELETE", "/v1/taps/{tap_id}"): ok(202, fresh="tap"),
    ("POST", "/v1/taps/{tap_id}/attach"): ok(200, 202, body=_attach, fresh="tap"),
    ("POST", "/v1/taps/{tap_id}/detach"): ok(200, 202, fresh="tap"),
    # VLANs
    ("GET", "/v1/vlans"): LIST,
    ("POST", "/v1/vlans"): ok(
        *ACCEPTED,
        body=_create(
            lambda w, p, n: {"name": f"v{n}", "vlan_id": 100 + n, "trunk": w.ids[p]["bridge"]}
        ),
    ),
    ("GET", "/v1/vlans/{vlan_id}"): ok(200),
    ("PATCH", "/v1/vlans/{vlan_id}"): ok(200, body=lambda w, p: {}),
    ("DELETE", "/v1/vlans/{vlan_id}"): ok(202, fresh="vlan"),
    ("GET", "/v1/vlans/{vlan_id}/ports"): ok(200),
    ("GET", "/v1/vlans/{vlan_id}/fdb"): ok(200),
    # networks
    ("GET", "/v1/networks"): LIST,
    ("POST", "/v1/networks"): ok(*ACCEPTED, body=_create(_network_body)),
    ("GET", "/v1/networks/{network_id}"): ok(200),
    ("PATCH", "/v1/networks/{network_id}"): ok(200, body=lambda w, p: {}),
    ("DELETE", "/v1/networks/{network_id}"): ok(202, fresh="network"),
    ("GET", "/v1/networks/{network_id}/leases"): ok(200),
    ("GET", "/v1/networks/{network_id}/log"): ok(200),
    # port forwards
    ("GET", "/v1/port-forwards"): LIST,
    ("POST", "/v1/port-forwards"): ok(*ACCEPTED, body=_create(_forward)),
    ("POST", "/v1/port-forwards/batch"): ok(202, body=_batch),
    ("GET", "/v1/port-forwards/{forward_id}"): ok(200),
    ("DELETE", "/v1/port-forwards/{forward_id}"): ok(202, fresh="forward"),
    # ports
    ("GET", "/v1/ports"): LIST,
    ("POST", "/v1/ports"): ok(
        *ACCEPTED, body=_create(lambda w, p, n: {"name": f"np{n}", "bridge": w.ids[p]["bridge"]})
    ),
    ("GET", "/v1/ports/{port_id}"): ok(200),
    ("PATCH", "/v1/ports/{port_id}"): ok(200, body=lambda w, p: {}),
    ("DELETE", "/v1/ports/{port_id}"): ok(202, fresh="port"),
    # VMs (stopped: no qemu runs but where a case starts one, which powers itself off)
    ("GET", "/v1/vms"): LIST,
    ("POST", "/v1/vms"): ok(*ACCEPTED, body=_create(lambda w, p, n: w.vm_body(f"vm{n}"))),
    ("GET", "/v1/vms/{vm_id}"): ok(200),
    ("PATCH", "/v1/vms/{vm_id}"): ok(200, body=lambda w, p: {}),
    ("DELETE", "/v1/vms/{vm_id}"): ok(202, fresh="vm"),
    ("POST", "/v1/vms/{vm_id}/start"): ok(200, 202, fresh="vm"),
    ("POST", "/v1/vms/{vm_id}/stop"): ok(200),  # stopped already: nothing to do
    ("POST", "/v1/vms/{vm_id}/kill"): ok(200),
    ("POST", "/v1/vms/{vm_id}/reboot"): ok(409),  # not running (the action table)
    ("GET", "/v1/vms/{vm_id}/console"): ok(200),
    ("GET", "/v1/vms/{vm_id}/devices"): ok(409),  # not running
    ("PUT", "/v1/vms/{vm_id}/nics/{index}/link"): ok(409, body=lambda w, p: {"up": True}),
    # a stopped VM's NICs: stored for its next start (a member's user NIC is restricted)
    ("POST", "/v1/vms/{vm_id}/nics"): ok(
        202, fresh="vm", body=lambda w, p: {"backend": "user", "user": {"restrict": True}}
    ),
    ("DELETE", "/v1/vms/{vm_id}/nics/{index}"): ok(202, fresh="vm"),
    ("PATCH", "/v1/vms/{vm_id}/nics/{index}"): ok(200, body=lambda w, p: {}),  # no change
    # the host: the provider's
    ("GET", "/v1/host/interfaces"): ok(200, admin_only=True),
    ("GET", "/v1/host/routes"): ok(200, admin_only=True),
    ("GET", "/v1/host/capabilities"): ok(200, admin_only=True),
    ("GET", "/v1/host/sriov"): ok(200, admin_only=True),
    # no SR-IOV physical function on this host: 404 for the admin, 403 for the others
    ("PUT", "/v1/host/sriov/{pf}"): ok(404, admin_only=True, body=lambda w, p: {"num_vfs": 0}),
    ("GET", "/v1/host/sriov/{pf}"): ok(404, admin_only=True),
    ("GET", "/v1/capabilities"): ok(200, projectless=True),  # the summary: every token
    ("GET", "/v1/host/diagnostics"): ok(200, admin_only=True),
    # events and operations
    ("GET", "/v1/events"): ok(200, query="?project={project}", stream=True),
    ("GET", "/v1/operations"): LIST,
    ("GET", "/v1/operations/{operation_id}"): ok(200),
    # projects and their tokens
    ("GET", "/v1/auth/token"): ok(200, projectless=True),
    ("GET", "/v1/projects"): ok(200, projectless=True),
    ("POST", "/v1/projects"): ok(201, body=lambda w, p: {"name": f"np{w.next()}"}, admin_only=True),
    ("GET", "/v1/projects/{project_id}"): ok(200),
    ("GET", "/v1/projects/{project_id}/usage"): ok(200),
    ("PATCH", "/v1/projects/{project_id}"): ok(200, body=lambda w, p: {}, own_forbidden=True),
    ("DELETE", "/v1/projects/{project_id}"): ok(204, fresh="project", own_forbidden=True),
    ("GET", "/v1/projects/{project_id}/tokens"): ok(200, reader_forbidden=True),
    ("POST", "/v1/projects/{project_id}/tokens"): ok(201, body=lambda w, p: {"role": "reader"}),
    ("GET", "/v1/projects/{project_id}/tokens/{token_id}"): ok(200, reader_forbidden=True),
    ("DELETE", "/v1/projects/{project_id}/tokens/{token_id}"): ok(200, fresh="token"),
    # the Neutron API (issue 12): its {network_id} is a bridge's or VLAN's id (NEUTRON_PARAMS)
    ("GET", "/networking/"): ok(200, projectless=True),
    ("GET", f"{NEUTRON}/"): ok(200, projectless=True),
    ("GET", f"{NEUTRON}/extensions"): ok(200, projectless=True),
    ("GET", f"{NEUTRON}/extensions/{{alias}}"): ok(200, projectless=True),
    # a list filtered by another project's id is an empty list (Neutron), never a 404
    ("GET", f"{NEUTRON}/networks"): ok(200, projectless=True, query="?project_id={project}"),
    ("POST", f"{NEUTRON}/networks"): ok(201, body=_neutron_network),
    ("GET", NEUTRON_NETWORK): ok(200),
    ("PUT", NEUTRON_NETWORK): ok(200, body=lambda w, p: {"network": {}}),
    ("DELETE", NEUTRON_NETWORK): ok(204, fresh="bridge"),
    ("GET", f"{NEUTRON_NETWORK}/tags"): ok(200),
    ("PUT", f"{NEUTRON_NETWORK}/tags"): ok(200, body=lambda w, p: {"tags": ["scoped", "t"]}),
    ("DELETE", f"{NEUTRON_NETWORK}/tags"): ok(204, fresh="bridge"),
    ("GET", f"{NEUTRON_NETWORK}/tags/{{tag}}"): ok(204, 404),  # another case may remove it
    ("PUT", f"{NEUTRON_NETWORK}/tags/{{tag}}"): ok(201),
    ("DELETE", f"{NEUTRON_NETWORK}/tags/{{tag}}"): ok(204, 404),
    # ports: {port_id} is a port's id, as in /v1/ports
    ("GET", f"{NEUTRON}/ports"): ok(200, projectless=True, query="?project_id={project}"),
    ("POST", f"{NEUTRON}/ports"): ok(201, body=_neutron_port),
    ("GET", NEUTRON_PORT): ok(200),
    ("PUT", NEUTRON_PORT): ok(200, body=lambda w, p: {"port": {}}),
    ("DELETE", NEUTRON_PORT): ok(204, fresh="port"),
    ("GET", f"{NEUTRON_PORT}/tags"): ok(200),
    ("PUT", f"{NEUTRON_PORT}/tags"): ok(200, body=lambda w, p: {"tags": ["scoped", "t"]}),
    ("DELETE", f"{NEUTRON_PORT}/tags"): ok(204, fresh="port"),
    ("GET", f"{NEUTRON_PORT}/tags/{{tag}}"): ok(204, 404),  # another case may remove it
    ("PUT", f"{NEUTRON_PORT}/tags/{{tag}}"): ok(201),
    ("DELETE", f"{NEUTRON_PORT}/tags/{{tag}}"): ok(204, 404),
    # a subnet is a managed network on a bridge or VLAN (app.services.neutron.subnet_service)
    ("GET", f"{NEUTRON}/subnets"): ok(200, projectless=True, query="?project_id={project}"),
    ("POST", f"{NEUTRON}/subnets"): ok(201, body=_neutron_subnet),
    ("GET", NEUTRON_SUBNET): ok(200),
    ("PUT", NEUTRON_SUBNET): ok(200, body=lambda w, p: {"subnet": {}}),
    ("DELETE", NEUTRON_SUBNET): ok(204, fresh="subnet"),
    ("GET", f"{NEUTRON_SUBNET}/tags"): ok(200),
    ("PUT", f"{NEUTRON_SUBNET}/tags"): ok(200, body=lambda w, p: {"tags": ["scoped", "t"]}),
    ("DELETE", f"{NEUTRON_SUBNET}/tags"): ok(204, fresh="subnet"),
    ("GET", f"{NEUTRON_SUBNET}/tags/{{tag}}"): ok(204, 404),  # another case may remove it
    ("PUT", f"{NEUTRON_SUBNET}/tags/{{tag}}"): ok(201),
    ("DELETE", f"{NEUTRON_SUBNET}/tags/{{tag}}"): ok(204, 404),
    # quotas: a member reads its own project's; the rest is the admin's
    ("GET", f"{NEUTRON}/quotas"): ok(200, admin_only=True),
    ("GET", NEUTRON_QUOTA): ok(200),
    ("GET", f"{NEUTRON_QUOTA}/details"): ok(200),
    ("GET", f"{NEUTRON_QUOTA}/default"): ok(200),
    ("PUT", NEUTRON_QUOTA): ok(200, body=lambda w, p: {"quota": {}}, admin_only=True),
    ("DELETE", NEUTRON_QUOTA): ok(204, admin_only=True),
}

PARAMS = {
    "bridge_id": "bridge",
    "tap_id": "tap",
    "vlan_id": "vlan",
    "network_id": "network",
    "forward_id": "forward",
    "port_id": "port",
    "vm_id": "vm",
    "operation_id": "operation",
    "project_id": "project",
    "token_id": "token",
    "alias": "extension",
}
# under /networking a network is a bridge's (or VLAN's) id (app.services.neutron.networks)
NEUTRON_PARAMS = {**PARAMS, "network_id": "bridge", "subnet_id": "subnet"}
# no token needed, nothing of any project (app.api.middleware.OPEN_PATHS)
OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc"}


def denied(case: Case, method: str, path: str, role: str, where: str) -> int | None:
    """The status that refuses this caller before the route does anything, if any."""
    if path in OPEN_PATHS or role == "admin":
        return None
    if role == "reader" and method != "GET":
        return 403  # the middleware: a reader only reads
    if case.admin_only:
        return 403
    if where == "other" and not case.projectless:
        return 404  # not revealed: as an unknown id (or an unknown project)
    if case.own_forbidden or (role == "reader" and case.reader_forbidden):
        return 403
    return None


def _route_keys(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every APIRoute, those of included routers too (FastAPI keeps
    those behind its own route objects: iter_route_contexts walks them)."""
    return sorted(
        (method, str(context.path))
        for context in iter_route_contexts(client.app.routes)  # type: ignore[attr-defined]
        if isinstance(context.original_route, APIRoute)
        for method in context.original_route.methods - {"HEAD"}
    )


def test_every_route_is_in_the_table(world: World) -> None:
    keys = _route_keys(world.client)
    missing = [key for key in keys if key not in TABLE]
    assert not missing, f"new route without scoping (add it to TABLE): {missing}"
    stale = [key for key in TABLE if key not in keys]
    assert not stale, f"the table names routes the app no longer has: {stale}"


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path"), sorted(TABLE))
def test_route_answers_each_role_and_project_as_the_table_says(
    world: World, method: str, path: str, role: str, where: str
) -> None:
    case = TABLE[(method, path)]
    refusal = denied(case, method, path, role, where)
    allowed = refusal is None
    url = path
    params = NEUTRON_PARAMS if path.startswith("/networking") else PARAMS
    for name, kind in params.items():
        if "{" + name + "}" in url:
            fresh = case.fresh == kind and allowed
            value = world.fresh(kind, where) if fresh else world.ids[where][kind]
            url = url.replace("{" + name + "}", value)
    url = url.replace("{index}", "0").replace("{tag}", "scoped").replace("{pf}", "eth0")
    url += case.query.replace("{project}", world.projects[where])
    headers = auth(world.tokens[role])
    body = case.body(world, where) if case.body is not None else None
    want = case.ok if refusal is None else frozenset({refusal})
    if case.stream:
        with world.client.stream(method, url, headers=headers) as answer:
            status = answer.status_code
            if status != 200:
                answer.read()
    else:
        answer = world.client.request(method, url, headers=headers, json=body)
        status = answer.status_code
    assert status in want, f"{role} {method} {url} ({where}): {status} {answer.read()!r}"
    if refusal == 404:
        # exactly what an unknown id gets: nothing tells the other project's resource apart
        # the path's id is looked up first; else the body's project, then its refs
        known = [world.projects[where], *world.ids[where].values()]
        hidden = next((i for i in known if i in url), None) or next(
            i for i in known if i in str(body)
        )
        probe_url = url.replace(hidden, UNKNOWN)
        probe_body = _replaced(body, hidden, UNKNOWN)
        unknown = world.client.request(
            method, probe_url, headers=auth(world.tokens["admin"]), json=probe_body
        )
        assert unknown.status_code == 404, unknown.text
        assert _message(answer.json()) == _message(unknown.json()).replace(UNKNOWN, hidden)


def _message(body: dict[str, Any]) -> str:
    """A problem's detail, or a NeutronError's message (the Neutron API)."""
    return str(body["NeutronError"]["message"] if "NeutronError" in body else body["detail"])


UNKNOWN = "00000000-0000-4000-8000-0000000000ff"


def _replaced(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replaced(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, old, new) for v in value]
    return new if value == old else value


# ---- what the table does not show ------------------------------------------------------------


def _items(world: World, path: str, role: str, query: str = "") -> list[dict[str, Any]]:
    answer = world.client.get(f"{path}?limit=1000{query}", headers=auth(world.tokens[role]))
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


@pytest.mark.parametrize(
    "path", ["/v1/bridges", "/v1/taps", "/v1/vlans", "/v1/networks", "/v1/port-forwards", "/v1/vms"]
)
def test_lists_show_a_member_only_its_projects_and_an_admin_any(world: World, path: str) -> None:
    own, other = world.projects["own"], world.projects["other"]
    kind = PATH_KINDS[path]
    for role in ("member", "reader"):
        items = _items(world, path, role)
        assert {i["project_id"] for i in items} == {own}
        assert world.ids["own"][kind] in {i["id"] for i in items}
    everything = {i["id"] for i in _items(world, path, "admin")}
    assert {world.ids["own"][kind], world.ids["other"][kind]} <= everything
    only_other = _items(world, path, "admin", f"&project={other}")
    assert {i["project_id"] for i in only_other} == {other}
    assert _items(world, path, "admin", "&project=other") == only_other  # by name too


def test_the_projects_list_shows_a_member_only_its_own(world: World) -> None:
    for role in ("member", "reader"):
        answer = world.client.get("/v1/projects", headers=auth(world.tokens[role]))
        assert [p["id"] for p in answer.json()["items"]] == [world.projects["own"]]
    answer = world.client.get("/v1/projects?limit=1000", headers=auth(world.tokens["admin"]))
    assert set(world.projects.values()) <= {p["id"] for p in answer.json()["items"]}


PATH_KINDS = {
    "/v1/bridges": "bridge",
    "/v1/taps": "tap",
    "/v1/vlans": "vlan",
    "/v1/networks": "network",
    "/v1/port-forwards": "forward",
    "/v1/vms": "vm",
}


def _stream(world: World, role: str, after: int, count: int) -> list[dict[str, Any]]:
    """The first `count` events after id `after` that `role`'s stream carries."""
    seen: list[dict[str, Any]] = []
    headers = {**auth(world.tokens[role]), "Last-Event-ID": str(after)}
    with world.client.stream("GET", "/v1/events", headers=headers) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
            if len(seen) == count:
                break
    return seen


def test_a_members_event_stream_carries_only_its_projects_events(world: World) -> None:
    bus = world.client.app.state.context.bus  # type: ignore[attr-defined]
    after = bus.last_id
    for where in ("other", "own"):  # the other project's event first: it must be skipped
        answer = world.client.patch(
            f"/v1/vlans/{world.ids[where]['vlan']}", json={"description": f"d{world.next()}"}
        )
        assert answer.status_code == 200, answer.text
    (event,) = _stream(world, "member", after, 1)
    assert (event["resource_id"], event["project_id"]) == (
        world.ids["own"]["vlan"],
        world.projects["own"],
    )
    both = _stream(world, "admin", after, 2)
    assert [e["resource_id"] for e in both] == [
        world.ids["other"]["vlan"],
        world.ids["own"]["vlan"],
    ]
    answer = world.client.get(
        f"/v1/events?project={world.projects['other']}", headers=auth(world.tokens["member"])
    )
    assert answer.status_code == 404


def test_operations_record_project_token_and_via(world: World) -> None:
    db = world.client.app.state.context.db  # type: ignore[attr-defined]
    member = world.tokens["member"]
    answer = world.client.post("/v1/taps", json={"name": f"at{world.next()}"}, headers=auth(member))
    assert answer.status_code == 202, answer.text
    op = world.client.get(
        f"/v1/operations/{answer.headers['X-Operation-Id']}", headers=auth(member)
    ).json()
    with db.reading() as session:
        token = session.scalars(
            select(ApiToken).where(ApiToken.secret_hash == secret_hash(member))
        ).one()
    assert (op["project_id"], op["token_id"], op["via"]) == (
        world.projects["own"],
        token.id,
        "token",
    )
    by_socket = world.client.get(f"/v1/operations/{world.ids['other']['operation']}").json()
    assert (by_socket["project_id"], by_socket["token_id"], by_socket["via"]) == (
        world.projects["other"],
        None,
        "unix-socket",
    )
    mine = _items(world, "/v1/operations", "member")
    assert op["id"] in {o["id"] for o in mine}
    assert {o["project_id"] for o in mine} == {world.projects["own"]}
    theirs = _items(world, "/v1/operations", "admin", f"&project={world.projects['other']}")
    assert {o["project_id"] for o in theirs} == {world.projects["other"]}


def test_names_are_per_project_and_resolve_in_the_callers_project(world: World) -> None:
    member = auth(world.tokens["member"])
    for path in ("/v1/vms/web", "/v1/networks/web", "/v1/vlans/WEB"):
        answer = world.client.get(path, headers=member)
        assert answer.status_code == 200 and answer.json()["project_id"] == world.projects["own"]
        # the unix socket acts in the default project, which has no `web`
        assert world.client.get(path).status_code == 404
    taken = world.client.post("/v1/vms", json=world.vm_body("WEB"), headers=member)
    assert taken.status_code == 409 and taken.json()["type"].endswith("name-taken")
    fixed = world.client.patch(
        f"/v1/vms/{world.ids['own']['vm']}", json={"project_id": world.projects["other"]}
    )
    assert fixed.status_code == 422 and "fixed at creation" in fixed.text
    unknown = world.client.post(
        "/v1/taps", json={"name": f"ut{world.next()}", "project_id": UNKNOWN}
    )
    assert unknown.status_code == 404 and unknown.json()["detail"] == f"no project {UNKNOWN!r}"


def test_a_member_attaches_only_to_its_own_or_shared_segments(world: World) -> None:
    db = world.client.app.state.context.db  # type: ignore[attr-defined]
    shared = world.ids["own"]["bridge"]
    tenant = make_project(
        db, f"tenant{world.next()}", shared_segments=[{"resource": "bridge", "id": shared}]
    )
    member = auth(make_token(db, tenant, "member"))
    for ref in (shared, "brow"):  # by id, and by name
        answer = world.client.post(
            "/v1/taps", json={"name": f"st{world.next()}", "bridge": ref}, headers=member
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["bridge_id"] == shared
        assert answer.json()["project_id"] == tenant
    not_shared = world.ids["other"]["bridge"]
    answer = world.client.post(
        "/v1/taps", json={"name": f"st{world.next()}", "bridge": not_shared}, headers=member
    )
    assert answer.status_code == 404
    assert answer.json()["detail"] == f"no bridge {not_shared!r}"
    # shared to attach to, not to see or change
    assert world.client.get(f"/v1/bridges/{shared}", headers=member).status_code == 404


def test_in_use_names_another_projects_dependent_only_by_its_kind(world: World) -> None:
    bridge = world.fresh("bridge", "own")
    nic = {"backend": "bridge", "bridge": bridge, "model": "virtio-net-pci"}
    theirs = world.admin_post("/v1/vms", world.vm_body(f"x{world.next()}", nics=[nic]), "other")
    answer = world.client.delete(f"/v1/bridges/{bridge}", headers=auth(world.tokens["member"]))
    assert answer.status_code == 409 and answer.json()["type"].endswith("in-use")
    assert answer.json()["dependents"] == [
        {"kind": "vm_nic", "id": "", "name": "(another project's)"}
    ]
    assert theirs["id"] not in answer.text and theirs["name"] not in answer.text
    as_admin = world.client.delete(f"/v1/bridges/{bridge}")
    assert as_admin.status_code == 409 and theirs["id"] in as_admin.text
