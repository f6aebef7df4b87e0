"""VLANs at scale on Debian's own kernel: kvmnetd against plain pyroute2, side by side.

This machine's kernel has neither 802.1Q sub-interfaces nor bridge VLAN filtering, so the
bench boots the kernel test tier's nested host once (tests/kernel/vm.py `run_command`: Debian
12's kernel under QEMU TCG, 1 vCPU, the host's root read-only) and runs itself there
(`--inside`). For each backend (bridge_per_vlan, then vlan_filtering), each side in its own
throwaway kvt-* namespace whose trunk bridge br0 has a veth uplink eth0 (its far end in a
`lan` namespace, the daemon's uplink moved onto br0 through the API before timing):

1. 100 VLANs (vlan_id 1..100) with 10 tap resources each (1000 taps), created through the API
   of the in-process app (create_app on the namespace, as tests/kernel/nested/
   test_vlans_daemon.py; concurrent clients, each request waiting with ?wait= until its
   resource is active) vs the same kernel objects made by a plain pyroute2 IPRoute loop
   (bridge_per_vlan: `<uplink>.<vid>` + bridge `br0v<vid>` + its taps; vlan_filtering:
   vlan_filtering=1, VID tagged on the uplink, taps as access ports: PVID untagged, default
   VID 1 removed). The raw loop runs before and after the API run (mean), so a change of the
   machine's load hits both sides. Target: API <= 3x raw.
2. One full reconcile pass of the daemon (links, uplinks, VLAN membership, orphan sweep; timed
   by the supervisor's own hook `Supervisor.last_full_pass_s`, app/supervisor/loop.py) with
   those ~1100 links vs one `IPRoute.get_links()` dump of the same namespace (interleaved,
   medians). Target: pass <= 2x dump.

Every figure's kernel state is checked through netlink (links, masters, VLAN membership).
Run as `make bench-vlans` or `.venv/bin/python -m bench.vlans` (root; the nested run is bounded
by --timeout; qemu is always reaped, the namespaces live and die inside the nested host).
Figures go to stdout and bench/results/vlans.json. `--profile` adds where the time of the API
run and of one extra full pass goes (stacks of every thread sampled every 50 ms: the share of
each function), at some cost to the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from bench.taps import Figure, Results, code_version, details_text, in_netns, median, table

RESULTS = Path(__file__).resolve().parent / "results" / "vlans.json"
# each backend's results: one JSON line starting with this, printed as soon as it is done
RESULT_MARK = "kvmnetd-bench-vlans-result: "
BACKENDS = ("bridge_per_vlan", "vlan_filtering")
N_VLANS = 100
TAPS_PER_VLAN = 10
CLIENTS = 16
PASSES = 5
TIMEOUT_S = 5400.0  # the whole nested run (boot, both backends, power-off)
WAIT_S = 600  # ?wait= on every create; also how long a full pass may take
READY_S = 600  # the app's first full pass, in the nested host's slow Python
TRUNK = "br0"
UPLINK = "eth0"
FAR_END = "lan0"
PROBE = "10.60.0.1"  # the uplink's probe address, on the far end
HOST_ADDRESS = "10.60.0.10/24"
API_WITHIN = 3.0
PASS_WITHIN = 2.0
BRIDGE_VLAN_INFO_PVID = 0x2  # linux/if_bridge.h
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
MODULES = ("8021q", "bridge", "veth", "tun")
PROFILE_LINES = 30
NETNS_TRIES = 3
NETNS_PAUSE_S = 30.0
SETTLE_POLL_S = 1.0  # between kernel reads while the API side settles


# ---- the plan both sides build -----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    vids: list[int]
    taps_per_vlan: int

    def taps(self, vid: int) -> list[str]:
        return [f"t{vid}x{j}" for j in range(self.taps_per_vlan)]

    @property
    def n_taps(self) -> int:
        return len(self.vids) * self.taps_per_vlan


def vlan_name(vid: int) -> str:
    return f"tenant{vid}"


# ---- inside the nested host: namespaces ----------------------------------------------------------


def run_argv(argv: list[str]) -> None:
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=120)


def ip(ns: str, *args: str) -> None:
    run_argv(["ip", "-n", ns, *args])


@contextlib.contextmanager
def patient_netns() -> Iterator[str]:
    """tests.netns_tools.throwaway_netns, tried up to NETNS_TRIES times: right after the
    previous backend's namespaces (hundreds of links) were removed, the kernel's cleanup can
    hold the one vCPU so long that pyroute2's namespace helper times out (seen once)."""
    from tests.netns_tools import throwaway_netns

    for attempt in range(1, NETNS_TRIES + 1):
        stack = contextlib.ExitStack()
        try:
            name = stack.enter_context(throwaway_netns())
        except TimeoutError:
            if attempt == NETNS_TRIES:
                raise
            progress(f"creating a namespace timed out (try {attempt}); waiting")
            time.sleep(NETNS_PAUSE_S)
            continue
        with stack:
            yield name
        return


