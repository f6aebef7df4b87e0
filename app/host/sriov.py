"""SR-IOV on the host: the physical functions (PFs) sysfs shows, how many virtual functions
(VFs) each has, each VF's settings through netlink on its PF, and handing a VF to vfio-pci
for qemu (`-device vfio-pci,host=<address>`) and back.

Sources (kernel documentation): Documentation/PCI/pci-iov-howto.rst (`sriov_totalvfs`,
`sriov_numvfs`: "to change the number of VFs, first write 0"; `virtfnN` links to the VFs),
Documentation/ABI/testing/sysfs-bus-pci (`driver_override`, `drivers_probe`, `unbind`),
Documentation/driver-api/vfio.rst (a device is usable through /dev/vfio/<its IOMMU group>);
rtnetlink's IFLA_VFINFO_LIST (include/uapi/linux/if_link.h: IFLA_VF_MAC, IFLA_VF_VLAN,
IFLA_VF_SPOOFCHK, IFLA_VF_TRUST), read with RTEXT_FILTER_VF.

PCI devices are found under /sys/bus/pci/devices, which every network namespace sees; a PF's
network interface is named by sysfs (device/net/<name>) but netlink reaches it only in the
namespace that holds it: the daemon's own (the root namespace on a real host).

Writes to sysfs are plain writes of one value; the kernel answers each synchronously (a
driver bound or not, VFs made or removed), so each step is read back before the next.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import subprocess
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from app.domain.nics.spec import VfSpec
from app.domain.sriov import (
    FREE_CONFIG,
    VFIO_DRIVER,
    PhysicalFunction,
    VfConfig,
    VirtualFunction,
)
from app.host.errors import HostError

log = logging.getLogger(__name__)

PCI_DEVICES = Path("/sys/bus/pci/devices")
PCI_DRIVERS = Path("/sys/bus/pci/drivers")
DRIVERS_PROBE = Path("/sys/bus/pci/drivers_probe")
DEV_VFIO = Path("/dev/vfio")
RTEXT_FILTER_VF = 1  # include/uapi/linux/rtnetlink.h
MODPROBE_TIMEOUT = 30.0  # seconds


class SriovError(HostError):
    """A sysfs or netlink step on a PF or VF failed; the message names the file or call."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message, transient=code in (errno.EBUSY, errno.EAGAIN))
        self.code = code


# ---- reading ----------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    """The last component of the symlink `path` points to (a driver, a group); None."""
    try:
        return os.readlink(path).rsplit("/", 1)[-1]
    except OSError:
        return None


def _netdev(device: Path) -> str | None:
    with contextlib.suppress(OSError):
        names = sorted(p.name for p in (device / "net").iterdir())
        if names:
            return names[0]
    return None


def vf_addresses(pf_device: Path) -> list[tuple[int, str]]:
    """(index, PCI address) of the PF's VFs, by index (the `virtfnN` links)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in pf_device.iterdir():
            if entry.name.startswith("virtfn") and entry.name[6:].isdigit():
                address = _link_name(entry)
                if address is not None:
                    found.append((int(entry.name[6:]), address))
    return sorted(found)


def _mac(raw: object) -> str:
    """IFLA_VF_MAC's 32-byte field as pyroute2 decodes it, as aa:bb:cc:dd:ee:ff."""
    if isinstance(raw, str):
        return raw[:17].lower()
    if isinstance(raw, (list, tuple, bytes)):
        return ":".join(f"{b:02x}" for b in list(raw)[:6])
    return str(raw)


def vf_configs(ipr: IPRoute, pf: str) -> dict[int, VfConfig]:
    """VF index -> what PF `pf`'s driver reports for it (IFLA_VFINFO_LIST, RTEXT_FILTER_VF)."""
    try:
        (msg,) = ipr.link("get", index=socket.if_nametoindex(pf), ext_mask=RTEXT_FILTER_VF)
    except OSError as exc:
        raise SriovError(f"PF {pf}: no such interface", errno.ENODEV) from exc
    except NetlinkError as exc:
        raise SriovError(f"PF {pf}: reading its VFs: {exc}", exc.code) from exc
    configs: dict[int, VfConfig] = {}
    vflist = msg.get_attr("IFLA_VFINFO_LIST")
    for info in vflist.get_attrs("IFLA_VF_INFO") if vflist else ():
        mac = info.get_attr("IFLA_VF_MAC")
        if mac is None:
            continue
        vlan = info.get_attr("IFLA_VF_VLAN")
        spoof = info.get_attr("IFLA_VF_SPOOFCHK")
        trust = info.get_attr("IFLA_VF_TRUST")
        configs[mac["vf"]] = VfConfig(
            mac=_mac(mac["mac"]),
            vlan=vlan["vlan"] if vlan else 0,
            # the kernel reports -1 (all ones) where the driver cannot say
            spoof_check=bool(spoof and spoof["spoofchk"] == 1),
            trust=bool(trust and trust["trust"] == 1),
        )
    return configs


