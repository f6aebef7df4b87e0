"""Kernel names of bridges and taps (app.domain.names.link_ifname) and every name derived
from them: at most 15 characters (IFNAMSIZ - 1), valid link names, never truncated from the
user's name. Pure, no I/O."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from app.api.presenters import vlan_out
from app.db.models import Vlan
from app.domain.names import LINK_NAME_MAX, link_ifname, validate_link_name
from app.domain.tenancy import DEFAULT_PROJECT_ID
from app.domain.vlans import (
    TrunkNames,
    VlanBackend,
    kernel_objects,
    l3_interface_name,
    subinterface_name,
    vlan_bridge_name,
)
from app.services.vlans import candidate_names
from app.services.vms import vm_tap_name

OTHER_PROJECT = str(uuid.uuid4())
VIDS = (1, 10, 999, 4094)


def test_the_default_project_keeps_the_name() -> None:
    row_id = str(uuid.uuid4())
    assert link_ifname("bridge", DEFAULT_PROJECT_ID, row_id, "br0") == "br0"
    assert link_ifname("tap", DEFAULT_PROJECT_ID, row_id, "x" * 15) == "x" * 15


def test_other_projects_derive_it_from_the_id() -> None:
    row_id = "3f2a9c1e-77b0-4d1a-9b2c-0123456789ab"
    bridge = link_ifname("bridge", OTHER_PROJECT, row_id, "br0")
    assert bridge == "kb3f2a9c1e77b04" and len(bridge) == LINK_NAME_MAX
    assert link_ifname("tap", OTHER_PROJECT, row_id, "tap0") == "kt3f2a9c1e77b04"
    # the user's name plays no part: a long one is not truncated into the kernel name
    assert link_ifname("bridge", OTHER_PROJECT, row_id, "y" * 15) == bridge
    other = link_ifname("bridge", OTHER_PROJECT, str(uuid.uuid4()), "br0")
    assert other != bridge and validate_link_name(other) == other
    with pytest.raises(ValueError, match="vlan"):
        link_ifname("vlan", OTHER_PROJECT, row_id, "v")


@pytest.mark.parametrize("project", [DEFAULT_PROJECT_ID, OTHER_PROJECT], ids=["default", "other"])
@pytest.mark.parametrize("uplink", [None, "eth0", "enp0s31f6abcdef"])
def test_every_derived_name_fits(project: str, uplink: str | None) -> None:
    """A VLAN's per-VLAN bridge, its uplink sub-interface and a filtering trunk's L3
    interface built on a trunk's ifname (a 15-character user name in the default project,
    a derived one elsewhere), and VM NIC taps, stay valid names of at most 15 characters."""
    trunk = link_ifname("bridge", project, str(uuid.uuid4()), "t" * 15)
    for vid in VIDS:
        names = [
            vlan_bridge_name(trunk, vid),
            subinterface_name(trunk, vid),
            *(l3_interface_name(b, trunk, vid) for b in VlanBackend if b is not VlanBackend.AUTO),
            *candidate_names(trunk, vid, uplink),
        ]
        for backend in (VlanBackend.VLAN_FILTERING, VlanBackend.BRIDGE_PER_VLAN):
            names += [o.name for o in kernel_objects(backend, trunk, vid, uplink, l3=True)]
        for name in names:
            assert len(name) <= LINK_NAME_MAX and validate_link_name(name) == name, name
    vm_id = str(uuid.uuid4())
    for index in range(16):  # VmCreate.nics holds at most 16
        assert validate_link_name(vm_tap_name(vm_id, index))


def test_a_vlan_view_names_kernel_objects_by_the_trunks_ifname() -> None:
    """GET /v1/vlans shows the trunk by its name and the kernel objects by the names the
    kernel has: derived from the trunk's ifname, not from its name."""
    now = dt.datetime.now(dt.UTC)
    row = Vlan(
        id=str(uuid.uuid4()),
        name="tenant-a",
        vlan_id=20,
        trunk_id=str(uuid.uuid4()),
        backend=VlanBackend.BRIDGE_PER_VLAN.value,
        requested_backend="auto",
        observed_objects=[],
        status="active",
        generation=1,
        observed_generation=1,
        deleted=False,
        created_at=now,
        updated_at=now,
    )
    trunk = TrunkNames("br0", "kb3f2a9c1e77b04", "eth0")
    view = vlan_out(row, trunk, l3=False)
    assert view.trunk == "br0"
    assert view.l3_interface == vlan_bridge_name("kb3f2a9c1e77b04", 20) != "br0v20"
    assert [o.name for o in view.kernel_objects] == [view.l3_interface, "eth0.20"]
