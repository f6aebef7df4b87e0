"""GET /v1/host/diagnostics?probe=true (issue 9, item 6): each managed network's path probed
from a throwaway port on its bridge — DHCP offer, DNS answer, forwarding — on the real kernel
of a fresh namespace with a real dnsmasq; foreign firewalls that drop the guests' traffic are
found and named, including the kinds rule text alone missed (an input chain dropping DHCP/DNS,
a forward chain whose rules end in an unconditional reject)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from fastapi.testclient import TestClient

from app.host.path_probe import NETNS_DIR, NS_PREFIX
from tests.api.test_links_api import make_bridge
from tests.api.test_networks_api import make_network
from tests.netns_tools import in_netns, links


def nft(ns: str, script: str) -> None:
    """Load an nft script (nft(8) syntax) into namespace `ns`."""
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as file:
        file.write(script + "\n")
        file.flush()
        result = in_netns(ns, "nft", "-f", file.name, check=False)
    assert result.returncode == 0, result.stderr


def probe(api: TestClient) -> tuple[dict[str, dict[str, Any]], float]:
    started = time.monotonic()
    r = api.get("/v1/host/diagnostics", params={"probe": "true"})
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()}, time.monotonic() - started


def steps(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in check["data"]["steps"]}


def nothing_left(ns: str) -> None:
    assert not [n for n in os.listdir(NETNS_DIR) if n.startswith(f"{NS_PREFIX}{os.getpid()}-")]
    assert not [name for name in links(ns) if name.startswith(("kvp", "kvo"))]


def test_a_healthy_network_passes_every_step(api: TestClient, netns: str) -> None:
    make_bridge(api, "br0")
    make_network(api)
    checks, seconds = probe(api)
    path = checks["path:nat0"]
    assert path["ok"], path["detail"]
    found = steps(path)
    assert [s["ok"] for s in found.values()] == [True, True, True], path["detail"]
    assert found["dhcp"]["offer"].startswith("10.91.0.")
    assert found["dns"]["server"] == "10.91.0.1"
    assert found["forward"]["received"] >= 1
    assert "path:nat0" not in probe_free(api)  # only on demand
    assert seconds < 15
    nothing_left(netns)


def probe_free(api: TestClient) -> set[str]:
    return {c["name"] for c in api.get("/v1/host/diagnostics").json()}


def test_an_input_chain_dropping_dhcp_and_dns_is_found(api: TestClient, netns: str) -> None:
    make_bridge(api, "br0")
    make_network(api)
    nft(
        netns,
        "table inet hostfw {\n chain input {\n type filter hook input priority 0; "
        "policy accept;\n udp dport { 53, 67 } drop\n }\n}",
    )
    checks, _ = probe(api)
    # the passive checks see nothing wrong: no forward chain drops, port 53 is ours
    assert checks["forward_policy"]["ok"] and checks["port53"]["ok"]
    path = checks["path:nat0"]
    assert not path["ok"] and path["severity"] == "error"
    dhcp = steps(path)["dhcp"]
    assert dhcp["ok"] is False
    assert dhcp["suspects"][0]["table"] == "hostfw"
    assert dhcp["suspects"][0]["chain"] == "input"
    assert "inet table hostfw chain input" in path["detail"]
    nothing_left(netns)


def test_a_forward_chain_ending_in_reject_is_found(api: TestClient, netns: str) -> None:
    make_bridge(api, "br0")
    make_network(api)
    nft(
        netns,
        "table ip guard {\n chain filter_fwd {\n type filter hook forward priority 0; "
        "policy accept;\n ct state established,related accept\n counter reject\n }\n}",
    )
    checks, _ = probe(api)
    assert checks["forward_policy"]["ok"]  # its policy is accept: rule text alone missed it
    found = steps(checks["path:nat0"])
    assert found["dhcp"]["ok"] and found["dns"]["ok"]
    assert found["forward"]["ok"] is False
    suspect = found["forward"]["suspects"][0]
    assert (suspect["family"], suspect["table"], suspect["chain"]) == ("ip", "guard", "filter_fwd")
    assert suspect["rank"] == 0 and "reject" in suspect["why"]  # unconditional comes first

    nft(netns, "delete table ip guard")
    checks, _ = probe(api)
    assert checks["path:nat0"]["ok"], checks["path:nat0"]["detail"]
    nothing_left(netns)


def test_a_network_without_dhcp_is_not_reported_as_passing(api: TestClient, netns: str) -> None:
    """Nothing can be probed without a DHCP offer (the probe takes no address of its own):
    the check says so instead of passing."""
    make_bridge(api, "br0")
    make_network(api, dhcp={"enabled": False})
    checks, _ = probe(api)
    path = checks["path:nat0"]
    assert path["ok"] is False and path["severity"] == "warning", path
    assert path["detail"].startswith("nothing could be probed"), path["detail"]
    nothing_left(netns)
