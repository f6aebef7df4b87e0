"""Pure rules of managed networks: addressing, fixed addresses, names, forwards, the nftables
rendering and the dnsmasq files."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from app.domain.errors import AddressesExhausted, Conflict, InvalidInput
from app.domain.nat_rules import Forward, NatNetwork, canonical, removal, render
from app.domain.networks import (
    DhcpDnsSpec,
    HostPrefix,
    HostRoute,
    LeaseHolder,
    NicAddress,
    PortSpan,
    StaticHost,
    allocate_address,
    check_fixed_address,
    check_forward_ports,
    check_host_routes,
    check_nameservers,
    check_no_overlap,
    clash_reason,
    clashes,
    classless_routes,
    dns_label,
    foreign_clash,
    listen_address,
    observe_address,
    plan_addressing,
    static_hosts,
    validate_domain,
)
from app.host.dnsmasq import DnsmasqPaths, render_conf, render_dhcp_hosts, render_dns_hosts


def test_addressing_defaults_gateway_first_host_and_pool_upper_half() -> None:
    plan = plan_addressing("192.168.100.0/24", None, None, None)
    assert (str(plan.gateway), str(plan.range_start), str(plan.range_end)) == (
        "192.168.100.1",
        "192.168.100.128",
        "192.168.100.254",
    )
    assert plan.gateway_interface == "192.168.100.1/24"


@pytest.mark.parametrize(
    ("subnet", "gateway", "start", "end", "words"),
    [
        ("192.168.100.1/24", None, None, None, "CIDR"),
        ("192.168.100.0/30", None, None, None, "too small"),
        ("8.8.8.0/24", None, None, None, "private"),
        ("192.168.100.0/24", "192.168.101.1", None, None, "outside the subnet"),
        ("192.168.100.0/24", "192.168.100.255", None, None, "broadcast"),
        ("192.168.100.0/24", None, "192.168.100.10", None, "both"),
        ("192.168.100.0/24", None, "192.168.100.50", "192.168.100.40", "after"),
        ("192.168.100.0/24", None, "192.168.99.10", "192.168.100.40", "outside"),
        ("192.168.100.0/24", None, "192.168.100.1", "192.168.100.40", "gateway"),
    ],
)
def test_bad_addressing_is_refused(
    subnet: str, gateway: str | None, start: str | None, end: str | None, words: str
) -> None:
    with pytest.raises(InvalidInput, match=words):
        plan_addressing(subnet, gateway, start, end)


def test_overlap_and_fixed_addresses() -> None:
    plan = plan_addressing("10.0.0.0/29", None, "10.0.0.5", "10.0.0.6")
    check_no_overlap(plan.subnet, [("other", "10.0.1.0/24")])
    with pytest.raises(Conflict, match=r"overlaps 10\.0\.0\.0/24 of network 'big'"):
        check_no_overlap(plan.subnet, [("big", "10.0.0.0/24")])
    # automatic fixed addresses stay out of the dynamic pool while there is room, then
    # take the lowest free one inside it; never the gateway
    assert allocate_address(plan, []) == IPv4Address("10.0.0.2")
    assert allocate_address(plan, ["10.0.0.2", "10.0.0.3"]) == IPv4Address("10.0.0.4")
    full = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert allocate_address(plan, full) == IPv4Address("10.0.0.5")
    with pytest.raises(Conflict, match="no free fixed address"):
        allocate_address(plan, [*full, "10.0.0.5", "10.0.0.6"])
    # from the pool alone (a Neutron subnet's allocation pool = the DHCP range .5-.6)
    assert allocate_address(plan, [], pool=True) == IPv4Address("10.0.0.5")
    assert allocate_address(plan, ["10.0.0.5"], pool=True) == IPv4Address("10.0.0.6")
    with pytest.raises(AddressesExhausted, match="allocation pool"):
        allocate_address(plan, ["10.0.0.5", "10.0.0.6"], pool=True)  # .2-.4 free: not used
    assert check_fixed_address(plan, "10.0.0.4", []) == IPv4Address("10.0.0.4")
    # inside the DHCP range: dnsmasq never hands out an address a dhcp-host reserves
    assert check_fixed_address(plan, "10.0.0.6", []) == IPv4Address("10.0.0.6")
    with pytest.raises(InvalidInput, match="gateway"):
        check_fixed_address(plan, "10.0.0.1", [])
    with pytest.raises(Conflict, match="already given"):
        check_fixed_address(plan, "10.0.0.3", ["10.0.0.3"])


def test_names_and_static_hosts() -> None:
    assert dns_label("Web-1") == "web-1"
    assert dns_label("web_1") is None and dns_label("-web") is None
    assert validate_domain("Kvm.Test.") == "kvm.test"
    with pytest.raises(InvalidInput):
        validate_domain("bad_domain")
    hosts = static_hosts(
        [("web", "52:54:00:00:00:02", "10.0.0.3", 1), ("web", "52:54:00:00:00:01", "10.0.0.2", 0)]
    )
    assert [h.hostname for h in hosts] == ["web", "web-nic1"]
    assert static_hosts([("web_1", "52:54:00:00:00:01", "10.0.0.2", 0)])[0].hostname is None


def test_forward_ports_and_listen_addresses() -> None:
    assert check_forward_ports(8080, None, 80) == PortSpan(8080, 8080)
    assert str(check_forward_ports(8000, 8010, None)) == "8000-8010"
    for port, end, target, words in [
        (0, None, None, "outside"),
        (70000, None, None, "outside"),
        (10, 5, None, "below"),
        (1, 2000, None, "at most"),
        (8000, 8010, 9000, "same port numbers"),
        (80, None, 0, "outside"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            check_forward_ports(port, end, target)
    assert str(listen_address(None)) == "0.0.0.0"
    with pytest.raises(InvalidInput, match="unicast"):
        listen_address("239.1.1.1")
    assert clashes("0.0.0.0", "10.0.0.1") and clashes("10.0.0.1", "10.0.0.1")
    assert not clashes("10.0.0.1", "10.0.0.2")


def test_rendering_is_deterministic_and_complete() -> None:
    nets = [
        NatNetwork("n2", "10.2.0.0/24", True, "eth0", "192.0.2.9"),
        NatNetwork("n1", "10.1.0.0/24", False),
    ]
    forwards = [
        Forward("f2", "udp", "0.0.0.0", 5000, 5010, "10.1.0.5", 5000),
        Forward("f1", "tcp", "192.0.2.9", 8080, 8080, "10.2.0.2", 80),
    ]
    commands = render(nets, forwards)
    assert commands == render(list(reversed(nets)), list(reversed(forwards)))
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    assert [(r["chain"], r["comment"]) for r in rules] == [
        ("prerouting", "forward f1"),
        ("output", "forward f1"),
        ("prerouting", "forward f2"),
        ("output", "forward f2"),
        ("postrouting", "hairpin n1"),
        ("postrouting", "hairpin n2"),
        ("postrouting", "nat n2"),  # n1 has NAT off: no masquerade
    ]
    nat = rules[-1]["expr"]
    assert {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}} in nat
    assert nat[-1] == {"snat": {"family": "ip", "addr": "192.0.2.9"}}
    assert rules[0]["expr"][-1] == {"dnat": {"family": "ip", "addr": "10.2.0.2", "port": 80}}
    assert rules[2]["expr"][-1] == {"dnat": {"family": "ip", "addr": "10.1.0.5"}}  # a range
    assert render([], []) == []
    assert [next(iter(c)) for c in removal()] == ["add", "delete"]
    listing = [{"metainfo": {}}, {"rule": {"handle": 4, "comment": "x"}}]
    assert canonical(listing) == [{"rule": {"comment": "x"}}]


def test_dnsmasq_files(tmp_path: Path) -> None:
    spec = DhcpDnsSpec(
        network_id="n1",
        interface="br0",
        subnet="10.1.0.0/24",
        gateway="10.1.0.1",
        dhcp=True,
        range_start=IPv4Address("10.1.0.128"),
        range_end=IPv4Address("10.1.0.254"),
        lease_seconds=600,
        domain="kvm.test",
        hosts=(
            StaticHost("52:54:00:00:00:01", "10.1.0.2", "web"),
            StaticHost("52:54:00:00:00:02", "10.1.0.3", None),
        ),
    )
    paths = DnsmasqPaths.of(tmp_path / "run", tmp_path / "state", "n1")
    conf = render_conf(spec, paths).splitlines()
    for line in (
        "interface=br0",
        "except-interface=lo",
        "bind-dynamic",
        "dhcp-range=10.1.0.128,10.1.0.254,255.255.255.0,600",
        "dhcp-option=option:router,10.1.0.1",
        "dhcp-option=option:dns-server,10.1.0.1",  # no nameservers: dnsmasq itself
        "domain=kvm.test",
        f"dhcp-leasefile={tmp_path}/state/networks/n1/dnsmasq.leases",
    ):
        assert line in conf
    assert not [line for line in conf if "classless-static-route" in line]
    assert render_dhcp_hosts(spec) == "52:54:00:00:00:01,10.1.0.2,web\n52:54:00:00:00:02,10.1.0.3\n"
    assert render_dns_hosts(spec) == "10.1.0.2 web\n"
    # static leases do not show in the configuration: changing them never restarts dnsmasq
    assert render_conf(spec, paths) == render_conf(
        DhcpDnsSpec(**{**spec.__dict__, "hosts": ()}), paths
    )


def test_leased_addresses_are_neither_given_nor_allocated() -> None:
    plan = plan_addressing("10.0.0.0/24", None, None, None)
    stranger = LeaseHolder("02:00:00:00:00:09", "10.0.0.2", "laptop", None)
    ours = LeaseHolder("02:00:00:00:00:0a", "10.0.0.3", None, "db")
    with pytest.raises(Conflict, match=r"leased to MAC 02:00:00:00:00:09 \(hostname laptop\)"):
        check_fixed_address(plan, "10.0.0.2", [], [stranger, ours])
    with pytest.raises(Conflict, match=r"MAC 02:00:00:00:00:0a \(VM 'db'\)"):
        check_fixed_address(plan, "10.0.0.3", [], [stranger, ours])
    assert allocate_address(plan, [], [stranger, ours]) == IPv4Address("10.0.0.4")


def test_a_fixed_address_inside_the_range_is_refused_only_for_a_dynamic_lease() -> None:
    """Neutron's default pool is the subnet but the gateway: a fixed address inside it is
    fine unless another MAC holds a dynamic lease on it (a range changed over fixed
    addresses is fine for the same reason)."""
    plan = plan_addressing("10.0.0.0/24", None, "10.0.0.64", "10.0.0.200")
    assert check_fixed_address(plan, "10.0.0.100", ["10.0.0.2"]) == IPv4Address("10.0.0.100")
    stranger = LeaseHolder("02:00:00:00:00:09", "10.0.0.100", None, None)
    with pytest.raises(Conflict, match=r"10\.0\.0\.100 is leased to MAC 02:00:00:00:00:09"):
        check_fixed_address(plan, "10.0.0.100", [], [stranger])
    with pytest.raises(Conflict, match="already given"):
        check_fixed_address(plan, "10.0.0.100", ["10.0.0.100"])


def test_foreign_addresses_and_connected_routes_clash() -> None:
    subnet = IPv4Network("192.168.100.0/24")
    lan = HostPrefix("eth0", "192.168.100.5/24", "address")
    route = HostPrefix("eth1", "192.168.0.0/16", "route")
    gateway = HostPrefix("br0", "192.168.100.1/24", "address")
    connected = HostPrefix("br0", "192.168.100.0/24", "route")
    own = {"br0": ["192.168.100.1/24"]}
    assert foreign_clash(subnet, [gateway, connected], own) is None  # ours
    assert foreign_clash(subnet, [gateway, connected, lan], own) == lan
    assert foreign_clash(subnet, [route], own) == route  # a wider route overlaps too
    assert foreign_clash(IPv4Network("10.0.0.0/24"), [lan, route], own) is None
    # an address on our bridge that we did not put there (an uplink's LAN address) is foreign
    moved = HostPrefix("br0", "192.168.100.7/24", "address")
    assert foreign_clash(subnet, [moved], own) == moved
    assert "in use by interface eth0" in clash_reason(subnet, lan)


def test_a_nic_holding_another_address_is_a_problem() -> None:
    nic = NicAddress("n1", "web", 0, "02:00:00:00:00:01", "10.0.0.2", None, None)
    assert observe_address(nic, []) == (None, None)  # no lease: nothing to say
    assert observe_address(nic, [("02:00:00:00:00:01", "10.0.0.2")]) == ("10.0.0.2", None)
    both = [("02:00:00:00:00:01", "10.0.0.130"), ("02:00:00:00:00:01", "10.0.0.2")]
    assert observe_address(nic, both) == ("10.0.0.2", None)
    observed, reason = observe_address(nic, [("02:00:00:00:00:01", "10.0.0.130")])
    assert observed == "10.0.0.130"
    assert reason is not None and "not its fixed address 10.0.0.2" in reason
    # a stranger holding the fixed address (a lease from before the check existed)
    observed, reason = observe_address(nic, [("02:00:00:00:00:09", "10.0.0.2")])
    assert observed is None
    assert reason is not None and "leased to MAC 02:00:00:00:00:09" in reason


def test_a_later_vm_never_takes_an_older_vms_host_name() -> None:
    """NICs come oldest VM first: a name (any case, RFC 4343) stays with the VM that had it,
    also when a later VM's `-nic<n>` name would be it."""
    hosts = static_hosts(
        [
            ("web", "52:54:00:00:00:01", "10.0.0.10", 0),
            ("Web", "52:54:00:00:00:02", "10.0.0.3", 0),  # a legacy row: names once had case
            ("db-nic1", "52:54:00:00:00:03", "10.0.0.20", 0),
            ("db", "52:54:00:00:00:04", "10.0.0.30", 0),
            ("db", "52:54:00:00:00:05", "10.0.0.31", 1),
        ]
    )
    assert [h.hostname for h in hosts] == ["web", "web-nic0", "db-nic1", "db", None]