def physical_functions(ipr: IPRoute | None = None) -> list[PhysicalFunction]:
    """Every PCI device with SR-IOV (a `sriov_totalvfs` above 0) whose PF driver gives it a
    network interface, with its VFs, by PCI address. `ipr` (the daemon's namespace) reads
    each VF's settings; without it `config` is None."""
    pfs = []
    for device in sorted(PCI_DEVICES.iterdir()) if PCI_DEVICES.exists() else ():
        total = _read(device / "sriov_totalvfs")
        name = _netdev(device)
        if not total or not total.isdigit() or int(total) == 0 or name is None:
            continue
        configs: dict[int, VfConfig] = {}
        if ipr is not None:
            with contextlib.suppress(SriovError):  # it went away meanwhile: no settings
                configs = vf_configs(ipr, name)
        vfs = tuple(
            _virtual_function(index, address, configs.get(index))
            for index, address in vf_addresses(device)
        )
        pfs.append(
            PhysicalFunction(
                name=name,
                pci_address=device.name,
                driver=_link_name(device / "driver"),
                total_vfs=int(total),
                num_vfs=int(_read(device / "sriov_numvfs") or 0),
                vfs=vfs,
            )
        )
    return pfs


def _virtual_function(index: int, address: str, config: VfConfig | None) -> VirtualFunction:
    device = PCI_DEVICES / address
    group = _link_name(device / "iommu_group")
    return VirtualFunction(
        index=index,
        pci_address=address,
        driver=_link_name(device / "driver"),
        netdev=_netdev(device),
        iommu_group=int(group) if group and group.isdigit() else None,
        config=config,
    )


def find_pf(name: str) -> PhysicalFunction | None:
    return next((pf for pf in physical_functions() if pf.name == name), None)


# ---- changing -----------------------------------------------------------------------------


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise SriovError(f"writing {value!r} to {path}: {exc.strerror}", exc.errno) from exc


def set_num_vfs(pf: PhysicalFunction, wanted: int) -> None:
    """`sriov_numvfs` of `pf` to `wanted`. The kernel refuses to change a non-zero count to
    another non-zero one (EBUSY), so such a change writes 0 first (every VF goes, the ones
    kept are made anew, with their settings reset)."""
    path = PCI_DEVICES / pf.pci_address / "sriov_numvfs"
    current = int(_read(path) or 0)
    if current == wanted:
        return
    if current and wanted:
        _write(path, "0")
    _write(path, str(wanted))
    now = int(_read(path) or 0)
    if now != wanted:
        raise SriovError(f"{path} reads {now} after writing {wanted}")
    log.info("PF %s (%s): %d VFs (was %d)", pf.name, pf.pci_address, wanted, current)


def configure_vf(ipr: IPRoute, pf: str, index: int, config: VfConfig) -> None:
    """`ip link set <pf> vf <index> mac .. vlan .. spoofchk .. trust ..` in one request,
    then read back (a driver may ignore what it cannot do: the read-back is the proof)."""
    request = {
        "vf": index,
        "mac": config.mac,
        "vlan": config.vlan,
        "spoofchk": int(config.spoof_check),
        "trust": int(config.trust),
    }
    try:
        ipr.link("set", index=socket.if_nametoindex(pf), vf=request)
    except OSError as exc:
        raise SriovError(f"PF {pf}: no such interface", errno.ENODEV) from exc
    except NetlinkError as exc:
        raise SriovError(f"PF {pf} VF {index}: setting {config}: {exc}", exc.code) from exc
    got = vf_configs(ipr, pf).get(index)
    if got != config:
        raise SriovError(f"PF {pf} VF {index}: set {config}, the driver reports {got}")


def restore_vf(ipr: IPRoute, pf: str, index: int) -> None:
    """The VF as a free one of the pool: no MAC set by the PF, no VLAN, spoof checking on,
    not trusted (app.domain.sriov.FREE_CONFIG)."""
    configure_vf(ipr, pf, index, FREE_CONFIG)


