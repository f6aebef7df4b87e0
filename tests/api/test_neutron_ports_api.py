"""The Neutron ports collection in process (issue 12) on the real kernel of a fresh
namespace: the error cases (NeutronError types and Neutron's codes: 400, never 422; 404,
409, 412), the mapping of fixed_ips, port_security_enabled and allowed_address_pairs onto
our ports, the engine's filters (fixed_ips=ip_address=, device_id, mac_address,
network_id), a member's view, a create that answers at once, and the agreement with
/v1/ports both ways. The real clients' end-to-end run is tests/e2e/test_neutron_ports.py.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api.test_neutron_api import error, neutron, over_tcp
from tests.db_template import seed_state_dir
from tests.netns_tools import links, throwaway_netns
from tests.tenancy import make_project, make_token

P = "/networking/v2.0/ports"
SUBNET = "10.94.0.0/24"  # the native network's DHCP range: 10.94.0.128-10.94.0.254


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app on a fresh namespace with the bridge br0 and its managed network lan."""
    base = Path(tempfile.mkdtemp(prefix="kvt-nports-"))
    settings = Settings(
        state_dir=seed_state_dir(base / "state"),
        run_dir=base / "run",
        listen="",
        probe_kernel=base / "no-kernel",
    )
    with throwaway_netns() as netns:
        app = create_app(settings, token="test-token", host_netns=netns)
        with TestClient(app, base_url="http://kvmnetd") as client:
            client.app.state.netns = netns  # type: ignore[attr-defined]
            made = client.post("/v1/bridges?wait=10", json={"name": "br0"})
            assert made.status_code == 201, made.text
            body = {"name": "lan", "bridge": "br0", "subnet": SUBNET}
            made = client.post("/v1/networks?wait=10", json=body)
            assert made.status_code == 201, made.text
            yield client


def ids(client: TestClient) -> tuple[str, str]:
    """(the Neutron network id: br0's, the subnet id: lan's)."""
    bridge = client.get("/v1/bridges/br0").json()["id"]
    return bridge, client.get("/v1/networks/lan").json()["id"]


def create(client: TestClient, status: int = 201, **port: Any) -> Any:
    network_id, _ = ids(client)
    answer = client.post(P, json={"port": {"network_id": network_id, **port}})
    return neutron(answer, status)["port"] if status == 201 else answer


def test_create_show_and_the_fixed_address_rule(client: TestClient) -> None:
    network_id, subnet_id = ids(client)
    port = create(client, name="p1", fixed_ips=[{"ip_address": "10.94.0.150"}])
    # inside the DHCP range (Neutron's default pool is the whole subnet): accepted
    assert port["fixed_ips"] == [{"subnet_id": subnet_id, "ip_address": "10.94.0.150"}]
    assert port["status"] in ("DOWN", "BUILD") and port["network_id"] == network_id
    assert port["binding:vif_type"] == "tap" and port["binding:vnic_type"] == "normal"
    assert port["binding:host_id"] and port["binding:profile"] == {}
    assert port["port_security_enabled"] is False  # the default project's default
    assert port["tenant_id"] == port["project_id"] and port["revision_number"] == 1
    tap = "tap" + port["id"].replace("-", "")[:11]
    native = client.get(f"/v1/ports/{port['id']}").json()
    assert native["tap"] == tap and native["ipv4"] == "10.94.0.150"
    deadline = time.monotonic() + 10
    while tap not in links(client.app.state.netns) and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert links(client.app.state.netns)[tap].master == "br0"  # type: ignore[attr-defined]

    shown = neutron(client.get(f"{P}/{port['id']}?fields=name&fields=mac_address"), 200)
    assert shown["port"] == {"name": "p1", "mac_address": port["mac_address"]}
    # no name: port-<8 hex digits>; no fixed_ips: the lowest free address of the allocation
    # pool (the DHCP range), as Neutron's IPAM allocates (re-trial N12: it was .2)
    unnamed = create(client)
    assert unnamed["name"] == "port-" + unnamed["id"].replace("-", "")[:8]
    assert unnamed["fixed_ips"][0]["ip_address"] == "10.94.0.128"
    none = create(client, name="none", fixed_ips=[])
    assert none["fixed_ips"] == []
    for made in (port, unnamed, none):
        neutron(client.delete(f"{P}/{made['id']}"), 204)
    error(client.get(f"{P}/{port['id']}"), 404, "PortNotFound")


