"""Host diagnostics for NAT networks: what on this host would break forwarding guest traffic
or the networks' dnsmasq, each check with an exact reason.

Owns the checks behind GET /v1/host/diagnostics: net.ipv4.ip_forward, foreign nftables
forward chains with policy drop, the dnsmasq binary, and port 53 listeners that clash with
the DNS our dnsmasq serves on the networks' gateways.

Everything is read through the calling thread's network namespace (the daemon enters
namespaces per thread): /proc/sys/net and /proc/thread-self/net are opened from the calling
thread, and subprocesses (nft) are forked from it, so they inherit its namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.domain.nat_rules import FAMILY, TABLE
from app.domain.nft_suspects import suspects
from app.domain.path_probe import STEP_HOOKS, ProbeTarget, StepResult
from app.host.path_probe import probe_path
from app.host.procs import pids
from app.host.sysctl import IP_FORWARD

log = logging.getLogger(__name__)

Severity = Literal["error", "warning", "info"]

OUR_NFT_TABLE = (FAMILY, TABLE)
FORWARD_FAMILIES = ("ip", "ip6", "inet")
DNS_PORT = 53
SUBPROCESS_TIMEOUT = 10.0
DNSMASQ_PACKAGE = "dnsmasq-base"

PROC = Path("/proc")
# /proc/thread-self/net follows the calling thread's namespace; /proc/self/net would follow
# the main thread's.
PROC_NET = Path("/proc/thread-self/net")
TCP_LISTEN = 0x0A


@dataclass(frozen=True)
class Check:
    """One diagnostic: `ok` says whether it passed; `severity` weighs a failure ("info" when
    it passed or does not matter yet); `detail` is the exact reason; `data` the raw facts."""

    name: str
    ok: bool
    severity: Severity
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def diagnose(
    gateways: Sequence[str], own_dnsmasq: Callable[[int], bool] | None = None
) -> list[Check]:
    """Run every check in the calling thread's network namespace. `gateways` are the IPv4
    gateway addresses of the managed networks; `own_dnsmasq(pid)` says whether a process is
    one of our dnsmasq instances (none is, without it)."""
    return [
        check_ip_forwarding(gateways),
        check_forward_policy(),
        check_dnsmasq(),
        check_port53(gateways, own_dnsmasq),
    ]


# --- ip_forwarding ---------------------------------------------------------------------------


def check_ip_forwarding(gateways: Sequence[str] = ()) -> Check:
    name = "ip_forwarding"
    try:
        # opened from this thread: net sysctls follow the opening task's namespace
        with IP_FORWARD.open() as f:
            raw = f.read().strip()
    except OSError as exc:
        return Check(name, False, "warning", f"cannot read {IP_FORWARD}: {exc}", {"value": None})
    try:
        value: int | None = int(raw)
    except ValueError:
        value = None
    if value == 1:
        return Check(
            name,
            True,
            "info",
            "net.ipv4.ip_forward is 1: the host forwards IPv4 between interfaces",
            {"value": 1},
        )
    shown = raw if value is None else str(value)
    if gateways:
        return Check(
            name,
            False,
            "error",
            f"net.ipv4.ip_forward is {shown} although managed networks exist: guest traffic "
            "is not forwarded (the daemon turns it on when a network exists, so something "
            "turned it off since; the next reconcile turns it on again)",
            {"value": value},
        )
    return Check(
        name,
        False,
        "info",
        f"net.ipv4.ip_forward is {shown}: the host does not forward IPv4 yet; the daemon "
        "turns it on when a network exists",
        {"value": value},
    )


# --- forward_policy --------------------------------------------------------------------------


def check_forward_policy() -> Check:
    name = "forward_policy"
    objects, error = nft_ruleset()
    if objects is None:
        return Check(name, False, "warning", error or "nft failed", {"error": error})
    dropping = forward_drop_chains(objects)
    data: dict[str, Any] = {"chains": dropping}
    if not dropping:
        return Check(
            name,
            True,
            "info",
            "no foreign forward chain has policy drop",
            data,
        )
    where = "; ".join(
        f"{c['family']} table {c['table']} chain {c['chain']} (priority {c['priority']})"
        for c in dropping
    )
    return Check(
        name,
        False,
        "error",
        f"forward base chain(s) with policy drop outside our table: {where}. Forwarded guest "
        "traffic will be dropped there unless that table accepts it",
        data,
    )


def nft_ruleset() -> tuple[list[Any] | None, str | None]:
    """The objects of `nft -j list ruleset` in this namespace, or None and why not."""
    nft = shutil.which("nft")
    if nft is None:
        return None, "nft is not installed (package nftables): cannot inspect the ruleset"
    try:
        result = subprocess.run(
            [nft, "-j", "list", "ruleset"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nft -j list ruleset failed: {exc}"
    stderr = result.stderr.strip()
    try:
        objects = json.loads(result.stdout)["nftables"]
        if not isinstance(objects, list):
            raise TypeError("'nftables' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        error = stderr or f"unreadable output ({exc})"
        return None, f"nft -j list ruleset failed (exit {result.returncode}): {error}"
    if result.returncode != 0:
        log.warning("nft -j list ruleset exited %s: %s", result.returncode, stderr)
    return objects, None


def forward_drop_chains(objects: Sequence[Any]) -> list[dict[str, Any]]:
    """The base chains of `nft -j list ruleset` hooked at forward (families ip, ip6, inet)
    with policy drop, in tables that are not ours."""
    found = []
    for obj in objects:
        chain = obj.get("chain") if isinstance(obj, dict) else None
        if not isinstance(chain, dict):
            continue
        family, table = chain.get("family"), chain.get("table")
        if (
            family in FORWARD_FAMILIES
            and chain.get("hook") == "forward"
            and chain.get("policy") == "drop"
            and (family, table) != OUR_NFT_TABLE
        ):
            found.append(
                {
                    "family": family,
                    "table": table,
                    "chain": chain.get("name"),
                    "priority": chain.get("prio"),
                    "policy": "drop",
                }
            )
    return found


# --- dnsmasq ---------------------------------------------------------------------------------


def check_dnsmasq() -> Check:
    name = "dnsmasq"
    path = shutil.which("dnsmasq")
    if path is None:
        return Check(
            name,
            False,
            "error",
            f"dnsmasq is not installed: NAT networks need it for DHCP and DNS "
            f"(install the {DNSMASQ_PACKAGE} package, e.g. apt-get install {DNSMASQ_PACKAGE})",
            {"path": None, "version": None, "package": DNSMASQ_PACKAGE},
        )
    try:
        result = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Check(
            name,
            False,
            "error",
            f"{path} --version failed: {exc}",
            {"path": path, "version": None, "error": str(exc)},
        )
    lines = result.stdout.splitlines()
    first = lines[0].strip() if lines else ""
    if result.returncode != 0 or not first:
        error = result.stderr.strip() or f"exit {result.returncode}"
        return Check(
            name,
            False,
            "error",
            f"{path} --version failed: {error}",
            {"path": path, "version": None, "error": error},
        )
    words = first.split()
    version = words[2] if len(words) > 2 and words[1].lower() == "version" else first
    return Check(
        name,
        True,
        "info",
        f"{path}: {first}",
        {"path": path, "version": version, "version_line": first},
    )


# --- port53 ----------------------------------------------------------------------------------


def conf_file_under(directory: Path) -> Callable[[int], bool]:
    """An own-dnsmasq predicate: the process has an argument --conf-file=PATH with an
    absolute PATH under `directory` (for the daemon, <run_dir>/networks)."""
    root = Path(os.path.normpath(directory.absolute()))

    def predicate(pid: int) -> bool:
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        for arg in argv:
            if arg.startswith(b"--conf-file="):
                conf = os.fsdecode(arg[len(b"--conf-file=") :])
                if os.path.isabs(conf) and Path(os.path.normpath(conf)).is_relative_to(root):
                    return True
        return False

    return predicate


# port53: this namespace's sockets and their owners


@dataclass(frozen=True)
class _Socket:
    protocol: str  # tcp | udp
    address: str
    port: int
    inode: int


def _decode_address(hex_addr: str) -> str:
    """An address as /proc/net/{tcp,udp}{,6} print it: 32-bit words in host byte order."""
    words = [int(hex_addr[i : i + 8], 16) for i in range(0, len(hex_addr), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    return socket.inet_ntop(socket.AF_INET6, raw)


def port_sockets(port: int = DNS_PORT) -> list[_Socket]:
    """TCP sockets listening on `port` and UDP sockets bound to it, in this thread's
    network namespace."""
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        protocol = table.rstrip("6")
        try:
            lines = (PROC_NET / table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            hex_addr, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            if protocol == "tcp" and int(fields[3], 16) != TCP_LISTEN:
                continue
            found.append(_Socket(protocol, _decode_address(hex_addr), port, int(fields[9])))
    return found


def socket_owners(inodes: set[int]) -> dict[int, list[int]]:
    """The pids holding each socket inode, by scanning /proc/*/fd (best effort: processes
    that vanish or hide their fds are skipped)."""
    owners: dict[int, list[int]] = {}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    if not wanted:
        return owners
    for pid in pids():
        with contextlib.suppress(OSError), os.scandir(PROC / str(pid) / "fd") as fds:
            for fd in fds:
                with contextlib.suppress(OSError):
                    inode = wanted.get(os.readlink(fd.path))
                    if inode is not None and pid not in owners.setdefault(inode, []):
                        owners[inode].append(pid)
    return owners


def _comm(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def _normalize(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_port53(
    gateways: Sequence[str], own_dnsmasq: Callable[[int], bool] | None = None
) -> Check:
    name = "port53"
    gateway_set = set()
    for gw in gateways:
        try:
            gateway_set.add(_normalize(gw))
        except ValueError:
            log.warning("ignoring gateway %r: not an IP address", gw)
    try:
        sockets = port_sockets(DNS_PORT)
    except OSError as exc:
        return Check(
            name,
            False,
            "warning",
            f"cannot read the sockets of this namespace from {PROC_NET}: {exc}",
            {"error": str(exc), "listeners": [], "clashes": []},
        )
    owners = socket_owners({s.inode for s in sockets})

    def is_ours(pid: int) -> bool:
        if own_dnsmasq is None:
            return False
        try:
            return own_dnsmasq(pid)
        except Exception:
            log.exception("own-dnsmasq predicate failed for pid %s", pid)
            return False

    listeners: list[dict[str, Any]] = []
    reasons: list[str] = []
    for s in sockets:
        pids = owners.get(s.inode, [])
        # a socket held by one of our dnsmasq processes is ours (its forks share it)
        ours_pids = [p for p in pids if is_ours(p)]
        pid = ours_pids[0] if ours_pids else (pids[0] if pids else None)
        comm = _comm(pid) if pid is not None else None
        address = _normalize(s.address)
        wildcard = ipaddress.ip_address(address).is_unspecified
        clash = not ours_pids and (wildcard or address in gateway_set)
        listeners.append(
            {
                "protocol": s.protocol,
                "address": address,
                "port": s.port,
                "inode": s.inode,
                "pid": pid,
                "pids": pids,
                "comm": comm,
                "ours": bool(ours_pids),
                "clash": clash,
            }
        )
        if clash:
            owner = (
                f"pid {pid} ({comm or 'unknown'})"
                if pid is not None
                else "an unknown process (its socket was not found under /proc/*/fd)"
            )
            where = (
                "the wildcard address, which takes port 53 on every gateway"
                if wildcard
                else "a managed network's gateway"
            )
            shown = f"[{address}]" if ":" in address else address
            reasons.append(f"{shown}:53/{s.protocol} is held by {owner} on {where}")
    data: dict[str, Any] = {
        "listeners": listeners,
        "clashes": [entry for entry in listeners if entry["clash"]],
    }
    if not reasons:
        return Check(
            name,
            True,
            "info",
            f"no foreign listener on port 53 on a wildcard address or a gateway "
            f"({len(listeners)} socket(s) on port 53 in this namespace)",
            data,
        )
    return Check(
        name,
        False,
        "error",
        "port 53 is taken by a process that is not our dnsmasq, so dnsmasq cannot serve DNS "
        "on the gateways: " + "; ".join(reasons),
        data,
    )


