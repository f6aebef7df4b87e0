"""The REST API against the real kernel of a fresh namespace (in-process app)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import Response
from fastapi.testclient import TestClient

from app.api.deps import AppContext
from app.api.middleware import TcpTransport
from app.api.waiting import settle_response
from app.db.models import Tap
from app.main import create_app
from app.schemas.links import BridgeCreate, TapCreate
from app.services.links import BridgeService, TapService
from app.settings import Settings
from tests.netns_tools import ip, links

PROBLEM = "application/problem+json"


def make_bridge(api: TestClient, name: str = "br0", **body: object) -> dict[str, object]:
    r = api.post("/v1/bridges?wait=10", json={"name": name, **body})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def make_tap(api: TestClient, name: str, **body: object) -> dict[str, object]:
    r = api.post("/v1/taps?wait=10", json={"name": name, **body})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_create_bridge_and_tap_appear_in_kernel(api: TestClient, netns: str) -> None:
    bridge = make_bridge(api, addresses=["192.168.105.1/24"], mtu=1400)
    tap = make_tap(api, "tap1", bridge="br0", owner_uid=65534, multi_queue=True)
    assert bridge["status"] == "active"
    kernel = links(netns)
    assert kernel["br0"].kind == "bridge"
    assert kernel["br0"].mtu == 1400
    assert "192.168.105.1/24" in kernel["br0"].addresses
    assert kernel["br0"].info["IFLA_BR_STP_STATE"] == 0
    assert kernel["br0"].info["IFLA_BR_FORWARD_DELAY"] == 0
    assert kernel["tap1"].kind == "tun"
    assert kernel["tap1"].master == "br0"
    assert kernel["tap1"].up
    assert kernel["tap1"].info["IFLA_TUN_OWNER"] == 65534
    assert kernel["tap1"].info["IFLA_TUN_MULTI_QUEUE"] == 1
    assert kernel["tap1"].alias == f"kvmnetd:tap:{tap['id']}"
    assert tap["ifindex"] == kernel["tap1"].index
    assert tap["observed_mac"] == kernel["tap1"].mac
    ports = api.get("/v1/bridges/br0").json()["ports"]
    assert [p["name"] for p in ports] == ["tap1"]
    assert ports[0]["tap_id"] == tap["id"]


def test_mutation_without_wait_is_202_pending_with_location_and_operation(
    api: TestClient, netns: str
) -> None:
    r = api.post("/v1/bridges", json={"name": "br1", "stp": True, "forward_delay": 4})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "pending"
    assert body["generation"] == 1
    assert r.headers["location"] == f"/v1/bridges/{body['id']}"
    op = api.get(f"{r.headers['operation-location']}?wait=10").json()
    assert op["status"] == "succeeded"
    assert op["action"] == "create"
    assert op["request_id"] == r.headers["x-request-id"]
    settled = api.get(f"/v1/bridges/{body['id']}").json()
    assert settled["status"] == "active"
    assert settled["observed_generation"] == 1
    assert links(netns)["br1"].info["IFLA_BR_STP_STATE"] == 1
    assert links(netns)["br1"].info["IFLA_BR_FORWARD_DELAY"] == 400


def test_patch_attach_detach_and_recreate(api: TestClient, netns: str) -> None:
    make_bridge(api)
    tap = make_tap(api, "tap1")
    assert links(netns)["tap1"].master is None
    r = api.post("/v1/taps/tap1/attach?wait=10", json={"bridge": "br0"})
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == 2
    assert links(netns)["tap1"].master == "br0"
    r = api.patch("/v1/taps/tap1?wait=10", json={"mtu": 1280, "addresses": ["10.1.0.1/24"]})
    assert r.status_code == 200, r.text
    kernel = links(netns)["tap1"]
    assert (kernel.mtu, kernel.addresses[:1]) == (1280, ["10.1.0.1/24"])
    r = api.patch("/v1/taps/tap1?wait=10", json={"multi_queue": True})  # only at creation
    assert r.status_code == 200
    after = links(netns)["tap1"]
    assert after.info["IFLA_TUN_MULTI_QUEUE"] == 1
    assert after.index != tap["ifindex"]  # re-created...
    assert after.master == "br0" and after.mtu == 1280  # ...with everything
    r = api.post("/v1/taps/tap1/detach?wait=10")
    assert r.status_code == 200
    assert links(netns)["tap1"].master is None
    r = api.patch(f"/v1/taps/{tap['id']}", json={"mtu": 1280})
    assert r.status_code == 200, "an unchanged PATCH is settled at once"


def test_delete_bridge_with_taps_is_409_unless_detaching(api: TestClient, netns: str) -> None:
    make_bridge(api)
    make_tap(api, "tap1", bridge="br0")
    r = api.delete("/v1/bridges/br0")
    assert r.status_code == 409
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["type"] == "urn:kvmnetd:problem:in-use"
    assert "tap1" in r.json()["detail"]
    assert "br0" in links(netns)
    r = api.delete("/v1/bridges/br0?detach_taps=true&wait=10")
    assert r.status_code == 204
    kernel = links(netns)
    assert "br0" not in kernel
    assert kernel["tap1"].master is None
    assert api.get("/v1/taps/tap1").json()["bridge_id"] is None
    assert api.get("/v1/bridges/br0").status_code == 404
    r = api.delete("/v1/taps/tap1?wait=10")
    assert r.status_code == 204
    assert "tap1" not in links(netns)


def test_names_are_unique_across_kinds_and_reusable_after_delete(api: TestClient) -> None:
    make_bridge(api, "x0")
    r = api.post("/v1/taps", json={"name": "x0"})
    assert r.status_code == 409
    assert r.json()["type"] == "urn:kvmnetd:problem:name-taken"
    assert api.delete("/v1/bridges/x0?wait=10").status_code == 204
    make_tap(api, "x0")


def test_pagination(api: TestClient) -> None:
    for i in range(5):
        assert api.post("/v1/taps", json={"name": f"tp{i}"}).status_code == 202
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/taps?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url).json()
        seen += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"tp{i}" for i in range(5)]
    r = api.get("/v1/taps?cursor=not-a-cursor")
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM


def test_request_ids_are_echoed_or_made(api: TestClient) -> None:
    r = api.get("/v1/taps", headers={"X-Request-Id": "req-abc.123"})
    assert r.headers["x-request-id"] == "req-abc.123"
    assert r.headers["x-openstack-request-id"] == "req-abc.123"
    r = api.get("/v1/taps", headers={"X-Request-Id": "bad id\twith space"})
    assert r.headers["x-request-id"].startswith("req-")
    assert r.headers["x-request-id"] != "bad id\twith space"


def test_body_limits_and_content_type(api: TestClient) -> None:
    r = api.post(
        "/v1/taps",
        content=b'{"name": "' + b"a" * (2 << 20) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM
    r = api.post(
        "/v1/taps",
        content=b"name=tap1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]
    r = api.post("/v1/taps", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_tcp_listener_needs_the_token_health_does_not(settings: Settings, netns: str) -> None:
    app = create_app(settings, token="s3cret", host_netns=netns)
    with TestClient(TcpTransport(app), base_url="http://kvmnetd") as tcp:
        r = tcp.get("/v1/taps")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"] == PROBLEM
        assert tcp.get("/v1/taps", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert tcp.get("/v1/taps", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert tcp.get("/healthz").status_code == 200
        assert tcp.get("/readyz").status_code in (200, 503)


def test_host_views(api: TestClient, netns: str) -> None:
    make_bridge(api, addresses=["192.168.105.1/24"])
    make_tap(api, "tap1", bridge="br0")
    ip(netns, "route", "add", "10.99.0.0/16", "via", "192.168.105.254", "metric", "7")
    interfaces = {i["name"]: i for i in api.get("/v1/host/interfaces").json()}
    assert interfaces["br0"]["addresses"][0] == "192.168.105.1/24"
    assert interfaces["tap1"]["master"] == "br0"
    assert interfaces["tap1"]["managed_by"]["resource"] == "tap"
    assert interfaces["lo"]["managed_by"] is None
    assert set(interfaces["lo"]["counters"]) >= {"rx_packets", "tx_bytes", "rx_dropped"}
    routes = api.get("/v1/host/routes").json()
    (via,) = [r for r in routes if r["destination"] == "10.99.0.0/16"]
    assert (via["gateway"], via["device"], via["metric"]) == ("192.168.105.254", "br0", 7)
    assert any(r["destination"] == "192.168.105.0/24" and r["scope"] == "link" for r in routes)


@pytest.mark.timeout(120)
def test_capabilities_are_probed(api: TestClient) -> None:
    caps = api.get("/v1/host/capabilities").json()
    assert caps["links"]["bridge"]["available"] is True
    assert caps["links"]["tuntap"]["available"] is True
    # each answer was found by trying: a refusal carries the kernel's reason
    for feature in caps["links"].values():
        assert feature["available"] or feature["reason"]
    import os

    assert caps["vhost_net"]["available"] == os.path.exists("/dev/vhost-net")
    assert caps["qemu"]["available"]
    models = {m["model"] for m in caps["qemu"]["nic_models"]}
    assert {"virtio-net-pci", "e1000", "rtl8139", "ne2k_pci", "pcnet", "ne2k_isa"} <= models
    assert caps["accelerators"]["tcg"]["available"] is True
    assert caps["accelerators"]["tcg"]["firmware_probe"]["passed"] is True


def test_event_stream_replays_every_transition_in_order(api: TestClient) -> None:
    tap = make_tap(api, "tap1")
    assert api.delete("/v1/taps/tap1?wait=10").status_code == 204
    seen: list[tuple[str, str]] = []
    with api.stream("GET", "/v1/events", headers={"Last-Event-ID": "0"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                seen.append(("event", line[7:]))
            if line.startswith("data: "):
                assert tap["id"] in line
            if len(seen) == 4:
                break
    assert [e for _, e in seen] == ["tap.pending", "tap.active", "tap.deleting", "tap.deleted"]


def test_stp_forward_delay_defaults_and_limits(api: TestClient, netns: str) -> None:
    on = make_bridge(api, "brs", stp=True)
    assert on["forward_delay"] == 15.0
    assert links(netns)["brs"].info["IFLA_BR_FORWARD_DELAY"] == 1500
    off = make_bridge(api, "brf")
    assert off["forward_delay"] == 0.0
    r = api.patch("/v1/bridges/brf?wait=10", json={"stp": True})
    assert r.status_code == 200, r.text
    assert r.json()["forward_delay"] == 15.0
    assert links(netns)["brf"].info["IFLA_BR_STP_STATE"] == 1
    r = api.patch("/v1/bridges/brf?wait=10", json={"stp": False, "forward_delay": 0})
    assert r.status_code == 200, r.text
    kernel = links(netns)["brf"].info
    assert (kernel["IFLA_BR_STP_STATE"], kernel["IFLA_BR_FORWARD_DELAY"]) == (0, 0)
    r = api.post("/v1/bridges", json={"name": "brx", "stp": True, "forward_delay": 1})
    assert r.status_code == 422
    assert "between 2 and 30 seconds" in r.json()["detail"]
    assert "brx" not in links(netns)


def test_a_wait_sees_a_change_settled_before_it_subscribed(api: TestClient) -> None:
    """Between a request's commit and its subscription to events, another request's nudge
    may let the supervisor settle the row (its event then gone by): the wait must still see
    it settled at once instead of waiting for an event that never comes."""
    ctx: AppContext = api.app.state.context  # type: ignore[attr-defined]
    with ctx.db.unit_of_work() as session:
        row, op = TapService(session).create(TapCreate(name="tap9"))
        session.flush()
        stale = (row, op)
    ctx.nudger.nudge()  # "another request's" nudge: the supervisor settles tap9 now
    deadline = time.monotonic() + 10
    while True:
        with ctx.db.reading() as session:
            current = session.get(Tap, stale[0].id)
            if current is not None and current.status == "active":
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)

    async def settle() -> tuple[int, float]:
        response = Response()
        started = time.monotonic()
        result = await settle_response(ctx, response, "taps", stale[0], stale[1], 5.0, 201)
        assert not isinstance(result, Response) and result.status == "active"
        return response.status_code, time.monotonic() - started

    status, took = asyncio.run(settle())
    assert status == 201 and took < 1.0, (status, took)


def test_a_long_link_name_is_refused_with_the_kernel_limit(api: TestClient) -> None:
    r = api.post("/v1/taps", json={"name": "t" * 65})
    assert r.status_code == 422 and "65 characters; the kernel allows at most 15" in r.text, r.text
    assert api.get("/v1/taps").json()["items"] == []


def test_tap_owner_is_refused_above_what_tunsetowner_takes(api: TestClient, netns: str) -> None:
    """2**31 - 1 is the largest owner the kernel keeps (read back as IFLA_TUN_OWNER); above
    it tap creation failed with ECOMM after a 202, so it is refused up front."""
    tap = make_tap(api, "tapmax", owner_uid=2**31 - 1, owner_gid=2**31 - 1)
    assert tap["status"] == "active"
    assert links(netns)["tapmax"].info["IFLA_TUN_OWNER"] == 2**31 - 1
    for field in ("owner_uid", "owner_gid"):
        r = api.post("/v1/taps", json={"name": "tapbig", field: 4294967294})
        assert r.status_code == 422, r.text
        assert field in r.text
    assert "tapbig" not in links(netns)


def test_bridge_mtu_a_tap_follows_must_suit_its_ipv6(api: TestClient, netns: str) -> None:
    """t8 has no MTU of its own, so it takes b7's: an MTU under 1280 would cost its IPv6
    address (EINVAL from the kernel); refused like the same MTU on the tap itself."""
    make_bridge(api, "b7")
    make_tap(api, "t8", bridge="b7", addresses=["fd00:8::1/64"])
    r = api.patch("/v1/bridges/b7", json={"mtu": 1200})
    assert r.status_code == 422, r.text
    assert "t8" in r.json()["detail"] and "1280" in r.json()["detail"]
    assert api.get("/v1/bridges/b7").json()["mtu"] is None
    make_bridge(api, "b9", mtu=1200)
    r = api.patch("/v1/taps/t8", json={"bridge": "b9"})
    assert r.status_code == 422, r.text
    r = api.post("/v1/taps", json={"name": "t9", "bridge": "b9", "addresses": ["fd00:9::1/64"]})
    assert r.status_code == 422, r.text
    assert make_tap(api, "t10", bridge="b9", mtu=1280, addresses=["fd00:a::1/64"])
    tap = api.get("/v1/taps/t8").json()
    assert tap["status"] == "active"
    assert "fd00:8::1/64" in links(netns)["t8"].addresses


def test_a_foreign_link_name_is_refused_and_an_old_row_of_it_owns_nothing(
    api: TestClient, netns: str
) -> None:
    """fx0 is the host's (a veth standing for eth0): a bridge or tap of that name is 409.
    A row of that name made before this check (error, never created) neither makes fx0 "a
    link of kvmnetd" for an uplink nor takes taps."""
    ip(netns, "link", "add", "fx0", "type", "veth", "peer", "name", "fx1")
    for kind in ("bridges", "taps"):
        r = api.post(f"/v1/{kind}", json={"name": "fx0"})
        assert r.status_code == 409, r.text
        assert "fx0" in r.json()["detail"] and "veth" in r.json()["detail"]
        assert api.get(f"/v1/{kind}").json()["items"] == []
    assert links(netns)["fx0"].kind == "veth"
    assert links(netns)["fx0"].alias is None

    ctx: AppContext = api.app.state.context  # type: ignore[attr-defined]
    with ctx.db.unit_of_work() as session:  # as the API accepted it before the check
        BridgeService(session).create(BridgeCreate(name="fx0"))
        session.flush()
    ctx.nudger.nudge()
    deadline = time.monotonic() + 10
    while (old := api.get("/v1/bridges/fx0").json())["status"] != "error":
        assert time.monotonic() < deadline, old
        time.sleep(0.05)
    assert old["ifindex"] is None
    make_tap(api, "tapx")
    r = api.post("/v1/taps", json={"name": "tapy", "bridge": "fx0"})
    assert r.status_code == 409, r.text
    assert old["status_reason"] in r.json()["detail"]
    r = api.patch("/v1/taps/tapx", json={"bridge": "fx0"})
    assert r.status_code == 409, r.text
    make_bridge(api, "br0")
    r = api.put("/v1/bridges/br0/uplink?dry_run=true", json={"interface": "fx0"})
    assert "link of kvmnetd" not in r.text
    assert links(netns)["fx0"].master is None
