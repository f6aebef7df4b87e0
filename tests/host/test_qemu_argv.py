"""The argv the domain builds, run through the real qemu: every backend and NIC model must be
accepted by qemu 7.2 itself (started paused with -S; a bad option makes it exit at once)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from app.domain.nics.offloads import Offloads
from app.domain.qemu_argv import qemu_argv
from app.domain.vms import (
    Accelerator,
    Backend,
    BootSpec,
    Machine,
    NicSpec,
    PortForward,
    SocketNet,
    UserNet,
    VmSpec,
)
from tests.netns_tools import ip

QEMU = "qemu-system-x86_64"


def accepted_by_qemu(argv: list[str], netns: str, tmp_path: Path) -> None:
    """Start qemu paused in `netns`; it must still be running a moment later."""
    log = tmp_path / "qemu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv, "-S", "-display", "none", "-nodefaults"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(1.0)
        assert proc.poll() is None, f"qemu refused {argv}: {log.read_text()}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def nic(i: int, model: str, backend: Backend, **kw: object) -> NicSpec:
    return NicSpec(  # type: ignore[arg-type]
        id=f"n{i}", model=model, mac=f"52:54:00:00:00:{i:02x}", backend=backend, **kw
    )


@pytest.fixture
def disk(tmp_path: Path) -> BootSpec:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (1 << 20))
    return BootSpec(disk=str(image), snapshot=True)


def test_every_backend_and_pci_model(netns: str, tmp_path: Path, disk: BootSpec) -> None:
    ip(netns, "tuntap", "add", "dev", "vm1-0", "mode", "tap", "multi_queue")
    ip(netns, "tuntap", "add", "dev", "vm1-6", "mode", "tap")
    ip(netns, "tuntap", "add", "dev", "vm1-7", "mode", "tap")
    spec = VmSpec(
        id="v1",
        name="vm1",
        boot=disk,
        nics=(
            nic(1, "virtio-net-pci", Backend.BRIDGE, tap="vm1-0", queues=2),
            nic(6, "virtio-net-pci", Backend.TAP, tap="vm1-6", offloads=Offloads(checksum=False)),
            nic(7, "virtio-net-pci", Backend.TAP, tap="vm1-7", offloads=Offloads(tso=False)),
            nic(
                2,
                "e1000",
                Backend.USER,
                user=UserNet(forwards=(PortForward("tcp", 45555, 22),), restrict=True),
            ),
            nic(3, "rtl8139", Backend.SOCKET, socket=SocketNet("listen", 45556)),
            nic(4, "ne2k_pci", Backend.SOCKET, socket=SocketNet("mcast", 45557, "230.0.0.1")),
            nic(5, "pcnet", Backend.HUB, hub=1),
        ),
    )
    accepted_by_qemu(qemu_argv(spec, QEMU, Accelerator.TCG), netns, tmp_path)


def test_isa_ne2000_on_isapc(netns: str, tmp_path: Path, disk: BootSpec) -> None:
    spec = VmSpec(
        id="v2",
        name="vm2",
        machine=Machine.ISAPC,
        boot=disk,
        nics=(nic(1, "ne2k_isa", Backend.USER),),
    )
    accepted_by_qemu(qemu_argv(spec, QEMU, Accelerator.TCG), netns, tmp_path)


def test_a_bad_argv_is_seen_as_refused(netns: str, tmp_path: Path, disk: BootSpec) -> None:
    """The check above can fail: a PCI card on isapc is refused by qemu itself."""
    spec = VmSpec(
        id="v3",
        name="vm3",
        machine=Machine.ISAPC,
        boot=disk,
        nics=(nic(1, "e1000", Backend.USER),),
    )
    with pytest.raises(AssertionError, match="qemu refused"):
        accepted_by_qemu(qemu_argv(spec, QEMU, Accelerator.TCG), netns, tmp_path)
