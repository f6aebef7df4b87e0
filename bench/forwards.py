"""Port forwards at scale: 1000 forwards through kvmnetd against the same rules loaded with one
raw `nft -f`, each side in its own throwaway kvt-* namespace.

Setup in the daemon's namespace: bridge br0, managed network nat0 (10.91.0.0/24) on it and a
VM that stays powered off with one NIC on br0 (fixed address 10.91.0.2); every forward sends
host port FIRST_PORT+i to the VM's port 80. Figures, each next to its baseline from the same
run:

1. API batch: one POST /v1/port-forwards/batch with 1000 items, from sending it until the last
   item is active (its GET polled every 10 ms; the batch is applied in one nftables
   transaction), then checked in the kernel (2000 `forward <id>` rules); median of 3 runs, the
   forwards deleted between runs (DELETE ?wait= from 32 clients).
2. API one by one: 1000 single POSTs (no ?wait=) from 32 concurrent clients, until every
   forward is active; one run.
   Both against the baseline: `nft -f FILE` (argv list, no shell, in a fresh namespace) of the
   text listing of the daemon's own table (`nft list table inet kvmnetd` after the first batch
   run: the same chains, the 2000 forward rules and the network's two postrouting rules);
   median of 5 runs interleaved with the batch runs, the table deleted between runs. For
   information: `nft -j -f` of the JSON listing, the daemon's own rendering loaded the way
   the daemon loads it (app.host.nft.load, `nft -j -f -`), and one `nft -j list table`.
3. The daemon's idle RSS with 1000 forwards vs the same daemon with only the network and VM.

Run as `.venv/bin/python -m bench.forwards` (root; never touches the root namespace). Figures
go to stdout and to bench/results/forwards.json.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import httpx

from app.domain import nat_rules
from app.host import nft
from bench.taps import (
    NAMESPACES,
    Figure,
    Results,
    code_version,
    daemon_pid,
    details_text,
    fmt,
    fresh_netns,
    host_facts,
    idle_rss_kib,
    in_netns,
    median,
    percentile,
)
from tests.daemon import Daemon
from tests.netns_tools import nft_rules

N_FORWARDS = 1000
CLIENTS = 32  # one-by-one run
DELETE_CLIENTS = 32  # clearing the forwards between runs (each waits for its own pass)
BATCH_RUNS = 3
NFT_RUNS = 5
FIRST_PORT = 10000
TARGET_PORT = 80
POLL_S = 0.01  # between GETs of the forward that must become active
ACTIVE_TIMEOUT_S = 300.0
WAIT_S = 30  # ?wait= on the setup and on deletes
HTTP_TIMEOUT_S = 120.0

BRIDGE = "br0"
NETWORK = "nat0"
SUBNET = "10.91.0.0/24"
VM = "web"
VM_ADDRESS = "10.91.0.2"
TABLE_ARGS = (nat_rules.FAMILY, nat_rules.TABLE)

BATCH_WITHIN = 3.0  # target: the batch within 3x one raw `nft -f`

RESULTS = Path(__file__).resolve().parent / "results" / "forwards.json"
LOG_COPY = RESULTS.with_name("forwards-daemon.log")


# ---- helpers -----------------------------------------------------------------------------------


def expect(response: httpx.Response, status: int) -> Any:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text[:500]}"
        )
    return response.json() if response.content else None


def cpu_split(pid: int) -> tuple[float, float]:
    """(own utime+stime, utime+stime of its waited-for children: nft, sysctl) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def nft_in(ns: str, *args: str, stdin: str | None = None) -> tuple[float, str]:
    """Run `nft ARGS` (argv list, no shell) on a thread that entered `ns`; seconds and stdout."""

    def run() -> tuple[float, str]:
        started = perf_counter()
        done = subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
        seconds = perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} in {ns}: {done.stderr.strip()[:500]}")
        return seconds, done.stdout

    return in_netns(ns, run)


