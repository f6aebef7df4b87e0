"""Taps at scale: kvmnetd against plain pyroute2, each side in its own throwaway kvt-* namespace.

Four figures, each printed next to its baseline from the same run:

1. 1000 taps attached to one bridge through the API (concurrent clients on the unix socket,
   each request waiting until its tap settled) vs the same 1000 taps made by a plain pyroute2
   loop (add tuntap, then master + up) in a separate fresh namespace.
2. One full reconcile pass over those 1000 taps with no drift (in-process, on the daemon's own
   database after it stopped) vs one plain pyroute2 link dump of the same namespace.
3. Drift repair: a tap deleted by hand, until the daemon has it back on the bridge and up
   (watched on a netlink socket) vs deleting and re-making a tap by hand with pyroute2 (the
   kernel's floor for a repair).
4. The daemon's idle RSS with 1000 taps in its database (after creating them, and after a
   restart) vs the same daemon holding only the bridge.

Run as `.venv/bin/python -m bench.taps` (root; never touches the root namespace). Figures go to
stdout and to bench/results/taps.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import queue
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from app.bus import EventBus
from app.db.session import Database
from app.domain.retry import Backoff
from app.host.netlink import LinkOps
from app.host.netns import enter_for_this_thread
from app.supervisor.links import LinkReconciler, Scope
from tests.daemon import Daemon
from tests.netns_tools import links, throwaway_netns

T = TypeVar("T")

N_TAPS = 1000
CLIENTS = 32
BRIDGE = "br0"
WAIT_S = 30  # ?wait= on every create: each request blocks until its tap settled
RECONCILE_RUNS = 5
DRIFT_TRIALS = 20
DRIFT_TIMEOUT_S = 5.0
DRIFT_PAUSE_S = 0.1  # between trials, so the daemon's previous repair pass is over
IDLE_S = 2.0

API_WITHIN = 3.0  # targets: API wall time within 3x raw, full pass within 2x one dump,
PASS_WITHIN = 2.0  # drift repaired in under 100 ms
DRIFT_UNDER_MS = 100.0

IFF_UP = 0x1
NETLINK_ROUTE = 0
RECV_BUFFER = 1 << 22
RESULTS = Path(__file__).resolve().parent / "results" / "taps.json"


# ---- figures ---------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measurement next to its baseline; `met` is None when there is no target."""

    name: str
    unit: str
    kvmnetd: float
    baseline: float | None
    baseline_is: str
    target: str = "-"
    max_ratio: float | None = None
    below: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.kvmnetd / self.baseline if self.baseline else None

    @property
    def met(self) -> bool | None:
        if self.max_ratio is not None:
            return self.ratio is not None and self.ratio <= self.max_ratio
        if self.below is not None:
            return self.kvmnetd < self.below
        return None

    def as_dict(self) -> dict[str, Any]:
        fields = {**asdict(self), "ratio": self.ratio, "met": self.met}
        return {k: None if _not_finite(v) else v for k, v in fields.items()}


def _not_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


# ---- namespaces and the kernel ---------------------------------------------------------------


NAMESPACES: list[str] = []  # every namespace this run made, for the record


@contextlib.contextmanager
def fresh_netns() -> Iterator[str]:
    """A throwaway kvt-* namespace (tests.netns_tools, removed on any exit), checked gone after."""
    with throwaway_netns() as name:
        NAMESPACES.append(name)
        yield name
    if name in netns.listnetns():
        raise RuntimeError(f"namespace {name} outlived its block")