def test_bad_input_is_400_and_clashes_409(client: TestClient) -> None:
    network_id, subnet_id = ids(client)
    bad: list[dict[str, Any]] = [
        {},  # no network_id
        {"network_id": network_id, "fixed_ips": [{"ip_address": "10.94.0.5"}] * 2},
        {"network_id": network_id, "fixed_ips": [{"subnet_id": network_id}]},
        {"network_id": network_id, "fixed_ips": [{"ip_address": "10.99.0.5"}]},
        {"network_id": network_id, "fixed_ips": [{"ip_address": "10.94.0.1"}]},  # gateway
        {"network_id": network_id, "admin_state_up": False},
        {"network_id": network_id, "security_groups": ["default"]},
        {"network_id": network_id, "binding:vnic_type": "direct"},
        {"network_id": network_id, "name": "has space"},
        {"network_id": network_id, "mac_address": "nope"},
        {"network_id": network_id, "dns_name": "x"},  # no such attribute here
        {
            "network_id": network_id,
            "mac_address": "52:54:00:94:00:01",
            "port_security_enabled": True,
            "allowed_address_pairs": [
                {"ip_address": "10.94.0.77", "mac_address": "52:54:00:94:00:99"}
            ],
        },
    ]
    for body in bad:
        error(client.post(P, json={"port": body}), 400)
    # an address of no subnet of the network, in Neutron's words (re-trial N8)
    outside = {"network_id": network_id, "fixed_ips": [{"ip_address": "10.99.0.5"}]}
    message = error(client.post(P, json={"port": outside}), 400, "InvalidIpForNetwork")
    assert message.startswith("IP address 10.99.0.5 is not a valid IP"), message
    bare = neutron(client.post("/networking/v2.0/networks", json={"network": {}}), 201)
    no_subnet = {"network_id": bare["network"]["id"], "fixed_ips": [{"ip_address": "10.9.0.5"}]}
    error(client.post(P, json={"port": no_subnet}), 400, "InvalidIpForNetwork")
    neutron(client.delete(f"/networking/v2.0/networks/{bare['network']['id']}"), 204)
    assert neutron(client.get(P), 200)["ports"] == []  # nothing half-made
    error(
        client.post(P, json={"port": {"network_id": "00000000-0000-4000-8000-000000000000"}}),
        404,
        "NetworkNotFound",
    )
    first = create(
        client,
        name="first",
        mac_address="52:54:00:94:00:01",
        fixed_ips=[{"subnet_id": subnet_id, "ip_address": "10.94.0.20"}],
        port_security_enabled=True,
        allowed_address_pairs=[{"ip_address": "10.94.0.77", "mac_address": "52:54:00:94:00:01"}],
    )
    assert first["allowed_address_pairs"] == [
        {"ip_address": "10.94.0.77", "mac_address": "52:54:00:94:00:01"}
    ]
    assert first["port_security_enabled"] is True
    # each clash in Neutron's own exception words (neutron-lib exceptions)
    for clash, kind in (
        ({"name": "first"}, "Conflict"),
        ({"mac_address": "52:54:00:94:00:01"}, "MacAddressInUse"),
        ({"fixed_ips": [{"ip_address": "10.94.0.20"}]}, "IpAddressAlreadyAllocated"),
    ):
        error(create(client, 0, **clash), 409, kind)
    # the MAC filter in any case, as a create compares MACs (trial finding F7)
    lettered = create(client, name="lettered", mac_address="52:54:00:94:AB:CD")
    assert lettered["mac_address"] == "52:54:00:94:ab:cd"
    for asked in ("52:54:00:94:ab:cd", "52:54:00:94:AB:CD", "52:54:00:94:Ab:cD"):
        found = neutron(client.get(P, params={"mac_address": asked}), 200)["ports"]
        assert [p["id"] for p in found] == [lettered["id"]], asked
    neutron(client.delete(f"{P}/{lettered['id']}"), 204)
    path = f"{P}/{first['id']}"
    # updates: If-Match, what is fixed at creation, fixed_ips
    stale = {"If-Match": "revision_number=99"}
    error(client.put(path, json={"port": {"name": "x"}}, headers=stale), 412)
    error(client.delete(path, headers=stale), 412)
    error(client.put(path, json={"port": {"mac_address": "52:54:00:94:00:02"}}), 400)
    error(client.put(path, json={"port": {"port_security_enabled": False}}), 400)
    error(client.put(path, json={"port": {"admin_state_up": False}}), 400)
    error(client.put(path, json={"port": {"name": None}}), 400)  # no string: as subnets
    moved = neutron(
        client.put(
            path,
            json={"port": {"name": "second", "fixed_ips": [{"ip_address": "10.94.0.200"}]}},
            headers={"If-Match": "revision_number=1"},
        ),
        200,
    )["port"]
    assert moved["name"] == "second" and moved["revision_number"] == 2
    assert moved["fixed_ips"] == [{"subnet_id": subnet_id, "ip_address": "10.94.0.200"}]
    cleared = neutron(client.put(path, json={"port": {"fixed_ips": []}}), 200)["port"]
    assert cleared["fixed_ips"] == []
    error(client.get(f"{P}/second"), 404, "PortNotFound")  # a name is no id
    neutron(client.delete(path), 204)


