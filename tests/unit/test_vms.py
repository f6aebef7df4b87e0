"""VM rules and the qemu command line: pure, no qemu needed (tests/host/test_qemu_argv.py
runs the same argv through the real qemu)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.domain.errors import InvalidInput
from app.domain.nics import nic_driver
from app.domain.qemu_argv import qemu_argv, qemu_value
from app.domain.vlans import HostLacksFeature
from app.domain.vms import (
    QEMU_DEFAULT_MAC,
    Accelerator,
    Backend,
    BootSpec,
    Machine,
    NicSpec,
    PortForward,
    SocketNet,
    UserNet,
    Vhost,
    VmSpec,
    allocate_mac,
    resolve_accelerator,
    validate_vm,
)

ALL_MODELS = ["virtio-net-pci", "e1000", "rtl8139", "ne2k_pci", "pcnet", "ne2k_isa", "i82559a"]
KERNEL = BootSpec(kernel="/k/vmlinuz", initrd="/k/initrd", cmdline="console=ttyS0 kvt.dhcp=1")


def nic(**kw: object) -> NicSpec:
    base: dict[str, object] = dict(
        id="n0", model="virtio-net-pci", mac="52:54:00:00:00:01", backend=Backend.USER
    )
    return NicSpec(**{**base, **kw})  # type: ignore[arg-type]


def vm(*nics: NicSpec, **kw: object) -> VmSpec:
    base: dict[str, object] = dict(id="v1", name="vm1", boot=KERNEL, nics=nics)
    return VmSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_isa_and_pci_models_need_the_right_machine() -> None:
    validate_vm(vm(nic(model="ne2k_isa"), machine=Machine.ISAPC), ALL_MODELS)
    with pytest.raises(InvalidInput, match="needs the isapc machine"):
        validate_vm(vm(nic(model="ne2k_isa")), ALL_MODELS)
    with pytest.raises(InvalidInput, match="no PCI bus"):
        validate_vm(vm(nic(model="e1000"), machine=Machine.ISAPC), ALL_MODELS)


def test_models_the_installed_qemu_lacks_are_refused_with_its_list() -> None:
    with pytest.raises(InvalidInput, match="offers e1000, virtio-net-pci"):
        validate_vm(vm(nic(model="rtl8139")), ["e1000", "virtio-net-pci"])
    with pytest.raises(InvalidInput, match="not supported"):
        validate_vm(vm(nic(model="i82559a")), ALL_MODELS)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (vm(memory_mib=8), "memory_mib"),
        (vm(memory_mib=10**9), "memory_mib"),
        (vm(vcpus=0), "vcpus"),
        (vm(boot=BootSpec()), "exactly one of a kernel"),
        (vm(boot=BootSpec(kernel="/k", disk="/d")), "exactly one of a kernel"),
        (vm(boot=BootSpec(kernel="vmlinuz")), "absolute path"),
        (vm(boot=BootSpec(disk="images/d.raw")), "absolute path"),
        (vm(nic(mac="01:00:5e:00:00:01")), "multicast"),
        (vm(nic(), nic(id="n1")), "used twice"),
        (vm(nic(queues=4)), "multiqueue"),
        (vm(nic(vhost=Vhost.ON, backend=Backend.TAP, tap="t1", model="e1000")), "only acc"),
        (vm(nic(vhost=Vhost.ON)), "the user backend has no tap"),
        (vm(nic(backend=Backend.BRIDGE)), "needs a tap"),
        (vm(nic(backend=Backend.TAP, tap="a;rm -rf /")), "only letters"),
        (vm(nic(backend=Backend.HUB)), "hub number"),
        (vm(nic(model="e1000", backend=Backend.TAP, tap="t0", mtu=9000)), "host_mtu"),
        (vm(nic(model=None, backend=Backend.TAP, tap="t0", hub=0, mtu=9000)), "without a guest"),
        (vm(nic(mtu=9000)), "slirp"),
        (vm(nic(backend=Backend.TAP, tap="t0", mtu=67)), "mtu must be between"),
        (vm(nic(backend=Backend.SOCKET, socket=SocketNet("listen", 0))), "socket port"),
        (vm(nic(backend=Backend.SOCKET, socket=SocketNet("connect", 5, "10.0.0.1"))), "loopback"),
        (vm(nic(backend=Backend.SOCKET, socket=SocketNet("mcast", 5))), "multicast group"),
        (vm(nic(user=UserNet(host="10.9.9.9"))), "outside"),
        (vm(nic(user=UserNet(forwards=(PortForward("sctp", 1, 2),)))), "tcp or udp"),
        (vm(nic(user=UserNet(forwards=(PortForward("tcp", 70000, 22),)))), "host_port"),
        (
            vm(
                nic(
                    user=UserNet(
                        forwards=(PortForward("tcp", 5555, 22), PortForward("tcp", 5555, 23))
                    )
                )
            ),
            "twice",
        ),
    ],
)
def test_refused_before_qemu_runs(spec: VmSpec, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_vm(spec, ALL_MODELS)


def test_accelerator_resolution_never_pretends() -> None:
    assert resolve_accelerator(Accelerator.AUTO, False) is Accelerator.TCG
    assert resolve_accelerator(Accelerator.AUTO, None) is Accelerator.TCG
    assert resolve_accelerator(Accelerator.AUTO, True) is Accelerator.KVM
    with pytest.raises(InvalidInput, match="KVM does not run guests"):
        resolve_accelerator(Accelerator.KVM, False)


def test_mac_allocation_avoids_taken_ones_and_qemus_default() -> None:
    draws = iter([0x123456, 0x000001, 0x000002])  # first one is QEMU's default
    mac = allocate_mac(["52:54:00:00:00:01"], lambda bits: next(draws))
    assert mac == "52:54:00:00:00:02"
    assert QEMU_DEFAULT_MAC == "52:54:00:12:34:56"


def test_argv_for_every_backend() -> None:
    spec = vm(
        nic(id="a", backend=Backend.BRIDGE, tap="vm1-0", queues=2),
        nic(
            id="b",
            model="e1000",
            mac="52:54:00:00:00:02",
            user=UserNet(restrict=True, forwards=(PortForward("tcp", 5555, 22),)),
        ),
        nic(
            id="c",
            model="rtl8139",
            mac="52:54:00:00:00:03",
            backend=Backend.SOCKET,
            socket=SocketNet("listen", 41234),
        ),
        nic(id="d", model="pcnet", mac="52:54:00:00:00:04", backend=Backend.HUB, hub=1),
    )
    argv = qemu_argv(spec, "qemu-system-x86_64", Accelerator.TCG)
    assert argv[:9] == [
        "qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        "256",
    ]
    assert argv[9:15] == [
        "-kernel",
        "/k/vmlinuz",
        "-initrd",
        "/k/initrd",
        "-append",
        "console=ttyS0 kvt.dhcp=1",
    ]
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert netdevs == [
        "tap,id=net0,ifname=vm1-0,script=no,downscript=no,queues=2,vhost=off",
        "user,id=net1,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,restrict=on,"
        "hostfwd=tcp:127.0.0.1:5555-:22",
        "socket,id=net2,listen=127.0.0.1:41234",
        "hubport,id=net3,hubid=1",
    ]
    assert devices == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0,mq=on,vectors=6",
        "e1000,netdev=net1,mac=52:54:00:00:00:02,id=nic1",
        "rtl8139,netdev=net2,mac=52:54:00:00:00:03,id=nic2",
        "pcnet,netdev=net3,mac=52:54:00:00:00:04,id=nic3",
    ]


def test_a_virtio_nic_mtu_is_its_host_mtu() -> None:
    """QEMU spells the property with an underscore: host_mtu, not host-mtu."""
    spec = vm(nic(backend=Backend.BRIDGE, tap="vm1-0", mtu=9000))
    validate_vm(spec, ALL_MODELS)
    argv = qemu_argv(spec, "qemu-system-x86_64", Accelerator.TCG)
    assert argv[argv.index("-device") + 1].endswith(",id=nic0,host_mtu=9000")


def test_disk_boot_and_kvm() -> None:
    spec = vm(boot=BootSpec(disk="/images/a,b.raw", snapshot=True))
    argv = qemu_argv(spec, "qemu", Accelerator.KVM)
    assert argv[9:11] == ["-cpu", "host"]
    assert argv[11:] == ["-drive", "format=raw,file=/images/a,,b.raw,if=virtio,snapshot=on"]


def test_values_cannot_smuggle_options() -> None:
    assert qemu_value("a,script=/tmp/evil") == "a,,script=/tmp/evil"
    with pytest.raises(InvalidInput):
        qemu_value("x\ny")
    with pytest.raises(ValueError, match="resolve the accelerator"):
        qemu_argv(vm(), "qemu", Accelerator.AUTO)


def test_a_backend_without_a_guest_nic_joins_a_hub() -> None:
    """The how-to's VM1: its NIC, its tap and a listening socket on one segment."""
    spec = vm(
        nic(id="g", backend=Backend.HUB, hub=0),
        nic(id="t", model=None, mac="52:54:00:00:00:02", backend=Backend.TAP, tap="tap1", hub=0),
        nic(
            id="s",
            model=None,
            mac="52:54:00:00:00:03",
            backend=Backend.SOCKET,
            socket=SocketNet("listen", 41000),
            hub=0,
        ),
    )
    validate_vm(spec, ALL_MODELS)
    argv = qemu_argv(spec, "qemu", Accelerator.TCG)
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == [
        "hubport,id=net0,hubid=0",
        "tap,id=net1,ifname=tap1,script=no,downscript=no,vhost=off",
        "hubport,id=hub1,hubid=0,netdev=net1",
        "socket,id=net2,listen=127.0.0.1:41000",
        "hubport,id=hub2,hubid=0,netdev=net2",
    ]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-device"] == [
        "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0"
    ]
    with pytest.raises(InvalidInput, match="joins a hub"):
        validate_vm(vm(nic(model=None)), ALL_MODELS)
    with pytest.raises(InvalidInput, match="needs the hub backend"):
        validate_vm(vm(nic(hub=1)), ALL_MODELS)


