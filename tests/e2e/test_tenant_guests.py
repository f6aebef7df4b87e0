"""Tenants on the wire with real guests (TCG): two projects' guests on separate segments do not
reach each other, and isolated ports of one segment reach their gateway but not each other.

The real daemon; the admin (its unix socket) makes projects `a` and `b` and a member token for
each. Each member creates its own bridge, managed network and VMs through the API, booting the
shared test guest from the tenant images directory (`KVMNETD_TENANT_IMAGES_DIR`, where the test
copies the guest's kernel and initrds: a member's boot files must lie there). Three guests:
- a1 and a2 on project a's network 10.92.0.0/24, NICs `"isolated": true`;
- b1 on project b's network 10.93.0.0/24.
Each guest boots the shared initrd plus a small overlay archive (as test_port_security.py does)
whose /ping.sh pings every `kvt.ping=` target once a round forever and prints one console line
per try: `KVT-PING ROUND TARGET ok|lost`. Proven from the consoles, once all three are ready:
- a1 and a2 reach gateway 10.92.0.1, b1 reaches 10.93.0.1;
- a1 reaches neither b1 nor b's gateway, b1 reaches neither a1 nor a's gateway (the host
  routes between the networks' gateways; the project filter drops it, and GET shows the drops
  on the network's `isolation` counter);
- a1 and a2 never reach each other (the bridge's isolated port flag).
KVT_TENANT_ISOLATION=off runs the same with the NICs not isolated and both networks in one
project: then the neighbour and cross-segment checks fail (the guests reach each other), which
is how this test was checked to fail without the protection.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import E2EDaemon, ok, overlay_initrd, running_daemon, wait_for
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import parse_ready, tail
from tests.netns_tools import throwaway_netns
from tests.tenancy import auth

PROTECTED = os.environ.get("KVT_TENANT_ISOLATION", "on") != "off"
GW_A, GW_B = "10.92.0.1", "10.93.0.1"
A1_IP, A2_IP, B1_IP = "10.92.0.2", "10.92.0.3", "10.93.0.2"
ROUNDS_AFTER_READY = 6  # tries of every target once all guests are up
PING_RE = re.compile(r"KVT-PING (?P<round>\d+) (?P<target>\S+) (?P<result>ok|lost)[ \t]*[\r\n]")

PING = r"""#!/bin/sh
# ping.sh TARGET...: forever, one round a second: ping each target once, one console line each
round=0
while :; do
	round=$((round + 1))
	for target in "$@"; do
		if ping -c 1 -W 2 "$target" >/dev/null 2>&1; then result=ok; else result=lost; fi
		echo "
KVT-PING $round $target $result"
	done
	sleep 1
