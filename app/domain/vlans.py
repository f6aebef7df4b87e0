"""VLANs (IEEE 802.1Q) on a trunk bridge: ids, names, backends and the kernel objects they need.

A VLAN is a tenant's L2 segment on one of our bridges, the trunk (Neutron: a network of
`provider:network_type` vlan with `provider:segmentation_id` = the VLAN id). Two kernel
backends carry it, chosen per trunk (one trunk = one backend; mixing them is refused):

- `vlan_filtering`: the trunk bridge filters VLANs (kernel CONFIG_BRIDGE_VLAN_FILTERING,
  `ip link set br0 type bridge vlan_filtering 1`); the uplink port carries the VID tagged,
  NIC taps are access ports (PVID, untagged). A host address on the VLAN lives on an
  802.1Q interface of the bridge itself, `<bridge>.<vid>` (that one needs 8021q too).
- `bridge_per_vlan` (Neutron's linuxbridge agent, Proxmox without VLAN-aware bridges): an
  802.1Q sub-interface `<uplink>.<vid>` of the trunk's uplink (kernel CONFIG_VLAN_8021Q,
  module 8021q) plus a bridge per VLAN that the sub-interface and the taps join; a host
  address on the VLAN lives on that bridge.

`auto` prefers `vlan_filtering` (one bridge, no extra links per VLAN) and falls back to
`bridge_per_vlan`. Backends are chosen from probed facts (app.host.capabilities), never
assumed; where neither works the request is refused naming the missing kernel features.

Derived kernel names are at most 15 characters (IFNAMSIZ - 1) and never truncated: the
natural name when it fits, else a short stable name derived from a hash (see `_derived`).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from app.domain.errors import Conflict, InvalidInput
from app.domain.names import LINK_NAME_MAX

# IEEE 802.1Q-2018 9.6 (VID), table 9-2: 0 is the null VID (a priority-tagged frame carries
# no VLAN), 4095 (0xFFF) is reserved; 1-4094 identify VLANs.
VID_MIN, VID_MAX = 1, 4094
RESERVED_VIDS = {
    0: "the null VID: a frame tagged with VID 0 is only priority-tagged and belongs to no VLAN",
    4095: "reserved for implementation use and never carried on the wire",
}

# A VLAN's name: at most 15 characters, so it never looks like a 36-character id where
# either is accepted, and never only digits, so it never reads as a VLAN id where a NIC
# names its VLAN (`"vlan": "tenant-a"`). Unique without regard to case (the service checks).
VLAN_NAME_MAX = 15
VLAN_NAME_PATTERN = f"^(?![0-9]+$)[A-Za-z0-9][A-Za-z0-9_.-]{{0,{VLAN_NAME_MAX - 1}}}$"
_VLAN_NAME_RE = re.compile(VLAN_NAME_PATTERN.removeprefix("^").removesuffix("$"))
DESCRIPTION_MAX = 255  # Neutron's description limit


class VlanBackend(enum.StrEnum):
    AUTO = "auto"
    VLAN_FILTERING = "vlan_filtering"
    BRIDGE_PER_VLAN = "bridge_per_vlan"


RESOLVED_BACKENDS = (VlanBackend.VLAN_FILTERING, VlanBackend.BRIDGE_PER_VLAN)


class KernelFeature(enum.StrEnum):
    """Kernel features a backend needs; the values are the capability probe's link keys."""

    VLAN_8021Q = "vlan_8021q"
    VLAN_FILTERING = "vlan_filtering"


@dataclass(frozen=True)
class FeatureSource:
    """Where a feature comes from in the kernel (Documentation/networking, Kconfig)."""

    what: str
    kernel_config: str
    module: str | None


FEATURE_SOURCES = {
    KernelFeature.VLAN_8021Q: FeatureSource(
        "802.1Q VLAN sub-interfaces", "CONFIG_VLAN_8021Q", "8021q"
    ),
    KernelFeature.VLAN_FILTERING: FeatureSource(
        "bridge VLAN filtering", "CONFIG_BRIDGE_VLAN_FILTERING", None
    ),
}

# What each backend needs to carry the VLAN at all (a host address on a filtering VLAN
# also needs 8021q: `l3_needs`).
BACKEND_NEEDS: dict[VlanBackend, tuple[KernelFeature, ...]] = {
    VlanBackend.VLAN_FILTERING: (KernelFeature.VLAN_FILTERING,),
    VlanBackend.BRIDGE_PER_VLAN: (KernelFeature.VLAN_8021Q,),
}


def l3_needs(backend: VlanBackend) -> tuple[KernelFeature, ...]:
    """What the host's own address on the VLAN needs beyond the backend: the filtering
    backend's `<bridge>.<vid>` is an 802.1Q interface; a per-VLAN bridge takes the address
    itself."""
    return (KernelFeature.VLAN_8021Q,) if backend is VlanBackend.VLAN_FILTERING else ()


