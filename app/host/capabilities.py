"""Probes what this host can really do, by trying it, never by assuming.

Link features are tried in a throwaway network namespace (removed afterwards), so probing
never touches the daemon's own namespace. Accelerators are tried by running qemu: a tiny
firmware that programs the timer, waits for its interrupt and exits through isa-debug-exit;
and, when a guest kernel is available, a real kernel boot under each accelerator.

Every helper process the probe starts goes through one `ProbeRunner`, which ends the running
one by pid when the daemon stops (`cancel()`), so no probe qemu outlives the daemon; its
scratch files live in a directory of the daemon's run dir that is removed with it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.rate_limits import EgressMethod, RateLimit
from app.domain.vlans import FEATURE_SOURCES, KernelFeature
from app.host.macvtap import macvtap_device
from app.host.netlink import LinkError
from app.host.procs import pid_exists
from app.host.sriov import physical_functions
from app.host.tc import ensure_limits, police_available

log = logging.getLogger(__name__)

# Real-mode firmware (assembled from a 16-bit listing): set up the IVT entry for IRQ0,
# initialize the PIC and PIT, sti; hlt; on the timer interrupt write 0x31 to port 0xf4.
# With -device isa-debug-exit,iobase=0xf4 qemu then exits with status (0x31 << 1) | 1.
_FIRMWARE_CODE = bytes.fromhex(
    "fa31c08ed88ed0bc0070c70620003a00c706220000f0b011e620b008e621b004e621b001e621"
    "b0fee621b034e643b000e640b010e640fbf4ebfdb031e6f4f4ebfd"
)
_FIRMWARE_EXIT_STATUS = 99
_RESET_VECTOR_JUMP = bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])  # jmp far F000:0000


def _firmware_image() -> bytes:
    image = bytearray(b"\xf4" * 65536)
    image[: len(_FIRMWARE_CODE)] = _FIRMWARE_CODE
    image[0xFFF0 : 0xFFF0 + len(_RESET_VECTOR_JUMP)] = _RESET_VECTOR_JUMP
    return bytes(image)


def _try_link(ipr: IPRoute, **kwargs: Any) -> tuple[bool, str | None]:
    try:
        ipr.link("add", **kwargs)
        return True, None
    except NetlinkError as exc:
        return False, f"{os.strerror(exc.code)} (errno {exc.code})"
    except OSError as exc:
        return False, str(exc)


class ProbeCancelled(Exception):
    """The daemon is stopping: the probe was cancelled (its helper process ended)."""


class ProbeRunner:
    """Runs the probe's helper processes one at a time (argv lists, stdin closed) and knows
    the one running now, so that `cancel()` can end it by pid from any thread (a signal
    handler included) and refuse to start another. `work_dir` holds the probe's scratch
    directories (default: the system temp dir); `remove_work()` deletes what is left."""

    def __init__(self, work_dir: Path | None = None) -> None:
        self.work_dir = work_dir
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[str] | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def run(
        self, argv: list[str], timeout: float, capture: bool = False
    ) -> tuple[int | None, str, str]:
        """Run argv to its end or for at most `timeout` seconds (then it is killed); return
        (exit status or None on timeout, stdout, stderr; both empty unless `capture`).
        Raises ProbeCancelled once cancel() was called."""
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        with self._lock:
            if self.cancelled:
                raise ProbeCancelled
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True
            )
            self._child = child
        if self.cancelled:  # cancel() ran between the check and the spawn: it saw no child
            child.kill()
        status: int | None
        try:
            stdout, stderr = child.communicate(timeout=timeout)
            status = child.returncode
        except subprocess.TimeoutExpired:
            child.kill()
            stdout, stderr = child.communicate()
            status = None
        finally:
            self._child = None
        if self.cancelled:
            raise ProbeCancelled
        return status, stdout or "", stderr or ""

    def cancel(self) -> None:
        """End the running helper (SIGKILL by pid; Popen checks it is not reaped yet) and
        refuse further ones. Takes no lock: safe from a signal handler."""
        self._cancelled.set()
        child = self._child
        if child is not None:
            with contextlib.suppress(OSError):
                child.kill()

    def scratch_dir(self) -> tempfile.TemporaryDirectory[str]:
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # a cancelled probe's directory may be gone already (remove_work)
        return tempfile.TemporaryDirectory(
            prefix="kvmnetd-probe-", dir=self.work_dir, ignore_cleanup_errors=True
        )

    def remove_work(self) -> None:
        """Remove the work dir (scratch left by a cancelled probe, or a killed daemon's)."""
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)


