"""The README's VLAN blocks, run as written on Debian's kernel (802.1Q and bridge VLAN
filtering, which the build machines' kernel lacks), against the real daemon.

The blocks marked `<!-- readme-test: nested -->` in README.md are read with the host README
test's parser (tests/readme_blocks.py) and run in order by bash, after the README's own
`S=...` and `alias k=...` lines and one setup request that leaves what the README's blocks
above them leave for these: `br0` (stp off, forward delay 0) without an uplink. The daemon is
the real `kvmnetd serve` process (`make run`'s directories under the blocks' working
directory, so the README's socket path holds) in a throwaway namespace whose `eth0` is a
veth to a LAN namespace with the gateway, as in the host README test. Every command must
exit 0, every answer be 2xx and no resource end in `error`; then the kernel must hold what the
README says: br0 filtering with eth0 carrying VIDs 10, 20 and 30 tagged, the network's
gateway on the VLAN's L3 interface `br0.10` (an 802.1Q link on br0, whose own port joins VID
10 tagged) and answering a ping from the LAN tagged with VID 10, tap3 an access port of VID
10 (PVID, untagged), and the router VM's trunk NIC stored with its VIDs (created stopped: no
qemu boots here). One daemon and one test: a daemon start costs ~40 s in the nested host.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.host.vlans import VlanOps
from tests.kernel.nested.test_vlans_daemon import memberships, until
from tests.netns_tools import in_netns, ip, links
from tests.readme_blocks import (
    README,
    STATUS,
    blocks_workdir,
    k_definition,
    make_run_daemon,
    readme_blocks,
    script,
    uplinked_host,
)

_TIER_PLUGIN = Path(__file__).resolve().parents[1] / "conftest.py"
if os.environ.get("KVT_NESTED") != "1" and not _TIER_PLUGIN.is_file():
    pytest.skip(
        "runs only inside the nested Debian kernel of the kernel test tier (tests/kernel)",
        allow_module_level=True,
    )

# what the README's blocks before the VLAN blocks leave: br0 (its uplink taken away again)
SETUP = """
k -X POST 'http://x/v1/bridges?wait=60' -d '{"name": "br0", "stp": false, "forward_delay": 0}'
"""
GATEWAY_A = "10.93.0.1"  # nat-a's gateway (the README's subnet 10.93.0.0/24)
TAGGED, ACCESS, NATIVE = (False, False), (True, True), {1: (True, True)}


# the daemon's start alone took over 300 s (pytest-timeout's default) at load 12-15 on the
# 2 shared cores: up to 540 s for it, 480 s for the blocks, then the checks
@pytest.mark.timeout(1400)
def test_readme_vlan_blocks_run_as_written_on_debians_kernel(
    modules: Callable[..., None], busybox: str
) -> None:
    modules("8021q", "bridge", "veth", "tun")
    text = README.read_text()
    blocks = readme_blocks(text, "nested")
    assert len(blocks) >= 3, "the README's VLAN blocks (readme-test: nested) were not found"
    with (
        uplinked_host() as (host, lan),
        blocks_workdir() as workdir,
        make_run_daemon(host, workdir, timeout=540, patience=480) as daemon,
    ):
        transcript = ""
        try:
            done = _run(script(blocks, setup=k_definition(text) + SETUP), workdir)
            transcript = f"stdout:\n{done.stdout[-8000:]}\nstderr:\n{done.stderr[-6000:]}"
            _blocks_answered(done, len(blocks), transcript)
            with daemon.client() as api:
                _kernel_holds_what_the_readme_says(api, host, lan, busybox)
            print(transcript)  # each block's start (s) and each request's status
        except BaseException:
            print(f"{transcript}\n--- daemon log ---\n{daemon.logs()[-15000:]}")
            raise


def _run(bash: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """The blocks run by bash in `workdir`, bounded well inside the tier's timeout (each
    request by KVT_REQUEST_MAX_TIME); on a timeout, what they printed until then."""
    argv = ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", bash]
    env = {**os.environ, "KVT_REQUEST_MAX_TIME": "120"}
    try:
        return subprocess.run(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=480,
        )
    except subprocess.TimeoutExpired as exc:
        out, err = (
            x.decode() if isinstance(x, bytes) else x or "" for x in (exc.stdout, exc.stderr)
        )
        pytest.fail(f"the README blocks did not end within 480 s\nstdout:\n{out}\nstderr:\n{err}")


def _blocks_answered(done: subprocess.CompletedProcess[str], blocks: int, transcript: str) -> None:
    """Every command exited 0, every request was made and answered 2xx, nothing in error."""
    statuses = STATUS.findall(done.stderr)
    assert done.returncode == 0, f"a README command failed ({done.returncode})\n{transcript}"
    failed = [s for s in statuses if not s[0].startswith("2")]
    assert not failed, f"non-2xx answers: {failed}\n{transcript}"
    assert len(statuses) >= 8, transcript  # the setup's and the blocks' requests
    assert done.stderr.count("--- README block") == blocks, transcript
    errors = re.findall(r'"status": ?"error".{0,300}', done.stdout)
    assert not errors, f"a resource ended in error: {errors}"  # a settled error is a 2xx too


def _get(api: httpx.Client, path: str) -> dict[str, Any]:
    # `Connection: close`: the checks between requests (ip, ping) outlast uvicorn's 5 s
    # keep-alive here, and a request on the connection it was closing got ECONNRESET
    response = api.get(path, headers={"Connection": "close"})
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()  # type: ignore[no-any-return]


def _active(api: httpx.Client, path: str) -> dict[str, Any] | None:
    shown = _get(api, path)
    settled = shown["observed_generation"] == shown["generation"]
    return shown if settled and shown["status"] == "active" else None


def _kernel_holds_what_the_readme_says(
    api: httpx.Client, host: str, lan: str, busybox: str
) -> None:
    # -- the VLANs: filtering on br0 (auto prefers it), eth0 carries each VID tagged
    vids = {"tenant-a": 10, "tenant-b": 20, "mgmt": 30}
    vlans = {
        name: until(lambda n=name: _active(api, f"/v1/vlans/{n}"), 30, f"VLAN {name} active")
        for name in vids
    }
    for name, vlan in vlans.items():
        assert (vlan["vlan_id"], vlan["trunk"], vlan["backend"]) == (
            vids[name],
            "br0",
            "vlan_filtering",
        ), vlan
        objects = [(o["name"], o["observed_state"]) for o in vlan["kernel_objects"]]
        assert ("eth0", "present") in objects, vlan
    assert vlans["tenant-a"]["l3_interface"] == "br0.10"
    with VlanOps(netns=host) as ops:
        assert ops.bridge_vlan_options("br0").filtering is True
    ports = memberships(host, "br0")
    assert ports["eth0"] == {**NATIVE, 10: TAGGED, 20: TAGGED, 30: TAGGED}, ports
    assert links(host)["eth0"].master == "br0"

    # -- nat-a: "vlan_id" and "link": "br0.10", the gateway on that 802.1Q link on br0,
    # whose own port joins VID 10 tagged (`bridge vlan show`: br0 10)
    network = until(lambda: _active(api, "/v1/networks/nat-a"), 30, "network nat-a active")
    assert (network["link"], network["vlan_id"]) == ("br0.10", vlans["tenant-a"]["id"]), network
    l3 = links(host)["br0.10"]
    assert l3.kind == "vlan" and l3.info.get("IFLA_VLAN_ID") == 10, l3
    assert f"{GATEWAY_A}/24" in l3.addresses, l3
    assert memberships(host, "br0")["br0"][10] == TAGGED
    # the gateway answers from the LAN across the trunk, tagged with VID 10
    ip(lan, "link", "add", "link", "lan0", "name", "lan0.10", "type", "vlan", "id", "10")
    ip(lan, "addr", "add", "10.93.0.2/24", "dev", "lan0.10")
    ip(lan, "link", "set", "lan0.10", "up")
    ping = in_netns(lan, busybox, "ping", "-c", "1", "-W", "5", GATEWAY_A, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    # -- tap3: an access port of tenant-a on the trunk (PVID 10, untagged)
    tap = until(lambda: _active(api, "/v1/taps/tap3"), 30, "tap3 active")
    assert tap["vlan_id"] == vlans["tenant-a"]["id"], tap
    assert links(host)["tap3"].master == "br0"
    joined = until(
        lambda: memberships(host, "br0").get("tap3") == {10: ACCESS}, 45, "tap3 on VID 10"
    )
    assert joined, memberships(host, "br0")

    # -- the router: stopped, its trunk NIC stored with VIDs 10 and 20 tagged, 30 native
    router = _get(api, "/v1/vms/router")
    assert router["power_state"] == "stopped", router
    nic = router["nics"][0]
    assert (nic["vlan_tagged"], nic["native_vlan"]) == ([10, 20], 30), nic