def in_netns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on a fresh thread that first entered `ns`: pyroute2's sync sockets and the tap
    ioctl act in the namespace of the thread that makes them. No bench thread leaves its own
    namespace; if entering fails the pool breaks and `fn` never runs."""
    with ThreadPoolExecutor(
        1, thread_name_prefix="bench-netns", initializer=enter_for_this_thread, initargs=(ns,)
    ) as pool:
        return pool.submit(fn, *args).result()


def ports_up_on(ns: str, bridge: str) -> int:
    """How many taps of `ns` are up and enslaved to `bridge`, as the kernel says."""
    return sum(
        1 for link in links(ns).values() if link.kind == "tun" and link.master == bridge and link.up
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def daemon_pid(daemon: Daemon) -> int:
    assert daemon.proc is not None and daemon.proc.poll() is None, "daemon not running"
    return daemon.proc.pid


def idle_rss_kib(daemon: Daemon) -> int:
    time.sleep(IDLE_S)
    return rss_kib(daemon_pid(daemon))


# ---- 1. creating taps --------------------------------------------------------------------------


@dataclass
class ApiRun:
    wall: float
    latencies: list[float]
    failures: list[str]


def api_bridge(daemon: Daemon) -> None:
    with daemon.client() as client:
        r = client.post("/v1/bridges", params={"wait": WAIT_S}, json={"name": BRIDGE})
    if r.status_code != 201:
        raise RuntimeError(f"creating {BRIDGE}: {r.status_code} {r.text}")


def api_taps(daemon: Daemon, names: list[str], clients: int) -> ApiRun:
    """POST every tap (attached to BRIDGE, ?wait=) from `clients` concurrent HTTP clients."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for name in names:
        todo.put(name)
    latencies: list[float] = []
    failures: list[str] = []

    def client_loop() -> None:
        with daemon.client(timeout=WAIT_S + 30) as client:
            while True:
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                started = perf_counter()
                r = client.post(
                    "/v1/taps", params={"wait": WAIT_S}, json={"name": name, "bridge": BRIDGE}
                )
                latencies.append(perf_counter() - started)
                if r.status_code != 201:
                    failures.append(f"{name}: {r.status_code} {r.text[:200]}")

    started = perf_counter()
    with ThreadPoolExecutor(clients, thread_name_prefix="bench-client") as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    return ApiRun(perf_counter() - started, latencies, failures)


