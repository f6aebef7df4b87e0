"""virtio NICs with vhost-net against the same NICs without it, same guest, same run (issue 13's
measured part; the how-to saw about 1 ms ping without vhost).

This machine's kernel has no vhost-net, so the bench boots the kernel test tier's nested host
once (tests/kernel/vm.py `run_command`: Debian 12's kernel under QEMU TCG, 1 vCPU, the host's
root read-only) and runs itself there (`--inside`): the in-process app (create_app on a
throwaway kvt-* namespace) whose capability probe loads vhost_net, bridge br0, and a PXE server
of the bench's own on it (tests/pxe.py: dnsmasq and a small HTTP server). The guest is iPXE, the
NIC's option ROM of a VM booted from the network (`boot.network`): a Linux guest under TCG
inside the TCG nested host took ~900 s to boot, iPXE gets its lease in ~20 s. Its boot script
fetches a blob over HTTP `--fetches` times (the guest's TCP receive throughput: bytes over the
time from the first byte sent until the guest acknowledged the last, measured by the server,
tests/pxe_http.py), then holds its NIC open while the host pings it (busybox ping, 20 echoes
0.2 s apart, after 3 to warm ARP). One VM at a time, its one NIC `vhost: on` or `vhost: off`,
`--rounds` rounds interleaved (vhost, plain, vhost, plain); each path's best and median count. Also
reported: the POST to the lease per VM, the devices endpoint's `vhost` (as qemu reports it)
and the /dev/vhost-net descriptors and `vhost-<pid>` threads of each qemu. Everything runs
under TCG inside TCG: the figures measure emulation as much as the path and move by ±20 % or
more between runs.

Run as `.venv/bin/python -m bench.vhost` (root; everything lives and dies inside the nested
host, whose qemu is always reaped). Figures go to stdout and bench/results/vhost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.pxe import HTTP_PORT, PxeServer, pxe_server
from tests.vhost_proc import vhost_fds, vhost_threads

RESULTS = Path(__file__).resolve().parent / "results" / "vhost.json"
RESULT_MARK = "kvmnetd-bench-vhost-result: "
PATHS = {"vhost": "on", "plain": "off"}  # path -> the NIC's `vhost`
GATEWAY = "10.64.0.1"
POOL = ("10.64.0.10", "10.64.0.200")


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def boot_script(fetches: int) -> str:
    """iPXE: fetch the blob `fetches` times (freed each time), then hold the NIC open."""
    base = f"http://{GATEWAY}:{HTTP_PORT}"
    fetch = f"imgfetch {base}/blob\nimgfree\n" * fetches
    return f"#!ipxe\n{fetch}chain {base}/hold\n"


def expect(response: Any, *statuses: int) -> Any:
    if response.status_code not in statuses:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json() if response.content else None


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.5)
    return result


def ping_avg_ms(netns: str, address: str) -> float:
    """busybox ping's average RTT (ms) of 20 echoes 0.2 s apart, after 3 to warm ARP."""
    argv = ["ip", "netns", "exec", netns, "busybox", "ping"]
    subprocess.run([*argv, "-c", "3", address], capture_output=True, timeout=60, check=False)
    done = subprocess.run(
        [*argv, "-c", "20", "-i", "0.2", address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "20 packets received" not in done.stdout:
        raise RuntimeError(f"ping {address}: {done.stdout}{done.stderr}")
    # "round-trip min/avg/max = 0.4/0.6/1.2 ms"
    return float(done.stdout.strip().splitlines()[-1].split()[-2].split("/")[1])


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


def one_round(
    client: TestClient, netns: str, pxe: PxeServer, path: str, fetches: int
) -> dict[str, Any]:
    """One VM with one virtio NIC (`vhost` as `path` says) booted from the network: its
    lease time, its blob fetches' throughput, its ping RTT, what qemu and the kernel say."""
    body = {
        "name": f"bench-{path}",
        "memory_mib": 96,
        "boot": {"network": True},
        "nics": [{"backend": "bridge", "bridge": "br0", "vhost": PATHS[path]}],
    }
    posted = time.monotonic()
    vm = expect(client.post("/v1/vms?wait=120", json=body), 201)
    try:
        address = until(lambda: pxe.leased(vm["nics"][0]["mac"]), 600, f"{path}: the lease")
        leased = time.monotonic() - posted

        def fetched() -> list[dict[str, Any]] | None:
            mine = [r for r in pxe.requests() if r["peer"] == address]
            return mine if any(r["path"] == "/hold" for r in mine) else None

        mine = until(fetched, 600, f"{path}: the blob fetches")
        blobs = [r for r in mine if r["path"] == "/blob" and r.get("seconds")]
        if len(blobs) != fetches or any("error" in r for r in blobs):
            raise RuntimeError(f"{path}: {fetches} fetches of the blob expected: {mine}")
        devices = expect(client.get(f"/v1/vms/{vm['id']}/devices"), 200)
        pid = vm["pid"]
        return {
            "lease_s": round(leased, 1),
            "mbit_s": [round(r["bytes"] * 8 / r["seconds"] / 1e6, 2) for r in blobs],
            "rtt_ms": ping_avg_ms(netns, address),
            "vhost_reported": devices[0]["vhost"],
            "vhost_fds": len(vhost_fds(pid)),
            "vhost_threads": len(vhost_threads(pid)),
        }
    finally:
        expect(client.delete(f"/v1/vms/{vm['id']}?force=true&wait=60"), 200, 202, 204)


def measure(netns: str, base: Path, params: argparse.Namespace) -> dict[str, Any]:
    (base / "pxe").mkdir()
    (base / "pxe" / "blob").write_bytes(os.urandom(params.blob_kib * 1024))
    rounds: list[dict[str, Any]] = []
    with app_on(netns, base) as client:
        progress("daemon up")
        capability = client.get("/v1/host/capabilities").json()["vhost_net"]
        bridge = {"name": "br0", "addresses": [f"{GATEWAY}/24"]}
        expect(client.post("/v1/bridges?wait=60", json=bridge), 201)
        script = boot_script(params.fetches)
        with pxe_server(netns, "br0", GATEWAY, POOL, script, base / "pxe") as pxe:
            for number in range(params.rounds):
                for path in PATHS:
                    result = one_round(client, netns, pxe, path, params.fetches)
                    progress(f"round {number + 1}, {path}: {result}")
                    rounds.append({"path": path, **result})
    figures = {}
    for path in PATHS:
        rtts = [r["rtt_ms"] for r in rounds if r["path"] == path]
        rates = [rate for r in rounds if r["path"] == path for rate in r["mbit_s"]]
        figures[path] = {
            "rtt_ms": min(rtts),
            "mbit_s": max(rates),
            "rtt_ms_median": statistics.median(rtts),
            "mbit_s_median": statistics.median(rates),
        }
    return {"capability": capability, "rounds": rounds, "figures": figures}


def inside(params: argparse.Namespace) -> int:
    from tests.netns_tools import throwaway_netns

    if os.environ.get("KVT_NESTED") != "1":
        print("--inside runs only in the kernel tier's nested host", file=sys.stderr)
        return 2
    for module in ("tun", "bridge"):  # vhost_net: the daemon's capability probe loads it
        subprocess.run(["modprobe", module], check=True, stdin=subprocess.DEVNULL, timeout=60)
    base = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    base.chmod(0o755)  # qemu runs as the qemu user
    try:
        with throwaway_netns() as netns:
            run = measure(netns, base, params)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    run |= {
        "kernel": platform.release(),
        "blob_kib": params.blob_kib,
        "fetches": params.fetches,
    }
    print(RESULT_MARK + json.dumps(run), flush=True)
    return 0


def report(run: dict[str, Any]) -> None:
    figures = run["figures"]
    print(
        "| path | ping RTT host to guest (avg of 20), best / median round "
        "| guest's TCP receive, best / median fetch |"
    )
    print("| --- | --- | --- |")
    for path in PATHS:
        f = figures[path]
        print(
            f"| {path} | {f['rtt_ms']:.2f} / {f['rtt_ms_median']:.2f} ms | "
            f"{f['mbit_s']:.2f} / {f['mbit_s_median']:.2f} Mbit/s |"
        )
    vhost, plain = figures["vhost"], figures["plain"]
    for kind in ("", "_median"):
        print(
            f"vhost/plain ({'median' if kind else 'best'}): RTT "
            f"{vhost['rtt_ms' + kind] / plain['rtt_ms' + kind]:.2f}x, throughput "
            f"{vhost['mbit_s' + kind] / plain['mbit_s' + kind]:.2f}x "
            "(iPXE under TCG inside the TCG nested host, same run)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for r in run["rounds"]:
        print(
            f"  {r['path']}: lease {r['lease_s']} s after the POST, fetches {r['mbit_s']} "
            f"Mbit/s, RTT {r['rtt_ms']} ms; devices' vhost {r['vhost_reported']}, "
            f"/dev/vhost-net fds {r['vhost_fds']}, vhost threads {r['vhost_threads']}"
        )
    print(f"the nested run: {run['nested_wall_s']} s")


def on_host(params: argparse.Namespace) -> int:
    from tests.kernel.vm import run_command

    # bytecode compiled here: the nested host's Python is ~12x slower and writes none
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-x", r"/\.cache/", "app", "tests", "bench"],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
    )
    argv = [sys.executable, "-m", "bench.vhost", "--inside"]
    argv += ["--rounds", str(params.rounds), "--fetches", str(params.fetches)]
    argv += ["--blob-kib", str(params.blob_kib)]
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
    report(run)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(run, indent=2) + "\n")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per path (interleaved)")
    parser.add_argument("--fetches", type=int, default=3, help="blob fetches per round")
    parser.add_argument("--blob-kib", type=int, default=2048, help="the blob's size (KiB)")
    parser.add_argument("--timeout", type=float, default=1800, help="bound of the nested run (s)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: run_command's cleanup (qemu killed and reaped) runs
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return inside(params) if params.inside else on_host(params)


if __name__ == "__main__":
    sys.exit(main())