def test_dns_servers_and_classless_routes_in_dnsmasq_conf(tmp_path: Path) -> None:
    """Option 6 lists the nameservers in order; option 121 (RFC 3442) the routes as
    `destination/len,nexthop` pairs in one option, with the default route through the
    gateway, which a client given option 121 would otherwise lose (it ignores option 3)."""
    subnet = IPv4Network("10.1.0.0/24")
    routes = check_host_routes(subnet, [("10.20.0.0/16", "10.1.0.254"), ("0.0.0.0/8", "10.1.0.9")])
    spec = DhcpDnsSpec(
        network_id="n1",
        interface="br0",
        subnet=str(subnet),
        gateway="10.1.0.1",
        dhcp=True,
        range_start=IPv4Address("10.1.0.128"),
        range_end=IPv4Address("10.1.0.254"),
        lease_seconds=600,
        domain=None,
        hosts=(),
        nameservers=check_nameservers(["10.1.0.53", "192.0.2.1"]),
        routes=classless_routes(routes, IPv4Address("10.1.0.1")),
    )
    conf = render_conf(spec, DnsmasqPaths.of(tmp_path, tmp_path, "n1")).splitlines()
    assert "dhcp-option=option:dns-server,10.1.0.53,192.0.2.1" in conf
    assert (
        "dhcp-option=option:classless-static-route,"
        "10.20.0.0/16,10.1.0.254,0.0.0.0/8,10.1.0.9,0.0.0.0/0,10.1.0.1"
    ) in conf
    # the user's own default route replaces the gateway's; no routes: no option 121
    own = (HostRoute(IPv4Network("0.0.0.0/0"), IPv4Address("10.1.0.9")),)
    assert classless_routes(own, IPv4Address("10.1.0.1")) == own
    assert classless_routes((), IPv4Address("10.1.0.1")) == ()
    # DHCP off: no DHCP options at all
    off = render_conf(
        DhcpDnsSpec(**{**spec.__dict__, "dhcp": False}), DnsmasqPaths.of(tmp_path, tmp_path, "n1")
    )
    assert "dhcp-option" not in off


@pytest.mark.parametrize(
    ("routes", "said"),
    [
        ([("10.20.0.1/16", "10.1.0.9")], "host bits set"),
        ([("10.20.0.0/16", "10.1.0.0")], "network or broadcast address"),
        ([("10.20.0.0/16", "10.2.0.9")], "outside the subnet"),
        ([("10.20.0.0/16", "10.1.0.9"), ("10.20.0.0/16", "10.1.0.8")], "twice"),
        ([(f"10.{i}.0.0/16", "10.1.0.9") for i in range(21)], "at most 20"),
    ],
)
def test_host_routes_rules(routes: list[tuple[str, str]], said: str) -> None:
    with pytest.raises(InvalidInput, match=said):
        check_host_routes(IPv4Network("10.1.0.0/24"), routes)