def raw_bridge(name: str) -> None:
    """(in the namespace) A bridge, up, made by hand."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        (index,) = ipr.link_lookup(ifname=name)
        ipr.link("set", index=index, state="up")


def raw_taps(names: list[str], bridge: str) -> tuple[float, list[float]]:
    """(in the namespace) The plain loop: add a tap, look up its index, set master and up.
    Returns the wall time and the time of each tap."""
    per_tap: list[float] = []
    with IPRoute() as ipr:
        (master,) = ipr.link_lookup(ifname=bridge)
        started = perf_counter()
        for name in names:
            t0 = perf_counter()
            ipr.link("add", ifname=name, kind="tuntap", mode="tap")
            (index,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=index, master=master, state="up")
            per_tap.append(perf_counter() - t0)
        return perf_counter() - started, per_tap


@dataclass
class RawRun:
    wall: float
    per_tap: list[float]
    ports: int


def raw_run(names: list[str]) -> RawRun:
    """The baseline of figure 1 in its own fresh namespace, checked in the kernel."""
    with fresh_netns() as raw_ns:
        in_netns(raw_ns, raw_bridge, BRIDGE)
        wall, per_tap = in_netns(raw_ns, raw_taps, names, BRIDGE)
        return RawRun(wall, per_tap, ports_up_on(raw_ns, BRIDGE))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_api_run(daemon: Daemon, names: list[str], clients: int) -> tuple[ApiRun, float]:
    """The API run and the CPU seconds the daemon spent on it."""
    before = cpu_seconds(daemon_pid(daemon))
    api = api_taps(daemon, names, clients)
    return api, cpu_seconds(daemon_pid(daemon)) - before


def check_ports(names: list[str], api: ApiRun, api_ports: int, raws: list[RawRun]) -> None:
    raw_ports = [r.ports for r in raws]
    if api.failures or api_ports != len(names) or any(p != len(names) for p in raw_ports):
        raise RuntimeError(
            f"taps on {BRIDGE}: API {api_ports}, raw {raw_ports} of {len(names)}; "
            f"{len(api.failures)} failed requests, e.g. {api.failures[:3]}"
        )


def measure_creation(daemon: Daemon, names: list[str], clients: int, results: Results) -> None:
    """Figure 1 (the raw loop runs before and after the API run, in two fresh namespaces, so
    that a change of load on the host during the run hits both sides), and the empty and
    loaded idle RSS of figure 4."""
    api_bridge(daemon)
    rss_empty = idle_rss_kib(daemon)
    raws = [raw_run(names)]
    api, daemon_cpu = timed_api_run(daemon, names, clients)
    api_ports = ports_up_on(daemon.netns, BRIDGE)
    rss_loaded = idle_rss_kib(daemon)
    raws.append(raw_run(names))
    check_ports(names, api, api_ports, raws)
    raw_wall = statistics.mean(r.wall for r in raws)
    results.figures += [
        Figure(
            f"{len(names)} taps onto {BRIDGE}, wall",
            "s",
            api.wall,
            raw_wall,
            f"API, {clients} clients, ?wait={WAIT_S} | plain pyroute2 loop in a fresh netns "
            f"(mean of {len(raws)}: before and after)",
            f"<= {API_WITHIN:g}x raw",
            max_ratio=API_WITHIN,
        ),
        Figure(
            f"idle RSS after creating {len(names)} taps",
            "MiB",
            rss_loaded / 1024,
            rss_empty / 1024,
            f"after the API run, idle {IDLE_S:g} s | same daemon with only {BRIDGE}, idle",
        ),
    ]
    results.details["creation"] = {
        "api_wall_s": api.wall,
        "api_taps_per_s": len(names) / api.wall,
        "api_latency_p50_ms": percentile(api.latencies, 0.5) * 1000,
        "api_latency_p99_ms": percentile(api.latencies, 0.99) * 1000,
        "api_latency_max_ms": max(api.latencies) * 1000,
        "daemon_cpu_s": daemon_cpu,
        "daemon_cpu_ms_per_tap": daemon_cpu / len(names) * 1000,
        "api_ports_on_bridge": api_ports,
        "raw_wall_s": [r.wall for r in raws],
        "raw_per_tap_median_ms": median([t for r in raws for t in r.per_tap]) * 1000,
        "raw_ports_on_bridge": [r.ports for r in raws],
        "rss_empty_kib": rss_empty,
        "rss_loaded_kib": rss_loaded,
    }


# ---- 2. one full reconcile pass ----------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = perf_counter()
    value = fn()
    return perf_counter() - started, value


@dataclass
class PassRuns:
    pass_s: list[float] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    dump_s: list[float] = field(default_factory=list)
    links: int = 0


def passes_and_dumps(db_path: Path, runs: int) -> PassRuns:
    """(in the namespace) Full passes as the supervisor runs them, interleaved with plain
    pyroute2 link dumps (every message parsed) so that both see the same load. `changed` is
    what each pass changed or reported on: 0 when nothing had drifted."""
    db = Database(f"sqlite:///{db_path}")
    out = PassRuns()
    try:
        with LinkOps() as ops, IPRoute() as ipr:
            reconciler = LinkReconciler(db, EventBus(), ops, Backoff(time.monotonic))
            for _ in range(runs):
                seconds, changed = timed(lambda: reconciler.run(Scope.FULL))
                out.pass_s.append(seconds)
                out.changed.append(changed)
                seconds, out.links = timed(lambda: len(list(ipr.link("dump"))))
                out.dump_s.append(seconds)
    finally:
        db.dispose()
    return out


def measure_full_pass(daemon: Daemon, results: Results) -> None:
    """Figure 2, with the daemon stopped so that it cannot race the in-process passes."""
    daemon.stop()
    runs = in_netns(daemon.netns, passes_and_dumps, daemon.state_dir / "kvmnetd.db", RECONCILE_RUNS)
    results.figures.append(
        Figure(
            "full reconcile pass, no drift",
            "ms",
            median(runs.pass_s) * 1000,
            median(runs.dump_s) * 1000,
            f"LinkReconciler.run(FULL) | one pyroute2 link dump of the same netns "
            f"({runs.links} links); medians of {RECONCILE_RUNS}, interleaved",
            f"<= {PASS_WITHIN:g}x dump",
            max_ratio=PASS_WITHIN,
        )
    )
    results.details["full_pass"] = {
        "pass_ms": [t * 1000 for t in runs.pass_s],
        "changed_per_pass": runs.changed,
        "dump_ms": [t * 1000 for t in runs.dump_s],
        "links_dumped": runs.links,
    }


# ---- 3. drift repair ---------------------------------------------------------------------------


@contextlib.contextmanager
def link_events() -> Iterator[socket.socket]:
    """A raw netlink socket on RTMGRP_LINK of the calling thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((0, RTMGRP_LINK))
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> None:
    while select.select([sock], [], [], 0)[0]:
        sock.recv(RECV_BUFFER)