def test_filters_paging_sorting_tags_and_a_members_view(client: TestClient) -> None:
    network_id, _ = ids(client)
    made = [
        create(client, name=f"f{i}", fixed_ips=[{"ip_address": f"10.94.0.{30 + i}"}])
        for i in range(3)
    ]
    neutron(client.put(f"{P}/{made[1]['id']}", json={"port": {"device_id": "vm-x"}}), 200)
    neutron(client.put(f"{P}/{made[2]['id']}/tags/blue"), 201)

    def names(query: str) -> list[str]:
        return [p["name"] for p in neutron(client.get(f"{P}{query}"), 200)["ports"]]

    assert names("") == ["f0", "f1", "f2"]
    assert names("?fixed_ips=ip_address=10.94.0.31") == ["f1"]
    assert names("?device_id=vm-x") == ["f1"]
    assert names(f"?mac_address={made[0]['mac_address']}") == ["f0"]
    assert names(f"?network_id={network_id}&tags=blue") == ["f2"]
    assert names("?sort_key=name&sort_dir=desc") == ["f2", "f1", "f0"]
    error(client.get(f"{P}?fixed_ips=mac=1"), 400)
    error(client.get(f"{P}?nosuch=1"), 400)
    page = neutron(client.get(f"{P}?limit=2"), 200)
    assert [p["name"] for p in page["ports"]] == ["f0", "f1"]
    assert page["ports_links"][0]["rel"] == "next"
    tagged = neutron(client.get(f"{P}/{made[2]['id']}"), 200)["port"]
    assert tagged["tags"] == ["blue"] and tagged["revision_number"] == 2

    db = client.app.state.context.db  # type: ignore[attr-defined]
    member = {"X-Auth-Token": make_token(db, make_project(db, "nports"), "member")}
    tcp = over_tcp(client)
    assert neutron(tcp.get(P, headers=member), 200) == {"ports": []}
    error(tcp.get(f"{P}/{made[0]['id']}", headers=member), 404, "PortNotFound")
    error(tcp.delete(f"{P}/{made[0]['id']}", headers=member), 404, "PortNotFound")
    own_bridge = tcp.post("/v1/bridges?wait=10", json={"name": "brm"}, headers=member)
    assert own_bridge.status_code == 201, own_bridge.text
    body = {"port": {"network_id": own_bridge.json()["id"], "name": "mine"}}
    mine = neutron(tcp.post(P, json=body, headers=member), 201)["port"]
    assert mine["port_security_enabled"] is True  # a tenant's default
    # ... which its network says, as Neutron's port inherits its network's setting
    networks = "/networking/v2.0/networks"
    shown = neutron(tcp.get(f"{networks}/{mine['network_id']}", headers=member), 200)
    assert shown["network"]["port_security_enabled"] is True
    assert (
        neutron(client.get(f"{networks}/{network_id}"), 200)["network"]["port_security_enabled"]
        is False
    )  # the default project's network: its ports are unprotected by default
    assert [p["name"] for p in neutron(tcp.get(P, headers=member), 200)["ports"]] == ["mine"]
    error(tcp.post(P, json={"port": {"network_id": network_id}}, headers=member), 404)
    assert "mine" in names("")  # the admin sees every project's
    neutron(client.delete(f"{P}/{mine['id']}"), 204)
    assert client.delete(f"/v1/bridges/{own_bridge.json()['id']}?wait=10").status_code == 204
    for port in made:
        neutron(client.delete(f"{P}/{port['id']}"), 204)