@contextlib.contextmanager
def trunk_netns(lan: str, n: int) -> Iterator[str]:
    """A throwaway namespace with the uplink eth0 (up, HOST_ADDRESS on runs where the daemon
    moves it) whose veth peer lan<n> sits in `lan` with the probe address."""
    from tests.netns_tools import throwaway_netns

    with throwaway_netns() as ns:
        far = f"lan{n}"
        ip(ns, "link", "add", UPLINK, "type", "veth", "peer", "name", far, "netns", lan)
        ip(lan, "addr", "add", f"10.6{n}.0.1/24", "dev", far)
        ip(lan, "link", "set", far, "up")
        ip(ns, "addr", "add", f"10.6{n}.0.10/24", "dev", UPLINK)
        ip(ns, "link", "set", UPLINK, "up")
        yield ns


# ---- inside: the raw pyroute2 loop ---------------------------------------------------------------


def raw_trunk(vlan_filtering: bool) -> None:
    """(in the namespace, untimed) br0 up with the uplink as its port, as the API's uplink
    step leaves it; filtering is switched on by the timed loop, as the daemon does."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=TRUNK, kind="bridge")
        (br,) = ipr.link_lookup(ifname=TRUNK)
        (up,) = ipr.link_lookup(ifname=UPLINK)
        ipr.link("set", index=up, master=br)
        ipr.link("set", index=br, state="up")
    del vlan_filtering


def raw_bridge_per_vlan(plan: Plan) -> float:
    """(in the namespace) For each VID: `<uplink>.<vid>`, bridge br0v<vid> (up), the
    sub-interface in it (up), then its taps (add, master, up). Returns the wall time."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (uplink,) = ipr.link_lookup(ifname=UPLINK)
        started = perf_counter()
        for vid in plan.vids:
            sub, bridge = f"{UPLINK}.{vid}", f"{TRUNK}v{vid}"
            ipr.link("add", ifname=bridge, kind="bridge")
            (br,) = ipr.link_lookup(ifname=bridge)
            ipr.link("set", index=br, state="up")
            ipr.link("add", ifname=sub, kind="vlan", link=uplink, vlan_id=vid)
            (sub_index,) = ipr.link_lookup(ifname=sub)
            ipr.link("set", index=sub_index, master=br, state="up")
            for tap in plan.taps(vid):
                ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
                (index,) = ipr.link_lookup(ifname=tap)
                ipr.link("set", index=index, master=br, state="up")
        return perf_counter() - started