@dataclass(frozen=True)
class VlanFacts:
    """What the probed kernel offers for VLANs: feature -> None when available, else why
    not (the probe's reason)."""

    missing: Mapping[KernelFeature, str]

    @classmethod
    def from_link_probe(cls, links: Mapping[str, Mapping[str, Any]]) -> VlanFacts:
        """From the capability probe's `links` (GET /v1/host/capabilities): a feature the
        probe did not report counts as missing."""
        missing = {}
        for feature in KernelFeature:
            probed = links.get(feature.value)
            if probed is None:
                missing[feature] = "not probed"
            elif not probed.get("available"):
                missing[feature] = str(probed.get("reason") or "the kernel refused it")
        return cls(missing)

    def lacks(self, backend: VlanBackend) -> list[KernelFeature]:
        return [f for f in BACKEND_NEEDS[backend] if f in self.missing]


class HostLacksFeature(Conflict):
    """The request is valid, but this host's kernel cannot carry it (409)."""

    kind = "host-lacks-feature"
    title = "The host's kernel lacks a feature this needs"


def _missing_members(features: Iterable[KernelFeature], facts: VlanFacts) -> list[dict[str, Any]]:
    return [
        {
            "feature": f.value,
            "description": FEATURE_SOURCES[f].what,
            "kernel_config": FEATURE_SOURCES[f].kernel_config,
            "module": FEATURE_SOURCES[f].module,
            "reason": facts.missing[f],
        }
        for f in features
    ]


def _feature_text(feature: KernelFeature) -> str:
    source = FEATURE_SOURCES[feature]
    module = f", module {source.module}" if source.module else ""
    return f"{source.what} (kernel {source.kernel_config}{module})"


def choose_backend(
    requested: VlanBackend, facts: VlanFacts, trunk_backend: VlanBackend | None = None
) -> VlanBackend:
    """The backend a new VLAN gets. `trunk_backend`: the one the trunk's other VLANs use
    (one trunk = one backend); `auto` takes it, an explicit other one is refused. Raises
    HostLacksFeature naming the missing kernel features (problem member `missing_features`)
    when the host cannot carry it."""
    if trunk_backend is not None and requested not in (VlanBackend.AUTO, trunk_backend):
        raise Conflict(
            f"the trunk carries its VLANs with the {trunk_backend.value} backend; one trunk "
            f"cannot mix backends (asked: {requested.value})",
            trunk_backend=trunk_backend.value,
        )
    if requested is not VlanBackend.AUTO or trunk_backend is not None:
        backend = trunk_backend or requested
        lacking = facts.lacks(backend)
        if lacking:
            raise HostLacksFeature(
                f"the {backend.value} backend needs "
                + " and ".join(_feature_text(f) for f in lacking)
                + ", which this host's kernel lacks",
                missing_features=_missing_members(lacking, facts),
            )
        return backend
    for backend in RESOLVED_BACKENDS:  # the preference order of `auto`
        if not facts.lacks(backend):
            return backend
    raise _no_backend(facts, "no VLAN backend works on this host")


def _no_backend(facts: VlanFacts, head: str) -> HostLacksFeature:
    lacking = sorted({f for b in RESOLVED_BACKENDS for f in facts.lacks(b)})
    return HostLacksFeature(
        f"{head}: vlan_filtering needs "
        f"{_feature_text(KernelFeature.VLAN_FILTERING)} and bridge_per_vlan needs "
        f"{_feature_text(KernelFeature.VLAN_8021Q)}; this host's kernel lacks "
        + " and ".join(FEATURE_SOURCES[f].kernel_config for f in lacking),
        missing_features=_missing_members(lacking, facts),
    )


# ---- refusals where the host can carry no VLAN -------------------------------------------------
# A VLAN is named in a few places besides POST /v1/vlans (a tap's or a VM NIC's `vlan`, a
# network's `vlan`, a trunk NIC's `vlan_tagged`). Where the kernel makes the request
# impossible, the answer is the same 409 `host-lacks-feature` with `missing_features` that
# POST /v1/vlans gives, not advice ("no VLAN 'x'", "create the VLANs first") that can only
# end in that 409. `facts` is None where the caller did not probe (the request named no VLAN).


def no_vlan_can_exist(facts: VlanFacts | None, ref: str) -> HostLacksFeature | None:
    """For an unknown VLAN `ref`: the 409 saying that no VLAN can exist on this host (no
    backend works), or None where one could (then "no VLAN `ref`" is the answer, a 404)."""
    if facts is None or any(not facts.lacks(b) for b in RESOLVED_BACKENDS):
        return None
    return _no_backend(facts, f"no VLAN {ref!r}, and none can exist on this host")