def test_taps_handed_over_as_descriptors() -> None:
    spec = vm(
        nic(id="a", backend=Backend.BRIDGE, tap="vm1-0"),
        nic(id="b", mac="52:54:00:00:00:02", backend=Backend.TAP, tap="tap1", queues=2),
    )
    argv = qemu_argv(spec, "qemu", Accelerator.TCG, tap_fds={"a": [5], "b": [6, 7]})
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"] == [
        "tap,id=net0,fd=5,vhost=off",
        "tap,id=net1,fds=6:7,vhost=off",
    ]


def test_vhost_on_where_the_host_cannot_is_a_409_naming_the_probes_reason() -> None:
    spec = vm(nic(vhost=Vhost.ON, backend=Backend.TAP, tap="tap1"))
    validate_vm(spec, ALL_MODELS, vhost_missing=None)  # the host's /dev/vhost-net works
    why = "no /dev/vhost-net; this kernel loads no modules (no /proc/sys/kernel/modprobe)"
    with pytest.raises(HostLacksFeature, match="vhost=on needs vhost-net") as refused:
        validate_vm(spec, ALL_MODELS, vhost_missing=why)
    assert refused.value.status == 409
    assert why in str(refused.value)
    (missing,) = refused.value.extra["missing_features"]
    assert missing == {
        "feature": "vhost_net",
        "description": "vhost-net",
        "kernel_config": "CONFIG_VHOST_NET",
        "module": "vhost_net",
        "reason": why,
    }
    validate_vm(vm(nic(backend=Backend.TAP, tap="tap1")), ALL_MODELS, why)  # auto: no refusal


