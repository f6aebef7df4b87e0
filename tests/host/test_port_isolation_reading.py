"""The bridge port flag IFLA_BRPORT_ISOLATED as app.host.rtnl decodes it from the real
kernel's messages: a port's AF_UNSPEC link message (IFLA_INFO_SLAVE_DATA) and its bridge's
AF_BRIDGE message (IFLA_PROTINFO), the only one `bridge link set` sends; and as LinkOps sets
it (pyroute2 IPRoute.brport), read back by iproute2."""

from __future__ import annotations

from app.host import rtnl
from app.host.netlink import LinkOps
from tests.api.test_isolation_api import port_isolated
from tests.netns_tools import in_namespace, in_netns, ip


def _read(ns: str) -> tuple[dict[str, bool | None], dict[str, bool | None]]:
    def run() -> tuple[dict[str, bool | None], dict[str, bool | None]]:
        links = {link.name or "": link.port_isolated for link in rtnl.dump_links()}
        ports = {port.name or "": port.isolated for port in rtnl.dump_port_vlans()}
        return links, ports

    return in_namespace(ns, run)


def test_the_isolation_flag_is_decoded_from_both_kinds_of_message(netns: str) -> None:
    ip(netns, "link", "add", "br0", "type", "bridge")
    for tap in ("tapa", "tapb", "tapc"):
        ip(netns, "tuntap", "add", "dev", tap, "mode", "tap")
    ip(netns, "link", "set", "tapa", "master", "br0")
    ip(netns, "link", "set", "tapb", "master", "br0")
    in_netns(netns, "bridge", "link", "set", "dev", "tapa", "isolated", "on")
    links, ports = _read(netns)
    assert (links["tapa"], links["tapb"], links["tapc"], links["br0"]) == (True, False, None, None)
    assert (ports["tapa"], ports["tapb"]) == (True, False)
    assert "tapc" not in ports  # no bridge port: no AF_BRIDGE message

    def flip() -> None:
        with LinkOps() as ops:
            index_a, index_b = ops.index_of("tapa"), ops.index_of("tapb")
            assert index_a is not None and index_b is not None
            ops.set_port_isolated(index_a, False)
            ops.set_port_isolated(index_b, True)

    in_namespace(netns, flip)
    assert (port_isolated(netns, "tapa"), port_isolated(netns, "tapb")) == (False, True)
    links, ports = _read(netns)
    assert (links["tapa"], links["tapb"]) == (False, True)
    assert (ports["tapa"], ports["tapb"]) == (False, True)
