"""What a project's members may not ask of the host (issue 11; Incus calls these the
`restricted.*` settings of a project): fields that reach beyond the tenant's own objects
onto the host are for admins only, and a member's boot files must lie in the directory the
operator keeps for tenants' images.

Every refusal is a 403 (app.domain.errors.Forbidden) naming the field, raised before
anything is written. An admin (the unix socket, the admin token file, an admin token) keeps
every field. The README's "What a tenant may not do" lists the decisions field by field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from app.domain.errors import Forbidden, InvalidInput
from app.domain.tenancy import Caller
from app.domain.vms import Backend
from app.schemas.vms import BootIn, NicIn

ADMINS = "an admin token or the unix socket"
BOOT_FILES = ("kernel", "initrd", "disk")  # BootIn's host paths (cmdline is not one)
# the kernel's ip_unprivileged_port_start default (Documentation/networking/ip-sysctl.rst):
# below it, a forward would take over a host service's port (sshd, DNS) by DNAT
UNPRIVILEGED_PORTS = 1024

RUN_AS = "a member could ask for uid 0 and run qemu as root"
TAP_OWNER = "the tap's owner is a host user that may open it (and send on the host's links)"
HOST_IPV6 = (
    "an IPv6 host address on a bridge or tap is a route on the host, and unlike an IPv4 one "
    "it is not checked against the host's own prefixes (it could take the host's traffic); "
    "members give their links IPv4 addresses (or a managed network)"
)
SNAT_ADDRESS = (
    "a fixed SNAT source is one of the host's addresses (or anyone's): the provider's "
    "choice; members masquerade behind the outgoing interface's address"
)
MCAST = (
    "a multicast group is shared by every process on the host: another project's VMs on "
    "the same group and port would share the NIC's Ethernet segment (use listen/connect)"
)
MACVTAP = (
    "a macvtap puts the guest straight on a host interface's LAN, past every bridge, "
    "network and rule of kvmnetd's: the operator's choice"
)
SRIOV = (
    "an SR-IOV virtual function puts the guest on a host NIC's wire through the NIC's own "
    "switch, past every bridge, network and rule of kvmnetd's, and takes one of the host's "
    "PCI devices: the operator's choice"
)
USER_UNRESTRICTED = (
    "QEMU's user networking lets the guest reach the host's loopback services through its "
    "gateway address (10.0.2.2 by default), and QEMU (7.2 to 10) has no option that only "
    "closes that (libslirp's disable_host_loopback is not exposed): a member's user NIC "
    'needs `"restrict": true` (no outbound traffic at all; its forwards still come in)'
)


def require_admin_for(caller: Caller, field: str, why: str, what: str | None = None) -> None:
    """403 naming `field` (the problem's `field`, a body location) for a member or reader:
    `what` is what was asked (default: the field), `why` what it would reach."""
    if not caller.is_admin:
        asked = what or f"`{field}`"
        raise Forbidden(f"{asked} is for admins only ({ADMINS}): {why}", field=field)


# ---- VMs ------------------------------------------------------------------------------------


def image_path(field: str, path: str, images: Path | None) -> str:
    """`path` resolved (realpath(3): symlinks followed, `.` and `..` gone; a relative path
    is taken within `images`), if it names a file inside `images`; else 403 (also for a
    path that escapes by `..` or by a symlink). A missing file inside it is 422. The
    resolved path is what is stored and what qemu opens, so a symlink swapped after this
    check changes nothing. `images` None: no directory (every path is refused)."""
    if images is None:
        raise Forbidden(f"`{field}`: host paths are for admins only ({ADMINS})", field=field)
    root = os.path.realpath(images)
    resolved = os.path.realpath(os.path.join(root, path))  # an absolute `path` wins the join
    if resolved == root or os.path.commonpath([root, resolved]) != root:
        raise Forbidden(
            f"`{field}` {path!r} is outside the tenants' images directory {root}: other host "
            f"paths are for admins only ({ADMINS})",
            field=field,
        )
    if not os.path.isfile(resolved):
        raise InvalidInput(f"`{field}` {path!r}: no such file in {root}")
    return resolved


def tenant_boot(caller: Caller, boot: BootIn, images: Path | None) -> BootIn:
    """The boot section with each host path of a non-admin resolved inside `images`
    (image_path); an admin's is kept as given."""
    if caller.is_admin:
        return boot
    resolved = {
        name: image_path(f"boot.{name}", value, images)
        for name in BOOT_FILES
        if (value := getattr(boot, name)) is not None
    }
    return boot.model_copy(update=resolved)


def check_nics(caller: Caller, nics: Iterable[NicIn], one: bool = False) -> None:
    """A member's NICs stay off the host: no multicast socket NIC, no unrestricted user
    NIC. (A socket NIC listens on loopback only, app.domain.nics.socket, and connects only
    to a listening NIC of a VM its caller sees: its own project's, else 404.) `one`: the
    body is a NIC itself (POST /v1/vms/{id}/nics), whose fields are named without
    `nics[i].`."""
    if caller.is_admin:
        return
    for index, nic in enumerate(nics):
        at = "" if one else f"nics[{index}]."
        if nic.socket is not None and nic.socket.mode == "mcast":
            field = f"{at}socket.mode"
            require_admin_for(caller, field, MCAST, f"`{field}` mcast")
        if nic.backend is Backend.MACVTAP:
            field = f"{at}backend"
            require_admin_for(caller, field, MACVTAP, f"`{field}` macvtap")
        if nic.backend is Backend.SRIOV:
            field = f"{at}backend"
            require_admin_for(caller, field, SRIOV, f"`{field}` sriov")
        if nic.backend is Backend.USER and not (nic.user is not None and nic.user.restrict):
            field = f"{at}user.restrict"
            require_admin_for(caller, field, USER_UNRESTRICTED, f"a user NIC without `{field}`")


# ---- ports ----------------------------------------------------------------------------------


def check_forward_port(caller: Caller, port: int) -> None:
    """A member's port forward starts at an unprivileged port (>= 1024), where no host
    service of the operator's listens by convention."""
    if port < UNPRIVILEGED_PORTS:
        require_admin_for(
            caller,
            "port",
            f"host ports below {UNPRIVILEGED_PORTS} belong to the host's own services "
            "(a DNAT rule would take their traffic)",
        )