def test_vhost_descriptors_go_next_to_the_taps() -> None:
    """-netdev tap,fd=..,vhostfd=.. (fds/vhostfds for several queues, qemu-options.hx): `on`
    and `auto` on virtio where the host has vhost-net; `auto` on another model or without it,
    and `off`, give vhost=off and no vhostfd even when descriptors were opened."""
    spec = vm(
        nic(id="a", backend=Backend.BRIDGE, tap="vm1-0"),
        nic(id="b", mac="52:54:00:00:00:02", backend=Backend.TAP, tap="tap1", queues=2),
        nic(id="c", mac="52:54:00:00:00:03", backend=Backend.TAP, tap="t2", vhost=Vhost.OFF),
        nic(id="d", mac="52:54:00:00:00:04", backend=Backend.TAP, tap="t3", model="e1000"),
    )
    taps = {"a": [5], "b": [6, 7], "c": [8], "d": [9]}
    vhost = {"a": [10], "b": [11, 12], "c": [13], "d": [14]}
    argv = qemu_argv(spec, "qemu", Accelerator.TCG, True, taps, vhost)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"] == [
        "tap,id=net0,fd=5,vhostfd=10,vhost=on",
        "tap,id=net1,fds=6:7,vhostfds=11:12,vhost=on",
        "tap,id=net2,fd=8,vhost=off",
        "tap,id=net3,fd=9,vhost=off",
    ]
    # without the capability `auto` is off; `on` without descriptors: qemu opens the device
    on = replace(spec.nics[0], vhost=Vhost.ON)
    argv = qemu_argv(vm(on, spec.nics[1]), "qemu", Accelerator.TCG, False, taps)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"] == [
        "tap,id=net0,fd=5,vhost=on",
        "tap,id=net1,fds=6:7,vhost=off",
    ]


