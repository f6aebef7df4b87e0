"""VLAN rules (app.domain.vlans) with plain data: VIDs, names, the choice of backend from
probed facts, derived kernel names, trunk NIC lists."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import Conflict, InvalidInput
from app.domain.names import validate_link_name
from app.domain.vlans import (
    VLAN_NAME_PATTERN,
    HostLacksFeature,
    KernelFeature,
    VlanBackend,
    VlanFacts,
    VlanObjectKind,
    VlanObjectRole,
    choose_backend,
    kernel_objects,
    l3_interface_name,
    subinterface_name,
    validate_trunk_nic,
    validate_vlan_id,
    validate_vlan_name,
    vlan_bridge_name,
)

FILTERING, PER_VLAN, AUTO = (
    VlanBackend.VLAN_FILTERING,
    VlanBackend.BRIDGE_PER_VLAN,
    VlanBackend.AUTO,
)


def probe(vlan_8021q: bool, vlan_filtering: bool) -> dict[str, dict[str, object]]:
    """The capability probe's `links`, as app.host.capabilities reports them."""

    def one(ok: bool) -> dict[str, object]:
        return {"available": ok, "reason": None if ok else "Operation not supported (errno 95)"}

    return {
        "bridge": one(True),
        "vlan_8021q": one(vlan_8021q),
        "vlan_filtering": one(vlan_filtering),
    }


BOTH = VlanFacts.from_link_probe(probe(True, True))
ONLY_8021Q = VlanFacts.from_link_probe(probe(True, False))
ONLY_FILTERING = VlanFacts.from_link_probe(probe(False, True))
NEITHER = VlanFacts.from_link_probe(probe(False, False))


# ---- VIDs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("vid", [1, 10, 4094])
def test_vids_1_to_4094_are_vlans(vid: int) -> None:
    assert validate_vlan_id(vid) == vid


@pytest.mark.parametrize(
    ("vid", "why"),
    [(0, "null VID"), (4095, "reserved"), (-1, "outside"), (4096, "outside"), (True, "integer")],
)
def test_reserved_and_out_of_range_vids_are_refused(vid: int, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_vlan_id(vid)


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tenant-a", "a", "v10", "10a", "T_1.x", "a" * 15])
def test_good_vlan_names(name: str) -> None:
    assert validate_vlan_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "non-empty"),
        ("a" * 16, "16 characters; at most 15 .* never truncated"),
        ("10", "only digits"),
        ("-a", "start with a letter or digit"),
        ("a b", "only letters"),
        ("ä", "only letters"),
        ("a\n", "only letters"),
    ],
)
def test_bad_vlan_names_are_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_vlan_name(name)


@given(st.one_of(st.from_regex(VLAN_NAME_PATTERN.replace("$", r"\Z")), st.text(max_size=20)))
def test_the_name_pattern_accepts_exactly_what_the_validator_accepts(name: str) -> None:
    """The OpenAPI pattern (ECMA-262: `$` only at the very end) and the validator agree."""
    matches = re.fullmatch(VLAN_NAME_PATTERN.replace("$", r"\Z"), name) is not None
    try:
        validate_vlan_name(name)
        valid = True
    except InvalidInput:
        valid = False
    assert matches == valid, name


# ---- the backend ---------------------------------------------------------------------------


def test_auto_prefers_vlan_filtering_and_falls_back_to_a_bridge_per_vlan() -> None:
    assert choose_backend(AUTO, BOTH) is FILTERING
    assert choose_backend(AUTO, ONLY_FILTERING) is FILTERING
    assert choose_backend(AUTO, ONLY_8021Q) is PER_VLAN


def test_no_backend_works_without_both_features_and_the_refusal_names_them() -> None:
    """This machine's kernel: neither 802.1Q nor VLAN filtering."""
    with pytest.raises(HostLacksFeature) as caught:
        choose_backend(AUTO, NEITHER)
    assert caught.value.status == 409
    for text in ("CONFIG_VLAN_8021Q", "8021q", "CONFIG_BRIDGE_VLAN_FILTERING"):
        assert text in caught.value.detail
    missing = caught.value.extra["missing_features"]
    assert isinstance(missing, list)
    assert [m["feature"] for m in missing] == ["vlan_8021q", "vlan_filtering"]
    assert missing[0]["kernel_config"] == "CONFIG_VLAN_8021Q" and missing[0]["module"] == "8021q"
    assert missing[1]["reason"] == "Operation not supported (errno 95)"


@pytest.mark.parametrize(
    ("backend", "facts", "feature"),
    [
        (FILTERING, ONLY_8021Q, KernelFeature.VLAN_FILTERING),
        (PER_VLAN, ONLY_FILTERING, KernelFeature.VLAN_8021Q),
    ],
)
def test_an_explicit_backend_the_host_lacks_is_refused_naming_that_feature(
    backend: VlanBackend, facts: VlanFacts, feature: KernelFeature
) -> None:
    with pytest.raises(HostLacksFeature, match=backend.value) as caught:
        choose_backend(backend, facts)
    missing = caught.value.extra["missing_features"]
    assert isinstance(missing, list)
    assert [m["feature"] for m in missing] == [feature.value]


def test_an_explicit_backend_the_host_has_is_taken() -> None:
    assert choose_backend(PER_VLAN, BOTH) is PER_VLAN
    assert choose_backend(FILTERING, BOTH) is FILTERING


