"""Neutron subnets <-> managed networks (app.services.neutron.subnets), with plain data:
Neutron's defaults (neutron-lib api-ref "Create subnet": gateway the first host, one pool of
every host but the gateway, DHCP on), what kvmnetd refuses in Neutron's words, and the
subnet view of a stored row."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from app.db.models import Network
from app.domain.errors import Conflict, InvalidInput
from app.domain.segments import SegmentKind
from app.services.neutron.subnets import (
    default_pool,
    network_create_from_subnet,
    network_update_from_subnet,
    subnet_view,
)

SEGMENT = "5b0c6a4e-8d3f-4e0a-9a51-2f7c1d9e0b11"


def create(**body: Any) -> Any:
    subnet = {"network_id": SEGMENT, "ip_version": 4, "cidr": "10.10.0.0/24", **body}
    return network_create_from_subnet(subnet, SegmentKind.VLAN)


def stored(**columns: Any) -> Network:
    when = dt.datetime(2026, 12, 1, 13, 5, 7, 123456, tzinfo=dt.UTC)
    fields: dict[str, Any] = {
        "id": "0f1e2d3c-4b5a-4968-8776-655443322110",
        "name": "sub1",
        "project_id": "p1",
        "vlan_id": SEGMENT,
        "subnet": "10.10.0.0/24",
        "gateway": "10.10.0.1",
        "nat": False,
        "dhcp": True,
        "range_start": "10.10.0.2",
        "range_end": "10.10.0.254",
        "lease_seconds": 600,
        "dns_nameservers": ["10.10.0.53"],
        "host_routes": [{"destination": "10.20.0.0/16", "nexthop": "10.10.0.254"}],
        "description": None,
        "generation": 3,
        "created_at": when,
        "updated_at": when + dt.timedelta(minutes=1),
        **columns,
    }
    return Network(**fields)


def test_neutrons_defaults() -> None:
    model = create(name="sub1")
    assert (model.name, model.vlan, model.bridge) == ("sub1", SEGMENT, None)
    assert (model.subnet, model.gateway) == ("10.10.0.0/24", "10.10.0.1")
    assert (model.dhcp.enabled, model.dhcp.range_start, model.dhcp.range_end) == (
        True,
        "10.10.0.2",
        "10.10.0.254",
    )
    assert model.nat.enabled is False  # no routers in this subset
    assert (model.dns_nameservers, model.host_routes, model.description) == ([], [], None)
    assert model.project_id is None
    # a bridge network; no name: named after the network; "" description is none
    bridge = network_create_from_subnet(
        {"network_id": SEGMENT, "ip_version": "4", "cidr": "10.10.0.0/24", "description": ""},
        SegmentKind.BRIDGE,
    )
    assert (bridge.bridge, bridge.vlan, bridge.name) == (SEGMENT, None, "subnet-5b0c6a4e")
    assert bridge.description is None


def test_what_a_request_sets() -> None:
    model = create(
        name="sub1",
        gateway_ip="10.10.0.254",
        allocation_pools=[{"start": "10.10.0.100", "end": "10.10.0.200"}],
        enable_dhcp="false",
        dns_nameservers=["10.10.0.1", "9.9.9.9"],
        host_routes=[{"destination": "192.168.5.0/24", "nexthop": "10.10.0.3"}],
        description="tenant A",
        tenant_id="acme",
        tags=["a"],  # the caller's to store
    )
    assert (model.gateway, model.dhcp.range_start, model.dhcp.range_end) == (
        "10.10.0.254",
        "10.10.0.100",
        "10.10.0.200",
    )
    assert model.dhcp.enabled is False
    assert model.dns_nameservers == ["10.10.0.1", "9.9.9.9"]
    assert [(r.destination, r.nexthop) for r in model.host_routes or []] == [
        ("192.168.5.0/24", "10.10.0.3")
    ]
    assert (model.description, model.project_id) == ("tenant A", "acme")


def test_default_pool_leaves_out_the_gateway() -> None:
    from ipaddress import IPv4Address as A
    from ipaddress import IPv4Network as N

    subnet = N("10.0.0.0/24")
    assert default_pool(subnet, A("10.0.0.1")) == (A("10.0.0.2"), A("10.0.0.254"))
    assert default_pool(subnet, A("10.0.0.254")) == (A("10.0.0.1"), A("10.0.0.253"))
    assert default_pool(subnet, A("10.0.0.100")) == (A("10.0.0.101"), A("10.0.0.254"))
    assert default_pool(subnet, A("10.0.0.200")) == (A("10.0.0.1"), A("10.0.0.199"))
    # the gateway given, pools left out: Neutron's default around it
    model = create(gateway_ip="10.10.0.254")
    assert (model.dhcp.range_start, model.dhcp.range_end) == ("10.10.0.1", "10.10.0.253")


@pytest.mark.parametrize(
    ("body", "error", "said"),
    [
        ({"ip_version": 6}, InvalidInput, "IPv6 subnets are not supported yet"),
        ({"cidr": "fd00::/64"}, InvalidInput, "IPv6 subnets are not supported yet"),
        ({"ipv6_ra_mode": "slaac"}, InvalidInput, "IPv6 subnets are not supported yet"),
        ({"ip_version": None}, InvalidInput, "is not in [4, 6]"),
        ({"gateway_ip": None}, InvalidInput, "without a gateway is not supported"),
        ({"gateway_ip": "10.11.0.1"}, InvalidInput, "not a host of the subnet"),
        (
            {
                "allocation_pools": [
                    {"start": "10.10.0.10", "end": "10.10.0.20"},
                    {"start": "10.10.0.30", "end": "10.10.0.40"},
                ]
            },
            InvalidInput,
            "2 allocation pools given",
        ),
        (
            {"allocation_pools": [{"start": "10.10.0.1", "end": "10.10.0.20"}]},
            Conflict,
            "Gateway ip 10.10.0.1 conflicts with allocation pool 10.10.0.1-10.10.0.20",
        ),
        (
            {"allocation_pools": [{"start": "10.10.0.10", "end": "10.10.1.20"}]},
            InvalidInput,
            "spans beyond the subnet cidr",
        ),
        ({"cidr": "10.10.0.1/24"}, InvalidInput, "'10.10.0.0/24' is recommended"),
        ({"cidr": "8.8.8.0/24"}, InvalidInput, "not a private range"),
        ({"cidr": None}, InvalidInput, "Required attribute 'cidr'"),
        ({"network_id": None}, InvalidInput, "Required attribute 'network_id'"),
        ({"dns_nameservers": ["1.1.1.1", "1.1.1.1"]}, InvalidInput, "1.1.1.1 twice"),
        ({"dns_nameservers": "1.1.1.1"}, InvalidInput, "Invalid input for dns_nameservers"),
        (
            {"host_routes": [{"destination": "10.2.0.0/16", "gateway": "10.10.0.9"}]},
            InvalidInput,
            "Invalid input for host_routes",
        ),
        (
            {"host_routes": [{"destination": "10.2.0.0/16", "nexthop": "10.3.0.9"}]},
            InvalidInput,
            "outside the subnet",
        ),
        ({"enable_dhcp": "maybe"}, InvalidInput, "cannot be converted to boolean"),
        ({"name": "my subnet"}, InvalidInput, "Invalid input for name"),
        ({"subnetpool_id": "x"}, InvalidInput, "subnet pools"),
        ({"service_types": ["compute:nova"]}, InvalidInput, "service types"),
        ({"project_id": "a", "tenant_id": "b"}, InvalidInput, "do not match"),
        ({"mtu": 1500}, InvalidInput, "Unrecognized attribute(s) 'mtu'"),
    ],
)
def test_refusals_in_neutrons_words(
    body: dict[str, Any], error: type[Exception], said: str
) -> None:
    with pytest.raises(error) as caught:
        create(**body)
    assert said in str(caught.value)


def test_a_missing_ip_version_is_refused_as_neutron_does() -> None:
    with pytest.raises(InvalidInput, match="Required attribute 'ip_version'"):
        network_create_from_subnet({"network_id": SEGMENT, "cidr": "10.0.0.0/24"}, SegmentKind.VLAN)


def test_the_subnet_view() -> None:
    view = subnet_view(stored(), SEGMENT, ["b", "a"])
    assert view == {
        "id": "0f1e2d3c-4b5a-4968-8776-655443322110",
        "name": "sub1",
        "network_id": SEGMENT,
        "project_id": "p1",
        "tenant_id": "p1",
        "cidr": "10.10.0.0/24",
        "gateway_ip": "10.10.0.1",
        "ip_version": 4,
        "enable_dhcp": True,
        "allocation_pools": [{"start": "10.10.0.2", "end": "10.10.0.254"}],
        "dns_nameservers": ["10.10.0.53"],
        "host_routes": [{"destination": "10.20.0.0/16", "nexthop": "10.10.0.254"}],
        "description": "",
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "segment_id": None,
        "service_types": [],
        "tags": ["a", "b"],
        "revision_number": 3,
        "created_at": "2026-12-01T13:05:07Z",
        "updated_at": "2026-12-01T13:06:07Z",
    }
    # a hand-written row's unreadable lists show as []
    broken = subnet_view(stored(dns_nameservers="garbage", host_routes=None), SEGMENT, [])
    assert (broken["dns_nameservers"], broken["host_routes"]) == ([], [])


def test_an_update_keeps_what_it_leaves_out() -> None:
    current = stored()
    patch = network_update_from_subnet({"enable_dhcp": False}, current)
    assert patch.model_fields_set == {"dhcp"}
    assert (patch.dhcp.enabled, patch.dhcp.range_start, patch.dhcp.range_end) == (
        False,
        "10.10.0.2",
        "10.10.0.254",
    )
    assert patch.dhcp.lease_time == 600  # carried over, not reset to the default
    pools = [{"start": "10.10.0.100", "end": "10.10.0.150"}]
    patch = network_update_from_subnet({"allocation_pools": pools}, current)
    assert (patch.dhcp.enabled, patch.dhcp.range_start) == (True, "10.10.0.100")
    patch = network_update_from_subnet(
        {
            "name": "renamed",
            "description": "",
            "dns_nameservers": None,
            "host_routes": [{"destination": "0.0.0.0/0", "nexthop": "10.10.0.9"}],
            "gateway_ip": "10.10.0.1",  # unchanged: nothing to do
        },
        current,
    )
    assert patch.model_fields_set == {"name", "description", "dns_nameservers", "host_routes"}
    assert (patch.name, patch.description, patch.dns_nameservers) == ("renamed", None, [])
    assert network_update_from_subnet({}, current).model_fields_set == set()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"gateway_ip": "10.10.0.2"}, "cannot change"),
        ({"gateway_ip": None}, "without a gateway"),
        ({"cidr": "10.10.0.0/24"}, "Cannot update read-only attribute cidr"),
        ({"network_id": SEGMENT}, "Cannot update read-only attribute network_id"),
        ({"ip_version": 4}, "Cannot update read-only attribute ip_version"),
        ({"allocation_pools": None}, "exactly one pool"),
        ({"name": ""}, "needs a name"),
        ({"host_routes": [{"destination": "10.2.0.0/16", "nexthop": "10.9.0.1"}]}, "outside"),
        ({"bogus": 1}, "Unrecognized attribute(s) 'bogus'"),
    ],
)
def test_update_refusals(body: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        network_update_from_subnet(body, stored())
    assert said in str(caught.value)
