"""app/host/sriov.py on Debian's kernel with QEMU 10's emulated igb (82576, SR-IOV): the pool
sysfs shows, sriov_numvfs changed (0 first between two non-zero counts), a VF's MAC, VLAN,
spoof check and trust set through netlink on the PF and read back by netlink and by
`ip link show`, the VF handed to vfio-pci (its /dev/vfio/<group> the qemu user's) and back to
igbvf, and restored as a free VF. Host layer only, no daemon: one test, one setup."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pyroute2 import IPRoute

from app.domain.sriov import FREE_CONFIG, VFIO_DRIVER, VfConfig
from app.host import sriov

NOBODY = (65534, 65534)


def driver_of(address: str) -> str:
    return os.readlink(f"/sys/bus/pci/devices/{address}/driver").rsplit("/", 1)[-1]


def ip_link_vf(pf: str, index: int) -> str:
    """The `vf N` line of `ip link show <pf>` (iproute2's own decoding of IFLA_VFINFO_LIST)."""
    out = subprocess.run(
        ["ip", "link", "show", pf], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return next(
        line.strip() for line in out.splitlines() if line.strip().startswith(f"vf {index} ")
    )


def test_pool_vf_settings_vfio_binding_and_restore(sriov_pf: str) -> None:
    (pf,) = [p for p in sriov.physical_functions() if p.name == sriov_pf]
    assert pf.driver == "igb" and pf.total_vfs >= 2 and pf.num_vfs == 0 and pf.vfs == ()

    sriov.set_num_vfs(pf, 2)
    sriov.set_num_vfs(pf, 3)  # non-zero to non-zero: through 0, as the kernel requires
    with IPRoute() as ipr:
        (pf,) = [p for p in sriov.physical_functions(ipr) if p.name == sriov_pf]
    assert pf.num_vfs == 3 and [vf.index for vf in pf.vfs] == [0, 1, 2]
    assert Path(f"/sys/bus/pci/devices/{pf.pci_address}/sriov_numvfs").read_text() == "3\n"
    vf = pf.vfs[1]
    assert vf.driver == "igbvf" and vf.iommu_group is not None
    assert vf.config is not None and vf.config.vlan == 0 and not vf.config.trust

    wanted = VfConfig(mac="52:54:00:5a:00:01", vlan=100, spoof_check=True, trust=True)
    with IPRoute() as ipr:
        sriov.configure_vf(ipr, sriov_pf, 1, wanted)
        assert sriov.vf_configs(ipr, sriov_pf)[1] == wanted
    line = ip_link_vf(sriov_pf, 1)
    assert "52:54:00:5a:00:01" in line and "vlan 100" in line, line
    assert "spoof checking on" in line and "trust on" in line, line

    node = sriov.bind_vfio(vf.pci_address, NOBODY)
    assert driver_of(vf.pci_address) == VFIO_DRIVER
    assert node == Path(f"/dev/vfio/{vf.iommu_group}")
    st = node.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*NOBODY, 0o600)
    sriov.bind_vfio(vf.pci_address, NOBODY)  # again: nothing to do
    assert driver_of(vf.pci_address) == VFIO_DRIVER

    sriov.unbind_vfio(vf.pci_address)
    assert driver_of(vf.pci_address) == "igbvf"
    assert Path(f"/sys/bus/pci/devices/{vf.pci_address}/driver_override").read_text() == "(null)\n"
    with IPRoute() as ipr:
        sriov.restore_vf(ipr, sriov_pf, 1)
        assert sriov.vf_configs(ipr, sriov_pf)[1] == FREE_CONFIG
    line = ip_link_vf(sriov_pf, 1)
    assert "00:00:00:00:00:00" in line and "vlan" not in line and "trust off" in line, line

    sriov.set_num_vfs(pf, 0)
    assert sriov.find_pf(sriov_pf) is not None and sriov.find_pf(sriov_pf).vfs == ()  # type: ignore[union-attr]
