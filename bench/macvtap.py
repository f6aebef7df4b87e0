"""macvtap NICs against bridge taps between the same two TCG guests in the same run (issue 13's
measured part; the how-to compared NIC paths the same way).

Each guest (the shared test guest, tests/guest, with a hook of this file added to its
initrd) has two virtio NICs: NIC 0 a macvtap in bridge mode on the host's eth0 (a veth whose
peer is in a second throwaway namespace), NIC 1 a bridge NIC on one of our bridges. Guest
"client" measures, over each path in turn, ping RTT (busybox ping, 20 echoes 0.2 s apart,
after 3 to warm ARP) and TCP throughput (dd of zeros piped into busybox nc, the other guest's
nc writing to /dev/null; timed with /proc/uptime, 10 ms resolution); the figures come back
on its serial console. Two rounds per path, interleaved (macvtap, bridge, macvtap, bridge);
each path's better round counts. Printed: each figure per path and macvtap/bridge ratios.
Both guests run under TCG: the figures measure qemu's emulation as much as the host's path
(about 10 Mbit/s), and move by ±20 % or more between runs.

Run as `.venv/bin/python -m bench.macvtap` (root; touches only throwaway kvt-* namespaces;
the VMs are deleted through the API, the daemon is stopped, the namespaces removed).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.taps import fresh_netns
from tests.daemon import Daemon
from tests.e2e.helpers import overlay_initrd
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.netns_tools import ip

ADDRESSES = {  # guest -> (address on the macvtap path, on the bridge path)
    "client": ("10.62.0.1", "10.63.0.1"),
    "server": ("10.62.0.2", "10.63.0.2"),
}
TCP_PORT = 5001
PINGS = 20
RESULT_RE = re.compile(r"KVT-BENCH (?P<what>rtt|tcp) (?P<path>\w+) (?P<rest>[^\r\n]*)")
RECEIVED_RE = re.compile(r"KVT-BENCH recv x (?P<bytes>\d+)")

# the guest's init.sh ends with this instead of its shell: the bridge NIC's address, then
# the server's listeners or the client's measurements (lines on the console)
HOOK = r"""
ip addr add "$(param bench_ip)" dev eth1
ip link set eth1 up
if [ "$(param bench_role)" = server ]; then
	mkfifo /tmp/hold # the listener's stdin: never at EOF (busybox nc quits at stdin's EOF)
	(while :; do say "KVT-BENCH recv x $(nc -l -p 5001 0<>/tmp/hold | wc -c)"; done) &
	say "KVT-BENCH-SERVER"
else
	sleep 3
	count=$(param bench_blocks)
	m="macvtap:$(param bench_peer_m)"
	b="bridge:$(param bench_peer_b)"
	for pair in "$m" "$b" "$m" "$b"; do
		path=${pair%%:*}
		peer=${pair#*:}
		ping -c 3 -w 20 "$peer" >/dev/null
		summary=$(ping -c 20 -i 0.2 "$peer" | tail -1)
		say "KVT-BENCH rtt $path $summary"
		sleep 1 # the server's next listener
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


def vm_body(guest: Guest, initrd: Path, name: str, blocks: int) -> dict[str, Any]:
    own_m, own_b = ADDRESSES[name]
    peer_m, peer_b = ADDRESSES["server" if name == "client" else "client"]
    extra = [
        f"kvt.bench_role={name}",
        f"kvt.bench_ip={own_b}/24",
        f"kvt.bench_peer_m={peer_m}",
        f"kvt.bench_peer_b={peer_b}",
        f"kvt.bench_blocks={blocks}",
    ]
    return {
        "name": name,
        "memory_mib": 256,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(initrd),
            "cmdline": kernel_cmdline(ip=f"{own_m}/24", iface="eth0", extra=extra),
        },
        "nics": [
            {"backend": "macvtap", "parent": "eth0", "macvtap_mode": "bridge"},
            {"backend": "bridge", "bridge": "br0"},
        ],
    }


def client_of(daemon: Daemon) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    return httpx.Client(transport=transport, base_url="http://kvmnetd", timeout=120)


def expect(response: httpx.Response, *statuses: int) -> Any:
    if response.status_code not in statuses:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json() if response.content else None


def console(client: httpx.Client, vm_id: str) -> str:
    return client.get(f"/v1/vms/{vm_id}/console").text


def wait_console(client: httpx.Client, vm_id: str, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = console(client, vm_id)
        if marker in text:
            return text
        if "KVT-FAILED" in text or time.monotonic() > deadline:
            raise RuntimeError(f"no {marker} on the console:\n{text[-3000:]}")
        time.sleep(0.5)


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


@contextlib.contextmanager
def world(workdir: Path) -> Iterator[Daemon]:
    """The daemon's namespace with eth0 (a veth into a LAN namespace) and br0."""
    with fresh_netns() as host, fresh_netns() as lan:
        ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan)
        ip(host, "link", "set", "eth0", "up")
        ip(lan, "link", "set", "lan0", "up")
        daemon = Daemon(host, workdir).start()
        try:
            with client_of(daemon) as client:
                expect(client.post("/v1/bridges?wait=10", json={"name": "br0"}), 201)
            yield daemon
        finally:
            daemon.kill()


def run(daemon: Daemon, guest: Guest, initrd: Path, blocks: int) -> dict[str, dict[str, float]]:
    with client_of(daemon) as client:
        vms = {
            name: expect(
                client.post("/v1/vms?wait=60", json=vm_body(guest, initrd, name, blocks)), 201
            )
            for name in ("server", "client")
        }
        try:
            wait_console(client, vms["server"]["id"], "KVT-BENCH-SERVER", 120)
            text = wait_console(client, vms["client"]["id"], "KVT-BENCH-DONE", 300)
            received = [
                int(m["bytes"]) for m in RECEIVED_RE.finditer(console(client, vms["server"]["id"]))
            ]
        finally:
            for vm in vms.values():
                expect(client.delete(f"/v1/vms/{vm['id']}?force=true&wait=60"), 200, 202, 204)
    sent = blocks * 65536
    if "KVT-BENCH-FAILED" in text or received != [sent] * 4:
        raise RuntimeError(f"transfers failed or came short (each {sent} bytes): {received}")
    return parse(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=160, help="64 KiB blocks sent per round")
    params = parser.parse_args(argv)
    guest = build_guest("virtio")
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    workdir.chmod(0o755)
    try:
        initrd = overlay_initrd(guest, HOOK, {}, workdir / "bench-initrd")
        (workdir / "d").mkdir()
        with world(workdir / "d") as daemon:
            figures = run(daemon, guest, initrd, params.blocks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if set(figures) != {"macvtap", "bridge"} or any(len(f) != 2 for f in figures.values()):
        print(f"incomplete figures: {figures}", file=sys.stderr)
        return 1
    mac, br = figures["macvtap"], figures["bridge"]
    print("| path | ping RTT (avg of 20) | TCP throughput |")
    print("| --- | --- | --- |")
    for path, f in figures.items():
        print(f"| {path} | {f['rtt_ms']:.2f} ms | {f['mbit_s']:.0f} Mbit/s |")
    print(
        f"macvtap/bridge: RTT {mac['rtt_ms'] / br['rtt_ms']:.2f}x, "
        f"throughput {mac['mbit_s'] / br['mbit_s']:.2f}x (two TCG guests, same run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