def table_handle(ns: str) -> int | None:
    """The handle of our table in `ns`: the kernel numbers every table made in a namespace,
    and each load of the daemon deletes and re-adds the table, so its growth counts loads."""
    try:
        _, out = nft_in(ns, "-j", "list", "table", *TABLE_ARGS)
    except RuntimeError:
        return None
    for item in json.loads(out)["nftables"]:
        if "table" in item:
            return int(item["table"]["handle"])
    return None


def forward_items(n: int) -> list[dict[str, Any]]:
    return [
        {"network": NETWORK, "vm": VM, "port": FIRST_PORT + i, "target_port": TARGET_PORT}
        for i in range(n)
    ]


def all_forwards(client: httpx.Client) -> list[dict[str, Any]]:
    """Every forward, through the paged list."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = expect(client.get("/v1/port-forwards", params=params), 200)
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def wait_active(client: httpx.Client, forward_id: str, deadline: float) -> int:
    """Poll GET /v1/port-forwards/{id} every POLL_S until it is active; returns the polls."""
    polls = 0
    while True:
        polls += 1
        forward = expect(client.get(f"/v1/port-forwards/{forward_id}"), 200)
        if forward["status"] == "active":
            return polls
        if forward["status"] == "error":
            raise RuntimeError(f"forward {forward_id}: error: {forward.get('status_reason')}")
        if perf_counter() > deadline:
            raise TimeoutError(f"forward {forward_id} still {forward['status']}")
        time.sleep(POLL_S)


def forward_rules(ns: str) -> list[dict[str, Any]]:
    """Our table's `forward <id>` rules in `ns` (`ip netns exec NS nft -j list table ...`)."""
    rules = nft_rules(ns) or []
    return [r for r in rules if str(r.get("comment", "")).startswith("forward ")]


def verify(daemon: Daemon, ids: list[str]) -> None:
    """Every forward of `ids` active through the API, and one rule per chain in the kernel."""
    with daemon.client(timeout=HTTP_TIMEOUT_S) as client:
        listed = {f["id"]: f["status"] for f in all_forwards(client)}
    not_active = [i for i in ids if listed.get(i) != "active"]
    rules = forward_rules(daemon.netns)
    wanted = {(chain, f"forward {i}") for i in ids for chain in ("prerouting", "output")}
    found = {(str(r["chain"]), str(r["comment"])) for r in rules}
    if not_active or len(listed) != len(ids) or len(rules) != len(wanted) or found != wanted:
        raise RuntimeError(
            f"{len(ids)} forwards: {len(listed)} listed, {len(not_active)} not active "
            f"(e.g. {not_active[:3]}); {len(rules)} forward rules in the kernel, "
            f"{len(wanted - found)} missing, {len(found - wanted)} unexpected"
        )