done
"""

HOOK = 'targets=$(params ping)\n[ -n "$targets" ] && /ping.sh $targets &\nshell_forever\n'


def pinger_initrd(guest: Guest, out: Path) -> None:
    """The shared guest with a hook that starts /ping.sh with the kvt.ping= targets."""
    overlay_initrd(guest, HOOK, {"ping.sh": PING}, out)


@dataclass
class Tenants:
    daemon: E2EDaemon
    tokens: dict[str, str]  # project name -> member secret
    vms: dict[str, tuple[str, str]] = field(default_factory=dict)  # vm -> (project, id)
    networks: dict[str, tuple[str, str]] = field(default_factory=dict)

    def get(self, project: str, path: str) -> dict[str, Any]:
        with self.daemon.client() as client:
            return dict(ok(client.get(path, headers=auth(self.tokens[project])), 200))

    def console(self, vm: str) -> str:
        project, vm_id = self.vms[vm]
        with self.daemon.client() as client:
            answer = client.get(f"/v1/vms/{vm_id}/console", headers=auth(self.tokens[project]))
            return str(answer.text)


def pings(text: str) -> list[tuple[int, str, bool]]:
    """(round, target, answered) for every KVT-PING line of a console."""
    return [(int(m["round"]), m["target"], m["result"] == "ok") for m in PING_RE.finditer(text)]


def last_round(text: str) -> int:
    return max((r for r, _, _ in pings(text)), default=0)


def _project(daemon: E2EDaemon, name: str) -> str:
    """Project `name` and a member token of it, made by the admin (the unix socket)."""
    with daemon.client() as client:
        project = ok(client.post("/v1/projects", json={"name": name}), 201)
        token = {"role": "member", "description": "tenant guests e2e"}
        return str(
            ok(client.post(f"/v1/projects/{project['id']}/tokens", json=token), 201)["secret"]
        )


def _segment(tenants: Tenants, project: str, bridge: str, network: str, subnet: str) -> None:
    with tenants.daemon.client(timeout=60) as client:
        headers = auth(tenants.tokens[project])
        ok(client.post("/v1/bridges?wait=10", json={"name": bridge}, headers=headers), 201)
        body = {"name": network, "bridge": bridge, "subnet": subnet}
        made = ok(client.post("/v1/networks?wait=10", json=body, headers=headers), 201)
        tenants.networks[network] = (project, made["id"])


def _vm(
    tenants: Tenants, project: str, name: str, nic: dict[str, Any], images: Path, targets: list[str]
) -> None:
    body = {
        "name": name,
        "memory_mib": 256,
        "boot": {
            "kernel": str(images / "vmlinuz"),
            "initrd": str(images / "pinger.initrd"),
            "cmdline": kernel_cmdline(dhcp=True, extra=[f"kvt.ping={t}" for t in targets]),
        },
        "nics": [{"backend": "bridge", **nic}],
    }
    with tenants.daemon.client(timeout=90) as client:
        made = ok(
            client.post("/v1/vms?wait=60", json=body, headers=auth(tenants.tokens[project])), 201
        )
    tenants.vms[name] = (project, made["id"])


@pytest.fixture(scope="module")
def tenants(request: pytest.FixtureRequest) -> Iterator[Tenants]:
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        images = workdir / "images"
        images.mkdir(mode=0o755)
        shutil.copyfile(guest.kernel, images / "vmlinuz")
        (images / "vmlinuz").chmod(0o644)
        pinger_initrd(guest, images / "pinger.initrd")
        host = stack.enter_context(throwaway_netns())
        # a member's boot files must lie in the tenant images directory (the daemon reads its
        # settings from its environment, which tests.daemon.Daemon passes on)
        env = stack.enter_context(pytest.MonkeyPatch.context())
        env.setenv("KVMNETD_TENANT_IMAGES_DIR", str(images))
        daemon = stack.enter_context(running_daemon(host, workdir / "daemon", request))
        tokens = {"a": _project(daemon, "a")}
        # off: both segments in project a (b's token is a's)
        tokens["b"] = _project(daemon, "b") if PROTECTED else tokens["a"]
        tenants = Tenants(daemon, tokens)
        _segment(tenants, "a", "bra", "neta", "10.92.0.0/24")
        _segment(tenants, "b", "brb", "netb", "10.93.0.0/24")
        isolated = {"isolated": True} if PROTECTED else {}
        a_nic = {"bridge": "bra", **isolated}
        _vm(tenants, "a", "a1", {**a_nic, "ipv4": A1_IP}, images, [GW_A, A2_IP, B1_IP, GW_B])
        _vm(tenants, "a", "a2", {**a_nic, "ipv4": A2_IP}, images, [GW_A, A1_IP])
        _vm(tenants, "b", "b1", {"bridge": "brb", "ipv4": B1_IP}, images, [GW_B, A1_IP, GW_A])
        yield tenants


def test_tenant_guests_reach_their_gateway_but_not_each_other(tenants: Tenants) -> None:
    for vm in tenants.vms:
        ready = wait_for(lambda vm=vm: parse_ready(tenants.console(vm)), 300, f"{vm} ready", 1)
        assert ready.address == {"a1": A1_IP, "a2": A2_IP, "b1": B1_IP}[vm], ready
    # rounds before this may have gone out before a neighbour was up: judged only after it
    since = {vm: last_round(tenants.console(vm)) for vm in tenants.vms}

    def enough(vm: str) -> list[tuple[int, str, bool]] | None:
        seen = pings(tenants.console(vm))
        later = [p for p in seen if p[0] > since[vm] + ROUNDS_AFTER_READY]
        return seen if later else None

    consoles = {vm: wait_for(lambda vm=vm: enough(vm), 300, f"{vm} pings", 1) for vm in tenants.vms}
    allowed = {"a1": {GW_A}, "a2": {GW_A}, "b1": {GW_B}}
    wrong: list[str] = []  # every broken expectation at once: the report names them all
    for vm, seen in consoles.items():
        after = [(target, answered) for r, target, answered in seen if r > since[vm]]
        for target in sorted({target for _, target, _ in seen}):
            answers = [answered for t, answered in after if t == target]
            if target in allowed[vm]:
                # under load a try may time out: reached = most tries answered
                if sum(answers) <= len(answers) // 2:
                    wrong.append(f"{vm} did not reach {target}: {answers}")
            elif ever := [r for r, t, answered in seen if t == target and answered]:
                wrong.append(f"{vm} reached {target} in rounds {ever}")
            elif len(answers) < ROUNDS_AFTER_READY:
                wrong.append(f"{vm} tried {target} only {len(answers)} times")
    consoles_text = "\n".join(f"--- {vm}\n{tail(tenants.console(vm))}" for vm in tenants.vms)
    assert not wrong, "\n".join(wrong) + "\n" + consoles_text

    # the cross-project tries were dropped by the project filter, and counted there
    for network in ("neta", "netb"):
        project, network_id = tenants.networks[network]
        isolation = tenants.get(project, f"/v1/networks/{network_id}")["isolation"]
        assert isolation is not None and isolation["dropped_packets"] > 0, (network, isolation)
