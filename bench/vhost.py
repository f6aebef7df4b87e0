"""virtio NICs with vhost-net against the same NICs without it, between the same two TCG guests
in the same run (issue 13's measured part; the how-to saw about 1 ms ping without vhost).

This machine's kernel has no vhost-net, so the bench boots the kernel test tier's nested host
once (tests/kernel/vm.py `run_command`: Debian 12's kernel under QEMU TCG, 1 vCPU, the host's
root read-only) and runs itself there (`--inside`): the in-process app (create_app on a
throwaway kvt-* namespace, as tests/kernel/nested/test_vlans_daemon.py) whose capability probe
loads vhost_net, two bridges, and two guests (the shared test guest, tests/guest, with a hook
of this file added to its initrd), each with two virtio bridge NICs: NIC 0 on br0 with
`vhost: on`, NIC 1 on br1 with `vhost: off`. Guest "client" measures, over each path in turn,
ping RTT (busybox ping, 20 echoes 0.2 s apart, after 3 to warm ARP) and TCP throughput (dd of
zeros piped into busybox nc, the other guest's nc writing to /dev/null; timed with
/proc/uptime, 10 ms resolution); the figures come back on its serial console. Two rounds per
path, interleaved (vhost, plain, vhost, plain); each path's better round counts. Also
reported: each guest's boot (POST to its first line of the hook), the /dev/vhost-net
descriptors each qemu holds, its `vhost-<pid>` kernel threads, and the devices endpoint's
`vhost` per NIC where the daemon reports it. The guests run under TCG inside TCG: the figures
measure emulation as much as the path, and move by ±20 % or more between runs.

Run as `.venv/bin/python -m bench.vhost` (root; everything lives and dies inside the nested
host, whose qemu is always reaped). Figures go to stdout and bench/results/vhost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.e2e.helpers import overlay_initrd
from tests.guest.build import Guest, build_guest, kernel_cmdline, load_guest

RESULTS = Path(__file__).resolve().parent / "results" / "vhost.json"
RESULT_MARK = "kvmnetd-bench-vhost-result: "
ADDRESSES = {  # guest -> (address on the vhost path, on the plain path)
    "client": ("10.64.0.1", "10.65.0.1"),
    "server": ("10.64.0.2", "10.65.0.2"),
}
PATHS = ("vhost", "plain")
RESULT_RE = re.compile(r"KVT-BENCH (?P<what>rtt|tcp) (?P<path>\w+) (?P<rest>[^\r\n]*)")
RECEIVED_RE = re.compile(r"KVT-BENCH recv x (?P<bytes>\d+)")
VHOST_NET = Path("/dev/vhost-net")
# the guest's kernel is emulated twice over (TCG inside TCG): no printk on the serial console
# and no crypto self-tests, which took most of a first try's 350 s of boot
FAST_BOOT = ("quiet", "cryptomgr.notests")
# its ELF vmlinux (booted through PVH): the virtio variant's bzImage would unpack itself first
GUEST_VARIANT = "legacy-nics"

# the guest's init.sh ends with this instead of its shell: the plain NIC's address, then the
# server's listener or the client's measurements (lines on the console)
HOOK = r"""
say "KVT-BENCH-UP"
ip addr add "$(param bench_ip)" dev eth1
ip link set eth1 up
if [ "$(param bench_role)" = server ]; then
	mkfifo /tmp/hold # the listener's stdin: never at EOF (busybox nc quits at stdin's EOF)
	(while :; do say "KVT-BENCH recv x $(nc -l -p 5001 0<>/tmp/hold | wc -c)"; done) &
	say "KVT-BENCH-SERVER"
