"""The qemu command line for a VM spec, as an argv list (never a shell string).

Only the machine, its boot source and its NICs come from here; the process manager adds what
belongs to one run (QMP socket, pidfile, serial log, name, uuid, sandbox). Values inside a
QEMU option string are escaped the QEMU way (a comma is written twice), so no user-supplied
value can add an option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.domain.errors import InvalidInput
from app.domain.vms import (
    Accelerator,
    Backend,
    Machine,
    NicSpec,
    SocketNet,
    UserNet,
    Vhost,
    VmSpec,
)


def qemu_value(value: str) -> str:
    """One value inside a `key=value,key=value` option string."""
    if any(ch in value for ch in "\0\n\r"):
        raise InvalidInput(f"{value!r} contains a control character")
    return value.replace(",", ",,")


def _options(head: str, **options: str | int | None) -> str:
    parts = [head]
    for key, value in options.items():
        if value is not None:
            parts.append(f"{key.replace('_', '-')}={qemu_value(str(value))}")
    return ",".join(parts)


def _user_netdev(netdev: str, user: UserNet) -> str:
    base = _options(
        f"user,id={netdev}",
        net=user.network,
        host=user.host,
        dns=user.dns,
        restrict="on" if user.restrict else None,
    )
    forwards = [
        f"hostfwd={f.protocol}:{f.host_address}:{f.host_port}"
        f"-{f.guest_address or ''}:{f.guest_port}"
        for f in user.forwards
    ]
    return ",".join([base, *forwards])


def _socket_netdev(netdev: str, socket: SocketNet) -> str:
    netdev_arg = f"socket,id={netdev},{socket.mode}={socket.address}:{socket.port}"
    if socket.mode == "mcast":
        # keep the group on loopback: host-local, and it needs no multicast route
        netdev_arg += ",localaddr=127.0.0.1"
    return netdev_arg


def _tap_netdev(
    netdev: str, nic: NicSpec, vhost_net: bool, fds: Sequence[int] | None = None
) -> str:
    """By name (qemu opens the tap), or by descriptors the daemon opened and passes on."""
    vhost = {Vhost.ON: "on", Vhost.OFF: "off", Vhost.AUTO: "on" if vhost_net else "off"}
    assert nic.tap is not None
    if fds:
        handles = {"fd": str(fds[0])} if len(fds) == 1 else {"fds": ":".join(map(str, fds))}
        return _options(f"tap,id={netdev}", **handles, vhost=vhost[nic.vhost])
    return _options(
        f"tap,id={netdev}",
        ifname=nic.tap,
        script="no",
        downscript="no",
        queues=nic.queues if nic.queues > 1 else None,
        vhost=vhost[nic.vhost],
    )


def netdev_arg(index: int, nic: NicSpec, vhost_net: bool, fds: Sequence[int] | None = None) -> str:
    netdev = f"net{index}"
    if nic.backend in (Backend.BRIDGE, Backend.TAP):
        return _tap_netdev(netdev, nic, vhost_net, fds)
    if nic.backend is Backend.USER:
        return _user_netdev(netdev, nic.user or UserNet())
    if nic.backend is Backend.SOCKET:
        assert nic.socket is not None
        return _socket_netdev(netdev, nic.socket)
    return f"hubport,id={netdev},hubid={nic.hub}"


def device_arg(index: int, nic: NicSpec) -> str:
    """The guest NIC. Multiqueue virtio needs MSI-X vectors: 2 per queue pair + 2. An MTU
    is virtio's `host_mtu` (validate_nic allows it on virtio-net-pci only)."""
    multiqueue = nic.queues > 1
    assert nic.model is not None
    device = _options(
        nic.model,
        netdev=f"net{index}",
        mac=nic.mac,
        id=f"nic{index}",
        mq="on" if multiqueue else None,
        vectors=2 * nic.queues + 2 if multiqueue else None,
    )
    # the property is spelled with an underscore (hw/net/virtio-net.c), unlike _options' keys
    return device if nic.mtu is None else f"{device},host_mtu={nic.mtu}"


def boot_args(spec: VmSpec) -> list[str]:
    boot = spec.boot
    if boot.kernel is not None:
        args = ["-kernel", boot.kernel]
        if boot.initrd:
            args += ["-initrd", boot.initrd]
        if boot.cmdline:
            args += ["-append", boot.cmdline]
        return args
    assert boot.disk is not None
    interface = "ide" if spec.machine is Machine.ISAPC else "virtio"
    return [
        "-drive",
        _options(
            "format=raw",
            file=boot.disk,
            **{"if": interface},
            snapshot="on" if boot.snapshot else None,
        ),
    ]


def qemu_argv(
    spec: VmSpec,
    binary: str,
    accelerator: Accelerator,
    vhost_net: bool = False,
    tap_fds: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """The argv for `spec` with the accelerator already resolved (never AUTO here).
    `tap_fds` maps a NIC id to the tap descriptors qemu inherits (else it opens by name)."""
    if accelerator is Accelerator.AUTO:
        raise ValueError("resolve the accelerator first (resolve_accelerator)")
    argv = [
        binary,
        "-machine",
        spec.machine.value,
        "-accel",
        accelerator.value,
        "-smp",
        str(spec.vcpus),
        "-m",
        str(spec.memory_mib),
    ]
    if accelerator is Accelerator.KVM:
        argv += ["-cpu", "host"]
    argv += boot_args(spec)
    for index, nic in enumerate(spec.nics):
        fds = (tap_fds or {}).get(nic.id)
        argv += ["-netdev", netdev_arg(index, nic, vhost_net, fds)]
        if nic.model is None:  # no guest NIC: the backend joins its hub
            argv += ["-netdev", f"hubport,id=hub{index},hubid={nic.hub},netdev=net{index}"]
        else:
            argv += ["-device", device_arg(index, nic)]
    return argv