def raw_vlan_filtering(plan: Plan) -> float:
    """(in the namespace) vlan_filtering on br0; for each VID: tagged on the uplink, then its
    taps (add, master, up, VID as PVID untagged, the default VID 1 removed unless it is
    theirs). Returns the wall time."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (br,) = ipr.link_lookup(ifname=TRUNK)
        (uplink,) = ipr.link_lookup(ifname=UPLINK)
        started = perf_counter()
        ipr.link("set", index=br, kind="bridge", br_vlan_filtering=1)
        access = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED
        for vid in plan.vids:
            if vid != 1:  # VID 1 is the uplink's native VLAN already (default PVID)
                ipr.vlan_filter("add", index=uplink, vlan_info={"vid": vid, "flags": 0})
            for tap in plan.taps(vid):
                ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
                (index,) = ipr.link_lookup(ifname=tap)
                ipr.link("set", index=index, master=br, state="up")
                ipr.vlan_filter("add", index=index, vlan_info={"vid": vid, "flags": access})
                if vid != 1:
                    ipr.vlan_filter("del", index=index, vlan_info={"vid": 1, "flags": 0})
        return perf_counter() - started


def raw_run(lan: str, n: int, backend: str, plan: Plan) -> tuple[float, str]:
    """The baseline in a fresh namespace; returns its wall time and the namespace, which is
    kept (removed at the end of the backend) so that no namespace teardown runs in the
    kernel while the other side is timed."""
    stack = contextlib.ExitStack()
    ns = stack.enter_context(trunk_netns(lan, n))
    KEEP.append(stack)
    in_netns(ns, raw_trunk, backend == "vlan_filtering")
    loop = raw_bridge_per_vlan if backend == "bridge_per_vlan" else raw_vlan_filtering
    return in_netns(ns, loop, plan), ns


KEEP: list[contextlib.ExitStack] = []


# ---- inside: the kernel read back ----------------------------------------------------------------


@dataclass
class KernelCount:
    links: int
    taps_placed: int  # taps up on their VLAN's bridge (bridge_per_vlan) or on br0 as access ports
    subinterfaces: int
    vlan_bridges: int
    uplink_vids: int

    def objects(self) -> tuple[int, int, int, int]:
        return (self.taps_placed, self.subinterfaces, self.vlan_bridges, self.uplink_vids)


def count_kernel(backend: str, plan: Plan) -> KernelCount:
    """(in the namespace) What the kernel holds of the plan."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        msgs = list(ipr.get_links())
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in msgs}
        by_name = {m.get_attr("IFLA_IFNAME"): m for m in msgs}
        vlans = _vlans_by_port(ipr, names) if backend == "vlan_filtering" else {}
    placed = 0
    for vid in plan.vids:
        for tap in plan.taps(vid):
            msg = by_name.get(tap)
            if msg is None or not msg["flags"] & 1:
                continue
            master = names.get(msg.get_attr("IFLA_MASTER") or 0)
            if backend == "bridge_per_vlan":
                placed += master == f"{TRUNK}v{vid}"
            else:
                placed += master == TRUNK and vlans.get(tap) == {vid: True}
    subs = sum(f"{UPLINK}.{vid}" in by_name for vid in plan.vids)
    bridges = sum(f"{TRUNK}v{vid}" in by_name for vid in plan.vids)
    uplink = vlans.get(UPLINK, {})
    return KernelCount(len(msgs), placed, subs, bridges, sum(vid in uplink for vid in plan.vids))


def _vlans_by_port(ipr: Any, names: dict[int, str]) -> dict[str, dict[int, bool]]:
    """Port name -> {vid: pvid and untagged} (`bridge vlan show`)."""
    ports: dict[str, dict[int, bool]] = {}
    for msg in ipr.get_vlans():
        spec = msg.get_attr("IFLA_AF_SPEC")
        infos = [] if spec is None else spec.get_attrs("IFLA_BRIDGE_VLAN_INFO")
        access = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED
        ports[names.get(msg["index"], "?")] = {
            int(i["vid"]): (int(i["flags"]) & access) == access for i in infos
        }
    return ports