else
	sleep 3
	count=$(param bench_blocks)
	v="vhost:$(param bench_peer_v)"
	p="plain:$(param bench_peer_p)"
	for pair in "$v" "$p" "$v" "$p"; do
		path=${pair%%:*}
		peer=${pair#*:}
		ping -c 3 -w 60 "$peer" >/dev/null
		summary=$(ping -c 20 -i 0.2 "$peer" | tail -1)
		say "KVT-BENCH rtt $path $summary"
		sleep 2 # the server's next listener
		read -r start _ </proc/uptime
		if dd if=/dev/zero bs=65536 count="$count" 2>/dev/null | nc "$peer" 5001; then
			read -r end _ </proc/uptime
			say "KVT-BENCH tcp $path $start $end $((count * 65536))"
		else
			say "KVT-BENCH-FAILED tcp $path"
		fi
	done
	say "KVT-BENCH-DONE"
fi
shell_forever
"""


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def vm_body(guest: Guest, initrd: Path, name: str, blocks: int) -> dict[str, Any]:
    own_v, own_p = ADDRESSES[name]
    peer_v, peer_p = ADDRESSES["server" if name == "client" else "client"]
    extra = [
        f"kvt.bench_role={name}",
        f"kvt.bench_ip={own_p}/24",
        f"kvt.bench_peer_v={peer_v}",
        f"kvt.bench_peer_p={peer_p}",
        f"kvt.bench_blocks={blocks}",
    ]
    return {
        "name": name,
        "memory_mib": 160,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(initrd),
            "cmdline": kernel_cmdline(ip=f"{own_v}/24", iface="eth0", extra=[*extra, *FAST_BOOT]),
        },
        "nics": [
            {"backend": "bridge", "bridge": "br0", "vhost": "on"},
            {"backend": "bridge", "bridge": "br1", "vhost": "off"},
        ],
    }


def expect(response: Any, *statuses: int) -> Any:
    if response.status_code not in statuses:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json() if response.content else None


def console(client: TestClient, vm_id: str) -> str:
    return str(client.get(f"/v1/vms/{vm_id}/console").text)


def wait_console(client: TestClient, vm_id: str, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = console(client, vm_id)
        if marker in text:
            return text
        vm = client.get(f"/v1/vms/{vm_id}").json()
        if "KVT-FAILED" in text or vm["status"] == "error" or time.monotonic() > deadline:
            raise RuntimeError(f"no {marker} on the console ({vm}):\n{text[-3000:]}")
        time.sleep(2)


def parse(text: str) -> dict[str, dict[str, float]]:
    """path -> {"rtt_ms": the lower average RTT, "mbit_s": the higher throughput} of its two
    rounds (interleaved with the other path's) on the client's console."""
    rounds: dict[tuple[str, str], list[float]] = {}
    for match in RESULT_RE.finditer(text):
        path, rest = match["path"], match["rest"].split()
        if match["what"] == "rtt":  # "round-trip min/avg/max = 0.4/0.6/1.2 ms"
            rounds.setdefault((path, "rtt_ms"), []).append(float(rest[-2].split("/")[1]))
        else:
            start, end, size = float(rest[0]), float(rest[1]), int(rest[2])
            rate = size * 8 / max(end - start, 0.01) / 1e6
            rounds.setdefault((path, "mbit_s"), []).append(rate)
    figures: dict[str, dict[str, float]] = {}
    for (path, what), values in rounds.items():
        figures.setdefault(path, {})[what] = min(values) if what == "rtt_ms" else max(values)
    return figures


def vhost_descriptors(pid: int) -> int:
    """How many descriptors of /dev/vhost-net the process holds (/proc/PID/fd)."""
    device = VHOST_NET.stat().st_rdev
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            held += fd.stat().st_rdev == device
    return held


def vhost_threads(pid: int) -> int:
    """How many kernel threads `vhost-<pid>` exist (one per vhost device qemu started)."""
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            count += comm.read_text().strip() == f"vhost-{pid}"
    return count


@contextlib.contextmanager
def app_on(netns: str, base: Path) -> Iterator[TestClient]:
    from app.main import create_app
    from app.settings import Settings
    from tests.db_template import seed_state_dir

    settings = Settings(
        state_dir=seed_state_dir(base / "state"),
        run_dir=base / "run",
        listen="",
        reconcile_interval=30,
        probe_kernel=base / "no-kernel",
    )
    app = create_app(settings, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(120)
        yield client


def measure(client: TestClient, guest: Guest, initrd: Path, blocks: int) -> dict[str, Any]:
    run: dict[str, Any] = {"boot_s": {}, "vhost_fds": {}, "vhost_threads": {}, "devices": {}}
    for bridge in ("br0", "br1"):
        expect(client.post("/v1/bridges?wait=60", json={"name": bridge}), 201)
    progress("bridges up")
    run["capability"] = client.get("/v1/host/capabilities").json()["vhost_net"]
    vms: dict[str, dict[str, Any]] = {}
    posted: dict[str, float] = {}
    try:
        for name in ("server", "client"):
            posted[name] = time.monotonic()
            body = vm_body(guest, initrd, name, blocks)
            vms[name] = expect(client.post("/v1/vms", json=body), 202)
        for name, vm in vms.items():
            deadline = time.monotonic() + 120
            while (got := client.get(f"/v1/vms/{vm['id']}").json())["status"] != "running":
                if time.monotonic() > deadline or got["status"] == "error":
                    raise RuntimeError(f"{name} never ran: {got}")
                time.sleep(1)
            progress(f"{name}'s qemu runs after {time.monotonic() - posted[name]:.1f} s")
        for name, vm in vms.items():
            wait_console(client, vm["id"], "KVT-BENCH-UP", 900)
            run["boot_s"][name] = round(time.monotonic() - posted[name], 1)
            progress(f"{name} booted in {run['boot_s'][name]} s")
        for name, vm in vms.items():
            pid = client.get(f"/v1/vms/{vm['id']}").json()["pid"]
            run["vhost_fds"][name] = vhost_descriptors(pid)
            run["vhost_threads"][name] = vhost_threads(pid)
            devices = client.get(f"/v1/vms/{vm['id']}/devices")
            if devices.status_code == 200:
                items = devices.json()
                items = items.get("items", items) if isinstance(items, dict) else items
                run["devices"][name] = [d.get("vhost", "not reported") for d in items]
        wait_console(client, vms["server"]["id"], "KVT-BENCH-SERVER", 300)
        started = time.monotonic()
        text = wait_console(client, vms["client"]["id"], "KVT-BENCH-DONE", 1200)
        run["measure_s"] = round(time.monotonic() - started, 1)
        server_text = console(client, vms["server"]["id"])
        run["received"] = [int(m["bytes"]) for m in RECEIVED_RE.finditer(server_text)]
    finally:
        for vm in vms.values():
            expect(client.delete(f"/v1/vms/{vm['id']}?force=true&wait=60"), 200, 202, 204)
    sent = blocks * 65536
    if "KVT-BENCH-FAILED" in text or run["received"] != [sent] * 4:
        raise RuntimeError(f"transfers failed or came short (each {sent} bytes): {run}")
    run["figures"] = parse(text)
    return run


def inside(params: argparse.Namespace) -> int:
    from tests.netns_tools import throwaway_netns

    if os.environ.get("KVT_NESTED") != "1":
        print("--inside runs only in the kernel tier's nested host", file=sys.stderr)
        return 2
    for module in ("tun", "bridge"):  # vhost_net: the daemon's capability probe loads it
        subprocess.run(["modprobe", module], check=True, stdin=subprocess.DEVNULL, timeout=60)
    guest = load_guest(Path(params.guest))
    if guest is None:
        raise RuntimeError(f"no built guest in {params.guest}")
    base = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    base.chmod(0o755)  # qemu runs as the qemu user
    try:
        initrd = overlay_initrd(guest, HOOK, {}, base / "bench-initrd")
        with throwaway_netns() as netns, app_on(netns, base) as client:
            progress("daemon up")
            run = measure(client, guest, initrd, params.blocks)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    run |= {"kernel": platform.release(), "blocks": params.blocks}
    print(RESULT_MARK + json.dumps(run), flush=True)
    return 0


def on_host(params: argparse.Namespace) -> int:
    from tests.kernel.vm import run_command

    guest = build_guest(GUEST_VARIANT)  # cached on the host: the nested root is read-only
    # bytecode compiled here: the nested host's Python is ~12x slower and writes none
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-x", r"/\.cache/", "app", "tests", "bench"],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    argv = [sys.executable, "-m", "bench.vhost", "--inside", "--guest", str(guest.kernel.parent)]
    argv += ["--blocks", str(params.blocks)]
    started = time.monotonic()
    nested = run_command(argv, timeout=params.timeout)
    runs = [
        json.loads(line[len(RESULT_MARK) :])
        for line in nested.output.splitlines()
        if line.startswith(RESULT_MARK)
    ]
    if nested.exit_code != 0 or not runs:
        print(nested.output[-8000:])
        print(f"--- serial console (tail) ---\n{nested.console_tail()}")
        print(f"the nested run failed: {nested.reason} ({nested.seconds:.0f} s)")
        return 1
    (run,) = runs
    run["nested_wall_s"] = round(time.monotonic() - started, 1)
    figures = run["figures"]
    print("| path | ping RTT (avg of 20) | TCP throughput |")
    print("| --- | --- | --- |")
    for path in PATHS:
        f = figures[path]
        print(f"| {path} | {f['rtt_ms']:.2f} ms | {f['mbit_s']:.2f} Mbit/s |")
    vhost, plain = figures["vhost"], figures["plain"]
    print(
        f"vhost/plain: RTT {vhost['rtt_ms'] / plain['rtt_ms']:.2f}x, "
        f"throughput {vhost['mbit_s'] / plain['mbit_s']:.2f}x "
        "(two TCG guests inside the TCG nested host, same run)"
    )
    print(
        f"guest boot (POST to the hook): {run['boot_s']} s; /dev/vhost-net descriptors per "
        f"qemu: {run['vhost_fds']}; vhost threads: {run['vhost_threads']}; devices' vhost: "
        f"{run['devices'] or 'not reported'}; measuring took {run['measure_s']} s; the "
        f"nested run {run['nested_wall_s']} s"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(run, indent=2) + "\n")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--blocks", type=int, default=16, help="64 KiB blocks sent per round")
    parser.add_argument("--timeout", type=float, default=1800, help="bound of the nested run (s)")
    parser.add_argument("--guest", help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: run_command's cleanup (qemu killed and reaped) runs
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return inside(params) if params.inside else on_host(params)


if __name__ == "__main__":
    sys.exit(main())
