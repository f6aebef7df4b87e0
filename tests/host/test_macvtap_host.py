"""app.host.macvtap on the real kernel in a throwaway namespace: a macvtap made on a veth reads
back as asked, and its character device is opened through /dev/tapN when that node is its
device, else through a node the daemon makes (no udev, or /dev/tapN being another
namespace's macvtap), owned by the qemu user, never through a link put in its place."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from app.host import macvtap
from app.host.netlink import LinkError
from tests.netns_tools import in_namespace, in_netns, ip


def _made(netns: str, mode: str) -> tuple[int, dict[str, object]]:
    def make() -> tuple[int, dict[str, object]]:
        with IPRoute() as ipr:
            index = macvtap.create_macvtap(ipr, "mvt0", "eth0", mode, "52:54:00:12:00:01")
            (msg,) = ipr.link("get", index=index)
            data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
            return index, {
                "mode": data.get_attr("IFLA_MACVTAP_MODE"),
                "link": msg.get_attr("IFLA_LINK"),
                "mac": msg.get_attr("IFLA_ADDRESS"),
                "parent": macvtap.parent_link(ipr, "eth0"),
                "lo": macvtap.parent_link(ipr, "lo"),
            }

    return in_namespace(netns, make)


def test_a_macvtap_is_made_and_its_device_opened_without_udev(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    index, seen = _made(netns, "private")
    assert seen["mode"] == "private" and seen["mac"] == "52:54:00:12:00:01"
    parent = seen["parent"]
    assert isinstance(parent, macvtap.ParentLink) and seen["link"] == parent.ifindex
    assert parent.kind == "veth" and not parent.loopback and parent.mark is None
    lo = seen["lo"]
    assert isinstance(lo, macvtap.ParentLink) and lo.loopback
    text = in_netns(netns, "cat", f"/sys/class/net/mvt0/macvtap/tap{index}/dev").stdout
    device = os.makedev(*map(int, text.strip().split(":")))

    # through /dev/tapN, where it is this macvtap's node
    fd = in_namespace(netns, lambda: macvtap.open_macvtap("mvt0", tmp_path / "vm", None))
    try:
        assert os.fstat(fd).st_rdev == device
    finally:
        os.close(fd)

    # no usable /dev/tapN: a node of its own, 0600, the qemu user's; a link the qemu user
    # left where the node goes is replaced, never followed
    monkeypatch.setattr(macvtap, "DEV", tmp_path / "no-udev")
    (tmp_path / "secret").write_text("root's")
    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / f"tap{index}").symlink_to(tmp_path / "secret")
    fd = in_namespace(netns, lambda: macvtap.open_macvtap("mvt0", tmp_path / "vm", (4321, 4322)))
    try:
        node = (tmp_path / "vm" / f"tap{index}").lstat()
        assert stat.S_ISCHR(node.st_mode) and stat.S_IMODE(node.st_mode) == 0o600
        assert (node.st_rdev, node.st_uid, node.st_gid) == (device, 4321, 4322)
        assert os.fstat(fd).st_rdev == device
    finally:
        os.close(fd)
    assert (tmp_path / "secret").read_text() == "root's"
    assert (os.stat(tmp_path / "secret").st_uid, os.stat(tmp_path / "secret").st_gid) == (0, 0)
    with pytest.raises(LinkError, match="does not exist"):
        in_namespace(netns, lambda: macvtap.open_macvtap("nope0", tmp_path / "vm", None))


def test_a_passthru_macvtap_on_a_shared_parent_says_why_the_kernel_refuses(netns: str) -> None:
    """EINVAL from macvlan_common_newlink, with the macvtaps that hold the parent named."""
    ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")

    def make(name: str, mode: str) -> None:
        with IPRoute() as ipr:
            macvtap.create_macvtap(ipr, name, "eth0", mode, "52:54:00:12:00:02")

    in_namespace(netns, lambda: make("mvt0", "bridge"))
    with pytest.raises(LinkError, match=r"passthru needs the parent to itself; it has mvt0"):
        in_namespace(netns, lambda: make("mvt1", "passthru"))
