"""Kernel names (ifname) of bridges and taps across projects, on this machine's kernel.

Names are unique per project, so two projects may each have a bridge `br0` and a tap `tap0`.
In the default project the kernel name is the name (the how-to's `br0` is `br0` on the host);
elsewhere it is derived from the id (app.domain.names.link_ifname). Both pairs are realized
side by side, read back through netlink under their ifnames with the right masters and
marks; drift repair and removal go by the ifname, each touching only its own link.

The other project's links are made by the admin (the unix socket) naming that project.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import LinkName
from app.domain.links import ownership_mark
from app.domain.links.model import LinkKind
from app.domain.names import LINK_NAME_MAX, validate_link_name
from app.settings import Settings
from tests.netns_tools import ip, links
from tests.tenancy import make_project

SETTLE = 15.0  # s


def until(probe: Callable[[], Any], what: str, timeout: float = SETTLE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def create_in_project(api: TestClient, project_id: str, bridge: str, tap: str) -> tuple[str, str]:
    """A bridge and a tap on it in project `project_id`, made by the admin naming that
    project; (bridge id, tap id)."""
    r = api.post("/v1/bridges", json={"name": bridge, "project_id": project_id})
    assert r.status_code == 202, r.text
    bridge_id = r.json()["id"]
    r = api.post("/v1/taps", json={"name": tap, "bridge": bridge_id, "project_id": project_id})
    assert r.status_code == 202, r.text
    return bridge_id, r.json()["id"]


def active(api: TestClient, path: str) -> dict[str, Any] | None:
    body: dict[str, Any] = api.get(path).json()
    return body if body.get("status") == "active" and body.get("status_reason") is None else None


def test_two_projects_each_have_br0_and_tap0_on_the_host(
    api: TestClient, netns: str, settings: Settings
) -> None:
    db = api.app.state.context.db  # type: ignore[attr-defined]
    acme = make_project(db, "acme")
    assert api.post("/v1/bridges", json={"name": "br0"}).status_code == 202
    r = api.post("/v1/taps", json={"name": "tap0", "bridge": "br0"})
    assert r.status_code == 202, r.text
    default_bridge = api.get("/v1/bridges/br0").json()["id"]
    default_tap = r.json()["id"]
    acme_bridge, acme_tap = create_in_project(api, acme, "br0", "tap0")

    bridge = until(lambda: active(api, f"/v1/bridges/{acme_bridge}"), "acme's br0")
    tap = until(lambda: active(api, f"/v1/taps/{acme_tap}"), "acme's tap0")
    until(lambda: active(api, f"/v1/bridges/{default_bridge}"), "the default br0")
    until(lambda: active(api, f"/v1/taps/{default_tap}"), "the default tap0")
    assert (bridge["name"], tap["name"]) == ("br0", "tap0")
    kb, kt = bridge["ifname"], tap["ifname"]
    assert kb == "kb" + acme_bridge.replace("-", "")[:13] and len(kb) == LINK_NAME_MAX
    assert kt == "kt" + acme_tap.replace("-", "")[:13] and len(kt) == LINK_NAME_MAX
    assert api.get(f"/v1/bridges/{default_bridge}").json()["ifname"] == "br0"
    assert api.get(f"/v1/taps/{default_tap}").json()["ifname"] == "tap0"

    with db.reading() as session:  # kernel names are claimed across kinds: the ifnames
        claims = {c.name: c.resource_id for c in session.scalars(select(LinkName))}
    assert {k: claims.get(k) for k in ("br0", "tap0", kb, kt)} == {
        "br0": default_bridge,
        "tap0": default_tap,
        kb: acme_bridge,
        kt: acme_tap,
    }

    found = links(netns)
    assert (found["br0"].kind, found["tap0"].kind, found[kb].kind, found[kt].kind) == (
        "bridge",
        "tun",
        "bridge",
        "tun",
    )
    assert found["tap0"].master == "br0" and found[kt].master == kb
    assert found["br0"].alias == ownership_mark(LinkKind.BRIDGE, default_bridge)
    assert found[kb].alias == ownership_mark(LinkKind.BRIDGE, acme_bridge)
    assert found[kt].alias == ownership_mark(LinkKind.TAP, acme_tap)
    # the bridge's ports as GET shows them come from the kernel under the ifname
    ports = until(lambda: api.get(f"/v1/bridges/{acme_bridge}").json()["ports"], "acme ports")
    assert [(p["name"], p["tap_id"]) for p in ports] == [(kt, acme_tap)]

    # the same name twice in one project is refused; in another project it is fine
    r = api.post("/v1/bridges", json={"name": "br0", "project_id": acme})
    assert r.status_code == 409 and "already has a bridge named 'br0'" in r.json()["detail"]

    # drift: the acme tap deleted by hand, the default tap0 taken off its bridge; each is
    # repaired under its own kernel name
    ip(netns, "link", "del", kt)
    ip(netns, "link", "set", "tap0", "nomaster")
    until(lambda: links(netns).get(kt) and links(netns)[kt].master == kb, "acme tap back")
    until(lambda: links(netns)["tap0"].master == "br0", "tap0 back on br0")
    # the events about acme's tap name its kernel link (the name is the user's)
    bus = api.app.state.context.bus  # type: ignore[attr-defined]
    tap_events = [e for e in bus.since(0) if e.resource_id == acme_tap]
    assert tap_events and all((e.data or {}).get("ifname") == kt for e in tap_events)
    assert {e.name for e in tap_events} == {"tap0"}
    assert any(e.type == "tap.drift_repaired" for e in tap_events), [e.type for e in tap_events]

    # a managed network on acme's bridge: the gateway goes on the kernel link, and dnsmasq
    # serves that interface
    r = api.post(
        "/v1/networks",
        json={"name": "acme-net", "bridge": acme_bridge, "subnet": "10.77.0.0/24"},
    )
    assert r.status_code == 202, r.text
    until(lambda: "10.77.0.1/24" in links(netns)[kb].addresses, "the gateway on acme's bridge")
    assert "10.77.0.1/24" not in links(netns)["br0"].addresses
    confs = until(
        lambda: [p.read_text() for p in Path(settings.run_dir).rglob("*.conf")], "dnsmasq conf"
    )
    assert any(f"interface={kb}\n" in text for text in confs), confs

    # a VM NIC on acme's tap resource: qemu's netdev opens the tap by its kernel name
    body = {
        "name": "web",
        "power_state": "stopped",
        "boot": {"kernel": "/nonexistent"},
        "nics": [{"backend": "tap", "tap": acme_tap}],
    }
    r = api.post("/v1/vms?wait=10", json=body)
    assert r.status_code in (200, 201, 202), r.text
    assert [(n["tap_id"], n["tap_name"]) for n in r.json()["nics"]] == [(acme_tap, kt)]
    assert api.delete(f"/v1/vms/{r.json()['id']}?wait=10").status_code in (202, 204)

    # the full pass's orphan sweep keeps both projects' links
    api.app.state.supervisor.resync()  # type: ignore[attr-defined]
    time.sleep(1.0)
    assert {"br0", "tap0", kb, kt} <= links(netns).keys()

    # deleting one project's tap removes only its link
    assert api.delete(f"/v1/taps/{acme_tap}").status_code == 202
    until(lambda: kt not in links(netns), "acme's tap gone")
    assert links(netns)["tap0"].master == "br0"
    assert api.delete(f"/v1/taps/{default_tap}").status_code == 202
    until(lambda: "tap0" not in links(netns), "tap0 gone")
    assert kb in links(netns) and "br0" in links(netns)
    for name in (kb, kt):
        validate_link_name(name)