# --- path:<network> (active probe) -----------------------------------------------------------


def check_paths(targets: Sequence[ProbeTarget]) -> list[Check]:
    """Probe every network's path at once (app.host.path_probe: DHCP offer, DNS answer,
    forwarding), each on a thread of its own in this thread's namespace; a failed step names
    the foreign nftables chains most likely responsible."""
    results: dict[str, list[StepResult]] = {}

    def probe(target: ProbeTarget) -> None:  # a new thread starts in its creator's namespace
        results[target.network_id] = probe_path(target)

    threads = [threading.Thread(target=probe, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = any(step.ok is False for steps in results.values() for step in steps)
    objects = nft_ruleset()[0] if failed else None
    return [path_check(t, results.get(t.network_id, []), objects) for t in targets]


def path_check(
    target: ProbeTarget, steps: Sequence[StepResult], ruleset: Sequence[Any] | None
) -> Check:
    """One network's probe as a check; `ruleset` (nft -j objects) explains failed steps."""
    name = f"path:{target.network}"
    lines, data_steps = [], []
    for step in steps:
        found = suspects(ruleset or (), STEP_HOOKS[step.step], OUR_NFT_TABLE)
        blamed = step.ok is False and bool(found)
        line = f"{step.step}: {step.detail}"
        if blamed:
            line += f"; most likely dropped by {found[0].where()}: {found[0].why}"
        lines.append(line)
        data_steps.append(
            {
                "step": step.step,
                "ok": step.ok,
                "detail": step.detail,
                **step.data,
                "suspects": [dataclasses.asdict(s) for s in found] if step.ok is False else [],
            }
        )
    data = {"network": target.network, "network_id": target.network_id, "steps": data_steps}
    if not any(step.ok is not None for step in steps):  # nothing was tested: no pass either
        return Check(name, False, "warning", "nothing could be probed: " + "; ".join(lines), data)
    ok = all(step.ok is not False for step in steps)
    severity: Severity = "info" if ok else "error"
    return Check(name, ok, severity, "; ".join(lines), data)
