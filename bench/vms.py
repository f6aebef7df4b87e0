"""VMs through kvmnetd against the same qemu commands started by hand, under TCG, with the real
test guest (tests/guest, variant virtio). Each side runs in its own throwaway kvt-* namespace.

Three figures, each printed next to its baseline from the same run:

1. API create+start of one VM (POST /v1/vms?wait=, which returns once the worker saw QMP
   answer) vs spawning the very argv the daemon recorded in the VM's launch.json by hand (argv
   list, no shell) until its QMP socket answers query-status; medians, runs interleaved.
2. 8 VMs created concurrently (8 threads, ?wait=), each with user networking and its own
   forwarded port to the guest's TCP 7777, until every guest answered KVT-HELLO through its
   port vs the same 8 qemu commands started by hand until every guest answered the same way.
3. The daemon's RSS with 20 running VMs (small guests; qemu running is enough) vs the same
   daemon idle with none.

Every qemu started by hand is tracked and killed by pid at the end; the daemon's VMs are
deleted through the API and checked gone by their -uuid. Run as `.venv/bin/python -m
bench.vms` (root; never touches the root namespace). Figures go to stdout and to
bench/results/vms.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import httpx

from app.host.netns import enter_for_this_thread
from app.host.qemu import LaunchRecord, RunPaths, find_running
from app.host.qmp import Qmp
from bench.taps import (
    NAMESPACES,
    Figure,
    Results,
    code_version,
    cpu_seconds,
    daemon_pid,
    details_text,
    fresh_netns,
    host_facts,
    median,
    rss_kib,
    table,
)
from tests.daemon import Daemon
from tests.guest.build import Guest, build_guest, kernel_cmdline
from tests.guest.console import Ready, parse_hello, parse_ready

T = TypeVar("T")

SINGLE_RUNS = 5
CONCURRENT_VMS = 8
RSS_VMS = 20
WAIT_S = 60  # ?wait= on every create
HELLO_TIMEOUT_S = 180.0
POLL_S = 0.05  # between tries of a forwarded port
QMP_TIMEOUT_S = 30.0
IDLE_S = 2.0
GUEST_PORT = 7777
FIRST_PORT = 45600  # host ports: FIRST_PORT + i, the same on both sides (separate namespaces)
SINGLE_MIB = 128
CONCURRENT_MIB = 256
RSS_MIB = 64

SINGLE_WITHIN = 1.2
CONCURRENT_WITHIN = 1.1

RESULTS = Path(__file__).resolve().parent / "results" / "vms.json"
LOG_COPY = RESULTS.with_name("vms-daemon.log")

RAW: list[subprocess.Popen[bytes]] = []  # every qemu this bench started by hand
API_VMS: set[str] = set()  # every VM id created through the API (their qemu carry -uuid ID)


# ---- helpers -----------------------------------------------------------------------------------


def pool_in(ns: str, workers: int) -> ThreadPoolExecutor:
    """Threads that entered `ns` first (the bench's own threads stay where they are)."""
    return ThreadPoolExecutor(
        workers, thread_name_prefix="bench-vm", initializer=enter_for_this_thread, initargs=(ns,)
    )


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    with pool_in(ns, 1) as pool:
        return pool.submit(fn, *args).result()


def vm_body(guest: Guest, name: str, memory_mib: int, port: int | None) -> dict[str, Any]:
    """The test guest with DHCP on one user-networking NIC (forwarding `port` to 7777)."""
    user = {"forwards": [{"host_port": port, "guest_port": GUEST_PORT}]} if port else {}
    return {
        "name": name,
        "memory_mib": memory_mib,
        "boot": {
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "cmdline": kernel_cmdline(dhcp=True),
        },
        "nics": [{"backend": "user", "user": user}],
    }


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text[:500]}"
        )
    return response.json() if response.content else None


