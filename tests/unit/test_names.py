"""Validators of what crosses into the kernel: pure, no I/O."""

from __future__ import annotations

import pytest

from app.domain.errors import InvalidInput
from app.domain.names import (
    validate_addresses,
    validate_interface_address,
    validate_link_name,
    validate_mac,
)


@pytest.mark.parametrize("name", ["br0", "tap1", "a", "x" * 15, "vm-1.eth_0", "A.B-C_9"])
def test_good_link_names(name: str) -> None:
    assert validate_link_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "non-empty"),
        ("x" * 16, "at most 15"),
        ("a;rm -rf /", "only letters"),
        ("tap 1", "only letters"),
        ("../etc", "only letters"),
        ("täp", "only letters"),
        ("tap/1", "only letters"),
        ("tap:1", "only letters"),
        (".", "reserved"),
        ("..", "reserved"),
    ],
)
def test_bad_link_names_are_refused_not_truncated(name: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_link_name(name)


def test_mac_is_normalized() -> None:
    assert validate_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    assert validate_mac("52-54-00-12-34-56") == "52:54:00:12:34:56"


@pytest.mark.parametrize(
    ("mac", "why"),
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("00:00:00:00:00:00", "not a valid"),
        ("52:54:00:12:34", "not a MAC"),
        ("52:54:00:12:34:5g", "not a MAC"),
        ("5254.0012.3456", "not a MAC"),
    ],
)
def test_bad_macs(mac: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_mac(mac)


def test_interface_addresses() -> None:
    assert validate_interface_address("192.168.105.1/24") == "192.168.105.1/24"
    assert validate_interface_address("fd00::1/64") == "fd00::1/64"
    assert validate_interface_address("10.0.0.1/31") == "10.0.0.1/31"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("192.168.105.1", "prefix length"),
        ("300.1.1.1/24", "not a valid"),
        ("192.168.1.0/24", "network or broadcast"),
        ("192.168.1.255/24", "network or broadcast"),
        ("224.0.0.1/4", "multicast"),
        ("127.0.0.1/8", "loopback"),
        ("0.0.0.0/0", "unspecified"),
        ("fe80::1/64", "link-local"),
        ("192.168.1.1/33", "not a valid"),
    ],
)
def test_bad_interface_addresses(value: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_interface_address(value)


def test_address_lists_refuse_duplicates_and_bound_size() -> None:
    with pytest.raises(InvalidInput, match="twice"):
        validate_addresses(["10.0.0.1/24", "10.0.0.1/24"])
    with pytest.raises(InvalidInput, match="at most"):
        validate_addresses([f"10.0.{i}.1/24" for i in range(33)])