PROBE_NETNS_PREFIX = "kvmnetd-probe-"
NETNS_DIR = Path("/run/netns")
IOMMU_GROUPS = Path("/sys/kernel/iommu_groups")


def _sweep_stale_probe_namespaces() -> None:
    """Remove probe namespaces left by a daemon killed mid-probe (their pid is gone)."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        pid_text = entry.name.removeprefix(PROBE_NETNS_PREFIX).split("-", 1)[0]
        if not entry.name.startswith(PROBE_NETNS_PREFIX) or not (
            pid_text.isascii() and pid_text.isdigit()
        ):
            continue
        # never kill(pid, 0): pid 0 or -1 would ask about a process group or everything
        if not pid_exists(int(pid_text)):
            log.info("removing stale probe namespace %s", entry.name)
            netns.remove(entry.name)


def probe_link_features() -> dict[str, dict[str, Any]]:
    """Create each link kind in a private namespace; report what the kernel accepted."""
    return probe_kernel_features()[0]


def probe_kernel_features() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(link features, rate limits): each link kind created, and tc tried on a tap, in a
    private namespace; what the kernel accepted."""
    _sweep_stale_probe_namespaces()
    name = f"{PROBE_NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, Any]] = {}
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ok, why = _try_link(ipr, ifname="p0", kind="veth", peer="p1")
            results["veth"] = {"available": ok, "reason": why}
            parent = ipr.link_lookup(ifname="p0")[0] if ok else None
            ok, why = _try_link(ipr, ifname="br0", kind="bridge")
            results["bridge"] = {"available": ok, "reason": why}
            ok, why = _try_link(ipr, ifname="tap0", kind="tuntap", mode="tap")
            results["tuntap"] = {"available": ok, "reason": why}
            results["port_isolation"] = _probe_port_isolation(ipr, results)
            results["vlan_filtering"] = _probe_vlan_filtering(ipr)
            rate_limit = _probe_rate_limit(ipr, results)
            for kind, extra in (
                ("vlan_8021q", {"kind": "vlan", "vlan_id": 10}),
                ("macvtap", {"kind": "macvtap", "macvtap_mode": "bridge"}),
                ("vxlan", {"kind": "vxlan", "vxlan_id": 42, "vxlan_port": 4789}),
            ):
                if parent is None:
                    results[kind] = {"available": False, "reason": "no veth to stack on"}
                    continue
                link_key = "vxlan_link" if kind == "vxlan" else "link"
                ok, why = _try_link(ipr, ifname=kind[:15], **{link_key: parent}, **extra)
                results[kind] = {"available": ok, "reason": why}
            if results["macvtap"]["available"]:
                results["macvtap"] = _probe_macvtap_device(ipr)
    finally:
        netns.remove(name)
    for feature in KernelFeature:
        results[feature.value] = _with_source(results[feature.value], feature)
    return results, rate_limit


