"""The one generic kind registry (app.domain.registry) and the registries built on it: a
name is taken once, an unknown name is the registry's error naming the known ones, the
built-in kinds are listed first in their declared order, and a kind registered for a block
is gone after it (the registry as it was found)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from app.db.repositories import segment_table
from app.db.repositories.segments import TABLES, register_table
from app.domain import links, nics, segments
from app.domain.errors import InvalidInput
from app.domain.links import LinkDriver, LinkKind
from app.domain.registry import Registry, UnknownKind
from app.host import links as host_links


def test_a_name_is_taken_once_and_an_unknown_one_names_the_known() -> None:
    registry: Registry[int] = Registry("colour", built_in=["red", "green"])
    assert registry.add("blue", 3) == 3
    registry.add("green", 2)
    registry.add("red", 1)
    assert registry.names() == ["red", "green", "blue"]
    assert registry.entries() == [1, 2, 3]
    with pytest.raises(ValueError, match="colour 'red' is unnamed or already registered"):
        registry.add("red", 9)
    with pytest.raises(ValueError, match="colour '' is unnamed"):
        registry.add("", 9)
    assert registry.get("red") == 1
    with pytest.raises(UnknownKind) as caught:
        registry.get("mauve")
    assert str(caught.value) == "unknown colour 'mauve'; known: red, green, blue"
    assert isinstance(caught.value, KeyError)
    assert registry.find("mauve") is None and "mauve" not in registry
    registry.remove("mauve")  # absent: nothing
    registry.remove("green")
    assert registry.names() == ["red", "blue"] and len(registry) == 2


def test_registered_is_undone_also_when_the_block_fails() -> None:
    registry: Registry[str] = Registry("thing", unknown=InvalidInput)
    with pytest.raises(RuntimeError), registry.registered("x", "X") as entry:
        assert entry == "X" and registry.get("x") == "X"
        raise RuntimeError
    assert registry.names() == []
    with pytest.raises(InvalidInput, match=r"unknown thing 'x'; known: $"):
        registry.get("x")


def test_every_per_kind_registry_refuses_a_second_driver_of_a_kind() -> None:
    class Bridge2(segments.SegmentDriver):
        kind: ClassVar[str] = "bridge"

    class User2(nics.NicDriver):
        name: ClassVar[str] = "user"

    class Tun2(LinkDriver):
        kind = "tun2"  # type: ignore[assignment]
        kernel_kind = "tun"  # a tap's: taken by the tap kind

    before = (segments.kinds(), nics.backends(), links.registered_kinds())
    with pytest.raises(ValueError, match="segment kind 'bridge' is unnamed or already"):
        segments.register(Bridge2)
    with pytest.raises(ValueError, match="NIC backend 'user' is unnamed or already"):
        nics.register(User2)
    with pytest.raises(ValueError, match="kernel link kind 'tun' is unnamed or already"):
        links.register(Tun2())
    with pytest.raises(ValueError, match="link kind 'bridge' is unnamed or already"):
        links.register(links.find_driver(LinkKind.BRIDGE) or LinkDriver())
    with pytest.raises(ValueError, match="host link kind 'tap' is unnamed or already"):
        host_links.register(host_links.find_host_driver(LinkKind.TAP))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stored segment kind 'vlan' is unnamed or already"):
        register_table(segment_table("vlan"))
    borrowed = dataclasses.replace(segment_table("bridge"), kind="gwport")  # bridge's column
    with pytest.raises(ValueError, match="the column of segment kind 'gwport' is already"):
        register_table(borrowed)
    assert (segments.kinds(), nics.backends(), links.registered_kinds()) == before
    assert TABLES.names() == ["bridge", "tap", "vlan"]


def test_unknown_kinds_keep_each_registrys_error() -> None:
    with pytest.raises(InvalidInput, match="unknown segment kind 'vxlan'; known: bridge, tap"):
        segments.segment_driver("vxlan")
    with pytest.raises(InvalidInput, match="unknown NIC backend 'vde'; known: bridge, tap, user"):
        nics.nic_driver("vde")
    with pytest.raises(KeyError, match="unknown stored segment kind 'vxlan'"):
        segment_table("vxlan")
    assert links.find_driver("vxlan") is None
    foreign = links.ObservedLink(index=9, name="vx0", kind="vxlan")
    assert links.driver_for_link(foreign) is links.KINDS.generic


def test_a_link_kind_registered_for_a_block_has_both_keys_then_none() -> None:
    class Macvtap(LinkDriver):
        kind = "macvtap"  # type: ignore[assignment]
        kernel_kind = "macvtap"

    driver = Macvtap()
    observed = links.ObservedLink(index=9, name="mvt0", kind="macvtap")
    with links.registered(driver):
        assert links.find_driver("macvtap") is driver
        assert links.driver_for_link(observed) is driver
        assert links.registered_kinds() == ("bridge", "tap", "vlan", "macvtap")
    assert links.find_driver("macvtap") is None
    assert links.driver_for_link(observed) is links.KINDS.generic
    assert links.registered_kinds() == ("bridge", "tap", "vlan")