def delete_forwards(daemon: Daemon, ids: list[str]) -> float:
    """DELETE ?wait= every forward from DELETE_CLIENTS clients; checked gone in the API and
    in the kernel. Returns the wall time."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for forward_id in ids:
        todo.put(forward_id)

    def client_loop() -> None:
        with daemon.client(timeout=WAIT_S + 30) as client:
            while True:
                try:
                    forward_id = todo.get_nowait()
                except queue.Empty:
                    return
                r = client.delete(f"/v1/port-forwards/{forward_id}", params={"wait": WAIT_S})
                if r.status_code not in (204, 404):
                    raise RuntimeError(f"deleting {forward_id}: {r.status_code} {r.text[:200]}")

    started = perf_counter()
    with ThreadPoolExecutor(DELETE_CLIENTS, thread_name_prefix="bench-delete") as pool:
        for future in [pool.submit(client_loop) for _ in range(DELETE_CLIENTS)]:
            future.result()
    seconds = perf_counter() - started
    with daemon.client(timeout=HTTP_TIMEOUT_S) as client:
        left = all_forwards(client)
    rules = forward_rules(daemon.netns)
    if left or rules:
        raise RuntimeError(f"after deleting: {len(left)} forwards listed, {len(rules)} rules")
    return seconds


# ---- setup -------------------------------------------------------------------------------------


@dataclass
class Setup:
    network: dict[str, Any]
    vm: dict[str, Any]


def setup(daemon: Daemon) -> Setup:
    """br0, the network on it, the powered-off VM with its NIC there; one forward made and
    deleted with ?wait= as a smoke test."""
    with daemon.client(timeout=HTTP_TIMEOUT_S) as client:
        wait = {"wait": WAIT_S}
        expect(client.post("/v1/bridges", params=wait, json={"name": BRIDGE}), 201)
        network = expect(
            client.post(
                "/v1/networks",
                params=wait,
                json={"name": NETWORK, "bridge": BRIDGE, "subnet": SUBNET},
            ),
            201,
        )
        vm = expect(
            client.post(
                "/v1/vms",
                params=wait,
                json={
                    "name": VM,
                    "power_state": "stopped",
                    "boot": {"kernel": "/nonexistent"},
                    "nics": [{"backend": "bridge", "bridge": BRIDGE}],
                },
            ),
            201,
        )
        if vm["nics"][0].get("ipv4") != VM_ADDRESS:
            raise RuntimeError(f"VM NIC: {vm['nics'][0]}, expected {VM_ADDRESS}")
        one = expect(client.post("/v1/port-forwards", params=wait, json=forward_items(1)[0]), 201)
        if (one["status"], one["target_address"]) != ("active", VM_ADDRESS):
            raise RuntimeError(f"smoke-test forward: {one}")
        expect(client.delete(f"/v1/port-forwards/{one['id']}", params=wait), 204)
    if forward_rules(daemon.netns):
        raise RuntimeError("forward rules left after the smoke test")
    return Setup(network, vm)


# ---- 1. the batch ------------------------------------------------------------------------------


@dataclass
class ApiRun:
    """One API run: `posted` until the (last) POST answered, `active` until all were active."""

    posted: float
    active: float
    ids: list[str]
    items: list[dict[str, Any]]
    polls: int
    cpu_own: float
    cpu_children: float
    table_loads: int | None
    latencies: list[float] = field(default_factory=list)


def table_loads(ns: str, before: int | None) -> int | None:
    after = table_handle(ns)
    return after - before if after is not None and before is not None else None


def batch_run(daemon: Daemon, n: int) -> ApiRun:
    """POST the batch, poll its last item until active, then check all of them."""
    pid = daemon_pid(daemon)
    handle = table_handle(daemon.netns)
    with daemon.client(timeout=HTTP_TIMEOUT_S) as client:
        own0, children0 = cpu_split(pid)
        started = perf_counter()
        response = client.post("/v1/port-forwards/batch", json={"port_forwards": forward_items(n)})
        posted = perf_counter() - started
        items = expect(response, 202)["items"]
        if len(items) != n:
            raise RuntimeError(f"batch answered {len(items)} items for {n}")
        polls = wait_active(client, items[-1]["id"], started + ACTIVE_TIMEOUT_S)
        active = perf_counter() - started
        own1, children1 = cpu_split(pid)
    ids = [item["id"] for item in items]
    verify(daemon, ids)
    return ApiRun(
        posted,
        active,
        ids,
        items,
        polls,
        own1 - own0,
        children1 - children0,
        table_loads(daemon.netns, handle),
    )


# ---- 2. one by one ----------------------------------------------------------------------------


def single_run(daemon: Daemon, n: int, clients: int) -> ApiRun:
    """POST every forward alone (no ?wait=) from `clients` concurrent clients; then wait for
    the forward whose POST answered last, and list until every one is active."""
    todo: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    for item in forward_items(n):
        todo.put(item)
    created: list[dict[str, Any]] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with daemon.client(timeout=HTTP_TIMEOUT_S) as client:
            while True:
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = perf_counter()
                forward = expect(client.post("/v1/port-forwards", json=item), 202)
                with lock:
                    latencies.append(perf_counter() - t0)
                    created.append(forward)

    pid = daemon_pid(daemon)
    handle = table_handle(daemon.netns)
    own0, children0 = cpu_split(pid)
    started = perf_counter()
    with ThreadPoolExecutor(clients, thread_name_prefix="bench-client") as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    posted = perf_counter() - started
    ids = [f["id"] for f in created]
    with daemon.client(timeout=HTTP_TIMEOUT_S) as client:
        polls = wait_active(client, ids[-1], started + ACTIVE_TIMEOUT_S)
        while True:
            polls += 1
            statuses = [f["status"] for f in all_forwards(client)]
            if len(statuses) == n and all(s == "active" for s in statuses):
                break
            if perf_counter() > started + ACTIVE_TIMEOUT_S:
                raise TimeoutError(f"{statuses.count('active')} of {n} forwards active")
            time.sleep(POLL_S)
    active = perf_counter() - started
    own1, children1 = cpu_split(pid)
    verify(daemon, ids)
    return ApiRun(
        posted,
        active,
        ids,
        created,
        polls,
        own1 - own0,
        children1 - children0,
        table_loads(daemon.netns, handle),
        latencies,
    )


# ---- the baseline ------------------------------------------------------------------------------


@dataclass
class Listings:
    """Our table in the daemon's namespace with the forwards of the first batch run."""

    text: str
    json: str
    commands: list[dict[str, Any]]  # the daemon's own rendering of the same rules


