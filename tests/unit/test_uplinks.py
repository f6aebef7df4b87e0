"""Pure parts of uplinks: the saved NIC configuration, the planned steps, DHCP refusal."""

from __future__ import annotations

from app.domain.uplinks import (
    INFINITY,
    Address,
    NicConfig,
    Route,
    attach_steps,
    dhcp_refusal,
    restore_steps,
)

STATIC = Address(family=2, address="10.60.0.10", prefixlen=24, broadcast="10.60.0.255", flags=0x80)
DEFAULT = Route(2, None, 0, 254, 100, "10.60.0.1", None, 3, 0, 1)
SUBNET = Route(2, "10.60.0.0", 24, 254, None, None, "10.60.0.10", 2, 253, 1)  # proto kernel
NIC = NicConfig("eth0", "52:54:00:aa:bb:cc", None, (STATIC,), (DEFAULT, SUBNET))


def test_configuration_survives_the_journal_and_names_its_gateway() -> None:
    assert NicConfig.from_json(NIC.to_json()) == NIC
    assert NIC.gateway == "10.60.0.1"
    assert NIC.movable_routes == (DEFAULT,)  # the kernel makes the subnet route itself


def test_steps_of_a_move_and_of_a_restore() -> None:
    assert attach_steps(NIC, "br0", "52:54:00:aa:bb:cc") == [
        "set br0's MAC to 52:54:00:aa:bb:cc",
        "add 10.60.0.10/24 to br0",
        "enslave eth0 to br0",
        "delete route default via 10.60.0.1 metric 100 from eth0",
        "delete 10.60.0.10/24 from eth0",
        "add route default via 10.60.0.1 metric 100 via br0",
    ]
    assert restore_steps(NIC, "br0", None) == [
        "delete route default via 10.60.0.1 metric 100 from br0",
        "release eth0 from br0",
        "add 10.60.0.10/24 to eth0",
        "add route default via 10.60.0.1 metric 100 via eth0",
        "delete 10.60.0.10/24 from br0",
    ]


def test_dynamic_addresses_and_dhcp_clients_need_a_choice() -> None:
    assert dhcp_refusal(NIC) is None
    leased = Address(2, "10.60.0.20", 24, valid=600, preferred=600)
    assert leased.dynamic and not STATIC.dynamic and STATIC.valid == INFINITY
    reason = dhcp_refusal(NicConfig("eth0", "m", None, (leased,)))
    assert reason is not None and "10.60.0.20/24" in reason and "dhcp=move" in reason
    client = NicConfig(
        "eth0", "m", None, (STATIC,), dhcp_clients=("dhclient (pid 7): dhclient eth0",)
    )
    assert "dhclient (pid 7)" in (dhcp_refusal(client) or "")