def _probe_rate_limit(ipr: IPRoute, links: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How this kernel limits a NIC's traffic (app.host.tc), tried on probe tap0: a tbf root
    and a police action on its ingress (act_police); else a redirect (act_mirred) to an ifb
    device shaped by a tbf. `method`: police, ifb, or None when neither works."""
    if not links["tuntap"]["available"]:
        return {"available": False, "method": None, "reason": "no tap to try it on"}
    try:
        (tap,) = ipr.link_lookup(ifname="tap0")
        police, why = police_available(ipr, tap)
        method = EgressMethod.POLICE if police else EgressMethod.IFB
        ensure_limits(ipr, tap, "tap0", RateLimit(ingress_kbps=1000, egress_kbps=1000), method)
    except (LinkError, NetlinkError, ValueError) as exc:
        return {"available": False, "method": None, "reason": str(exc)}
    return {"available": True, "method": method.value, "reason": why}


def _with_source(result: dict[str, Any], feature: KernelFeature) -> dict[str, Any]:
    """A VLAN feature's probe result with where the feature comes from in the kernel (its
    Kconfig option and module, as the 409 `host-lacks-feature` names them); a missing
    one's reason says it too, after the kernel's own answer (e.g. EOPNOTSUPP)."""
    source = FEATURE_SOURCES[feature]
    out = {**result, "kernel_config": source.kernel_config, "module": source.module}
    if not result["available"]:
        module = f", module {source.module}" if source.module else ""
        out["reason"] = (
            f"{result['reason']}: this kernel lacks {source.what} ({source.kernel_config}{module})"
        )
    return out


def _probe_port_isolation(ipr: IPRoute, links: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether the kernel honours the bridge port flag IFLA_BRPORT_ISOLATED (Linux 4.18+,
    app.domain.isolation): probe tap0 is put on probe bridge br0, the flag set and read
    back (an older kernel ignores the attribute it does not know)."""
    if not (links["bridge"]["available"] and links["tuntap"]["available"]):
        return {"available": False, "reason": "no bridge and tap to try it on"}
    try:
        (bridge,) = ipr.link_lookup(ifname="br0")
        (port,) = ipr.link_lookup(ifname="tap0")
        ipr.link("set", index=port, master=bridge)
        ipr.brport("set", index=port, isolated=1)
        msg = ipr.link("get", index=port)[0]
    except (NetlinkError, ValueError) as exc:
        return {"available": False, "reason": str(exc)}
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_SLAVE_DATA")
    if data is None or not data.get_attr("IFLA_BRPORT_ISOLATED"):
        return {"available": False, "reason": "the kernel ignored isolated=1 on a bridge port"}
    return {"available": True, "reason": None}


def _probe_macvtap_device(ipr: IPRoute) -> dict[str, Any]:
    """A macvtap NIC needs its link and its character device (the daemon opens /dev/tapN
    and hands qemu the descriptor): the probe macvtap's device must show in sysfs."""
    (index,) = ipr.link_lookup(ifname="macvtap")
    try:
        macvtap_device("macvtap", index)
    except LinkError as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, "reason": None}


def _probe_vlan_filtering(ipr: IPRoute) -> dict[str, Any]:
    ok, why = _try_link(ipr, ifname="brvf", kind="bridge", br_vlan_filtering=1)
    if not ok:
        return {"available": False, "reason": why}
    msg = ipr.link("get", ifname="brvf")[0]
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    if data is None or not data.get_attr("IFLA_BR_VLAN_FILTERING"):
        return {"available": False, "reason": "the kernel ignored vlan_filtering=1"}
    return {"available": True, "reason": None}


VHOST_NET_DEVICE = Path("/dev/vhost-net")
VHOST_NET_MODULE = "vhost_net"
# the kernel's own module loader: what it runs itself to autoload 8021q on `ip link add ...
# type vlan` (kernel/module/kmod.c); absent when the kernel cannot load modules at all
KERNEL_MODPROBE = Path("/proc/sys/kernel/modprobe")
MODPROBE_TIMEOUT = 30.0  # s; a module load is quick, even on the kernel tier's TCG host


def probe_vhost_net(runner: ProbeRunner, device: Path = VHOST_NET_DEVICE) -> dict[str, Any]:
    """Whether /dev/vhost-net opens (the daemon opens it for qemu: vhostfd=). Where the node
    is missing the module may only be unloaded (with udev the kernel's static node would
    autoload it on open; without udev the node appears only once the module is in): the
    probe loads it with the kernel's own modprobe, as the kernel itself does for 8021q, and
    tries again. The result names the kernel option and module, as a VLAN feature's does."""
    why = _open_vhost_net(device)
    if why is not None and not device.exists():
        loaded = load_module(runner, VHOST_NET_MODULE)
        why = f"no {device}; {loaded}" if loaded is not None else _open_vhost_net(device)
    result: dict[str, Any] = {
        "available": why is None,
        "reason": None,
        "kernel_config": "CONFIG_VHOST_NET",
        "module": VHOST_NET_MODULE,
    }
    if why is not None:
        result["reason"] = (
            f"{why}: vhost-net needs the kernel's CONFIG_VHOST_NET (module vhost_net)"
        )
    return result


