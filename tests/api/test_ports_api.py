"""/v1/ports on the real kernel of a fresh namespace: a port's tap is made with Nova's name
on its bridge (read back through netlink), its fixed address is a static lease in the
network's dnsmasq hosts file whether or not a VM uses it, MAC and address clashes are 409,
the `ports` quota holds, null and hostile input is 422, a VM NIC with the `port` backend
plugs it (device_id, device_owner; 409 for a second VM; 422 for another MAC) and a port in
use is not deleted (409 naming the VM); projects see only their own ports."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.domain import port_security as ps
from app.domain.ports import DEVICE_OWNER
from app.settings import Settings
from tests.api.test_addresses_api import FULL_PASS, eventually, quick_api
from tests.api.test_file_faults import run_dir
from tests.api.test_links_api import make_bridge
from tests.api.test_networks_api import make_network
from tests.api.test_port_security_api import _table
from tests.netns_tools import links
from tests.tenancy import auth, make_project, make_token

__all__ = ["quick_api"]  # the fixture, used by name

PROBLEM = "application/problem+json"


def make_port(api: TestClient, name: str, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/ports?wait=10", json={"name": name, "bridge": "br0", **body})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _vm(api: TestClient, name: str, nic: dict[str, Any]) -> Any:
    body = {
        "name": name,
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"model": "virtio-net-pci", **nic}],
    }
    return api.post("/v1/vms?wait=10", json=body)


def _hosts(settings: Settings, network: dict[str, Any]) -> str:
    path = run_dir(settings, network) / "dhcp-hosts"
    return path.read_text() if path.exists() else ""


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return r.json()  # type: ignore[no-any-return]


def test_port_tap_lease_plug_and_delete(api: TestClient, netns: str, settings: Settings) -> None:
    make_bridge(api)
    network = make_network(api, subnet="10.91.0.0/24")
    port = make_port(api, "p1", ipv4="10.91.0.20", mac_address="52:54:00:aa:bb:01")
    port_id = port["id"]
    tap = "tap" + port_id.replace("-", "")[:11]
    assert port["status"] == "active" and port["port_status"] == "DOWN", port
    assert (port["tap"], port["mac_address"]) == (tap, "52:54:00:aa:bb:01")
    assert port["fixed_ips"] == [{"network_id": network["id"], "ip_address": "10.91.0.20"}]
    assert port["device_id"] == "" and port["user"] is None and port["binding_host_id"]
    kernel = links(netns)
    assert kernel[tap].kind == "tun" and kernel[tap].master == "br0", kernel.get(tap)
    # the static lease, while no VM uses the port
    assert eventually(lambda: "52:54:00:aa:bb:01,10.91.0.20" in _hosts(settings, network))

    # no address given: the lowest free one outside the DHCP range, past NICs and ports
    second = make_port(api, "p2")
    assert second["ipv4"] == "10.91.0.2", second
    vm_nic = _vm(api, "other", {"backend": "bridge", "bridge": "br0"})
    assert vm_nic.status_code == 201, vm_nic.text
    assert vm_nic.json()["nics"][0]["ipv4"] == "10.91.0.3"  # the ports' are taken too
    third = make_port(api, "p3", fixed_ip=False)
    assert third["fixed_ips"] == [] and third["ipv4"] is None

    # clashes: 409
    taken_ip = api.post("/v1/ports", json={"name": "x", "bridge": "br0", "ipv4": "10.91.0.3"})
    assert "already given" in _problem(taken_ip, 409)["detail"]
    taken_mac = api.post(
        "/v1/ports", json={"name": "x", "bridge": "br0", "mac_address": port["mac_address"]}
    )
    _problem(taken_mac, 409)
    nic_mac = vm_nic.json()["nics"][0]["mac"]
    _problem(
        api.post("/v1/ports", json={"name": "x", "bridge": "br0", "mac_address": nic_mac}), 409
    )
    _problem(api.post("/v1/ports", json={"name": "p1", "bridge": "br0"}), 409)  # name

    # the tap is the port's: the taps API does not change or delete it
    _problem(api.delete(f"/v1/taps/{port['tap_id']}?force=true"), 409)
    _problem(api.post(f"/v1/taps/{port['tap_id']}/detach"), 409)
    # nor does a VM NIC take it as a tap resource
    _problem(_vm(api, "thief", {"backend": "tap", "tap": port["tap_id"]}), 409)

    # plugged by a VM NIC: the port's MAC, device_id, device_owner; a second VM is refused
    wrong_mac = _vm(api, "web", {"backend": "port", "port": "p1", "mac": "52:54:00:aa:bb:99"})
    _problem(wrong_mac, 422)
    _problem(_vm(api, "web", {"backend": "port", "port": "p1", "ipv4": "10.91.0.30"}), 422)
    vm = _vm(api, "web", {"backend": "port", "port": "p1"})
    assert vm.status_code == 201, vm.text
    nic = vm.json()["nics"][0]
    assert (nic["mac"], nic["tap_name"], nic["port"]) == ("52:54:00:aa:bb:01", tap, port_id)
    shown = api.get("/v1/ports/p1").json()
    assert (shown["device_id"], shown["device_owner"]) == (vm.json()["id"], DEVICE_OWNER)
    assert shown["user"] == {"vm_id": vm.json()["id"], "vm_name": "web", "nic": 0}
    in_use = _problem(_vm(api, "web2", {"backend": "port", "port": port_id}), 409)
    assert "PortInUse" in in_use["detail"], in_use
    listed = api.get(f"/v1/ports?device_id={vm.json()['id']}").json()["items"]
    assert [p["name"] for p in listed] == ["p1"]
    assert [p["name"] for p in api.get("/v1/ports?network=nat0").json()["items"]] == [
        "p1",
        "p2",
        "p3",
    ]
    _problem(api.get("/v1/ports?network=nope"), 404)

    # in use: no delete (naming the VM), no new address
    busy = _problem(api.delete("/v1/ports/p1"), 409)
    assert busy["dependents"][0]["name"] == "web/0" and "web" in busy["detail"], busy
    _problem(api.patch("/v1/ports/p1", json={"ipv4": "10.91.0.40"}), 409)
    renamed = api.patch("/v1/ports/p1?wait=10", json={"description": "db", "device_owner": None})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["description"] == "db" and renamed.json()["generation"] == 3

    # the VM goes: the port is free again, then it can go too (its tap and lease with it)
    assert api.delete(f"/v1/vms/{vm.json()['id']}?wait=20").status_code == 204
    freed = api.get("/v1/ports/p1").json()
    assert (freed["device_id"], freed["device_owner"], freed["user"]) == ("", "", None)
    moved = api.patch("/v1/ports/p1?wait=10", json={"ipv4": "10.91.0.40"})
    assert moved.status_code == 200 and moved.json()["ipv4"] == "10.91.0.40", moved.text
    assert eventually(lambda: "52:54:00:aa:bb:01,10.91.0.40" in _hosts(settings, network))
    # no address, then null: the lowest free one (as at creation), then that one again
    none = api.patch("/v1/ports/p1?wait=10", json={"fixed_ip": False, "ipv4": None}).json()
    assert none["fixed_ips"] == [] and none["ipv4"] is None, none  # null with false: none
    assert eventually(lambda: "52:54:00:aa:bb:01" not in _hosts(settings, network))
    lowest = api.patch("/v1/ports/p1?wait=10", json={"ipv4": None}).json()
    assert lowest["ipv4"] == "10.91.0.4", lowest  # .2 (p2) and .3 (the VM NIC) are taken
    same = api.patch("/v1/ports/p1", json={"ipv4": "10.91.0.4"})
    assert same.status_code == 200 and same.json()["generation"] == lowest["generation"]
    assert api.delete("/v1/ports/p1?wait=10").status_code == 204
    assert api.get(f"/v1/ports/{port_id}").status_code == 404
    assert tap not in links(netns)
    assert eventually(lambda: "52:54:00:aa:bb:01" not in _hosts(settings, network))
    assert api.get(f"/v1/taps/{port['tap_id']}").status_code == 404


def test_null_and_hostile_input_is_422(api: TestClient) -> None:
    make_bridge(api)
    bad: list[dict[str, Any]] = [
        {"name": "p"},  # no segment
        {"name": "p", "bridge": "br0", "vlan": "v"},  # two
        {"name": None, "bridge": "br0"},
        {"name": "p", "bridge": None},
        {"name": "p\n", "bridge": "br0"},
        {"name": "p", "bridge": "br0", "mac_address": "01:00:5e:00:00:01"},  # multicast
        {"name": "p", "bridge": "br0", "mac_address": None, "admin_state_up": False},
        {"name": "p", "bridge": "br0", "description": "a\nb"},
        {"name": "p", "bridge": "br0", "device_id": "x" * 256},
        {"name": "p", "bridge": "br0", "ipv4": "10.0.0.1", "fixed_ip": False},
        {"name": "p", "bridge": "br0", "fixed_ip": None},
        {"name": "p", "bridge": "br0", "port_security": "yes"},
        {"name": "p", "bridge": "br0", "surprise": 1},
    ]
    for body in bad:
        r = api.post("/v1/ports", json=body)
        assert r.status_code == 422, (body, r.text)
    # a well-formed address on a bridge that carries no managed network: the bridge's state
    # is in the way (creating a network on it resolves it), so 409, never 422
    r = api.post("/v1/ports", json={"name": "p", "bridge": "br0", "ipv4": "10.0.0.1"})
    assert r.status_code == 409, r.text
    assert "it has none" in r.json()["detail"], r.text
    assert api.get("/v1/ports").json()["items"] == []
    make_port(api, "p")
    for patch in (
        {"name": None},
        {"admin_state_up": None},
        {"fixed_ip": None},
        {"fixed_ip": False, "ipv4": "10.0.0.1"},
        {"bridge": "br0"},
        {"mac_address": None},
    ):
        assert api.patch("/v1/ports/p", json=patch).status_code == 422, patch
    assert api.post("/v1/ports", json={"name": "q", "bridge": "nope"}).status_code == 404


def test_quota_and_projects(api: TestClient) -> None:
    db = api.app.state.context.db  # type: ignore[attr-defined]
    own = make_project(db, "own", quotas={"ports": 1}, shared_segments=[])
    other = make_project(db, "other")
    member = auth(make_token(db, own, "member"))
    stranger = auth(make_token(db, other, "member"))
    r = api.post("/v1/bridges?wait=10", json={"name": "b", "project_id": own})
    assert r.status_code == 201, r.text
    first = api.post("/v1/ports?wait=10", json={"name": "p", "bridge": "b"}, headers=member)
    assert first.status_code == 201, first.text
    assert first.json()["project_id"] == own
    over = api.post("/v1/ports", json={"name": "q", "bridge": "b"}, headers=member)
    assert _problem(over, 409)["quota"] == "ports"
    usage = api.get(f"/v1/projects/{own}/usage").json()
    assert usage["quotas"]["ports"]["usage"] == 1, usage
    port_id = first.json()["id"]
    for method, path in (("GET", port_id), ("PATCH", port_id), ("DELETE", port_id)):
        r = api.request(
            method, f"/v1/ports/{path}", json={} if method == "PATCH" else None, headers=stranger
        )
        assert r.status_code == 404, (method, r.text)
    assert api.get("/v1/ports", headers=stranger).json()["items"] == []
    assert [p["id"] for p in api.get("/v1/ports", headers=member).json()["items"]] == [port_id]
    # a project holding a port is not deleted (the port named)
    held = _problem(api.delete(f"/v1/projects/{own}"), 409)["dependents"]
    assert {"kind": "port", "id": port_id, "name": "p"} in held, held
    # another project's bridge is unknown to a member
    r = api.post("/v1/ports", json={"name": "z", "bridge": "b"}, headers=stranger)
    assert r.status_code == 404, r.text


def _unguarded(netns: str, tap: str) -> bool:
    """No rules of ours for `tap`: the table read once (the last NIC's rules gone, the
    table goes too, so a second read may find none)."""
    live = _table(netns)
    return live is None or tap not in live.taps()


def test_port_security_of_a_plugged_port_allows_its_fixed_address(
    quick_api: TestClient, netns: str
) -> None:
    api = quick_api  # a full pass every FULL_PASS s: the rules of a VM's rows gone go then
    make_bridge(api)
    make_network(api, subnet="10.92.0.0/24")
    port = make_port(api, "guarded", port_security=True, allowed_addresses=["192.0.2.7"])
    assert (port["port_security"], port["allowed_addresses"]) == (True, ["192.0.2.7"])
    assert _unguarded(netns, port["tap"])
    _problem(_vm(api, "web", {"backend": "port", "port": "guarded", "port_security": False}), 422)
    vm = _vm(api, "web", {"backend": "port", "port": "guarded"})
    assert vm.status_code == 201, vm.text
    nic = vm.json()["nics"][0]
    assert (nic["port_security"], nic["allowed_addresses"]) == (True, ["192.0.2.7"])
    wanted = ps.port_rules(port["tap"], port["mac_address"], [port["ipv4"], "192.0.2.7"])

    def loaded() -> bool:
        live = _table(netns)
        return live is not None and ps.chain_matches(live, wanted)

    assert eventually(loaded), _table(netns)
    state = eventually(
        lambda: api.get("/v1/vms/web").json()["nics"][0]["port_security_state"]["enforced"]
    )
    assert state is True
    assert api.delete("/v1/vms/web?wait=20").status_code == 204
    gone = eventually(lambda: _unguarded(netns, port["tap"]), timeout=10 * FULL_PASS + 5)
    assert gone


def test_segments_and_networks_with_ports_are_in_use(api: TestClient, settings: Settings) -> None:
    make_bridge(api)
    network = make_network(api, subnet="10.94.0.0/24")
    port = make_port(api, "p1")
    assert port["ipv4"] == "10.94.0.2"
    # the bridge: 409 naming the port, also forced (a port is never deleted under it)
    for query in ("", "?force=true"):
        refused = _problem(api.delete(f"/v1/bridges/br0{query}"), 409)
        assert {"kind": "port", "id": port["id"]}.items() <= refused["dependents"][0].items()
    # the network: 409 naming the port; forced, the port keeps its tap and loses its address
    refused = _problem(api.delete("/v1/networks/nat0"), 409)
    assert [d["kind"] for d in refused["dependents"]] == ["port"], refused
    assert eventually(lambda: port["mac_address"] in _hosts(settings, network))
    r = api.delete("/v1/networks/nat0?force=true&wait=10")
    assert r.status_code in (202, 204), r.text
    shown = api.get("/v1/ports/p1").json()
    assert (shown["fixed_ips"], shown["status"]) == ([], "active"), shown
    assert api.delete("/v1/ports/p1?wait=10").status_code == 204
    assert api.delete("/v1/bridges/br0?wait=10").status_code == 204  # nothing holds it now