def take_listings(daemon: Daemon, setup_: Setup, items: list[dict[str, Any]]) -> Listings:
    _, text = nft_in(daemon.netns, "list", "table", *TABLE_ARGS)
    _, listing = nft_in(daemon.netns, "-j", "list", "table", *TABLE_ARGS)
    network = setup_.network
    commands = nat_rules.render(
        [
            nat_rules.NatNetwork(
                network["id"],
                network["subnet"],
                network["nat"]["enabled"],
                network["nat"]["out_interface"],
                network["nat"]["snat_address"],
            )
        ],
        [
            nat_rules.Forward(
                f["id"],
                f["protocol"],
                f["listen_address"],
                f["port"],
                f["end_port"],
                f["target_address"] or VM_ADDRESS,
                f["target_port"],
            )
            for f in items
        ],
    )
    return Listings(text, listing, commands)


class RawSide:
    """The baseline namespace: loads of the same table, each checked and deleted after."""

    def __init__(self, ns: str, workdir: Path, listings: Listings, n: int) -> None:
        self.ns = ns
        self.n = n
        self.text_file = workdir / "kvmnetd.nft"
        self.text_file.write_text(listings.text)
        self.json_file = workdir / "kvmnetd.json"
        self.json_file.write_text(listings.json)
        self.commands = listings.commands
        self.text_s: list[float] = []
        self.json_s: list[float] = []
        self.rendered_s: list[float] = []
        self.list_s: list[float] = []
        self.live: list[dict[str, Any]] | None = None

    def _check_and_drop(self) -> None:
        rules = forward_rules(self.ns)
        if len(rules) != 2 * self.n:
            raise RuntimeError(f"raw load: {len(rules)} forward rules, expected {2 * self.n}")
        nft_in(self.ns, "delete", "table", *TABLE_ARGS)

    def text_run(self) -> None:
        """The baseline proper: `nft -f FILE` of the text listing."""
        seconds, _ = nft_in(self.ns, "-f", str(self.text_file))
        self.text_s.append(seconds)
        self._check_and_drop()

    def json_run(self) -> None:
        seconds, _ = nft_in(self.ns, "-j", "-f", str(self.json_file))
        self.json_s.append(seconds)
        self._check_and_drop()

    def rendered_run(self) -> None:
        """The daemon's rendering through the daemon's loader, then one `nft -j list`."""

        def load() -> float:
            started = perf_counter()
            nft.load(self.commands)
            return perf_counter() - started

        self.rendered_s.append(in_netns(self.ns, load))
        seconds, listing = nft_in(self.ns, "-j", "list", "table", *TABLE_ARGS)
        self.list_s.append(seconds)
        self.live = nat_rules.canonical(json.loads(listing)["nftables"])
        self._check_and_drop()


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class Measured:
    batches: list[ApiRun]
    single: ApiRun
    raw: RawSide
    same_rules: bool
    delete_s: list[float]
    rss_setup_kib: int
    rss_loaded_kib: int
    rss_single_kib: int