def _open_vhost_net(device: Path) -> str | None:
    """Why `device` does not open read-write (None: it does)."""
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"no {device}" if exc.errno == errno.ENOENT else f"{device}: {exc.strerror}"
    return None


def modprobe_binary() -> str | None:
    """The modprobe the kernel runs to load modules itself (/proc/sys/kernel/modprobe), else
    the one on PATH; None when there is none."""
    with contextlib.suppress(OSError):
        path = KERNEL_MODPROBE.read_text().strip()
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("modprobe")


def load_module(runner: ProbeRunner, module: str) -> str | None:
    """`modprobe <module>` (argv, no shell); None when it loaded (or was loaded), else why not."""
    if not KERNEL_MODPROBE.exists():
        return f"this kernel loads no modules (no {KERNEL_MODPROBE})"
    modprobe = modprobe_binary()
    if modprobe is None:
        return f"no modprobe to load {module} with (neither {KERNEL_MODPROBE} nor PATH has one)"
    status, _, err = runner.run([modprobe, module], timeout=MODPROBE_TIMEOUT, capture=True)
    if status == 0:
        log.info("loaded module %s (%s)", module, modprobe)
        return None
    outcome = "timed out" if status is None else f"exit status {status}"
    detail = f": {err.strip()}" if err.strip() else ""
    return f"{modprobe} {module} failed ({outcome}){detail}"


def probe_sriov() -> dict[str, Any]:
    """SR-IOV NICs for the sriov backend: a physical function in sysfs, and an IOMMU
    (vfio-pci takes a VF only in an IOMMU group; Debian's kernel has no no-IOMMU mode)."""
    pfs = physical_functions()
    if not pfs:
        return {"available": False, "reason": "no SR-IOV physical function"}
    names = ", ".join(pf.name for pf in pfs)
    if not any(IOMMU_GROUPS.glob("*")):
        return {
            "available": False,
            "reason": f"no IOMMU (vfio-pci needs one: intel_iommu=on or amd_iommu=on); "
            f"physical functions: {names}",
        }
    return {"available": True, "reason": None}


def probe_tun_device() -> dict[str, Any]:
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, "reason": None}


def probe_nftables(runner: ProbeRunner) -> dict[str, Any]:
    nft = shutil.which("nft")
    if nft is None:
        return {"available": False, "version": None, "reason": "nft is not installed"}
    _, out, _ = runner.run([nft, "--version"], timeout=10, capture=True)
    version = out.strip() or None
    # list (read-only) to prove the kernel side answers
    status, _, err = runner.run([nft, "-j", "list", "tables"], timeout=10, capture=True)
    if status != 0:
        return {"available": False, "version": version, "reason": err.strip()}
    return {"available": True, "version": version, "reason": None}


_DEVICE_RE = re.compile(
    r'^name "([^"]+)", bus ([^,\s]+)(?:, alias "([^"]+)")?(?:, desc "([^"]*)")?'
)


def probe_qemu(binary: str, runner: ProbeRunner) -> dict[str, Any]:
    path = shutil.which(binary)
    if path is None:
        return {
            "available": False,
            "binary": binary,
            "version": None,
            "nic_models": [],
            "reason": f"{binary} is not installed",
        }
    _, version_out, _ = runner.run([path, "--version"], timeout=10, capture=True)
    version = (version_out.splitlines() or [""])[0]
    _, help_out, _ = runner.run(
        [path, "-machine", "none", "-nodefaults", "-device", "help"], timeout=20, capture=True
    )
    models = []
    in_network = False
    for line in help_out.splitlines():
        if line.endswith(":"):
            in_network = line.startswith("Network devices")
            continue
        match = _DEVICE_RE.match(line) if in_network else None
        if match:
            models.append(
                {"model": match[1], "bus": match[2], "alias": match[3], "description": match[4]}
            )
    return {
        "available": True,
        "binary": path,
        "version": version,
        "nic_models": models,
        "reason": None,
    }


