"""Interfaces the API needs from the host side, implemented in app.host and wired in main.

The API never imports app.host; it receives an object satisfying these protocols.
"""

from __future__ import annotations

from typing import Any, Protocol

from app.domain.networks import HostPrefix
from app.domain.nics.macvtap import ParentLink
from app.domain.path_probe import ProbeTarget
from app.domain.sriov import PhysicalFunction


class HostInspector(Protocol):
    """Read-only views of the host, like brctl show/showmacs, ifconfig and route -n."""

    def bridge_ports(self, bridge: str) -> list[dict[str, Any]]: ...

    def foreign_link(self, name: str) -> dict[str, Any] | None:
        """The link called `name` if it exists and is not kvmnetd's: {"name", "kind",
        "ifindex"}; else None."""
        ...

    def sriov_pool(self) -> list[PhysicalFunction]:
        """The host's SR-IOV physical functions and their VFs with their settings."""
        ...

    def set_num_vfs(self, pf: str, num_vfs: int) -> None:
        """Give PF `pf` `num_vfs` VFs (sysfs sriov_numvfs); a HostError when it cannot."""
        ...

    def parent_link(self, name: str) -> ParentLink | None:
        """Link `name` as a macvtap parent candidate (loopback? a port? ours?); None: absent."""
        ...

    def ports_of(self, bridges: list[str]) -> dict[str, list[dict[str, Any]]]: ...

    def fdb(self, bridge: str) -> list[dict[str, Any]]: ...

    def fdb_of(self, bridges: list[str]) -> dict[str, list[dict[str, Any]]]:
        """fdb() of each bridge ([] for one that does not exist)."""
        ...

    def bridge_vlans(self, bridge: str) -> dict[str, Any]:
        """`bridge -j vlan show` of one bridge: {"filtering" (None: the kernel lacks it),
        "default_pvid", "reason", "ports": {port: [{"vid", "pvid", "untagged"}]}}."""
        ...

    def interfaces(self) -> list[dict[str, Any]]: ...

    def routes(self) -> list[dict[str, Any]]: ...

    def host_prefixes(self) -> list[HostPrefix]: ...

    def subnet_clashes(
        self, networks: list[tuple[str, str]], own: dict[str, list[str]]
    ) -> dict[str, Any]: ...

    def capabilities(self) -> dict[str, Any]: ...

    def leases(self, network_id: str) -> list[dict[str, Any]]: ...

    def port_security_table(self) -> dict[str, Any]:
        """Our nftables bridge table with counters: {"listing": nft JSON objects or None
        (no table), "error": why it could not be read or None}."""
        ...

    def network_log(self, network_id: str, lines: int) -> str: ...

    def isolation_drops(self, network_id: str) -> tuple[int, int] | None:
        """(packets, bytes) of the network's project isolation drops; None: not isolated."""
        ...

    def uplink_view(self, interface: str, permanent_mac: str | None) -> dict[str, Any]: ...

    def uplink_plan(
        self, interface: str, bridge: str, take_mac: bool, dhcp: str
    ) -> dict[str, Any]: ...

    def vm_console(self, vm_id: str, offset: int) -> tuple[bytes, int]: ...

    def diagnostics(self, gateways: list[str]) -> list[dict[str, Any]]: ...

    def probe_paths(self, targets: list[ProbeTarget]) -> list[dict[str, Any]]: ...


class VmControl(Protocol):
    """Runtime control of a running VM's qemu (QMP), with a deadline. Raises Conflict when
    the VM is not running and Unavailable when qemu does not answer."""

    def execute(
        self, vm_id: str, command: str, args: dict[str, object] | None, timeout: float
    ) -> object: ...


class Nudger(Protocol):
    def nudge(self, resource: str | None = None) -> None:
        """Desired state of a `resource` kind changed (None: of any kind)."""
        ...


class LeaseReader(Protocol):
    """A managed network's active DHCP leases (dicts with mac, address, hostname,
    expires_at), read from its dnsmasq lease file."""

    def __call__(self, network_id: str) -> list[dict[str, Any]]: ...
