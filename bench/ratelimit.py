"""Rate limits with a real guest (issue 13 item 4): the shared test guest booted under TCG by
the real daemon, on a bridge NIC, echoing TCP (kvt.echo: `nc -ll -e cat` in the guest); the
host end of the bridge (10.78.0.1, in the daemon's kvt-* namespace) sends to it for a few
seconds and counts what comes back. A round trip is bounded by its slower direction, so each
direction is measured with only that one limited (PATCH /v1/vms/{id}/nics/0 between runs, on
the running guest: no restart):

- free: no limit;
- ingress_kbps 10000 (towards the guest: the tap's root tbf);
- egress_kbps 10000 (from the guest: police, or the ifb's tbf on this kernel).

Run as `.venv/bin/python -m bench.ratelimit` (root; never touches the root namespace). Prints
Mbit/s per run; figures also go to bench/results/ratelimit.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.helpers import ok, running_daemon
from tests.guest.build import build_guest, kernel_cmdline
from tests.guest.console import parse_ready
from tests.netns_tools import throwaway_netns

METER = Path(__file__).resolve().parent.parent / "tests" / "host" / "tcp_meter.py"
RESULTS = Path(__file__).with_name("results")
HOST_ADDRESS, GUEST_ADDRESS, ECHO_PORT = "10.78.0.1", "10.78.0.2", 7000
LIMIT_KBPS = 10_000


def echo_mbit(ns: str, seconds: float) -> float:
    """Mbit/s echoed back by the guest over one TCP connection from namespace `ns`."""
    argv = [sys.executable, "-I", "-S", str(METER), "echo", GUEST_ADDRESS, str(ECHO_PORT)]
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv, str(seconds)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    total, duration = done.stdout.split()
    return int(total) * 8 / float(duration) / 1e6


def wait_ready(client: Any, vm_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while parse_ready(client.get(f"/v1/vms/{vm_id}/console").text) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the guest was not ready within {timeout} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per run (default 4)")
    args = parser.parse_args()
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    figures: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ns = stack.enter_context(throwaway_netns())
        daemon = stack.enter_context(running_daemon(ns, workdir / "daemon"))
        with daemon.client(timeout=60) as client:
            bridge = {"name": "br0", "addresses": [f"{HOST_ADDRESS}/24"]}
            ok(client.post("/v1/bridges?wait=10", json=bridge), 201)
            cmdline = kernel_cmdline(ip=f"{GUEST_ADDRESS}/24", echo=ECHO_PORT)
            vm = {
                "name": "limited",
                "memory_mib": 256,
                "boot": {
                    "kernel": str(guest.kernel),
                    "initrd": str(guest.initrd),
                    "cmdline": cmdline,
                },
                "nics": [{"backend": "bridge", "bridge": "br0"}],
            }
            vm = ok(client.post("/v1/vms?wait=60", json=vm), 201)
            wait_ready(client, vm["id"])
            runs: list[tuple[str, dict[str, Any]]] = [
                ("free", {"ingress_kbps": None, "egress_kbps": None}),
                ("ingress_kbps 10000", {"ingress_kbps": LIMIT_KBPS, "egress_kbps": None}),
                ("egress_kbps 10000", {"ingress_kbps": None, "egress_kbps": LIMIT_KBPS}),
            ]
            for name, limits in runs:
                url = f"/v1/vms/{vm['id']}/nics/0?wait=20"
                ok(client.patch(url, json=limits), 200)
                figures[name] = round(echo_mbit(ns, args.seconds), 2)
                print(f"{name:>20}: {figures[name]:7.2f} Mbit/s", flush=True)
            method = ok(client.get("/v1/host/capabilities"), 200)["rate_limit"]["method"]
            print(f"traffic from the guest limited by: {method}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ratelimit.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
