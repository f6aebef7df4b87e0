"""VLANs in the kernel through netlink (pyroute2 IPRoute): 802.1Q sub-interfaces, a bridge's
VLAN options, per-port VLAN membership and the bridge's FDB with each entry's VLAN.

What each call does, in iproute2 words:
- `ip link add link <parent> name <name> type vlan protocol 802.1Q id <vid>` and its read-back
  (IFLA_LINK, IFLA_VLAN_ID, IFLA_VLAN_PROTOCOL; ip-link(8));
- `ip link set <bridge> type bridge vlan_filtering 0|1 vlan_default_pvid N`
  (IFLA_BR_VLAN_FILTERING, IFLA_BR_VLAN_DEFAULT_PVID);
- `bridge vlan add|del dev <port> vid N [pvid] [untagged] [self]`: RTM_SETLINK/RTM_DELLINK,
  family AF_BRIDGE, IFLA_AF_SPEC with IFLA_BRIDGE_VLAN_INFO (and IFLA_BRIDGE_FLAGS =
  BRIDGE_FLAGS_SELF for the bridge's own port); `bridge vlan show`: RTM_GETLINK dump, family
  AF_BRIDGE, IFLA_EXT_MASK = RTEXT_FILTER_BRVLAN_COMPRESSED (bridge(8)), decoded by
  app.host.rtnl's minimal reader;
- `bridge fdb show br <bridge>` / `bridge fdb replace <mac> dev <port> master static vlan N`
  (RTM_*NEIGH, family AF_BRIDGE, NDA_VLAN, NDA_MASTER).

Every change is idempotent in effect: EEXIST and ENODEV/ENOENT are handled where they mean
"already so". Errors carry the errno (`VlanError.code`); where the kernel lacks the feature
(this machine's: no CONFIG_VLAN_8021Q, no CONFIG_BRIDGE_VLAN_FILTERING) the error is
`FeatureMissing`, naming the feature and its kernel option. A `VlanOps` owns one IPRoute
socket in the network namespace `netns` (None: the calling thread's).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE

from app.domain.links import parse_mark
from app.domain.vlan_ports import Membership, StepOp, VlanStep, check_vid
from app.host import rtnl
from app.host.netlink import LinkError
from app.host.netns import call_in
from app.host.rtnl import PortVlans

ETH_P_8021Q = 0x8100  # include/uapi/linux/if_ether.h
ETH_P_8021AD = 0x88A8
PROTOCOLS = {ETH_P_8021Q: "802.1Q", ETH_P_8021AD: "802.1ad"}
BRIDGE_VLAN_INFO_PVID = 0x2  # include/uapi/linux/if_bridge.h
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
IFF_UP = 0x1  # include/uapi/linux/if.h
USER_HZ = 100  # NDA_CACHEINFO ages are in clock ticks (jiffies_to_clock_t)


class VlanError(LinkError):
    """A VLAN operation failed; `code` is the errno (None when the kernel gave none)."""


class FeatureMissing(VlanError):
    """The running kernel lacks a feature: `feature` names it, `config` its kernel option."""

    def __init__(self, feature: str, config: str, action: str) -> None:
        super().__init__(f"{action}: this kernel has no {feature} ({config})", errno.EOPNOTSUPP)
        self.feature = feature
        self.config = config


VLAN_8021Q = ("802.1Q VLAN sub-interfaces", "CONFIG_VLAN_8021Q")
VLAN_FILTERING = ("bridge VLAN filtering", "CONFIG_BRIDGE_VLAN_FILTERING")


@dataclass(frozen=True)
class SubInterface:
    """An 802.1Q (or 802.1ad) sub-interface as the kernel reports it."""

    name: str
    index: int
    parent_index: int
    vid: int
    protocol: str  # "802.1Q" or "802.1ad" (or the ethertype in hex)
    up: bool


@dataclass(frozen=True)
class BridgeVlanOptions:
    filtering: bool
    default_pvid: int  # 0: ports joining get no VLAN


@dataclass(frozen=True)
class FdbEntry:
    """One entry of a bridge's forwarding database (`bridge fdb show br <bridge>`)."""

    mac: str
    port: str  # the port's name (the bridge's own for its own entries)
    vid: int | None  # None: an entry of no VLAN (a bridge without filtering)
    local: bool  # the bridge's or a port's own address (NUD_PERMANENT)
    static: bool  # added by hand, never ages out (NUD_NOARP)
    updated_s: float | None  # seconds since the entry was last refreshed (ageing)


