"""The nested host has what this machine's kernel lacks: 802.1Q sub-interfaces, bridge VLAN
filtering and vhost-net (tests/kernel/README.md). Runs inside the nested host only."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute

from tests.kernel.nested.conftest import ModuleLoader
from tests.netns_tools import links, throwaway_netns

# linux/vhost.h: #define VHOST_SET_OWNER _IO(VHOST_VIRTIO, 0x01), VHOST_VIRTIO = 0xAF
VHOST_SET_OWNER = 0xAF01


def test_8021q_sub_interface_reads_back(netns: str, modules: ModuleLoader) -> None:
    modules("8021q")
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="trunk0", kind="veth", peer={"ifname": "trunk1"})
        trunk = ipr.link_lookup(ifname="trunk0")[0]
        ipr.link("add", ifname="trunk0.10", kind="vlan", link=trunk, vlan_id=10)
        (sub,) = ipr.link("get", index=ipr.link_lookup(ifname="trunk0.10")[0])
    assert sub.get_attr("IFLA_LINK") == trunk
    kernel = links(netns)["trunk0.10"]
    assert kernel.kind == "vlan"
    assert kernel.info["IFLA_VLAN_ID"] == 10


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(throwaway_netns()) for _ in range(count)]


def access_port(ipr: IPRoute, bridge: int, port: str, vid: int) -> None:
    """`port` on the bridge as an access port of `vid` (PVID, egress untagged), not of VLAN 1
    (bridge(8): `bridge vlan add dev PORT vid VID pvid untagged`)."""
    index = ipr.link_lookup(ifname=port)[0]
    ipr.link("set", index=index, master=bridge, state="up")
    ipr.vlan_filter("del", index=index, vlan_info={"vid": 1})
    ipr.vlan_filter("add", index=index, vlan_info={"vid": vid, "flags": ["pvid", "untagged"]})


def guest(switch: str, ns: str, port: str, address: str) -> None:
    """A veth from the switch namespace into `ns`, its far end up with `address`/24."""
    with IPRoute(netns=switch) as ipr:
        ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
    with IPRoute(netns=ns) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address=address, prefixlen=24)
        ipr.link("set", index=eth0, state="up")


def ping(ns: str, busybox: str, address: str, count: int) -> bool:
    argv = ["ip", "netns", "exec", ns, busybox, "ping", "-c", str(count), "-W", "2", address]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return result.returncode == 0


def test_vlan_filtering_bridge_isolates_vlan_10_from_20(
    modules: ModuleLoader, busybox: str
) -> None:
    modules("bridge", "veth")
    with namespaces(4) as (switch, a, b, c):
        guest(switch, a, "port-a", "10.10.0.1")
        guest(switch, b, "port-b", "10.10.0.2")
        guest(switch, c, "port-c", "10.10.0.3")
        with IPRoute(netns=switch) as ipr:
            ipr.link("add", ifname="br0", kind="bridge", br_vlan_filtering=1)
            br0 = ipr.link_lookup(ifname="br0")[0]
            access_port(ipr, br0, "port-a", 10)
            access_port(ipr, br0, "port-b", 10)
            access_port(ipr, br0, "port-c", 20)
            ipr.link("set", index=br0, state="up")
            (bridge,) = ipr.link("get", index=br0)
        data = bridge.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        assert data.get_attr("IFLA_BR_VLAN_FILTERING") == 1
        assert ping(a, busybox, "10.10.0.2", count=3), "same VLAN 10: a must reach b"
        assert not ping(a, busybox, "10.10.0.3", count=2), "VLAN 10 must not reach VLAN 20"
        assert not ping(c, busybox, "10.10.0.2", count=2), "VLAN 20 must not reach VLAN 10"


def test_vhost_net_answers_after_modprobe(modules: ModuleLoader) -> None:
    modules("tun", "vhost_net")
    device = Path("/dev/vhost-net")
    assert stat.S_ISCHR(device.stat().st_mode)
    fd = os.open(device, os.O_RDWR)
    try:
        assert fcntl.ioctl(fd, VHOST_SET_OWNER) == 0
    finally:
        os.close(fd)