def dump_links() -> tuple[float, int]:
    """(in the namespace) One plain pyroute2 link dump, every message parsed."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        started = perf_counter()
        count = len(list(ipr.get_links()))
        return perf_counter() - started, count


# ---- inside: the API -----------------------------------------------------------------------------


@dataclass
class ApiRun:
    vlans_s: float = 0.0
    taps_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    profile: str = ""

    settle_s: float = 0.0  # after the last answer, until the kernel held every object
    count: KernelCount | None = None

    @property
    def wall(self) -> float:
        return self.vlans_s + self.taps_s + self.settle_s


def expected_count(backend: str, plan: Plan) -> tuple[int, int, int, int]:
    """(taps placed, sub-interfaces, per-VLAN bridges, VIDs on the uplink) when done."""
    n = len(plan.vids)
    if backend == "bridge_per_vlan":
        return plan.n_taps, n, n, 0
    return plan.n_taps, 0, 0, n


def settle(ns: str, backend: str, plan: Plan) -> tuple[float, KernelCount]:
    """Read the kernel every SETTLE_POLL_S until it holds the plan (at most WAIT_S); returns
    the seconds it took (0 when it already did) and the last count."""
    started = perf_counter()
    want = expected_count(backend, plan)
    for attempt in itertools.count():
        count = in_netns(ns, count_kernel, backend, plan)
        if count.objects() == want:
            return (perf_counter() - started if attempt else 0.0), count
        if perf_counter() - started > WAIT_S:
            return perf_counter() - started, count
        time.sleep(SETTLE_POLL_S)


def post_all(
    client: Any, path: str, bodies: list[dict[str, Any]], clients: int, run: ApiRun
) -> float:
    """POST every body from `clients` threads sharing the in-process client, each request
    waiting (?wait=) until its resource settled; returns the wall time."""

    def post(body: dict[str, Any]) -> None:
        started = perf_counter()
        r = client.post(path, params={"wait": WAIT_S}, json=body)
        run.latencies.append(perf_counter() - started)
        if r.status_code != 201 or r.json().get("status") != "active":
            run.failures.append(f"{body['name']}: {r.status_code} {r.text[:300]}")

    started = perf_counter()
    with ThreadPoolExecutor(clients, thread_name_prefix="bench-client") as pool:
        list(pool.map(post, bodies))
    return perf_counter() - started


def api_setup(client: Any) -> float:
    """(untimed) br0 with eth0 as its uplink, through the API, and the host's capabilities
    probed (the daemon probes them once, at the first request that needs them: a VLAN
    create); returns the probe's seconds."""
    r = client.post("/v1/bridges", params={"wait": WAIT_S}, json={"name": TRUNK})
    if r.status_code != 201:
        raise RuntimeError(f"creating {TRUNK}: {r.status_code} {r.text}")
    body = {"interface": UPLINK, "probe_address": PROBE}
    r = client.put(f"/v1/bridges/{TRUNK}/uplink", params={"wait": WAIT_S}, json=body)
    if r.status_code not in (200, 201) or r.json().get("status") != "active":
        raise RuntimeError(f"the uplink of {TRUNK}: {r.status_code} {r.text}")
    started = perf_counter()
    r = client.get("/v1/host/capabilities")
    if r.status_code != 200:
        raise RuntimeError(f"probing capabilities: {r.status_code} {r.text}")
    return perf_counter() - started


