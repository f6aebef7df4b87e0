"""Anti-spoofing rules at scale: 1000 protected NICs' rules loaded by kvmnetd's code in one
transaction against one `nft -f` of the same ruleset as text, in a throwaway kvt-*
namespace, in the same run.

1. Whole load: app.domain.port_security.render_all for 1000 NICs (each a fixed address, an
   allowed prefix and its link-local address) rendered and loaded as the network worker
   does (app.host.nft.load: one `nft -j -f -` transaction), the table deleted between runs;
   against the baseline: `nft -f FILE` of `nft list table bridge kvmnetd` taken after our
   load (the same map, base chain and 1000 chains as text). Medians of 5 runs, interleaved.
   Target: ours <= 3x the baseline.
2. One NIC changed with 1000 loaded: app.supervisor.port_security's quiet pass (only that
   NIC's chain flushed and refilled, and its map element), median of 20 runs, against a
   full reload of all 1000 (render_all). For information: a full pass's read-back and
   drift check of the 1000 chains (`nft -j list table` and the comparison).

Run as root: `.venv/bin/python -m bench.port_security`. Never touches the root namespace.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.db.repositories import ProtectedNic
from app.domain import port_security as ps
from app.host import nft
from app.supervisor.port_security import PortSecuritySync, plan
from tests.netns_tools import in_namespace, throwaway_netns

N_NICS = 1000
WHOLE_RUNS = 5
CHANGE_RUNS = 20


def nics(count: int, generation: int = 0) -> list[ProtectedNic]:
    return [
        ProtectedNic(
            nic_id=f"nic-{i}",
            vm=f"vm{i}",
            position=0,
            tap=f"kv{i:08x}-0",
            mac=f"52:54:00:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}",
            ipv4=f"10.{64 + (i >> 16)}.{i >> 8 & 0xFF}.{(i & 0xFF) or 1}",
            observed_ipv4=None,
            allowed=(f"192.0.{(i + generation) % 256}.0/24",),
            reason=None,
        )
        for i in range(count)
    ]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def nft_text(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["nft", *argv], stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=120
    )


def run(ns: str) -> dict[str, float]:
    ports = [plan(n, None).rules for n in nics(N_NICS)]
    delete = lambda: nft.load(ps.removal())  # noqa: E731
    in_namespace(ns, lambda: nft.load(ps.render_all(ports)))
    text = in_namespace(ns, lambda: nft_text(["list", "table", "bridge", "kvmnetd"])).stdout
    with tempfile.TemporaryDirectory(prefix="kvt-bench-") as tmp:
        ruleset = Path(tmp) / "ruleset.nft"
        ruleset.write_bytes(text)
        ours, baseline = [], []
        for _ in range(WHOLE_RUNS):
            in_namespace(ns, delete)
            ps.forget_rendered()  # cold: rendered from scratch, as after a daemon start
            ours.append(in_namespace(ns, lambda: timed(lambda: nft.load(ps.render_all(ports)))))
            in_namespace(ns, delete)
            baseline.append(in_namespace(ns, lambda: timed(lambda: nft_text(["-f", str(ruleset)]))))
    in_namespace(ns, delete)

    sync = PortSecuritySync(time.monotonic)
    current = nics(N_NICS)
    in_namespace(ns, lambda: sync.sync([plan(n, None) for n in current], True))
    one = []
    for generation in range(1, CHANGE_RUNS + 1):
        current[generation] = nics(N_NICS, generation)[generation]
        changed = [plan(n, None) for n in current]
        one.append(in_namespace(ns, lambda c=changed: timed(lambda: sync.sync(c, False))))
    full = [
        in_namespace(ns, lambda: timed(lambda: nft.load(ps.render_all(ports))))
        for _ in range(WHOLE_RUNS)
    ]
    planned = [plan(n, None) for n in nics(N_NICS)]
    in_namespace(ns, lambda: sync.sync(planned, True))
    check = [in_namespace(ns, lambda: timed(lambda: sync.sync(planned, True))) for _ in range(3)]
    assert sync.drift_repairs == 0
    return {
        "whole_load_ours_s": statistics.median(ours),
        "whole_load_nft_f_s": statistics.median(baseline),
        "one_nic_change_s": statistics.median(one),
        "full_reload_s": statistics.median(full),
        "full_pass_check_s": statistics.median(check),
    }


def main() -> None:
    with throwaway_netns() as ns:
        figures = run(ns)
    ratio = figures["whole_load_ours_s"] / figures["whole_load_nft_f_s"]
    change = figures["full_reload_s"] / figures["one_nic_change_s"]
    print(f"anti-spoofing rules for {N_NICS} NICs (bridge table, one chain per NIC)")
    print(
        f"  whole load, ours (render + nft -j -f -, one transaction): "
        f"{figures['whole_load_ours_s'] * 1000:8.1f} ms (median of {WHOLE_RUNS})"
    )
    print(
        f"  whole load, nft -f of the same ruleset as text (baseline): "
        f"{figures['whole_load_nft_f_s'] * 1000:8.1f} ms (median of {WHOLE_RUNS})"
    )
    print(f"  ratio ours/baseline: {ratio:.2f}x (target <= 3x)")
    print(
        f"  one NIC changed with {N_NICS} loaded (its chain and map element): "
        f"{figures['one_nic_change_s'] * 1000:8.1f} ms (median of {CHANGE_RUNS})"
    )
    print(
        f"  full reload of all {N_NICS}: {figures['full_reload_s'] * 1000:8.1f} ms "
        f"({change:.0f}x the single change)"
    )
    print(
        f"  full pass read-back and drift check of {N_NICS} chains: "
        f"{figures['full_pass_check_s'] * 1000:8.1f} ms"
    )
    print(json.dumps({**figures, "ratio": ratio, "nics": N_NICS}))


if __name__ == "__main__":
    main()
