"""The fuzzer in CI: schemathesis 4 against a live daemon in a throwaway namespace.

Every operation of openapi.json is run through its four phases (the schema's examples,
coverage of each constraint's edges, property-based fuzzing, and stateful sequences that
feed what a create returned into get/patch/delete and the actions) with every check
(`checks.enabled = true`: no 5xx, responses, status codes, content types and headers as
documented, schema-valid input accepted and invalid input refused, Allow on 405, deleted
resources gone, created ones found). It talks to the daemon's TCP listener on 127.0.0.1
inside the namespace with the bearer token. A fixed seed and deterministic generation keep
the run the same and bounded (tests/fuzz/schemathesis.toml); VMs get boot paths that do not
exist (tests/fuzz/hooks.py) so no guest boots. Afterwards the daemon must still be healthy:
/readyz 200 and a new bridge settles in the kernel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import E2EDaemon, kernel_link, ok
from tests.netns_tools import processes_in

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
LISTEN = "127.0.0.1:8080"  # inside the test's own namespace
# a bound, not the expected time (about 3 minutes alone; on two busy cores beside the other
# xdist worker and the nested tier it passed 420 s)
FUZZ_SECONDS = 900
# the stateful phase must really chain creates into get/patch/delete and actions
MIN_LINKS_COVERED = 15  # 18 with the fixed seed; the run takes about 3 minutes on 2 busy cores


def run_schemathesis(netns: str, token: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        "ip", "netns", "exec", netns, str(SCHEMATHESIS),
        "--config-file", str(FUZZ / "schemathesis.toml"),
        "run", f"http://{LISTEN}/openapi.json",
        "--report", "junit", "--report-junit-path", str(workdir / "schemathesis.xml"),
        "--output-truncate", "false",
    ]  # fmt: skip
    env = {
        **os.environ,
        "KVMNETD_FUZZ_TOKEN": token,
        "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS,
        check=False,
    )


def neutron_operations() -> list[str]:
    """The operation ids of the Neutron API (tag `neutron`) in the committed OpenAPI document
    (kept equal to the app's by tests/api/test_openapi.py)."""
    document = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    return [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "neutron" in operation.get("tags", ())
    ]


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_fuzzer_finds_nothing_and_the_daemon_stays_healthy(netns: str, tmp_path: Path) -> None:
    daemon = E2EDaemon(netns, tmp_path)
    daemon.extra_env = {
        "KVMNETD_LISTEN": LISTEN,
        "KVMNETD_PROBE_KERNEL": str(tmp_path / "no-kernel"),  # the KVM probe boots nothing
    }
    daemon.start()
    try:
        token = (daemon.state_dir / "admin-token").read_text().strip()
        result = run_schemathesis(netns, token, tmp_path)
        report = result.stdout[-60000:] + result.stderr[-5000:]
        assert result.returncode == 0, f"schemathesis found problems:\n{report}"
        selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
        tested = re.search(r"Tested: (\d+)", result.stdout)
        assert selected and tested, report
        # every operation but the Neutron API's (left out in schemathesis.toml: its own
        # contract, driven by the real openstack clients) ran
        expected = int(selected[2]) - len(neutron_operations())
        assert int(selected[1]) == int(tested[1]) == expected, f"not every operation ran:\n{report}"
        assert int(tested[1]) >= 40
        links = re.search(r"API Links: +(\d+) covered", result.stdout)
        assert links and int(links[1]) >= MIN_LINKS_COVERED, f"stateful phase too thin:\n{report}"
        print(result.stdout[result.stdout.find("Stateful (") :])  # scenarios, links, summary

        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
        with daemon.client() as client:
            assert client.get("/readyz").status_code == 200
            bridge = ok(client.post("/v1/bridges?wait=20", json={"name": "after-fuzz"}), 201)
            assert bridge["status"] == "active"
        kernel_link(netns, "after-fuzz", 5, lambda link: link.kind == "bridge")
        assert not lasting_qemus(netns), "a qemu the fuzzer started keeps running"
    except BaseException:
        print(f"--- daemon log ({daemon.log}) ---\n{daemon.logs()[-20000:]}")
        raise
    finally:
        daemon.kill()


def lasting_qemus(netns: str) -> set[int]:
    """qemu processes in the namespace that are still there 3 s later (a VM restarting
    after its failed start may be seen once; none can run for long without a kernel)."""

    def qemus() -> set[int]:
        return {pid for pid in processes_in(netns) if _comm(pid).startswith("qemu")}

    first = qemus()
    time.sleep(3)
    return first & qemus()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