def progress(what: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {what}", flush=True)


def api_run(client: Any, ns: str, backend: str, plan: Plan, clients: int, profile: bool) -> ApiRun:
    """The VLANs, then their taps, through the API, then until the kernel holds all of it
    (timed; a tap answers `active` once its link is on the bridge, and its VLAN membership on
    a filtering trunk follows in the same pass, right after: the wait for the kernel counts).
    With `profile`, sampled (the app's event loop, the supervisor and the clients share the
    one vCPU)."""
    run = ApiRun()
    vlans = [
        {"name": vlan_name(vid), "vlan_id": vid, "trunk": TRUNK, "backend": backend}
        for vid in plan.vids
    ]
    taps = [{"name": tap, "vlan": vlan_name(vid)} for vid in plan.vids for tap in plan.taps(vid)]
    reports: dict[str, str] = {}
    with sampled(profile, reports, "api"):
        run.vlans_s = post_all(client, "/v1/vlans", vlans, clients, run)
        progress(f"{backend}: {len(vlans)} VLANs active after {run.vlans_s:.1f} s")
        run.taps_s = post_all(client, "/v1/taps", taps, clients, run)
        progress(f"{backend}: {len(taps)} taps active after {run.taps_s:.1f} s")
        run.settle_s, run.count = settle(ns, backend, plan)
    run.profile = reports.get("api", "")
    return run


class Sampler:
    """Where the wall time of a stretch goes, thread by thread: the stacks of every thread
    (sys._current_frames) are sampled every INTERVAL s, and each function's share is the
    share of its thread's samples in which it was on the stack. cProfile would see only the
    thread it is enabled in (threading.setprofile_all_threads needs Python 3.12), and the
    supervisor's thread is already running; py-spy is not in the nested host. Walking
    another thread's running stack is not safe in CPython 3.11: one --profile run of the
    nested host's Python 3.11.7 died of a segmentation fault (two others ran through)."""

    INTERVAL = 0.05  # coarse: the sampler shares the one vCPU (~1-2 % of it)

    def __init__(self) -> None:
        self.samples: dict[str, dict[tuple[str, int, str], int]] = {}
        self.totals: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.is_set():
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    self._count(names.get(ident, str(ident)).split("_")[0], frame)
            time.sleep(self.INTERVAL)

    def _count(self, thread: str, top: Any) -> None:
        counts = self.samples.setdefault(thread, {})
        self.totals[thread] = self.totals.get(thread, 0) + 1
        seen = set()
        frame = top
        # a thread's stack changes while it is walked: stop at anything not a frame
        while isinstance(frame, types.FrameType):
            code = frame.f_code
            key = (code.co_filename, code.co_firstlineno, code.co_name)
            if key not in seen:
                counts[key] = counts.get(key, 0) + 1
                seen.add(key)
            frame = frame.f_back

    def report(self) -> str:
        out = []
        for thread, total in sorted(self.totals.items(), key=lambda kv: -kv[1]):
            top = sorted(self.samples[thread].items(), key=lambda kv: -kv[1])[:PROFILE_LINES]
            out.append(f"thread {thread} ({total} samples, inclusive share):")
            out += [f"  {n / total:6.1%}  {name}  {_short(f)}:{line}" for (f, line, name), n in top]
        return "\n".join(out)


def _short(filename: str) -> str:
    parts = Path(filename).parts
    return "/".join(parts[-3:])


@contextlib.contextmanager
def sampled(enabled: bool, into: dict[str, str], key: str) -> Iterator[None]:
    """Sample every thread while the block runs (when `enabled`); the report goes to
    into[key]. The sampler takes CPU from the one vCPU: figures of such a run are slower."""
    if not enabled:
        yield
        return
    with Sampler() as sampler:
        yield
    into[key] = sampler.report()


@dataclass
class PassRuns:
    pass_s: list[float] = field(default_factory=list)
    dump_s: list[float] = field(default_factory=list)
    links: int = 0
    profile: str = ""


def full_passes(supervisor: Any, ns: str, runs: int, profile: bool) -> PassRuns:
    """Full passes as the supervisor runs them (resync(), timed by its hook), interleaved
    with plain link dumps of the same namespace."""
    out = PassRuns()
    for _ in range(runs):
        out.pass_s.append(one_full_pass(supervisor))
        seconds, out.links = in_netns(ns, dump_links)
        out.dump_s.append(seconds)
    reports: dict[str, str] = {}
    with sampled(profile, reports, "pass"):
        one_full_pass(supervisor)  # one more, sampled, not counted
    out.profile = reports.get("pass", "")
    return out


def one_full_pass(supervisor: Any) -> float:
    before = supervisor.full_passes
    supervisor.resync()
    deadline = time.monotonic() + WAIT_S
    while supervisor.full_passes == before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no full pass within {WAIT_S} s")
        time.sleep(0.05)
    return float(supervisor.last_full_pass_s)


# ---- inside: one backend -------------------------------------------------------------------------


def bench_backend(backend: str, plan: Plan, params: argparse.Namespace) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with patient_netns() as lan, tempfile.TemporaryDirectory(prefix="bench-vlans-") as tmp:
        try:
            raw_before, raw_ns1 = raw_run(lan, 1, backend, plan)
            raw_count = in_netns(raw_ns1, count_kernel, backend, plan)
            with trunk_netns(lan, 0) as ns:
                settings = Settings(
                    state_dir=Path(tmp) / "state",
                    run_dir=Path(tmp) / "run",
                    listen="",
                    probe_kernel=Path(tmp) / "no-kernel",
                )
                app = create_app(settings, token="bench-token", host_netns=ns)
                with TestClient(app, base_url="http://kvmnetd") as client:
                    supervisor = app.state.supervisor
                    if not supervisor.ready.wait(READY_S):
                        raise RuntimeError(f"the supervisor was not ready within {READY_S} s")
                    probe_s = api_setup(client)
                    progress(f"{backend}: trunk and uplink set, capabilities probed")
                    api = api_run(client, ns, backend, plan, params.clients, params.profile)
                    progress(f"{backend}: API run done in {api.wall:.1f} s")
                    raw_after, _ = raw_run(lan, 2, backend, plan)
                    progress(f"{backend}: raw loops {raw_before:.1f} s, {raw_after:.1f} s")
                    passes = full_passes(supervisor, ns, params.passes, params.profile)
                    after_passes = in_netns(ns, count_kernel, backend, plan)
        finally:
            for stack in KEEP:
                stack.close()
            KEEP.clear()
    return {
        "backend": backend,
        "vlans": len(plan.vids),
        "taps": plan.n_taps,
        "clients": params.clients,
        "api_vlans_s": api.vlans_s,
        "api_taps_s": api.taps_s,
        "api_wall_s": api.wall,
        "api_failures": api.failures[:10],
        "api_failed": len(api.failures),
        "api_latency_p50_ms": median(api.latencies) * 1000,
        "api_latency_max_ms": max(api.latencies, default=0.0) * 1000,
        "raw_wall_s": [raw_before, raw_after],
        "api_settle_s": api.settle_s,
        "capabilities_probe_s": probe_s,
        "reconcile_interval_s": settings.reconcile_interval,
        "kernel_api": api.count.__dict__ if api.count else None,
        "kernel_raw": raw_count.__dict__,
        "kernel_after_passes": after_passes.__dict__,
        "expected_objects": expected_count(backend, plan),
        "same_objects": all(
            c is not None and c.objects() == expected_count(backend, plan)
            for c in (api.count, raw_count, after_passes)
        ),
        "pass_ms": [t * 1000 for t in passes.pass_s],
        "dump_ms": [t * 1000 for t in passes.dump_s],
        "links_dumped": passes.links,
        "profile_api": api.profile,
        "profile_pass": passes.profile,
    }


def load_modules() -> None:
    for name in MODULES:
        run_argv(["modprobe", name])


def inside(params: argparse.Namespace) -> int:
    if os.environ.get("KVT_NESTED") != "1":
        print("--inside runs only in the kernel tier's nested host", file=sys.stderr)
        return 2
    load_modules()
    plan = Plan(list(range(1, params.vlans + 1)), params.taps_per_vlan)
    for backend in params.backends:
        progress(f"{backend}: {len(plan.vids)} VLANs x {plan.taps_per_vlan} taps")
        run = bench_backend(backend, plan, params)
        run |= {"kernel": platform.release(), "python": platform.python_version()}
        print(RESULT_MARK + json.dumps(run), flush=True)
        progress(f"{backend}: done")
    return 0


# ---- on the host ---------------------------------------------------------------------------------


def figures(run: dict[str, Any]) -> list[Figure]:
    backend, raw = run["backend"], sum(run["raw_wall_s"]) / len(run["raw_wall_s"])
    return [
        Figure(
            f"{backend}: {run['vlans']} VLANs + {run['taps']} taps, wall",
            "s",
            run["api_wall_s"],
            raw,
            f"API (in-process app, capabilities probed before), {run['clients']} clients, each "
            "?wait= until active, then until the kernel holds every object | plain pyroute2 "
            "IPRoute loop in a fresh netns (mean of 2: before and after)",
            f"<= {API_WITHIN:g}x raw",
            max_ratio=API_WITHIN,
        ),
        Figure(
            f"{backend}: full reconcile pass, {run['links_dumped']} links",
            "ms",
            median(run["pass_ms"]),
            median(run["dump_ms"]),
            f"Supervisor full pass (links, uplinks, VLANs, sweep) | one IPRoute.get_links() "
            f"of the same netns; medians of {len(run['pass_ms'])}, interleaved",
            f"<= {PASS_WITHIN:g}x dump",
            max_ratio=PASS_WITHIN,
        ),
    ]


def parse_results(output: str) -> list[dict[str, Any]]:
    """Each finished backend's results (a run cut off still reports the backends it did)."""
    return [
        dict(json.loads(line[len(RESULT_MARK) :]))
        for line in output.splitlines()
        if line.startswith(RESULT_MARK)
    ]


def progress_lines(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if not line.startswith(RESULT_MARK))


def inside_argv(params: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "bench.vlans", "--inside", "--vlans", str(params.vlans)]
    argv += ["--taps-per-vlan", str(params.taps_per_vlan), "--clients", str(params.clients)]
    argv += ["--passes", str(params.passes), "--backends", *params.backends]
    return argv + (["--profile"] if params.profile else [])


def on_host(params: argparse.Namespace) -> int:
    from tests.kernel.vm import run_command

    load = os.getloadavg()[0]
    nested = run_command(inside_argv(params), timeout=params.timeout)
    runs = parse_results(nested.output)
    failed = nested.exit_code != 0 or len(runs) != len(params.backends)
    if failed:
        print(progress_lines(nested.output)[-8000:])
        print(f"--- serial console (tail) ---\n{nested.console_tail()}")
        print(f"the nested run failed: {nested.reason} ({nested.seconds:.0f} s)")
        if not runs:
            return 1
    results = Results()
    for run in runs:
        results.figures += figures(run)
        results.details[run["backend"]] = {
            k: v for k, v in run.items() if not k.startswith("profile") and k != "backend"
        }
    print(table(results.figures))
    print()
    print(details_text(results.details))
    for run in runs:
        for key in ("profile_api", "profile_pass"):
            if run[key]:
                print(f"\n--- {run['backend']}: {key} ---\n{run[key]}")
    print(
        f"\nnested host: {runs[0]['kernel']}, Python {runs[0]['python']}, 1 vCPU under TCG; "
        f"whole nested run {nested.seconds:.0f} s; host load (1 min) at start/end: "
        f"{load:.1f}/{os.getloadavg()[0]:.1f}"
    )
    write_json(results, runs, params, nested.seconds, load)
    print(f"written: {RESULTS}")
    ok = all(r["same_objects"] and not r["api_failed"] for r in runs)
    return 0 if ok and not failed else 1


def write_json(
    results: Results,
    runs: list[dict[str, Any]],
    params: argparse.Namespace,
    seconds: float,
    load: float,
) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "vlans",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code": code_version(),
        "host": {"kernel": platform.release(), "loadavg_1m": load},
        "nested": {"kernel": runs[0]["kernel"], "python": runs[0]["python"], "run_s": seconds},
        "params": vars(params),
        "figures": [f.as_dict() for f in results.figures],
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vlans", description=__doc__)
    parser.add_argument("--vlans", type=int, default=N_VLANS, help="VLAN ids 1..N (%(default)s)")
    parser.add_argument("--taps-per-vlan", type=int, default=TAPS_PER_VLAN)
    parser.add_argument("--clients", type=int, default=CLIENTS, help="API clients (%(default)s)")
    parser.add_argument("--passes", type=int, default=PASSES, help="full passes (%(default)s)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT_S, help="s for the nested run (%(default)s)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample where the time goes (perturbs the figures; see Sampler: may crash)",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: run_command's cleanup (qemu killed and reaped) runs
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return inside(params) if params.inside else on_host(params)


if __name__ == "__main__":
    sys.exit(main())