def require_trunk_nic_support(facts: VlanFacts | None) -> None:
    """A trunk NIC (`vlan_tagged`, `native_vlan`) needs a VLAN-filtering trunk (a per-VLAN
    bridge carries one VLAN, untagged: validate_trunk_nic); 409 naming the missing feature
    where the kernel has no bridge VLAN filtering."""
    lacking = [] if facts is None else facts.lacks(VlanBackend.VLAN_FILTERING)
    if facts is not None and lacking:
        raise HostLacksFeature(
            "a trunk NIC (vlan_tagged) needs a trunk that filters VLANs: "
            + " and ".join(_feature_text(f) for f in lacking)
            + ", which this host's kernel lacks (a bridge_per_vlan VLAN carries one VLAN "
            "untagged, never a trunk)",
            missing_features=_missing_members(lacking, facts),
        )


# ---- validation ------------------------------------------------------------------------------


def validate_vlan_id(vid: int) -> int:
    """A VLAN id (VID) of IEEE 802.1Q-2018 9.6: 1-4094."""
    if isinstance(vid, bool) or not isinstance(vid, int):
        raise InvalidInput("a VLAN id must be an integer between 1 and 4094")
    if vid in RESERVED_VIDS:
        raise InvalidInput(
            f"VLAN id {vid} is {RESERVED_VIDS[vid]} (IEEE 802.1Q-2018 9.6); use 1-4094"
        )
    if not VID_MIN <= vid <= VID_MAX:
        raise InvalidInput(f"VLAN id {vid} is outside 1-4094 (a VID has 12 bits)")
    return vid


def validate_vlan_name(name: str) -> str:
    """1-15 characters of letters, digits, '_', '.', '-', the first a letter or digit, not
    only digits; never truncated."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("VLAN name must be a non-empty string")
    if len(name) > VLAN_NAME_MAX:
        raise InvalidInput(
            f"VLAN name {name!r} is {len(name)} characters; at most {VLAN_NAME_MAX} are "
            "allowed and names are never truncated"
        )
    if name.isascii() and name.isdigit():
        raise InvalidInput(
            f"VLAN name {name!r} is only digits: it would read as a VLAN id; add a letter"
        )
    if not _VLAN_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"VLAN name {name!r} may contain only letters, digits, '_', '.' and '-', and "
            "must start with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class TrunkVlans:
    """A guest trunk NIC's VLANs: `tagged` VIDs (sorted) and the untagged `native` one."""

    tagged: tuple[int, ...]
    native: int | None


def validate_trunk_nic(
    tagged: Iterable[int], native: int | None, backend: VlanBackend
) -> TrunkVlans:
    """A NIC that carries several VLANs to the guest (`vlan_tagged`, optional native VLAN,
    sent untagged: the port's PVID). Only a filtering trunk can do that: a per-VLAN bridge
    carries one VLAN, untagged. At least one tagged VID, each once; the native VID is not
    also tagged (a VID is either egress-untagged or tagged on a port, `bridge vlan add`)."""
    if backend is not VlanBackend.VLAN_FILTERING:
        raise InvalidInput(
            f"a trunk NIC needs the vlan_filtering backend; the {backend.value} backend "
            "carries one VLAN per bridge, untagged, so it cannot hand a guest tagged VLANs"
        )
    vids = [validate_vlan_id(v) for v in tagged]
    if not vids:
        raise InvalidInput("vlan_tagged must list at least one VLAN id")
    repeated = sorted({v for v in vids if vids.count(v) > 1})
    if repeated:
        raise InvalidInput(f"vlan_tagged lists VLAN {repeated[0]} more than once")
    if native is not None:
        validate_vlan_id(native)
        if native in vids:
            raise InvalidInput(
                f"VLAN {native} cannot be both the native (untagged) VLAN and tagged"
            )
    return TrunkVlans(tuple(sorted(vids)), native)


# ---- derived kernel names --------------------------------------------------------------------


class TrunkNames(NamedTuple):
    """A trunk bridge as VLAN views and derivations need it: its name (the user's), its
    kernel name (`ifname`, what every derived name builds on: app.domain.names.link_ifname)
    and its uplink NIC's name (None without one)."""

    name: str
    ifname: str
    uplink: str | None


def _derived(prefix: str, parent: str, separator: str, vid: int) -> str:
    """`<prefix><6 hex of sha256(parent)><separator><vid>`: at most 2 + 6 + 1 + 4 = 13
    characters, the same for the same parent and VID on every host and run. Two parents
    share the 6 hex digits with a chance of 1 in 2^24; the names are claimed (409 naming
    the holder), so such a clash is refused, never shared."""
    digest = hashlib.sha256(parent.encode()).hexdigest()[:6]
    return f"{prefix}{digest}{separator}{vid}"