def measure(daemon: Daemon, workdir: Path, params: argparse.Namespace) -> Measured:
    """Batch run 1 gives the listings; then baseline and batch runs interleaved (N1 B2 N2 B3
    N3 ...), the informational loads, and the one-by-one run last."""
    n = params.forwards
    setup_ = setup(daemon)
    rss_setup = idle_rss_kib(daemon)
    batches = [batch_run(daemon, n)]
    rss_loaded = idle_rss_kib(daemon)
    listings = take_listings(daemon, setup_, batches[0].items)
    daemon_live = nat_rules.canonical(json.loads(listings.json)["nftables"])
    deletes = [delete_forwards(daemon, batches[0].ids)]
    with fresh_netns() as raw_ns:
        raw = RawSide(raw_ns, workdir, listings, n)
        for i in range(max(params.nft_runs, params.batch_runs - 1)):
            if i < params.nft_runs:
                raw.text_run()
            if i + 1 < params.batch_runs:
                batches.append(batch_run(daemon, n))
                deletes.append(delete_forwards(daemon, batches[-1].ids))
        for _ in range(params.nft_runs):
            raw.json_run()
            raw.rendered_run()
    single = single_run(daemon, n, params.clients)
    rss_single = idle_rss_kib(daemon)
    return Measured(
        batches,
        single,
        raw,
        raw.live == daemon_live,
        deletes,
        rss_setup,
        rss_loaded,
        rss_single,
    )


def figures_of(m: Measured, params: argparse.Namespace) -> Results:
    n = params.forwards
    nft_s = median(m.raw.text_s)
    batch_s = median([b.active for b in m.batches])
    results = Results()
    results.figures = [
        Figure(
            f"{n} forwards, API batch",
            "s",
            batch_s,
            nft_s,
            f"POST /v1/port-forwards/batch until the last item is active (GET every "
            f"{POLL_S * 1000:g} ms), median of {len(m.batches)} | `nft -f` of the same table's "
            f"text listing in a fresh netns, median of {len(m.raw.text_s)}, interleaved",
            f"<= {BATCH_WITHIN:g}x nft -f",
            max_ratio=BATCH_WITHIN,
        ),
        Figure(
            f"{n} forwards, API one by one",
            "s",
            m.single.active,
            nft_s,
            f"{params.clients} clients POST /v1/port-forwards (no ?wait=) until every one is "
            f"active, one run | the same `nft -f`",
        ),
        Figure(
            f"daemon RSS with {n} forwards",
            "MiB",
            m.rss_loaded_kib / 1024,
            m.rss_setup_kib / 1024,
            "after the first batch run, idle | same daemon with only bridge, network and VM",
        ),
    ]
    ms = 1000.0
    results.details["batch"] = {
        "active_ms": [b.active * ms for b in m.batches],
        "post_answered_ms_median": median([b.posted for b in m.batches]) * ms,
        "after_post_ms_median": median([b.active - b.posted for b in m.batches]) * ms,
        "polls": [b.polls for b in m.batches],
        "daemon_cpu_ms_median": median([b.cpu_own for b in m.batches]) * ms,
        "nft_children_cpu_ms_median": median([b.cpu_children for b in m.batches]) * ms,
        "table_loads": str([b.table_loads for b in m.batches]),
        "delete_all_s": m.delete_s,
    }
    single = m.single
    results.details["single"] = {
        "active_ms": single.active * ms,
        "all_posted_ms": single.posted * ms,
        "post_latency_p50_ms": percentile(single.latencies, 0.5) * ms,
        "post_latency_p99_ms": percentile(single.latencies, 0.99) * ms,
        "daemon_cpu_ms": single.cpu_own * ms,
        "nft_children_cpu_ms": single.cpu_children * ms,
        "table_loads": single.table_loads,
    }
    results.details["nft"] = {
        "text_f_ms": [t * ms for t in m.raw.text_s],
        "text_f_ms_median": nft_s * ms,
        "json_listing_f_ms_median": median(m.raw.json_s) * ms,
        "daemon_rendering_load_ms_median": median(m.raw.rendered_s) * ms,
        "json_list_table_ms_median": median(m.raw.list_s) * ms,
        "rendering_same_rules_as_daemon": m.same_rules,
        "text_listing_bytes": m.raw.text_file.stat().st_size,
        "json_listing_bytes": m.raw.json_file.stat().st_size,
    }
    results.details["rss"] = {
        "setup_kib": m.rss_setup_kib,
        "after_batch_kib": m.rss_loaded_kib,
        "after_single_kib": m.rss_single_kib,
    }
    return results


