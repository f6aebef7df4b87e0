"""NIC hotplug until the guest uses it (issue 13's measured figure), under TCG, with the
shared test guest and the hook of tests/e2e/test_hotplug_guest.py (a second interface gets
DHCP when it appears).

One guest boots on nat0 (br0); then, `--rounds` times: POST a NIC on br1 with a fixed address
on nat1 (?wait=: until the worker has plugged it), ping that address from the daemon's
namespace until the guest answers (its DHCP included), DELETE the NIC (?wait=: until the guest
released the device and the tap is gone). Printed per phase: the median and the spread of the
rounds. Run as `.venv/bin/python -m bench.hotplug` (root; everything lives in a throwaway
kvt-* namespace, removed afterwards with its processes).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.e2e.helpers import ok, overlay_initrd, running_daemon, wait_for
from tests.e2e.test_hotplug_guest import HOOK, _ping
from tests.guest.build import build_guest, kernel_cmdline
from tests.guest.console import parse_ready
from tests.netns_tools import throwaway_netns


def _answers(ns: str, address: str) -> bool | None:
    return _ping(ns, address) or None


def _said(console: Callable[[], str], line: str) -> bool | None:
    return line in console() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))
    workdir.chmod(0o755)
    phases: dict[str, list[float]] = {"plugged": [], "answers": [], "unplugged": []}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ns = stack.enter_context(throwaway_netns())
        daemon = stack.enter_context(running_daemon(ns, workdir / "daemon"))
        initrd = overlay_initrd(guest, HOOK, {}, workdir / "hotplug.initrd")
        with daemon.client(timeout=120) as client:
            for index in (0, 1):
                ok(client.post("/v1/bridges?wait=10", json={"name": f"br{index}"}), 201)
                body = {"name": f"nat{index}", "bridge": f"br{index}"}
                ok(
                    client.post(
                        "/v1/networks?wait=10", json=body | {"subnet": f"10.9{3 + index}.0.0/24"}
                    ),
                    201,
                )
            boot = {"kernel": str(guest.kernel), "initrd": str(initrd)}
            boot["cmdline"] = kernel_cmdline(dhcp=True)
            vm_body = {"name": "hot", "memory_mib": 256, "boot": boot}
            vm_body["nics"] = [{"backend": "bridge", "bridge": "br0"}]
            vm = ok(client.post("/v1/vms?wait=60", json=vm_body), 201)

            def console() -> str:
                return str(client.get(f"/v1/vms/{vm['id']}/console").text)

            wait_for(lambda: parse_ready(console()), 120, "guest ready")
            for n in range(1, rounds + 1):
                # a fresh address each round: the last round's MAC keeps its dynamic lease
                # (dnsmasq's lease file) until it expires, and a fixed address leased to
                # another MAC is refused
                address = f"10.94.0.{50 + n}"
                nic_in = {"backend": "bridge", "bridge": "br1", "ipv4": address}
                started = time.monotonic()
                nic = ok(client.post(f"/v1/vms/{vm['id']}/nics?wait=30", json=nic_in), 201)
                phases["plugged"].append(time.monotonic() - started)
                wait_for(partial(_answers, ns, address), 90, "the guest answers")
                phases["answers"].append(time.monotonic() - started)
                started = time.monotonic()
                ok(client.delete(f"/v1/vms/{vm['id']}/nics/{nic['id']}?wait=60"), 200)
                wait_for(partial(_said, console, f"KVT-UNPLUGGED {n}"), 30, "unplugged")
                phases["unplugged"].append(time.monotonic() - started)
            client.delete(f"/v1/vms/{vm['id']}?wait=60&force=true")
    print(f"NIC hotplug, {rounds} rounds (TCG guest; s, median [min-max]):")
    for name, what in (
        ("plugged", "POST until the worker plugged it (netdev_add + device_add)"),
        ("answers", "POST until the guest answers ping on it (DHCP included)"),
        ("unplugged", "DELETE until the guest released it and its tap is gone"),
    ):
        values = phases[name]
        print(f"  {what}: {statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]")


if __name__ == "__main__":
    main()