def subinterface_name(parent: str, vid: int) -> str:
    """The 802.1Q interface of `parent` for `vid`: `<parent>.<vid>` (the iproute2 and
    vconfig convention) when it fits in 15 characters, else `vl<hash>.<vid>`."""
    natural = f"{parent}.{vid}"
    return natural if len(natural) <= LINK_NAME_MAX else _derived("vl", parent, ".", vid)


def vlan_bridge_name(trunk: str, vid: int) -> str:
    """The per-VLAN bridge of `trunk` for `vid`: `<trunk>v<vid>` (Proxmox's vmbr0v10) when
    it fits, else `vb<hash>v<vid>`."""
    natural = f"{trunk}v{vid}"
    return natural if len(natural) <= LINK_NAME_MAX else _derived("vb", trunk, "v", vid)


def l3_interface_name(backend: VlanBackend, trunk: str, vid: int) -> str:
    """Where a host address on the VLAN lives: the filtering trunk's `<bridge>.<vid>`
    (made only once an address is needed), or the per-VLAN bridge."""
    if backend is VlanBackend.VLAN_FILTERING:
        return subinterface_name(trunk, vid)
    return vlan_bridge_name(trunk, vid)


class VlanObjectKind(enum.StrEnum):
    BRIDGE = "bridge"  # a bridge link
    VLAN = "vlan"  # an 802.1Q link
    BRIDGE_VLAN = "bridge_vlan"  # a VID on a bridge port (`bridge vlan show`)


class VlanObjectRole(enum.StrEnum):
    VLAN_BRIDGE = "vlan_bridge"  # bridge_per_vlan: the VLAN's own bridge
    UPLINK_SUBINTERFACE = "uplink_subinterface"  # bridge_per_vlan: <uplink>.<vid> in it
    UPLINK_TAGGED = "uplink_tagged"  # vlan_filtering: the VID tagged on the uplink port
    L3_INTERFACE = "l3_interface"  # vlan_filtering: <bridge>.<vid>, the host's address on it
    L3_TAGGED = "l3_tagged"  # vlan_filtering: the VID tagged on the bridge's own port for it


@dataclass(frozen=True)
class KernelObject:
    """One kernel object a VLAN owns: a link, or (bridge_vlan) the VID on port `name` of
    bridge `parent`."""

    kind: VlanObjectKind
    name: str
    role: VlanObjectRole
    parent: str | None = None


def kernel_objects(
    backend: VlanBackend, trunk: str, vid: int, uplink: str | None, l3: bool = False
) -> tuple[KernelObject, ...]:
    """The kernel objects the VLAN owns now, given the trunk's uplink NIC (None: none yet;
    then nothing tagged leaves the host) and whether the host needs an address on it (`l3`:
    a managed network is on the VLAN). With the filtering backend that address needs the
    trunk's 802.1Q link `<bridge>.<vid>` (l3_interface_name) and the VID tagged on the
    bridge's own port, which hands the VLAN's frames up to it (app.domain.vlan_ports.
    bridge_self); with bridge_per_vlan it lives on the VLAN's own bridge."""
    if backend is VlanBackend.BRIDGE_PER_VLAN:
        objects = [
            KernelObject(
                VlanObjectKind.BRIDGE, vlan_bridge_name(trunk, vid), VlanObjectRole.VLAN_BRIDGE
            )
        ]
        if uplink is not None:
            objects.append(
                KernelObject(
                    VlanObjectKind.VLAN,
                    subinterface_name(uplink, vid),
                    VlanObjectRole.UPLINK_SUBINTERFACE,
                    parent=uplink,
                )
            )
        return tuple(objects)
    objects = []
    if uplink is not None:
        objects.append(
            KernelObject(
                VlanObjectKind.BRIDGE_VLAN, uplink, VlanObjectRole.UPLINK_TAGGED, parent=trunk
            )
        )
    if l3:
        objects += [
            KernelObject(
                VlanObjectKind.VLAN,
                subinterface_name(trunk, vid),
                VlanObjectRole.L3_INTERFACE,
                parent=trunk,
            ),
            KernelObject(VlanObjectKind.BRIDGE_VLAN, trunk, VlanObjectRole.L3_TAGGED, parent=trunk),
        ]
    return tuple(objects)


@dataclass(frozen=True)
class VlanBridge:
    """A bridge_per_vlan VLAN's own bridge as the trunk's views show it: the bridge's kernel
    name, the VID every port of it carries (untagged inside it), the VLAN's id and name."""

    bridge: str
    vid: int
    vlan_id: str
    vlan: str
