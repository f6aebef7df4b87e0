"""Ports (Neutron's port, natively /v1/ports): the kernel name of a port's tap and the
status Neutron shows for it. Pure."""

from __future__ import annotations

from app.domain.status import Status

TAP_PREFIX = "tap"  # Nova's and Neutron's linuxbridge agent's tap names: tap + port id
ID_DIGITS = 11  # 3 + 11 = 14 characters, within IFNAMSIZ - 1 = 15
DEVICE_OWNER = "compute:kvmnetd"  # device_owner of a port a VM of ours plugs (Nova: compute:<az>)


def port_tap_name(port_id: str) -> str:
    """`tap` + the first 11 hex digits of the port's id (its UUID without dashes), in every
    project: the name Nova gives a Neutron port's tap (nova/network/model.py
    VIF.get_tap_name / NIC_NAME_LEN 14)."""
    return TAP_PREFIX + port_id.replace("-", "")[:ID_DIGITS]


def port_status(lifecycle: str, plugged: bool, oper_state: str | None) -> str:
    """Neutron's port status: BUILD while its tap is being made, ERROR in error, ACTIVE
    while a VM uses it and its tap has carrier (netlink's operstate `up`: qemu holds the
    tap open), DOWN otherwise (no VM yet, or the VM's qemu is not running)."""
    if lifecycle == Status.ERROR.value:
        return "ERROR"
    if lifecycle == Status.PENDING.value:
        return "BUILD"
    if plugged and oper_state == "up":
        return "ACTIVE"
    return "DOWN"