def api_create(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST a VM with ?wait= and check it came back running."""
    vm = expect(client.post("/v1/vms", params={"wait": WAIT_S}, json=body), 201)
    API_VMS.add(vm["id"])
    if vm["status"] != "running":
        raise RuntimeError(f"VM {vm['name']} is {vm['status']}: {vm.get('status_reason')}")
    return vm


def api_delete_one(daemon: Daemon, vm_id: str) -> None:
    with daemon.client(timeout=WAIT_S + 30) as client:
        response = client.delete(f"/v1/vms/{vm_id}", params={"wait": WAIT_S})
    if response.status_code not in (204, 404):
        raise RuntimeError(f"deleting {vm_id}: {response.status_code} {response.text}")


def api_delete(daemon: Daemon, vm_ids: list[str]) -> None:
    """DELETE every VM at once (?wait=: a guest that has not booted far enough to take the
    ACPI powerdown costs the daemon's whole powerdown grace), then check that no qemu with its
    -uuid is left."""
    with ThreadPoolExecutor(max(1, len(vm_ids)), thread_name_prefix="bench-delete") as pool:
        for future in [pool.submit(api_delete_one, daemon, vm_id) for vm_id in vm_ids]:
            future.result()
    left = {vm_id: find_running(vm_id) for vm_id in vm_ids}
    if any(left.values()):
        raise RuntimeError(f"qemu left after DELETE: {left}")
    API_VMS.difference_update(vm_ids)


def launch_record_of(daemon: Daemon, vm_id: str) -> LaunchRecord:
    """The daemon's launch.json of `vm_id`: the full argv it started, and when."""
    record = LaunchRecord.read(RunPaths(daemon.run_dir / "vms" / vm_id))
    if record is None:
        raise RuntimeError(f"no launch record for VM {vm_id}")
    return record


def launch_argv_of(daemon: Daemon, vm_id: str) -> list[str]:
    return list(launch_record_of(daemon, vm_id).argv)


def retarget(argv: list[str], vm_id: str, old_dir: Path, new_dir: Path) -> list[str]:
    """The same command for a run directory of ours and a fresh -uuid (so that the daemon's
    identity checks can never mistake it for its own VM)."""
    new_id = str(uuid.uuid4())
    swaps = [
        (str(old_dir), str(new_dir)),
        (vm_id, new_id),
        (f"kvm-{vm_id[:8]}", f"kvm-{new_id[:8]}"),
    ]
    out = []
    for arg in argv:
        for old, new in swaps:
            arg = arg.replace(old, new)
        out.append(arg)
    return out


QEMU_ENV = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}


def spawn(argv: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
    """(on a thread in the namespace) qemu by hand, as the daemon does it: no shell, own session,
    output to qemu.log in its run directory."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (run_dir / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
            env=QEMU_ENV,
            start_new_session=True,
        )
    RAW.append(proc)
    return proc


async def qmp_status(path: Path, timeout: float) -> str:
    qmp = Qmp(path)
    try:
        await qmp.connect(timeout, retry=True)
        return await qmp.status(timeout)
    finally:
        await qmp.close()


def kill_raw(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def try_hello(port: int) -> Ready | None:
    """One connection to 127.0.0.1:port: the guest's answer, or None (slirp accepts and hangs up
    while nothing listens in the guest)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            return parse_hello(conn.recv(4096).decode(errors="replace"))
    except OSError:
        return None


def wait_hello(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> Ready:
    """(on a thread in the namespace) Poll 127.0.0.1:port until the guest's KVT-HELLO comes."""
    while perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"qemu {proc.pid} exited with {proc.returncode}")
        hello = try_hello(port)
        if hello is not None:
            return hello
        time.sleep(POLL_S)
    raise TimeoutError(f"no KVT-HELLO on port {port} within {HELLO_TIMEOUT_S:g} s")


def idle_rss_kib(daemon: Daemon) -> int:
    time.sleep(IDLE_S)
    return rss_kib(daemon_pid(daemon))


# ---- 1. one VM until QMP answers ---------------------------------------------------------------


@dataclass
class Single:
    """One timed start: total seconds, and the part before qemu was spawned (API: POST sent
    until the daemon's launch record says spawned; by hand: Popen returned)."""

    seconds: float
    spawned: float
    argv: list[str]
    vm_id: str = ""


def console_ready(daemon: Daemon, vm_id: str) -> bool:
    with daemon.client() as client:
        text = client.get(f"/v1/vms/{vm_id}/console").text
    return parse_ready(text) is not None


def wait_console_ready(daemon: Daemon, vm_id: str, timeout: float) -> None:
    deadline = perf_counter() + timeout
    while not console_ready(daemon, vm_id):
        if perf_counter() > deadline:
            raise TimeoutError(f"VM {vm_id}: no KVT-READY on the console within {timeout:g} s")
        time.sleep(0.2)


def api_single(daemon: Daemon, guest: Guest, i: int) -> Single:
    """One timed create (?wait=). Not timed: the guest is let boot (console readiness) so that
    it takes the ACPI powerdown, and is then deleted."""
    body = vm_body(guest, f"single{i}", SINGLE_MIB, FIRST_PORT)
    with daemon.client(timeout=WAIT_S + 30) as client:
        wall0 = time.time()
        started = perf_counter()
        vm = api_create(client, body)
        seconds = perf_counter() - started
    record = launch_record_of(daemon, vm["id"])
    wait_console_ready(daemon, vm["id"], HELLO_TIMEOUT_S)
    api_delete(daemon, [vm["id"]])
    return Single(seconds, record.launched_at - wall0, list(record.argv), vm["id"])


def raw_single(ns: str, argv: list[str], run_dir: Path) -> Single:
    """Spawn `argv` by hand in `ns`, time it until QMP answers query-status, then kill it."""
    with asyncio.Runner() as runner:
        started = perf_counter()
        proc = in_netns(ns, spawn, argv, run_dir)
        spawned = perf_counter() - started
        status = runner.run(qmp_status(run_dir / "qmp.sock", QMP_TIMEOUT_S))
        seconds = perf_counter() - started
    kill_raw(proc)
    if status != "running":
        raise RuntimeError(f"hand-started qemu is {status}")
    return Single(seconds, spawned, argv)


def timed_median(fn: Callable[[], object], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        started = perf_counter()
        fn()
        times.append(perf_counter() - started)
    return median(times)


def floor_probes(daemon: Daemon) -> dict[str, float]:
    """Costs inside figure 1's API overhead, measured from here: one HTTP round trip to the
    daemon (GET /v1/vms), and one /proc scan for a -uuid (app.host.qemu.find_running, which
    every launch runs before it spawns)."""
    probe_id = str(uuid.uuid4())
    with daemon.client() as client:
        roundtrip = timed_median(lambda: expect(client.get("/v1/vms"), 200))
    return {
        "get_vms_roundtrip_ms_median": roundtrip * 1000,
        "find_running_scan_ms_median": timed_median(lambda: find_running(probe_id)) * 1000,
    }


def measure_single(daemon: Daemon, guest: Guest, raw_root: Path, runs: int, out: Results) -> None:
    """Figure 1: API and hand runs interleaved (API first: the hand run replays its argv)."""
    api: list[Single] = []
    raw: list[Single] = []
    with fresh_netns() as raw_ns:
        for i in range(runs):
            api.append(one := api_single(daemon, guest, i))
            old_dir = daemon.run_dir / "vms" / one.vm_id
            run_dir = raw_root / f"s{i}"
            argv = retarget(one.argv, one.vm_id, old_dir, run_dir)
            raw.append(raw_single(raw_ns, argv, run_dir))
    api_s = [r.seconds for r in api]
    raw_s = [r.seconds for r in raw]
    out.figures.append(
        Figure(
            "create+start 1 VM until QMP answers",
            "ms",
            median(api_s) * 1000,
            median(raw_s) * 1000,
            f"POST /v1/vms?wait={WAIT_S} | the recorded argv spawned by hand until query-status "
            f"answers; medians of {runs}, interleaved",
            f"<= {SINGLE_WITHIN:g}x raw",
            max_ratio=SINGLE_WITHIN,
        )
    )
    out.details["single"] = {
        "api_ms": [t * 1000 for t in api_s],
        "raw_ms": [t * 1000 for t in raw_s],
        "api_until_spawned_ms_median": median([r.spawned for r in api]) * 1000,
        "api_spawned_to_answer_ms_median": median([r.seconds - r.spawned for r in api]) * 1000,
        "raw_until_spawned_ms_median": median([r.spawned for r in raw]) * 1000,
        "raw_spawned_to_answer_ms_median": median([r.seconds - r.spawned for r in raw]) * 1000,
        **floor_probes(daemon),
    }


# ---- 2. 8 VMs until every guest answers --------------------------------------------------------


@dataclass
class Boot:
    """One VM of a concurrent run: when its create returned and when its guest answered."""

    created_s: float
    hello_s: float
    mac: str
    vm_id: str = ""
    argv: tuple[str, ...] = ()
    spawned_s: float = 0.0  # when qemu was spawned (API: the daemon's launch record)


def api_boot(daemon: Daemon, body: dict[str, Any], port: int, t0: float) -> Boot:
    """(on a thread in the daemon's namespace) Create with ?wait=, then wait for KVT-HELLO."""
    wall_t0 = time.time() - (perf_counter() - t0)
    with daemon.client(timeout=WAIT_S + 30) as client:
        vm = api_create(client, body)
    created = perf_counter() - t0
    hello = wait_hello(port, t0 + HELLO_TIMEOUT_S)
    if hello.mac != vm["nics"][0]["mac"]:
        raise RuntimeError(f"port {port} answered for {hello.mac}, not {vm['nics'][0]['mac']}")
    record = launch_record_of(daemon, vm["id"])
    boot = Boot(created, perf_counter() - t0, hello.mac, vm["id"], record.argv)
    boot.spawned_s = record.launched_at - wall_t0
    return boot


def raw_boot(argv: list[str], run_dir: Path, port: int, t0: float) -> Boot:
    """(on a thread in the namespace) Spawn by hand, then wait for KVT-HELLO."""
    proc = spawn(argv, run_dir)
    created = perf_counter() - t0
    hello = wait_hello(port, t0 + HELLO_TIMEOUT_S, proc)
    return Boot(created, perf_counter() - t0, hello.mac, spawned_s=created)


def concurrently(ns: str, jobs: list[Callable[[float], Boot]]) -> tuple[float, list[Boot]]:
    """Run every job on its own thread in `ns`; the wall time until the last one is done."""
    with pool_in(ns, len(jobs)) as pool:
        t0 = perf_counter()
        futures = [pool.submit(job, t0) for job in jobs]
        boots = [f.result() for f in futures]
        return perf_counter() - t0, boots


def measure_concurrent(daemon: Daemon, guest: Guest, raw_root: Path, n: int, out: Results) -> None:
    """Figure 2: the API run first (its launch records give the hand run its argv)."""
    ports = [FIRST_PORT + i for i in range(n)]
    bodies = [vm_body(guest, f"conc{i}", CONCURRENT_MIB, p) for i, p in enumerate(ports)]
    cpu_before = cpu_seconds(daemon_pid(daemon))
    api_wall, api = concurrently(
        daemon.netns,
        [
            lambda t0, b=b, p=p: api_boot(daemon, b, p, t0)
            for b, p in zip(bodies, ports, strict=True)
        ],
    )
    daemon_cpu = cpu_seconds(daemon_pid(daemon)) - cpu_before
    api_delete(daemon, [b.vm_id for b in api])
    argvs = [
        retarget(list(b.argv), b.vm_id, daemon.run_dir / "vms" / b.vm_id, raw_root / f"c{i}")
        for i, b in enumerate(api)
    ]
    with fresh_netns() as raw_ns:
        try:
            raw_wall, raw = concurrently(
                raw_ns,
                [
                    lambda t0, i=i, a=a, p=p: raw_boot(a, raw_root / f"c{i}", p, t0)
                    for i, (a, p) in enumerate(zip(argvs, ports, strict=True))
                ],
            )
        finally:
            kill_all_raw()
    if [b.mac for b in api] != [b.mac for b in raw]:
        raise RuntimeError("the hand-started guests answered with other MACs than the API's")
    out.figures.append(
        Figure(
            f"{n} VMs concurrently until every guest answers",
            "s",
            api_wall,
            raw_wall,
            f"{n} threads POST ?wait={WAIT_S}, then KVT-HELLO via each one's hostfwd | the same "
            f"{n} argvs spawned by hand, then KVT-HELLO the same way",
            f"<= {CONCURRENT_WITHIN:g}x raw",
            max_ratio=CONCURRENT_WITHIN,
        )
    )
    out.details["concurrent"] = {
        "api_created_s": [b.created_s for b in api],
        "api_hello_s": [b.hello_s for b in api],
        "api_spawned_s": [b.spawned_s for b in api],
        "api_last_spawned_ms": max(b.spawned_s for b in api) * 1000,
        "api_last_create_returned_ms": max(b.created_s for b in api) * 1000,
        "raw_last_spawned_ms": max(b.spawned_s for b in raw) * 1000,
        "raw_spawned_s": [b.created_s for b in raw],
        "raw_hello_s": [b.hello_s for b in raw],
        "daemon_cpu_s": daemon_cpu,
    }


# ---- 3. RSS with 20 running VMs ----------------------------------------------------------------


def measure_rss(daemon: Daemon, guest: Guest, n: int, rss_idle: int, out: Results) -> None:
    """Figure 3: n small VMs created (8 clients, ?wait=), all running, then the daemon's RSS."""
    bodies = [vm_body(guest, f"rss{i}", RSS_MIB, None) for i in range(n)]

    def create(body: dict[str, Any]) -> str:
        with daemon.client(timeout=WAIT_S + 30) as client:
            return str(api_create(client, body)["id"])

    with ThreadPoolExecutor(CONCURRENT_VMS, thread_name_prefix="bench-rss") as pool:
        ids = list(pool.map(create, bodies))
    rss = idle_rss_kib(daemon)
    with daemon.client() as client:
        listed = expect(client.get("/v1/vms", params={"limit": 100}), 200)["items"]
    running = sum(1 for vm in listed if vm["status"] == "running")
    alive = sum(1 for vm_id in ids if find_running(vm_id))
    api_delete(daemon, ids)
    if running != n or alive != n:
        raise RuntimeError(f"{running} VMs running by the API, {alive} qemu alive, of {n}")
    rss_after = idle_rss_kib(daemon)
    out.figures.append(
        Figure(
            f"daemon RSS with {n} running VMs",
            "MiB",
            rss / 1024,
            rss_idle / 1024,
            f"{n} VMs of {RSS_MIB} MiB running, idle {IDLE_S:g} s | same daemon idle, no VMs",
        )
    )
    out.details["rss"] = {
        "rss_idle_kib": rss_idle,
        "rss_loaded_kib": rss,
        "rss_after_delete_kib": rss_after,
        "kib_per_vm": (rss - rss_idle) / n,
    }


# ---- cleanup and output ------------------------------------------------------------------------


def kill_all_raw() -> None:
    for proc in RAW:
        kill_raw(proc)


def sweep_api_vms(daemon: Daemon) -> list[str]:
    """Delete what is left through the API if the daemon still runs; then SIGKILL by pid any
    qemu still carrying one of our VMs' -uuid. Returns what had to be killed."""
    if API_VMS and daemon.proc is not None and daemon.proc.poll() is None:
        with contextlib.suppress(Exception):
            api_delete(daemon, sorted(API_VMS))
    killed = []
    for vm_id in sorted(API_VMS):
        for pid in find_running(vm_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{vm_id}:{pid}")
    return killed


def write_json(results: Results, params: argparse.Namespace, host: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "vms",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code": code_version(),
        "host": {**host, "loadavg_1m_at_end": os.getloadavg()[0], "accelerator": "tcg"},
        "params": {**vars(params), "wait_s": WAIT_S},
        "figures": [f.as_dict() for f in results.figures],
        "details": results.details,
        "namespaces": NAMESPACES,
        "daemon_log": str(LOG_COPY),
    }
    RESULTS.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vms", description=__doc__)
    parser.add_argument("--runs", type=int, default=SINGLE_RUNS, help="figure 1 runs (%(default)s)")
    parser.add_argument("--concurrent", type=int, default=CONCURRENT_VMS, help="figure 2 VMs")
    parser.add_argument("--rss-vms", type=int, default=RSS_VMS, help="figure 3 VMs")
    return parser.parse_args(argv)


def run(daemon: Daemon, guest: Guest, raw_root: Path, params: argparse.Namespace) -> Results:
    results = Results()
    daemon.start()
    rss_idle = idle_rss_kib(daemon)
    measure_single(daemon, guest, raw_root, params.runs, results)
    measure_concurrent(daemon, guest, raw_root, params.concurrent, results)
    measure_rss(daemon, guest, params.rss_vms, rss_idle, results)
    return results


@contextlib.contextmanager
def short_workdir() -> Iterator[Path]:
    """QMP socket paths must fit a unix socket address: /tmp/kvt-XXXXXXXX."""
    workdir = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    host = host_facts()
    guest = build_guest("virtio")
    with short_workdir() as workdir, fresh_netns() as ns:
        daemon = Daemon(ns, workdir)
        try:
            results = run(daemon, guest, workdir / "raw", params)
        finally:
            kill_all_raw()
            killed = sweep_api_vms(daemon)
            daemon.kill()
            LOG_COPY.parent.mkdir(parents=True, exist_ok=True)
            if daemon.log.exists():
                shutil.copyfile(daemon.log, LOG_COPY)
            if killed:
                print(f"killed by pid after the API left them running: {killed}", file=sys.stderr)
    print(table(results.figures))
    print()
    print(details_text(results.details))
    load = (host["loadavg_1m"], os.getloadavg()[0])
    print(f"load average (1 min) at start/end: {load[0]:.1f}/{load[1]:.1f} on {host['cpus']} CPUs")
    write_json(results, params, host)
    print(f"\nwritten: {RESULTS} (daemon log: {LOG_COPY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