def _run_qemu(runner: ProbeRunner, argv: list[str], timeout: float) -> tuple[int | None, float]:
    """Run qemu; return (exit status or None on timeout, seconds)."""
    started = time.monotonic()
    status, _, _ = runner.run(argv, timeout)
    return status, time.monotonic() - started


def probe_accelerator(
    qemu: str, accel: str, guest_kernel: Path | None, runner: ProbeRunner
) -> dict[str, Any]:
    """Whether `accel` runs code: the timer firmware always, a real kernel when we have one."""
    result: dict[str, Any] = {"accelerator": accel}
    if accel == "kvm":
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
        except OSError as exc:
            return {
                **result,
                "available": False,
                "runs_guests": False,
                "reason": f"/dev/kvm: {exc.strerror}",
            }
    with runner.scratch_dir() as tmp:
        firmware = Path(tmp) / "timer.bin"
        firmware.write_bytes(_firmware_image())
        status, seconds = _run_qemu(
            runner,
            [
                qemu,
                "-machine",
                "isapc",
                "-accel",
                accel,
                "-m",
                "16",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-bios",
                str(firmware),
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x01",
            ],
            timeout=10,
        )
        result["firmware_probe"] = {
            "passed": status == _FIRMWARE_EXIT_STATUS,
            "exit_status": status,
            "seconds": round(seconds, 3),
        }
        if status != _FIRMWARE_EXIT_STATUS:
            return {
                **result,
                "available": False,
                "runs_guests": False,
                "reason": "qemu did not run the timer firmware "
                f"(exit status {status}, None means it hung)",
            }
        if guest_kernel is None or not guest_kernel.is_file():
            return {
                **result,
                "available": True,
                "runs_guests": None,
                "reason": "no guest kernel to verify a real boot with; the timer firmware ran",
            }
        serial = Path(tmp) / "serial.log"
        status, seconds = _run_qemu(
            runner,
            [
                qemu,
                "-machine",
                "pc",
                "-accel",
                accel,
                "-m",
                "128",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                f"file:{serial}",
                "-kernel",
                str(guest_kernel),
                "-append",
                "console=ttyS0 panic=-1 root=/dev/nonexistent",
            ],
            timeout=60 if accel == "tcg" else 8,  # a working KVM boots this in < 1 s
        )
        console = serial.read_text(errors="replace") if serial.exists() else ""
        booted = "Kernel panic" in console or "VFS:" in console
        result["guest_probe"] = {
            "booted": booted,
            "exit_status": status,
            "seconds": round(seconds, 3),
        }
        reason = (
            None
            if booted
            else (f"a guest kernel did not boot under {accel} (hung or died; exit status {status})")
        )
        return {**result, "available": True, "runs_guests": booted, "reason": reason}


def probe_capabilities(
    qemu_binary: str, guest_kernel: Path | None = None, runner: ProbeRunner | None = None
) -> dict[str, Any]:
    """Every probe in turn; raises ProbeCancelled when `runner` is cancelled meanwhile."""
    runner = runner or ProbeRunner()
    started = time.monotonic()
    links, rate_limit = probe_kernel_features()
    qemu = probe_qemu(qemu_binary, runner)
    accelerators = {}
    if qemu["available"]:
        for accel in ("tcg", "kvm"):
            accelerators[accel] = probe_accelerator(qemu["binary"], accel, guest_kernel, runner)
    caps = {
        "links": links,
        "rate_limit": rate_limit,
        "tun_device": probe_tun_device(),
        "vhost_net": probe_vhost_net(runner),
        "sriov": probe_sriov(),
        "nftables": probe_nftables(runner),
        "qemu": qemu,
        "accelerators": accelerators,
        "probe_seconds": 0.0,
    }
    caps["probe_seconds"] = round(time.monotonic() - started, 3)
    return caps