def _strerror(exc: NetlinkError) -> str:
    return f"{os.strerror(exc.code)} (errno {exc.code})"


class VlanOps:
    """VLAN reads and changes in network namespace `netns` through one pyroute2 socket."""

    def __init__(self, netns: str | None = None, ours_only: bool = False) -> None:
        """`ours_only`: bridges are acted on (and read) only while they carry our ownership
        mark (app.domain.links.parse_mark); a foreign bridge that took the name of one of
        ours (deleted by hand) is a VlanError (EEXIST), never switched to filtering or given
        memberships. The supervisor's instance sets it; read-only views do not."""
        self.netns = netns
        self.ipr = IPRoute(netns=netns) if netns else IPRoute()
        self._rtnl: socket.socket | None = None
        self.ours_only = ours_only

    def close(self) -> None:
        self._drop_sock()
        self.ipr.close()

    def __enter__(self) -> VlanOps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- links -----------------------------------------------------------------------------

    def _link(self, name: str) -> Any | None:
        """The RTM_NEWLINK message of `name`, or None when there is no such link."""
        try:
            return self.ipr.link("get", ifname=name)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise VlanError(f"reading link {name}: {_strerror(exc)}", exc.code) from exc

    def _index(self, name: str, what: str) -> int:
        msg = self._link(name)
        if msg is None:
            raise VlanError(f"{what} {name} does not exist", errno.ENODEV)
        return int(msg["index"])

    @staticmethod
    def _kind(msg: Any) -> str | None:
        info = msg.get_attr("IFLA_LINKINFO")
        return None if info is None else info.get_attr("IFLA_INFO_KIND")

    def _bridge(self, name: str) -> Any:
        msg = self._link(name)
        if msg is None:
            raise VlanError(f"bridge {name} does not exist", errno.ENODEV)
        if self._kind(msg) != "bridge":
            raise VlanError(f"{name} is not a bridge", errno.EINVAL)
        alias = msg.get_attr("IFLA_IFALIAS")
        if self.ours_only and parse_mark(alias) is None:
            raise VlanError(
                f"bridge {name} (index {msg['index']}, ifalias {alias!r}) is not managed by "
                "kvmnetd; it is left untouched",
                errno.EEXIST,
            )
        return msg

    # ---- 802.1Q sub-interfaces -------------------------------------------------------------

    def subinterface(self, name: str) -> SubInterface | None:
        """The sub-interface `name` as the kernel has it; None when there is no link of that
        name; VlanError (EEXIST) when the name belongs to a link of another kind."""
        msg = self._link(name)
        if msg is None:
            return None
        if self._kind(msg) != "vlan":
            raise VlanError(f"{name} exists and is not a VLAN sub-interface", errno.EEXIST)
        data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        protocol = int(data.get_attr("IFLA_VLAN_PROTOCOL") or ETH_P_8021Q)
        return SubInterface(
            name=name,
            index=int(msg["index"]),
            parent_index=int(msg.get_attr("IFLA_LINK")),
            vid=int(data.get_attr("IFLA_VLAN_ID")),
            protocol=PROTOCOLS.get(protocol, hex(protocol)),
            up=bool(msg["flags"] & IFF_UP),
        )

    def ensure_subinterface(self, name: str, parent: str, vid: int) -> SubInterface:
        """`<name>` = 802.1Q VLAN `vid` on `parent`, up once `parent` is up. An existing one
        with the same parent, VLAN id and protocol is kept; one that differs is an error
        (EEXIST), never changed: the kernel cannot move a sub-interface to another parent."""
        check_vid(vid)
        parent_index = self._index(parent, "parent link")
        action = f"creating VLAN {vid} sub-interface {name} on {parent}"
        try:
            self.ipr.link(
                "add",
                ifname=name,
                kind="vlan",
                link=parent_index,
                vlan_id=vid,
                vlan_protocol=ETH_P_8021Q,
            )
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                raise FeatureMissing(*VLAN_8021Q, action) from exc
            if exc.code != errno.EEXIST:
                raise VlanError(f"{action}: {_strerror(exc)}", exc.code) from exc
        found = self.subinterface(name)
        if found is None:
            raise VlanError(f"{name} vanished right after creation", errno.ENODEV)
        wanted = (parent_index, vid, "802.1Q")
        if (found.parent_index, found.vid, found.protocol) != wanted:
            raise VlanError(
                f"{name} exists as VLAN {found.vid} ({found.protocol}) on link index "
                f"{found.parent_index}, not VLAN {vid} (802.1Q) on {parent}",
                errno.EEXIST,
            )
        if found.up:
            return found
        try:
            self.ipr.link("set", index=found.index, state="up")
        except NetlinkError as exc:
            # a parent that is down refuses (ENETDOWN, net/8021q/vlan_dev.c vlan_dev_open);
            # the kernel brings the sub-interface up with its parent (vlan_device_event)
            if exc.code == errno.ENETDOWN:
                return found
            raise VlanError(f"setting {name} up: {_strerror(exc)}", exc.code) from exc
        return replace(found, up=True)

    def absent_subinterface(self, name: str) -> None:
        """Remove the sub-interface `name`; none there is fine; a link of another kind of
        that name is an error (EEXIST) and stays."""
        found = self.subinterface(name)
        if found is None:
            return
        try:
            self.ipr.link("del", index=found.index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise VlanError(f"deleting {name}: {_strerror(exc)}", exc.code) from exc

    # ---- bridge VLAN options ---------------------------------------------------------------

    def bridge_vlan_options(self, bridge: str) -> BridgeVlanOptions:
        """vlan_filtering and default_pvid of `bridge`; FeatureMissing on a kernel whose
        bridge has no VLAN filtering (it does not report IFLA_BR_VLAN_DEFAULT_PVID)."""
        data = self._bridge(bridge).get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        pvid = None if data is None else data.get_attr("IFLA_BR_VLAN_DEFAULT_PVID")
        if pvid is None:
            raise FeatureMissing(*VLAN_FILTERING, f"reading {bridge}'s VLAN options")
        return BridgeVlanOptions(
            filtering=bool(data.get_attr("IFLA_BR_VLAN_FILTERING")), default_pvid=int(pvid)
        )

    def set_bridge_vlan_options(
        self, bridge: str, *, filtering: bool | None = None, default_pvid: int | None = None
    ) -> BridgeVlanOptions:
        """Set what is given (None: leave as is) and return what the kernel then has. Note
        (br_vlan.c, __br_vlan_set_default_pvid): a new default_pvid also moves every port
        whose PVID is still the old default one; 0 turns the default PVID off."""
        if default_pvid is not None and default_pvid != 0:
            check_vid(default_pvid)
        attrs: dict[str, int] = {}
        if filtering is not None:
            attrs["br_vlan_filtering"] = int(filtering)
        if default_pvid is not None:
            attrs["br_vlan_default_pvid"] = default_pvid
        index = int(self._bridge(bridge)["index"])
        action = f"setting VLAN options {attrs} on bridge {bridge}"
        if attrs:
            try:
                self.ipr.link("set", index=index, kind="bridge", **attrs)
            except NetlinkError as exc:
                if exc.code == errno.EOPNOTSUPP:
                    raise FeatureMissing(*VLAN_FILTERING, action) from exc
                raise VlanError(f"{action}: {_strerror(exc)}", exc.code) from exc
        # a kernel without VLAN filtering accepts a default_pvid silently and ignores it
        try:
            options = self.bridge_vlan_options(bridge)
        except FeatureMissing as exc:
            raise FeatureMissing(*VLAN_FILTERING, action) from exc
        if (filtering is not None and options.filtering != filtering) or (
            default_pvid is not None and options.default_pvid != default_pvid
        ):
            raise VlanError(f"{action}: the kernel kept {options}", errno.EINVAL)
        return options

    # ---- per-port VLAN membership ----------------------------------------------------------

    def memberships(self, bridge: str) -> dict[str, dict[int, Membership]]:
        """Every port of `bridge` (and the bridge's own port, under its name) with its VLANs,
        like `bridge vlan show`. A port without VLANs is listed with none."""
        return memberships_of(self.port_vlans(self.bridge_index(bridge), bridge))

    def port_vlans(self, bridge_index: int, bridge: str) -> list[PortVlans]:
        """The AF_BRIDGE link dump's entries of the bridge with ifindex `bridge_index`: its
        ports (IFLA_MASTER) and its own (index == bridge_index), with index and VLANs. Read
        with the minimal decoder of app.host.rtnl (the general one cost ~40 % of a full pass
        on a filtering trunk of 1000 ports)."""
        try:
            dump = rtnl.dump_port_vlans(self._sock())
        except OSError as exc:
            self._drop_sock()
            code = exc.errno
            raise VlanError(f"reading VLANs of {bridge}: {os.strerror(code or 0)}", code) from exc
        return [p for p in dump if p.master == bridge_index or p.index == bridge_index]

    def _sock(self) -> socket.socket:
        """The raw request socket of app.host.rtnl, opened in `netns` on first use."""
        if self._rtnl is None:
            self._rtnl = call_in(self.netns, rtnl.open_socket) if self.netns else rtnl.open_socket()
        return self._rtnl

    def _drop_sock(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None

    def vlan_add(
        self, bridge: str, port: str, vid: int, *, pvid: bool = False, untagged: bool = False
    ) -> None:
        """`bridge vlan add dev <port> vid <vid> [pvid] [untagged]` (with `self` when `port`
        is the bridge itself). On a VLAN the port has, this sets the flags (a PVID flag
        left out clears the port's PVID when it was this VLAN)."""
        check_vid(vid)
        flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (
            BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0
        )
        self._vlan_filter("add", self.bridge_index(bridge), bridge, port, vid, flags)

    def vlan_del(self, bridge: str, port: str, vid: int) -> None:
        """`bridge vlan del dev <port> vid <vid> [self]`; a VLAN the port lacks is fine."""
        check_vid(vid)
        self._vlan_filter("del", self.bridge_index(bridge), bridge, port, vid, 0)

    def apply(
        self,
        bridge: str,
        steps: Iterable[VlanStep],
        ports: Mapping[str, int] | None = None,
        bridge_index: int | None = None,
    ) -> None:
        """Run planned steps (app.domain.vlan_ports) in order; stops at the first failure
        (each step is idempotent, so running the plan again finishes it). `ports` (name ->
        ifindex) and `bridge_index` may come from a membership dump just read
        (`port_vlans`): those ports are then not read again one by one; any other port is."""
        if bridge_index is None:
            bridge_index = self.bridge_index(bridge)
        known = {} if ports is None else ports
        for step in steps:
            check_vid(step.vid)
            if step.self_port != (step.port == bridge):
                raise VlanError(f"{step.describe()}: not a plan for {bridge}", errno.EINVAL)
            flags = (BRIDGE_VLAN_INFO_PVID if step.pvid else 0) | (
                BRIDGE_VLAN_INFO_UNTAGGED if step.untagged else 0
            )
            if step.op is StepOp.DEL:
                flags = 0
            self._vlan_filter(
                step.op.value,
                bridge_index,
                bridge,
                step.port,
                step.vid,
                flags,
                known.get(step.port),
            )

    def bridge_index(self, bridge: str) -> int:
        """The ifindex of the bridge `bridge`; VlanError (ENODEV) when there is none."""
        return int(self._bridge(bridge)["index"])

    def _vlan_filter(
        self,
        command: str,
        bridge_index: int,
        bridge: str,
        port: str,
        vid: int,
        flags: int,
        port_index: int | None = None,
    ) -> None:
        """One `bridge vlan` change; `port_index`: the port's ifindex as a dump of the
        bridge's ports just read it (None: read the port, and check it is the bridge's)."""
        action = f"bridge vlan {command} dev {port} vid {vid}"
        extra: dict[str, str] = {}
        if port == bridge:
            index, extra = bridge_index, {"vlan_flags": "self"}
        elif port_index is not None:
            index = port_index
        else:
            msg = self._link(port)
            if msg is None:
                raise VlanError(f"{action}: port {port} does not exist", errno.ENODEV)
            # the kernel answers EOPNOTSUPP for a link on no bridge: say what is wrong
            if msg.get_attr("IFLA_MASTER") != bridge_index:
                raise VlanError(f"{action}: {port} is not a port of {bridge}", errno.EINVAL)
            index = int(msg["index"])
        try:
            self.ipr.vlan_filter(
                command, index=index, vlan_info={"vid": vid, "flags": flags}, **extra
            )
        except NetlinkError as exc:
            if port_index is not None and port != bridge and exc.code == errno.EOPNOTSUPP:
                # the port left the bridge since the dump: say so, as a read port would
                self._vlan_filter(command, bridge_index, bridge, port, vid, flags)
                return
            if exc.code == errno.EOPNOTSUPP:
                raise FeatureMissing(*VLAN_FILTERING, action) from exc
            if command == "del" and exc.code == errno.ENOENT:
                return
            raise VlanError(f"{action}: {_strerror(exc)}", exc.code) from exc

    # ---- forwarding database ---------------------------------------------------------------

    def fdb(self, bridge: str) -> list[FdbEntry]:
        """`bridge fdb show br <bridge>`: the bridge's entries (learned, static and local) on
        its ports and itself, each with its VLAN; the ports' own address lists (NTF_SELF
        entries of no bridge) are left out."""
        bridge_index = int(self._bridge(bridge)["index"])
        try:
            dump = list(self.ipr.fdb("dump"))
        except NetlinkError as exc:
            raise VlanError(f"reading the FDB of {bridge}: {_strerror(exc)}", exc.code) from exc
        names: dict[int, str] = {}
        entries = []
        for msg in dump:
            if msg.get_attr("NDA_MASTER") != bridge_index:
                continue
            index = int(msg["ifindex"])
            if index not in names:
                names[index] = self._name_of(index)
            entries.append(_fdb_entry(msg, names[index]))
        return entries

    def fdb_add(self, bridge: str, port: str, mac: str, vid: int | None) -> None:
        """A static entry (`bridge fdb replace <mac> dev <port> master static [vlan N]`):
        one already there for (mac, vid) is moved to `port`."""
        self._fdb("replace", bridge, port, mac, vid)

    def fdb_del(self, bridge: str, port: str, mac: str, vid: int | None) -> None:
        """Remove the entry for (mac, vid) on `port`; none there is fine."""
        self._fdb("del", bridge, port, mac, vid)

    def _fdb(self, command: str, bridge: str, port: str, mac: str, vid: int | None) -> None:
        action = f"bridge fdb {command} {mac} dev {port} vlan {vid}"
        bridge_index = int(self._bridge(bridge)["index"])
        msg = self._link(port)
        if msg is None:
            raise VlanError(f"{action}: port {port} does not exist", errno.ENODEV)
        if msg.get_attr("IFLA_MASTER") != bridge_index:
            raise VlanError(f"{action}: {port} is not a port of {bridge}", errno.EINVAL)
        extra: dict[str, int] = {} if vid is None else {"vlan": check_vid(vid)}
        try:
            self.ipr.fdb(
                command,
                ifindex=int(msg["index"]),
                lladdr=mac,
                state=NUD_NOARP | NUD_REACHABLE,
                flags=NTF_MASTER,
                **extra,
            )
        except NetlinkError as exc:
            if command == "del" and exc.code == errno.ENOENT:
                return
            if vid is not None and exc.code == errno.EINVAL:
                # net/bridge/br_fdb.c br_fdb_add: "RTM_NEWNEIGH with unconfigured vlan"
                raise VlanError(
                    f"{action}: VLAN {vid} is not configured on {port}", exc.code
                ) from exc
            raise VlanError(f"{action}: {_strerror(exc)}", exc.code) from exc

    def _name_of(self, index: int) -> str:
        try:
            return str(self.ipr.link("get", index=index)[0].get_attr("IFLA_IFNAME"))
        except NetlinkError:
            return f"#{index}"  # gone meanwhile


def memberships_of(ports: Iterable[PortVlans]) -> dict[str, dict[int, Membership]]:
    """Port name -> its VLANs, from `port_vlans` entries."""
    return {
        port.name: {
            vid: Membership(vid, pvid=pvid, untagged=untagged)
            for vid, (pvid, untagged) in sorted(port.vlans.items())
        }
        for port in ports
        if port.name is not None
    }


def _fdb_entry(msg: Any, port: str) -> FdbEntry:
    state = int(msg["state"])
    cache = msg.get_attr("NDA_CACHEINFO")
    vid = msg.get_attr("NDA_VLAN")
    return FdbEntry(
        mac=str(msg.get_attr("NDA_LLADDR")),
        port=port,
        vid=None if vid is None else int(vid),
        local=bool(state & NUD_PERMANENT),
        static=bool(state & NUD_NOARP) and not state & NUD_PERMANENT,
        updated_s=None if cache is None else cache["ndm_updated"] / USER_HZ,
    )