# ---- output ------------------------------------------------------------------------------------


def time_table(results: Results, n: int) -> str:
    """Seconds and ratio of the baseline and both API runs, one row each."""
    batch, single = results.figures[0], results.figures[1]
    assert batch.baseline is not None
    rows = [
        ("raw `nft -f` (text listing, one transaction)", batch.baseline, 1.0, "-", "-"),
        (f"API batch (1 POST, {n} items)", batch.kvmnetd, batch.ratio, batch.target, batch.met),
        ("API one by one (single POSTs)", single.kvmnetd, single.ratio, "-", "-"),
    ]
    head = (f"{n} port forwards", "seconds", "ratio", "target", "met")
    cells = [
        (
            name,
            fmt(seconds, 3),
            fmt(ratio, 2) + "x",
            target,
            {True: "met", False: "NOT met"}.get(met, "-") if isinstance(met, bool) else "-",
        )
        for name, seconds, ratio, target, met in rows
    ]
    widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    header = "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))
    legend = [f"  {f.name}: {f.baseline_is}" for f in results.figures]
    return "\n".join([header, "  ".join("-" * w for w in widths), *lines, "", *legend])


def write_json(results: Results, params: argparse.Namespace, host: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "forwards",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code": code_version(),
        "host": {**host, "loadavg_1m_at_end": os.getloadavg()[0]},
        "params": {**vars(params), "poll_s": POLL_S, "first_port": FIRST_PORT},
        "figures": [f.as_dict() for f in results.figures],
        "details": results.details,
        "namespaces": NAMESPACES,
        "daemon_log": str(LOG_COPY),
    }
    RESULTS.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")


# ---- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.forwards", description=__doc__)
    parser.add_argument("--forwards", type=int, default=N_FORWARDS, help="(%(default)s)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="one-by-one clients")
    parser.add_argument("--batch-runs", type=int, default=BATCH_RUNS, help="(%(default)s)")
    parser.add_argument("--nft-runs", type=int, default=NFT_RUNS, help="(%(default)s)")
    params = parser.parse_args(argv)
    if not 1 <= params.forwards <= 4096 or params.batch_runs < 1 or params.nft_runs < 1:
        parser.error("--forwards must be 1..4096 (one batch), runs at least 1")
    return params


def main(argv: list[str] | None = None) -> int:
    params = parse_args(argv)
    host = host_facts()
    with tempfile.TemporaryDirectory(prefix="kvmnetd-bench-") as tmp, fresh_netns() as ns:
        daemon = Daemon(ns, Path(tmp))
        try:
            daemon.start()
            measured = measure(daemon, Path(tmp), params)
            results = figures_of(measured, params)
        finally:
            daemon.kill()  # its dnsmasq dies with the namespace (tests.netns_tools, by pid)
            LOG_COPY.parent.mkdir(parents=True, exist_ok=True)
            if daemon.log.exists():
                shutil.copyfile(daemon.log, LOG_COPY)
    print(time_table(results, params.forwards))
    batch = results.figures[0]
    verdict = "met" if batch.met else "NOT met"
    print(f"\nbatch target (<= {BATCH_WITHIN:g}x one raw nft -f): {verdict} ({batch.ratio:.2f}x)")
    rss = results.figures[2]
    print(f"daemon RSS: {rss.kvmnetd:.1f} MiB with {params.forwards} forwards ", end="")
    print(f"({rss.baseline:.1f} MiB with only the network and VM)\n")
    print(details_text(results.details))
    load = (host["loadavg_1m"], os.getloadavg()[0])
    print(f"load average (1 min) at start/end: {load[0]:.1f}/{load[1]:.1f} on {host['cpus']} CPUs")
    write_json(results, params, host)
    print(f"\nwritten: {RESULTS} (daemon log: {LOG_COPY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
