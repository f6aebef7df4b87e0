"""Boots the nested host once and runs one command in it (tests/kernel/README.md).

The host's root filesystem is shared read-only (9p tag "root"), the tier's unpacked modules on
/lib/modules ("modules") and a writable results directory at the same path as on the host
("results"). The command (argv, cwd, KVT_* environment) is written into the results directory;
nested-init.sh runs it and writes its output and exit status there. qemu is bounded by a
timeout, killed when it passes, and always reaped. Another thread can end a run at once through
its `Cancel` (the host's session ended early); qemu also gets SIGKILL when the thread that
started it dies (prctl(2) PR_SET_PDEATHSIG, set by setpriv(1)), so not even a SIGKILLed host
pytest leaves it running. `run_command` is the entry point for tools outside pytest (the
VLAN benchmark, bench/vlans.py): build or load the tier, run one command, return its output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.kernel.build import Tier, build_tier
from tests.kernel.outer_qemu import OuterQemu, outer_qemu

QEMU = "qemu-system-x86_64"
# util-linux's setpriv sets the parent-death signal, then execs qemu (prctl(2): it is kept
# across execve of a non-set-user-ID program and sent when the thread that forked dies)
SETPRIV = ("setpriv", "--pdeathsig", "KILL", "--")
HERE = Path(__file__).resolve().parent
NESTED_INIT = HERE / "nested-init.sh"
# where runs' results directories live (outside /tmp, which the nested host mounts afresh)
RUNS_DIR = Path(os.environ.get("KVT_RUNS_DIR") or HERE.parent / ".cache" / "kernel-runs")
MEMORY_MIB = 1024
P9_OPTIONS = "security_model=none,multidevs=remap"
# KVT_OUTER_QEMU=system boots the nested host on the system qemu (no igb) even where QEMU 10
# can be had; the SR-IOV tests then skip, saying so
OUTER_QEMU_ENV = "KVT_OUTER_QEMU"
# the reason the nested host has no SR-IOV NIC, passed into it (empty: it has one)
NO_SRIOV_ENV = "KVT_NO_SRIOV"


@dataclass
class NestedRun:
    """What one boot produced. `exit_code` is None when the command never finished (timeout,
    qemu failed, stage 1 failed): `reason` says why, `console` holds the serial console."""

    exit_code: int | None
    output: str  # the command's stdout and stderr
    console: str  # the serial console (kernel messages, stage 1 failures)
    qemu_errors: str
    seconds: float
    timed_out: bool
    reason: str

    def console_tail(self, chars: int = 4000) -> str:
        return self.console[-chars:]


def igb_argv(outer: OuterQemu) -> list[str]:
    """What QEMU 10 adds for SR-IOV: its ROMs (-L), a q35 machine (PCIe: SR-IOV needs
    extended config space), an emulated IOMMU (vfio-pci refuses a VF without one; Debian's
    kernel has no VFIO no-IOMMU mode) and an Intel igb (82576, igb driver; its VFs are igbvf)
    on a PCIe root port. The IOMMU comes after the 9p devices (given before these words), so
    they bypass it and it translates only the igb's and its VFs' DMA; the igb's netdev is a
    hub port with no other port: its frames go nowhere."""
    return [
        "-L",
        str(outer.datadir),
        "-machine",
        "q35",
        "-device",
        "intel-iommu,caching-mode=on",
        "-device",
        "pcie-root-port,id=kvt-rp1,chassis=1,slot=1",
        "-netdev",
        "hubport,id=kvt-igb,hubid=0",
        "-device",
        "igb,bus=kvt-rp1,netdev=kvt-igb",
    ]


def qemu_argv(
    tier: Tier, results: Path, console: Path, outer: OuterQemu | None = None
) -> list[str]:
    """QEMU under TCG, 1 vCPU (a second one gains nothing on TCG), no NIC, no display; with
    `outer` (QEMU 10) also an IOMMU and an SR-IOV capable igb (igb_argv)."""
    cmdline = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "mitigations=off",  # TCG emulates no side channels; spares the kernel's workarounds
        # under host load the emulated timer can look broken to the kernel's IO-APIC check
        # ("IO-APIC + timer doesn't work!": a panic at boot, seen at load 12); skip that check
        "no_timer_check",
        f"kvt.results={results}",
        f"kvt.init={NESTED_INIT}",
        f"kvt.modprobe={tier.modprobe}",
    ]
    if outer is not None:
        cmdline.append("intel_iommu=on")
    return [
        QEMU if outer is None else str(outer.binary),
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        str(MEMORY_MIB),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-nic",
        "none",
        "-serial",
        f"file:{console}",
        "-no-reboot",
        "-kernel",
        str(tier.kernel),
        "-initrd",
        str(tier.initrd),
        "-append",
        " ".join(cmdline),
        "-virtfs",
        f"local,path=/,mount_tag=root,readonly=on,{P9_OPTIONS}",
        "-virtfs",
        f"local,path={tier.modules},mount_tag=modules,readonly=on,{P9_OPTIONS}",
        "-virtfs",
        f"local,path={results},mount_tag=results,{P9_OPTIONS}",
        *(igb_argv(outer) if outer is not None else []),
    ]


def choose_outer_qemu() -> tuple[OuterQemu | None, str]:
    """QEMU 10 for the outer qemu unless KVT_OUTER_QEMU=system; else None and why."""
    if os.environ.get(OUTER_QEMU_ENV) == "system":
        return None, f"{OUTER_QEMU_ENV}=system: the nested host runs the system qemu, no igb"
    return outer_qemu()


def write_command(results: Path, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
    for word in argv:
        if "\n" in word:
            raise ValueError(f"an argument of the nested command holds a newline: {word!r}")
    (results / "argv").write_text("".join(f"{w}\n" for w in argv))
    (results / "cwd").write_text(f"{cwd}\n")
    lines = [f"{k}={v}\n" for k, v in env.items() if k.startswith("KVT_") and "\n" not in v]
    (results / "env").write_text("".join(lines))


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def qemus_under(directory: Path) -> list[int]:
    """Pids of the qemu processes whose command line names `directory` (a runs directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if QEMU.encode() in cmdline and f"{directory}/".encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End this qemu by its pid (SIGKILL: its guest is disposable) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class Cancel:
    """Ends one nested run from any thread: kills its qemu at once (and reaps it), or keeps it
    from starting. `reason` is why (None while not cancelled). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.reason: str | None = None

    def popen(self, argv: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes] | None:
        """Start qemu unless the run is already cancelled (then None)."""
        with self._lock:
            if self.reason is not None:
                return None
            self._proc = subprocess.Popen(
                [*SETPRIV, *argv] if shutil.which(SETPRIV[0]) else list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            return self._proc

    def __call__(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            proc = self._proc
        if proc is not None:
            stop(proc)


def run_nested(
    tier: Tier,
    argv: Sequence[str],
    *,
    results: Path,
    cwd: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cancel: Cancel | None = None,
) -> NestedRun:
    """Boot the nested host, run `argv` in `cwd` there, wait for its power-off (at most
    `timeout` seconds, then kill qemu; at once when `cancel` is called). `results` must be an
    empty directory outside /tmp (the nested host mounts a fresh tmpfs there), visible at the
    same path inside."""
    if shutil.which(QEMU) is None:
        raise FileNotFoundError(f"{QEMU} is not installed")
    outer, no_sriov = choose_outer_qemu()
    env = {**(os.environ if env is None else env), NO_SRIOV_ENV: no_sriov}
    write_command(results, argv, cwd, env)
    console, errors = results / "console.log", results / "qemu.err"
    started = time.monotonic()
    timed_out = False
    cancel = Cancel() if cancel is None else cancel
    with errors.open("wb") as err:
        proc = cancel.popen(qemu_argv(tier, results, console, outer), err)
        try:
            if proc is not None:
                proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc is not None:
                stop(proc)
    seconds = time.monotonic() - started
    status = read(results / "exit").strip()
    exit_code = int(status) if status.lstrip("-").isdigit() else None
    if cancel.reason is not None and exit_code is None:
        reason = f"the nested run was stopped after {seconds:.1f} s: {cancel.reason}"
    elif timed_out:
        reason = f"the nested host did not finish within {timeout:.0f} s: qemu was killed"
    elif exit_code is None:
        code = None if proc is None else proc.returncode
        reason = f"the nested host powered off without running the command (qemu exit {code})"
    else:
        reason = f"the command exited {exit_code}"
    return NestedRun(
        exit_code=None if timed_out else exit_code,
        output=read(results / "output"),
        console=read(console),
        qemu_errors=read(errors),
        seconds=seconds,
        timed_out=timed_out,
        reason=reason,
    )


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path = HERE.parents[1],
    env: Mapping[str, str] | None = None,
    cancel: Cancel | None = None,
    runs_dir: Path = RUNS_DIR,
) -> NestedRun:
    """Run one command in a nested host and return what it printed: the entry point for tools
    outside pytest (bench/vlans.py). Builds the tier's cache if needed (build_tier: no apt
    when the pinned kernel is cached), boots once, runs `argv` in `cwd` (default: this
    checkout) with KVT_NESTED=1 and the KVT_* variables of `env` (default: os.environ), waits
    at most `timeout` seconds (then qemu is killed) and removes the run's results directory.
    `NestedRun.output` holds the command's stdout and stderr, `exit_code` its status (None:
    it never finished, `reason` says why). Raises TierUnavailable when the kernel can be
    neither found in the cache nor fetched, FileNotFoundError without qemu."""
    tier = build_tier()
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="cmd-", dir=runs_dir))
    try:
        return run_nested(
            tier, argv, results=results, cwd=cwd, timeout=timeout, env=env, cancel=cancel
        )
    finally:
        shutil.rmtree(results, ignore_errors=True)