def test_one_trunk_one_backend() -> None:
    """auto follows the trunk's other VLANs even where the other backend is preferred; an
    explicit other backend is refused; the trunk's backend still needs its feature."""
    assert choose_backend(AUTO, BOTH, trunk_backend=PER_VLAN) is PER_VLAN
    assert choose_backend(PER_VLAN, BOTH, trunk_backend=PER_VLAN) is PER_VLAN
    with pytest.raises(Conflict, match="cannot mix backends"):
        choose_backend(FILTERING, BOTH, trunk_backend=PER_VLAN)
    with pytest.raises(HostLacksFeature, match="bridge_per_vlan"):
        choose_backend(AUTO, ONLY_FILTERING, trunk_backend=PER_VLAN)


def test_a_feature_the_probe_did_not_report_counts_as_missing() -> None:
    facts = VlanFacts.from_link_probe({"bridge": {"available": True}})
    assert set(facts.missing) == set(KernelFeature)


# ---- derived kernel names ------------------------------------------------------------------


def test_natural_names_when_they_fit() -> None:
    assert subinterface_name("eth0", 10) == "eth0.10"
    assert vlan_bridge_name("vmbr0", 10) == "vmbr0v10"
    assert l3_interface_name(FILTERING, "br0", 4094) == "br0.4094"
    assert l3_interface_name(PER_VLAN, "br0", 20) == "br0v20"
    assert subinterface_name("abcdefghij", 4094) == "abcdefghij.4094"  # exactly 15


@pytest.mark.parametrize("parent", ["abcdefghijklmn", "enp0s31f6-uplnk", "a" * 15])
@pytest.mark.parametrize("vid", [1, 4094])
def test_long_names_get_a_short_stable_name_never_a_truncated_one(parent: str, vid: int) -> None:
    sub, bridge = subinterface_name(parent, vid), vlan_bridge_name(parent, vid)
    for name in (sub, bridge):
        assert validate_link_name(name) == name  # <= 15, a valid kernel name
    assert re.fullmatch(rf"vl[0-9a-f]{{6}}\.{vid}", sub), sub
    assert re.fullmatch(rf"vb[0-9a-f]{{6}}v{vid}", bridge), bridge
    # stable: the same parent and VID give the same name; another parent another one
    assert subinterface_name(parent, vid) == sub
    assert subinterface_name(parent[:-1] + "z", vid) != sub


def test_kernel_objects_of_a_bridge_per_vlan() -> None:
    (alone,) = kernel_objects(PER_VLAN, "br0", 10, None)  # no uplink: nothing tagged leaves
    assert (alone.kind, alone.name, alone.role) == (
        VlanObjectKind.BRIDGE,
        "br0v10",
        VlanObjectRole.VLAN_BRIDGE,
    )
    objects = kernel_objects(PER_VLAN, "br0", 10, "eth0")
    assert [(o.kind, o.name, o.role, o.parent) for o in objects] == [
        (VlanObjectKind.BRIDGE, "br0v10", VlanObjectRole.VLAN_BRIDGE, None),
        (VlanObjectKind.VLAN, "eth0.10", VlanObjectRole.UPLINK_SUBINTERFACE, "eth0"),
    ]


def test_kernel_objects_of_a_filtering_trunk() -> None:
    """The VID tagged on the uplink port; the bridge's own <bridge>.<vid>, and the VID on
    the bridge's own port, only once the host needs an address there (`l3`)."""
    assert kernel_objects(FILTERING, "br0", 10, None) == ()
    objects = kernel_objects(FILTERING, "br0", 10, "eth0")
    assert [(o.kind, o.name, o.role, o.parent) for o in objects] == [
        (VlanObjectKind.BRIDGE_VLAN, "eth0", VlanObjectRole.UPLINK_TAGGED, "br0")
    ]
    objects = kernel_objects(FILTERING, "br0", 10, "eth0", l3=True)
    assert [(o.kind, o.name, o.role, o.parent) for o in objects] == [
        (VlanObjectKind.BRIDGE_VLAN, "eth0", VlanObjectRole.UPLINK_TAGGED, "br0"),
        (VlanObjectKind.VLAN, "br0.10", VlanObjectRole.L3_INTERFACE, "br0"),
        (VlanObjectKind.BRIDGE_VLAN, "br0", VlanObjectRole.L3_TAGGED, "br0"),
    ]
    # no uplink yet: the host's address on the VLAN is there all the same
    assert [o.role for o in kernel_objects(FILTERING, "br0", 10, None, l3=True)] == [
        VlanObjectRole.L3_INTERFACE,
        VlanObjectRole.L3_TAGGED,
    ]
    # bridge_per_vlan: the address lives on the VLAN's bridge, nothing more
    assert kernel_objects(PER_VLAN, "br0", 10, "eth0", l3=True) == kernel_objects(
        PER_VLAN, "br0", 10, "eth0"
    )


# ---- trunk NICs ----------------------------------------------------------------------------


def test_a_trunk_nic_lists_tagged_vlans_and_an_optional_native_one() -> None:
    trunk = validate_trunk_nic([20, 10], 30, FILTERING)
    assert (trunk.tagged, trunk.native) == ((10, 20), 30)
    assert validate_trunk_nic([5], None, FILTERING).native is None


@pytest.mark.parametrize(
    ("tagged", "native", "why"),
    [
        ([], None, "at least one"),
        ([10, 10], None, "more than once"),
        ([10, 0], None, "null VID"),
        ([10], 4095, "reserved"),
        ([10, 20], 20, "both the native"),
    ],
)
def test_bad_trunk_nic_lists_are_refused(tagged: list[int], native: int | None, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_trunk_nic(tagged, native, FILTERING)


def test_a_trunk_nic_needs_the_filtering_backend() -> None:
    with pytest.raises(InvalidInput, match="needs the vlan_filtering backend"):
        validate_trunk_nic([10], None, PER_VLAN)