def test_which_nics_use_vhost() -> None:
    tap = nic(backend=Backend.TAP, tap="t0")
    assert nic_driver("tap").uses_vhost(tap, vhost_net=True)
    assert not nic_driver("tap").uses_vhost(tap, vhost_net=False)
    assert nic_driver("tap").uses_vhost(replace(tap, vhost=Vhost.ON), vhost_net=False)
    assert not nic_driver("tap").uses_vhost(replace(tap, vhost=Vhost.OFF), vhost_net=True)
    assert not nic_driver("tap").uses_vhost(replace(tap, model="e1000"), vhost_net=True)
    assert not nic_driver("user").uses_vhost(nic(), vhost_net=True)  # slirp has no tap
    assert nic_driver("macvtap").uses_vhost(tap, vhost_net=True)


def test_a_network_boot_boots_the_first_pci_nic() -> None:
    """`boot.network`: no -kernel/-drive; the first NIC with an emulated PCI model (each has
    an iPXE option ROM) gets bootindex=0, the others none; a passed-through VF or an ISA
    card cannot boot from the network."""
    spec = vm(
        nic(id="a", model=None, backend=Backend.TAP, tap="tap1", hub=0),
        nic(id="b", mac="52:54:00:00:00:02", model="e1000", backend=Backend.HUB, hub=0),
        nic(id="c", mac="52:54:00:00:00:03"),
        boot=BootSpec(network=True),
    )
    validate_vm(spec, ALL_MODELS)
    argv = qemu_argv(spec, "qemu", Accelerator.TCG)
    assert "-kernel" not in argv and "-drive" not in argv
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert [d for d in devices if "bootindex" in d] == [
        "e1000,netdev=net1,mac=52:54:00:00:00:02,id=nic1,bootindex=0"
    ]
    # SeaBIOS's serial console (etc/sercon-port): iPXE's screen reaches the console log
    assert argv[argv.index("-machine") + 1] == "pc,graphics=off"
    with pytest.raises(InvalidInput, match="needs a NIC whose model has an iPXE option ROM"):
        validate_vm(vm(boot=BootSpec(network=True)), ALL_MODELS)
    isa = vm(nic(model="ne2k_isa"), machine=Machine.ISAPC, boot=BootSpec(network=True))
    with pytest.raises(InvalidInput, match="isapc machine cannot boot from the network"):
        validate_vm(isa, ALL_MODELS)
    with pytest.raises(InvalidInput, match="snapshot applies to a disk image"):
        validate_vm(replace(spec, boot=BootSpec(network=True, snapshot=True)), ALL_MODELS)


def test_only_a_kernel_boot_leaves_the_machine_graphics_alone() -> None:
    kernel = qemu_argv(vm(), "qemu", Accelerator.TCG)
    disk = qemu_argv(vm(boot=BootSpec(disk="/images/a.raw")), "qemu", Accelerator.TCG)
    assert kernel[1:3] == ["-machine", "pc"]
    assert disk[1:3] == ["-machine", "pc,graphics=off"]


@pytest.mark.parametrize(
    "boot",
    [
        BootSpec(),
        BootSpec(network=True, disk="/images/a.raw"),
        BootSpec(network=True, kernel="/k/vmlinuz"),
        BootSpec(kernel="/k/vmlinuz", disk="/images/a.raw"),
    ],
)
def test_exactly_one_boot_source(boot: BootSpec) -> None:
    with pytest.raises(InvalidInput, match="exactly one of a kernel"):
        validate_vm(vm(nic(), boot=boot), ALL_MODELS)


def test_a_nics_refusal_names_it_as_the_request_or_by_its_index_never_by_id() -> None:
    """A VM being created: `nics[i]` as sent; a stored VM (nic_indexes): `NIC <index>`, as
    /v1/vms/{id}/nics/{index} names it; the NIC's internal id never."""
    bad = nic(id="4ca5d548-0000-4000-8000-000000000000", mac="52:54:00:00:00:02", model="e1000")
    spec = vm(nic(), replace(bad, vhost=Vhost.ON))
    with pytest.raises(InvalidInput) as refused:
        validate_vm(spec, ALL_MODELS)
    assert refused.value.detail.startswith("nics[1]: vhost-net moves a tap's packets")
    assert str(refused.value) == refused.value.detail and "4ca5d548" not in str(refused.value)
    with pytest.raises(InvalidInput, match=r"^NIC 7: vhost-net moves"):
        validate_vm(replace(spec, nic_indexes=(0, 7)), ALL_MODELS)
    tap_e1000 = replace(bad, backend=Backend.TAP, tap="tap1", vhost=Vhost.ON)
    with pytest.raises(InvalidInput, match=r"^nics\[0\]: vhost-net only accelerates"):
        validate_vm(vm(tap_e1000), ALL_MODELS)
    with pytest.raises(HostLacksFeature, match=r"^nics\[0\]: vhost=on needs vhost-net"):
        validate_vm(vm(nic(backend=Backend.TAP, tap="t", vhost=Vhost.ON)), ALL_MODELS, "gone")
