"""The Neutron view's pure rules (issue 12): `brq` kernel names, If-Match revisions, tag
rules, the tenant network type, and the settings that configure physical networks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.domain.names import neutron_bridge_ifname
from app.domain.neutron import (
    NetworkType,
    NeutronBadRequest,
    NeutronConfig,
    RevisionMismatch,
    TenantNetworkType,
    check_revision,
    convert_to_boolean,
    revision_constraint,
    validate_tag,
)
from app.settings import Settings


def test_a_local_networks_bridge_is_brq_and_11_hex_digits_of_its_id() -> None:
    assert neutron_bridge_ifname("3f2a9c1e-77b0-4d1a-8e3c-000000000001") == "brq3f2a9c1e77b"
    assert len(neutron_bridge_ifname("3f2a9c1e-77b0-4d1a-8e3c-000000000001")) == 14


def test_if_match_takes_only_neutrons_revision_form() -> None:
    assert revision_constraint(None) is None
    assert revision_constraint("revision_number=7") == 7
    assert revision_constraint(" revision_number = 7 ") == 7
    for bad in ("*", '"etag"', "revision_number=x", "revision_number=-1"):
        with pytest.raises(NeutronBadRequest):
            revision_constraint(bad)
    check_revision(None, 3)
    check_revision(3, 3)
    with pytest.raises(RevisionMismatch, match="Constrained to 2, but current revision is 3"):
        check_revision(2, 3)


def test_booleans_convert_as_neutron_lib() -> None:
    for value, expected in ((True, True), ("TRUE", True), (" 1 ", True), (1, True)):
        assert convert_to_boolean(value) is expected, value
    for value in (False, "false", "0", 0):
        assert convert_to_boolean(value) is False, value
    for value in ("maybe", "", 2, -1, None, 1.0, []):
        assert convert_to_boolean(value) is None, value


def test_tags_follow_neutrons_rules() -> None:
    assert validate_tag("t" * 255) == "t" * 255
    assert validate_tag("ümlaut web-1") == "ümlaut web-1"
    # control characters too (a NUL-only tag reached the database's CHECK: a 409 before)
    for bad in ("", "t" * 256, "a,b", "a/b", "\x00", "a\nb", "\x01x", "x\x7f"):
        with pytest.raises(NeutronBadRequest):
            validate_tag(bad)


def test_the_tenant_network_type() -> None:
    none = NeutronConfig()
    physnet = NeutronConfig({"physnet1": "br-phys"})
    assert none.tenant_type(host_carries_vlans=True) is NetworkType.LOCAL
    assert physnet.tenant_type(host_carries_vlans=False) is NetworkType.LOCAL
    assert physnet.tenant_type(host_carries_vlans=True) is NetworkType.VLAN
    local = NeutronConfig({"physnet1": "br-phys"}, TenantNetworkType.LOCAL)
    assert local.tenant_type(host_carries_vlans=True) is NetworkType.LOCAL
    assert physnet.physnet_of_bridge("br-phys") == "physnet1"
    assert physnet.physnet_of_bridge("br0") is None
    with pytest.raises(NeutronBadRequest, match="physnet1"):
        physnet.bridge_of("physnet9")


def test_settings_refuse_a_bad_bridge_name_or_an_unconfigured_tenant_physnet() -> None:
    with pytest.raises(ValidationError, match="15"):
        Settings(physical_networks={"physnet1": "a-bridge-name-too-long"})
    with pytest.raises(ValidationError, match="physnet2"):
        Settings(physical_networks={"physnet1": "br-phys"}, tenant_physical_network="physnet2")
    configured = Settings(physical_networks={"physnet1": "br-phys"}).neutron
    assert configured.tenant_physnet() == "physnet1"
