"""Fixtures for the tests that run inside the nested host (tests/kernel/README.md).

There, tests run as root in the nested kernel's own root network namespace (free to change),
with the project's code and .venv at the same path (read-only), /tmp on a tmpfs, `modprobe`
(Debian's kmod, on PATH and as the kernel's module loader) and `busybox` (no `ping` binary: use
`busybox ping`). On the host this file is loaded too (pytest collects the proxies through this
directory): keep it importable there and without hooks that act on the host.

The host's tests/conftest.py is not loaded inside (the nested run uses --confcutdir): import
what you need from it here explicitly.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyroute2.config
import pytest

from app.host.netns import NETNS_CHILD_TIMEOUT
from tests.conftest import api as api
from tests.conftest import settings as settings
from tests.netns_tools import throwaway_netns

ModuleLoader = Callable[..., None]
TAP_WIRE = Path(__file__).with_name("tap_wire.py")

# pyroute2's wait for its forked children (netns.create, IPRoute(netns=...)) is the daemon's
# own bound, app.host.netns.NETNS_CHILD_TIMEOUT (set on import of app.host, above through
# tests.conftest): the nested host's slow Python is load the daemon must stand as well
assert pyroute2.config.default_communicate_timeout == NETNS_CHILD_TIMEOUT


def pytest_configure(config: pytest.Config) -> None:
    """Registers the canaries' marker (read by the host's proxies, tests/kernel/conftest.py)."""
    config.addinivalue_line(
        "markers",
        "kvt_expect(outcome, pattern): a kernel tier canary; its host proxy passes when the "
        "nested test's outcome is `outcome` and the proxy's report matches the regex `pattern`",
    )


@pytest.fixture(scope="session")
def modules() -> ModuleLoader:
    """`modules("8021q", "bridge")`: modprobe each module (once per session); raises with
    modprobe's message when one cannot be loaded."""
    loaded: set[str] = set()

    def load(*names: str) -> None:
        for name in names:
            if name in loaded:
                continue
            result = subprocess.run(
                ["modprobe", name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if result.returncode != 0:
                pytest.fail(f"modprobe {name} failed: {result.stderr.strip()}")
            loaded.add(name)

    return load


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh kvt-* namespace with lo up, removed afterwards (tests/netns_tools.py)."""
    with throwaway_netns() as name:
        yield name


@pytest.fixture(scope="session")
def busybox() -> str:
    """The path of busybox (busybox-static of the host's root filesystem)."""
    path = shutil.which("busybox")
    if path is None:
        pytest.fail("busybox is not installed: apt-get install busybox-static")
    return path


@contextlib.contextmanager
def wired_guest(tap_ns: str, tap: str, mac: str | None = None) -> Iterator[str]:
    """A throwaway guest namespace whose `eth0` (up, MAC `mac` if given) is wired to `tap` of
    namespace `tap_ns` by tap_wire.py, as a VM's NIC would be; yields the guest namespace.
    The wire process is killed (by pid) and the namespace removed afterwards."""
    with throwaway_netns() as guest:
        # -I -S: the standard library is all it needs; the venv's site (the project's
        # editable-install finder) costs ~20 ms of CPU on the host, ~12x that nested
        python = [sys.executable, "-I", "-S"]
        argv = ["ip", "netns", "exec", tap_ns, *python, str(TAP_WIRE), tap, guest]
        proc = subprocess.Popen(
            [*argv, *([mac] if mac else [])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline().strip()
            assert ready == "ready", f"tap_wire.py on {tap} did not start: {ready!r}"
            subprocess.run(
                ["ip", "-n", guest, "link", "set", "eth0", "up"],
                stdin=subprocess.DEVNULL,
                check=True,
                timeout=30,
            )
            yield guest
        finally:
            proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="session")
def sriov_pf(modules: ModuleLoader) -> Iterator[str]:
    """The nested host's emulated igb (tests/kernel/vm.py: QEMU 10 gives it one) as an SR-IOV
    physical function: igb and igbvf loaded, the PF's link up, no VFs; its interface name.
    Skips, printing why, when the nested host has no igb (no QEMU >= 8 on the host:
    KVT_NO_SRIOV holds the reason). Its VFs are removed afterwards."""
    import os

    from app.host import sriov

    reason = os.environ.get("KVT_NO_SRIOV")
    if reason:
        pytest.skip(f"no SR-IOV NIC in the nested host: {reason}")
    modules("igb", "igbvf")
    pfs = sriov.physical_functions()
    if not pfs:
        pytest.fail("the nested host was booted with an igb, but sysfs shows no SR-IOV PF")
    pf = pfs[0]
    subprocess.run(["ip", "link", "set", pf.name, "up"], check=True, timeout=30)
    sriov.set_num_vfs(pf, 0)
    try:
        yield pf.name
    finally:
        again = sriov.find_pf(pf.name)
        if again is not None:
            for vf in again.vfs:
                sriov.unbind_vfio(vf.pci_address)
            sriov.set_num_vfs(again, 0)