def _ensure_vfio_driver() -> None:
    """vfio-pci is loaded (`modprobe vfio-pci` when its driver directory is missing)."""
    if (PCI_DRIVERS / VFIO_DRIVER).exists():
        return
    argv = ["modprobe", VFIO_DRIVER]
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=MODPROBE_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SriovError(f"{argv}: {exc}") from exc
    if not (PCI_DRIVERS / VFIO_DRIVER).exists():
        out = proc.stderr.decode(errors="replace").strip()
        error = SriovError(f"{argv} exited {proc.returncode}: no vfio-pci driver ({out})")
        error.argv = argv
        raise error


def bind_driver(address: str, driver: str | None) -> None:
    """Bind PCI device `address` to `driver` (None: whichever driver matches it, i.e. the
    VF's own): driver_override names it, the current driver lets go, drivers_probe binds.
    driver_override stays set while vfio-pci holds the VF, so no other driver takes it."""
    device = PCI_DEVICES / address
    if _link_name(device / "driver") == driver and driver is not None:
        return
    _write(device / "driver_override", driver or "\n")
    current = _link_name(device / "driver")
    if current is not None:
        _write(device / "driver" / "unbind", address)
    try:
        _write(DRIVERS_PROBE, address)
    except SriovError as exc:
        if driver is not None or exc.code not in (errno.ENODEV, errno.EINVAL):
            raise  # no driver for the VF's own: it stays unbound, which is fine
    bound = _link_name(device / "driver")
    if driver is not None and bound != driver:
        raise SriovError(f"{address}: bound to {bound} after probing for {driver}")


def bind_vfio(address: str, owner: tuple[int, int] | None) -> Path:
    """Hand VF `address` to vfio-pci and its group's device node to `owner` (the qemu user;
    None: root keeps it); the node (/dev/vfio/<group>). No IOMMU group: SriovError."""
    group = _link_name(PCI_DEVICES / address / "iommu_group")
    if group is None:
        raise SriovError(f"{address} is in no IOMMU group: vfio-pci needs an IOMMU")
    _ensure_vfio_driver()
    bind_driver(address, VFIO_DRIVER)
    node = DEV_VFIO / group
    if not node.exists():
        raise SriovError(f"{address}: vfio-pci holds it but {node} does not exist", errno.ENODEV)
    if owner is not None:
        os.chown(node, *owner)
        node.chmod(0o600)
    return node


def unbind_vfio(address: str) -> None:
    """VF `address` back to its own driver (igbvf, ...); its group's node back to root."""
    device = PCI_DEVICES / address
    if not device.exists():
        return  # the VF went with sriov_numvfs
    group = _link_name(device / "iommu_group")
    override = _read(device / "driver_override")
    if _link_name(device / "driver") == VFIO_DRIVER or override not in (None, "", "(null)"):
        bind_driver(address, None)
    if group is not None and (DEV_VFIO / group).exists():
        with contextlib.suppress(OSError):
            os.chown(DEV_VFIO / group, 0, 0)


# ---- a VM NIC's VF --------------------------------------------------------------------------


def hand_vf(ipr: IPRoute, vf: VfSpec, mac: str, owner: tuple[int, int] | None) -> None:
    """Make VF `vf` the NIC's: its MAC, VLAN, spoof check and trust set on the PF (read
    back), then bound to vfio-pci with its group node the qemu user's (`owner`). Order: the
    settings first, while the VF's own driver may still hold it (the PF's driver takes them
    either way), so a failure leaves the VF unbound."""
    pf = find_pf(vf.pf)
    if pf is None:
        raise SriovError(f"PF {vf.pf} of VF {vf.pci_address} is gone", errno.ENODEV)
    at_index = dict(vf_addresses(PCI_DEVICES / pf.pci_address)).get(vf.index)
    if at_index != vf.pci_address:
        raise SriovError(
            f"VF {vf.index} of {vf.pf} is {at_index or 'absent'}, not {vf.pci_address} "
            "(num_vfs changed under the NIC)",
            errno.ENODEV,
        )
    config = VfConfig(mac=mac, vlan=vf.vlan or 0, spoof_check=vf.spoof_check, trust=vf.trust)
    configure_vf(ipr, vf.pf, vf.index, config)
    bind_vfio(vf.pci_address, owner)


def release_vf(ipr: IPRoute, vf: VfSpec) -> None:
    """VF `vf` back to the pool once qemu has let it go: its own driver, free settings."""
    unbind_vfio(vf.pci_address)
    if find_pf(vf.pf) is not None and (PCI_DEVICES / vf.pci_address).exists():
        restore_vf(ipr, vf.pf, vf.index)