def is_reattached(msg: Any, name: str, old_index: int, master: int) -> bool:
    """A new link (not the one we deleted) named `name`, enslaved to `master` and up."""
    return bool(
        msg.get("event") == "RTM_NEWLINK"
        and msg.get_attr("IFLA_IFNAME") == name
        and msg["index"] != old_index
        and msg.get_attr("IFLA_MASTER") == master
        and msg["flags"] & IFF_UP
    )


def wait_reattached(
    sock: socket.socket, name: str, old_index: int, master: int, deadline: float
) -> bool:
    marshal = MarshalRtnl()
    while (remaining := deadline - perf_counter()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            return False
        for msg in marshal.parse(sock.recv(RECV_BUFFER)):
            if is_reattached(msg, name, old_index, master):
                return True
    return False


def one_drift(ipr: IPRoute, sock: socket.socket, name: str, master: int) -> float | None:
    """Delete `name` by hand; seconds until the daemon has it back on the bridge (None if it
    did not within DRIFT_TIMEOUT_S)."""
    time.sleep(DRIFT_PAUSE_S)
    drain(sock)
    (old_index,) = ipr.link_lookup(ifname=name)
    started = perf_counter()
    ipr.link("del", index=old_index)
    back = wait_reattached(sock, name, old_index, master, started + DRIFT_TIMEOUT_S)
    return perf_counter() - started if back else None


def drift_trials(names: list[str], bridge: str) -> list[float | None]:
    """(in the namespace) One delete-and-wait trial per name."""
    with link_events() as sock, IPRoute() as ipr:
        (master,) = ipr.link_lookup(ifname=bridge)
        return [one_drift(ipr, sock, name, master) for name in names]


def raw_delete_create(names: list[str], bridge: str) -> list[float]:
    """(in the namespace) The floor of a repair: delete the tap and make it again by hand."""
    with IPRoute() as ipr:
        (master,) = ipr.link_lookup(ifname=bridge)
        times = []
        for name in names:
            (old_index,) = ipr.link_lookup(ifname=name)
            started = perf_counter()
            ipr.link("del", index=old_index)
            ipr.link("add", ifname=name, kind="tuntap", mode="tap")
            (index,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=index, master=master, state="up")
            times.append(perf_counter() - started)
        return times


def raw_drift_floor(names: list[str]) -> list[float]:
    """The baseline of figure 3 in a fresh namespace: delete and re-make taps by hand."""
    with fresh_netns() as raw_ns:
        in_netns(raw_ns, raw_bridge, BRIDGE)
        in_netns(raw_ns, raw_taps, names, BRIDGE)
        return in_netns(raw_ns, raw_delete_create, names, BRIDGE)


def measure_restart_rss(daemon: Daemon, n_taps: int, rss_empty: int, results: Results) -> None:
    """Figure 4 on a restarted daemon: its first full pass (over every tap) is over once
    /readyz answers, which is what a daemon with this database looks like at rest."""
    daemon.start()
    rss = idle_rss_kib(daemon)
    results.figures.append(
        Figure(
            f"idle RSS after restart, {n_taps} taps",
            "MiB",
            rss / 1024,
            rss_empty / 1024,
            f"restarted, first full pass done, idle {IDLE_S:g} s | daemon with only {BRIDGE}",
        )
    )
    results.details["restart"] = {"rss_restarted_kib": rss}


def measure_drift(daemon: Daemon, names: list[str], results: Results) -> None:
    """Figure 3 on the running daemon: each trial deletes one tap by hand."""
    trials = in_netns(daemon.netns, drift_trials, names[:DRIFT_TRIALS], BRIDGE)
    repaired = [t for t in trials if t is not None]
    ports = ports_up_on(daemon.netns, BRIDGE)
    floor = raw_drift_floor(names[:DRIFT_TRIALS])
    missed = len(trials) - len(repaired)
    # a trial not repaired within the timeout counts as the timeout: a lower bound
    counted = [DRIFT_TIMEOUT_S if t is None else t for t in trials]
    results.figures.append(
        Figure(
            f"drift repair, median of {len(trials)}",
            "ms",
            median(counted) * 1000,
            median(floor) * 1000,
            "tap deleted by hand -> back on the bridge and up (netlink watch) | "
            "pyroute2 del + add + master/up",
            f"< {DRIFT_UNDER_MS:g} ms",
            below=DRIFT_UNDER_MS,
        )
    )
    results.details["drift"] = {
        "repair_ms": [None if t is None else t * 1000 for t in trials],
        "not_repaired": missed,
        "repair_p90_ms": percentile(repaired, 0.9) * 1000,
        "repair_max_ms": max(repaired, default=0.0) * 1000,
        "raw_delete_create_ms": [t * 1000 for t in floor],
        "ports_on_bridge_after": ports,
    }


# ---- output ------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(figures: list[Figure]) -> str:
    head = ("measurement", "kvmnetd", "baseline", "ratio", "target", "met")
    rows = [
        (
            f"{f.name} ({f.unit})",
            fmt(f.kvmnetd, 2),
            fmt(f.baseline, 2),
            fmt(f.ratio, 2) + ("x" if f.ratio is not None else ""),
            f.target,
            {True: "met", False: "NOT met", None: "-"}[f.met],
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    rule = "  ".join("-" * w for w in widths)
    header = "  ".join(cell.ljust(w) for cell, w in zip(head, widths, strict=True))
    legend = [f"  {f.name}: {f.baseline_is}" for f in figures]
    return "\n".join([header, rule, *lines, "", "kvmnetd | baseline:", *legend])


def details_text(details: dict[str, Any]) -> str:
    lines = []
    for section, values in details.items():
        shown = {k: v for k, v in values.items() if not isinstance(v, list)}
        lines.append(f"{section}: " + ", ".join(f"{k}={fmt_any(v)}" for k, v in shown.items()))
    return "\n".join(lines)


def fmt_any(value: Any) -> str:
    return fmt(value) if isinstance(value, float) else str(value)


def code_version() -> dict[str, Any]:
    """The commit measured, and whether app/ or migrations/ differed from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "app_modified": bool(git("status", "--porcelain", "--", "app", "migrations")),
    }


def host_facts() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg_1m": os.getloadavg()[0],
    }


def write_json(
    results: Results, params: argparse.Namespace, host: dict[str, Any], log_copy: Path
) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "taps",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code": code_version(),
        "host": {**host, "loadavg_1m_at_end": os.getloadavg()[0]},
        "params": {**vars(params), "wait_s": WAIT_S, "bridge": BRIDGE},
        "figures": [f.as_dict() for f in results.figures],
        "details": results.details,
        "namespaces": NAMESPACES,
        "daemon_log": str(log_copy),
    }
    RESULTS.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.taps", description=__doc__)
    parser.add_argument("--taps", type=int, default=N_TAPS, help="taps to create (%(default)s)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="API clients (%(default)s)")
    return parser.parse_args(argv)


def run(daemon: Daemon, params: argparse.Namespace) -> Results:
    names = [f"tap{i}" for i in range(params.taps)]
    results = Results()
    daemon.start()
    measure_creation(daemon, names, params.clients, results)
    measure_full_pass(daemon, results)
    measure_restart_rss(daemon, len(names), results.details["creation"]["rss_empty_kib"], results)
    measure_drift(daemon, names, results)
    return results


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    host = host_facts()
    log_copy = RESULTS.with_name("taps-daemon.log")
    with tempfile.TemporaryDirectory(prefix="kvmnetd-bench-") as tmp, fresh_netns() as ns:
        daemon = Daemon(ns, Path(tmp))
        try:
            results = run(daemon, params)
        finally:
            daemon.kill()
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            if daemon.log.exists():
                shutil.copyfile(daemon.log, log_copy)
    print(table(results.figures))
    print()
    print(details_text(results.details))
    load = (host["loadavg_1m"], os.getloadavg()[0])
    print(f"load average (1 min) at start/end: {load[0]:.1f}/{load[1]:.1f} on {host['cpus']} CPUs")
    write_json(results, params, host, log_copy)
    print(f"\nwritten: {RESULTS} (daemon log: {log_copy})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