def test_native_and_neutron_agree_and_a_port_in_use_is_not_deleted(client: TestClient) -> None:
    _, subnet_id = ids(client)
    body = {
        "name": "nat1",
        "bridge": "br0",
        "ipv4": "10.94.0.40",
        "mac_address": "52:54:00:94:00:40",
    }
    native = client.post("/v1/ports?wait=10", json=body)
    assert native.status_code == 201, native.text
    listed = neutron(client.get(f"{P}?name=nat1"), 200)["ports"]
    assert [(p["id"], p["mac_address"], p["fixed_ips"]) for p in listed] == [
        (
            native.json()["id"],
            "52:54:00:94:00:40",
            [{"subnet_id": subnet_id, "ip_address": "10.94.0.40"}],
        )
    ]
    made = create(client, name="neu1", fixed_ips=[{"ip_address": "10.94.0.41"}])
    seen = client.get("/v1/ports/neu1").json()
    assert (seen["id"], seen["mac_address"], seen["ipv4"]) == (
        made["id"],
        made["mac_address"],
        "10.94.0.41",
    )
    vm = {
        "name": "user",
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"backend": "port", "port": made["id"]}],
    }
    created = client.post("/v1/vms?wait=10", json=vm)
    assert created.status_code == 201, created.text
    plugged = neutron(client.get(f"{P}/{made['id']}"), 200)["port"]
    assert (plugged["device_id"], plugged["device_owner"]) == (
        created.json()["id"],
        "compute:kvmnetd",
    )
    message = error(client.delete(f"{P}/{made['id']}"), 409, "PortInUse")
    assert "user" in message, message
    assert client.delete(f"/v1/vms/{created.json()['id']}?wait=10").status_code == 204
    neutron(client.delete(f"{P}/{made['id']}"), 204)
    assert client.delete(f"/v1/ports/{native.json()['id']}?wait=10").status_code == 204


def test_tags_and_renames_of_a_settled_port_settle_at_once(client: TestClient) -> None:
    """A tag or a rename needs nothing of the tap: the port stays settled (DOWN, never
    BUILD) and the change's operation succeeds at once (it was left running, the port
    pending for good: the fresh-user trial's first finding)."""
    port = create(client, name="ptag")
    native = f"/v1/ports/{port['id']}"
    deadline = time.monotonic() + 10
    while client.get(native).json()["status"] != "active":
        assert time.monotonic() < deadline, client.get(native).json()
        time.sleep(0.1)
    tagged = client.put(f"{P}/{port['id']}/tags/web")
    assert tagged.status_code == 201, tagged.text
    renamed = neutron(client.put(f"{P}/{port['id']}", json={"port": {"name": "ptag2"}}), 200)
    assert renamed["port"]["status"] == "DOWN" and renamed["port"]["revision_number"] == 3
    row = client.get(native).json()
    assert row["status"] == "active" and row["observed_generation"] == row["generation"] == 3
    operations = client.get("/v1/operations", params={"resource_id": port["id"]}).json()
    updates = [o for o in operations["items"] if o["action"] == "update"]
    assert len(updates) == 2 and {o["status"] for o in updates} == {"succeeded"}, updates
