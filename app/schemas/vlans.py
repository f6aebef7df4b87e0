"""VLANs as the API accepts and shows them (app.domain.vlans has the rules).

The VID field is `vlan_id`: the resource is a VLAN, and iproute2 (`ip link add ... type vlan
id 10`), pyroute2 (`vlan_id`) and the issue all call it that. It is what Neutron calls
`provider:segmentation_id` of a network whose `provider:network_type` is vlan; a generic
`segmentation_id` would only pay off once other segment types (VXLAN VNIs) share this shape.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.domain.vlans import (
    DESCRIPTION_MAX,
    VID_MAX,
    VID_MIN,
    VLAN_NAME_MAX,
    VLAN_NAME_PATTERN,
    VlanBackend,
    VlanObjectKind,
    VlanObjectRole,
    validate_vlan_id,
    validate_vlan_name,
)
from app.schemas.common import (
    ONE_LINE,
    Page,
    ProjectIdIn,
    Ref,
    RequestModel,
    ResourceState,
    UpdateModel,
)

VlanNameStr = Annotated[
    str,
    Field(
        min_length=1,
        description=f"1-{VLAN_NAME_MAX} letters, digits, '_', '.' and '-', the first a letter "
        "or digit, not only digits (it would read as a VLAN id); unique without regard to "
        "case, else 409 name-taken; never truncated",
        examples=["tenant-a"],
        json_schema_extra={"maxLength": VLAN_NAME_MAX, "pattern": VLAN_NAME_PATTERN},
    ),
    AfterValidator(validate_vlan_name),
]
# range checked (and explained: 0 and 4095 are reserved) by the domain; the schema says it
VlanId = Annotated[
    int,
    Field(
        description="The VLAN id (VID, IEEE 802.1Q-2018 9.6): 1-4094; 0 (priority tag) and "
        "4095 (reserved) are refused. Neutron's provider:segmentation_id",
        examples=[10],
        json_schema_extra={"minimum": VID_MIN, "maximum": VID_MAX},
    ),
    AfterValidator(validate_vlan_id),
]
Description = Annotated[
    str, Field(max_length=DESCRIPTION_MAX, examples=["tenant A's segment"]), ONE_LINE
]
BACKEND_DOC = (
    "vlan_filtering: the trunk bridge filters VLANs (kernel CONFIG_BRIDGE_VLAN_FILTERING); "
    "bridge_per_vlan: an 802.1Q sub-interface <uplink>.<vid> (CONFIG_VLAN_8021Q, module "
    "8021q) in a bridge of its own. auto: vlan_filtering where the kernel has it, else "
    "bridge_per_vlan, or the backend the trunk's other VLANs use (one trunk = one backend)"
)


class VlanCreate(RequestModel):
    """A VLAN on a trunk. 409 `host-lacks-feature` (naming each missing kernel feature in
    `missing_features`) when the host cannot carry it; nothing is stored then."""

    name: VlanNameStr
    vlan_id: VlanId | None = Field(
        None,
        description="The VLAN id (1-4094). Left out (or null): the lowest id of the "
        "project's `vlan_ranges` that is free on the trunk (409 `vlan-ranges-exhausted` "
        "when none is; an admin in a project without ranges: 422, give vlan_id). A member "
        "may only give an id inside the project's ranges (403 `vlan-id-outside-ranges`, "
        "naming them in `vlan_ranges`); an admin any id",
        examples=[10],
    )
    trunk: Ref = Field(
        description="The trunk: one of our bridges (id or name), usually the one with the "
        "uplink. A tap is refused (422), an unknown one is 404",
        examples=["br0"],
    )
    backend: VlanBackend = Field(VlanBackend.AUTO, strict=False, description=BACKEND_DOC)
    description: Description | None = None
    project_id: ProjectIdIn = None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "tenant-a", "vlan_id": 10, "trunk": "br0"}]}
    )


class VlanUpdate(
    UpdateModel,
    created_by=VlanCreate,
    instead="create another VLAN instead (its kernel objects, ports and networks hang on it)",
):
    """Change a VLAN's name or description (no kernel object changes: 200 at once, the
    generation stays). `vlan_id`, `trunk` and `backend` cannot change (422): create another
    VLAN. A field left out is unchanged (null: see each field)."""

    name: VlanNameStr = Field(
        "", description="A new name (rules as at creation). null is refused (422)"
    )
    description: Description | None = Field(None, description="null: none")


class VlanObject(BaseModel):
    """One kernel object the VLAN owns, and what the supervisor last saw of it."""

    kind: VlanObjectKind = Field(
        description="bridge or vlan: a link of that kind; bridge_vlan: the VID on the bridge "
        "port `name` of bridge `parent` (as `bridge vlan show` lists it)"
    )
    name: str = Field(examples=["br0v10"])
    role: VlanObjectRole = Field(
        description="vlan_bridge: the VLAN's own bridge; uplink_subinterface: the 802.1Q "
        "interface of the trunk's uplink in it; uplink_tagged: the VID tagged on the uplink "
        "port; l3_interface: the filtering trunk's 802.1Q link <bridge>.<vid> carrying the "
        "host's address on the VLAN (while a managed network is on it); l3_tagged: the VID "
        "tagged on the bridge's own port, which hands the VLAN's frames up to it"
    )
    parent: str | None = Field(None, description="The link it is made on, or the bridge")
    ifindex: int | None = Field(None, description="Kernel index, once observed")
    observed_state: str | None = Field(
        None,
        description="As the supervisor last saw it (a link's operational state, RFC 2863; "
        "a bridge_vlan's `present` or `absent`; `error` when making it failed); null: not "
        "observed yet",
    )


class Vlan(ResourceState):
    vlan_id: int = Field(description="The VID (1-4094)")
    trunk_id: str = Field(description="The trunk bridge's id")
    trunk: str | None = Field(description="The trunk bridge's name (null once it is gone)")
    backend: VlanBackend = Field(
        description="The backend chosen at creation: vlan_filtering or bridge_per_vlan"
    )
    requested_backend: VlanBackend = Field(description="What the creation asked for")
    description: str | None
    l3_interface: str | None = Field(
        description="The link a host address on this VLAN lives on: the filtering trunk's "
        "<bridge>.<vid> (made once an address is needed) or the per-VLAN bridge (null once "
        "the trunk is gone). Derived "
        "names never exceed 15 characters: the natural name when it fits, else a short "
        "stable one (vl<6 hex>.<vid>, vb<6 hex>v<vid>)",
        examples=["br0.10"],
    )
    kernel_objects: list[VlanObject] = Field(
        default_factory=list,
        description="Every kernel object the VLAN owns now, with what the supervisor last "
        "observed of it. bridge_per_vlan: its bridge, and the uplink's sub-interface once the "
        "trunk has an uplink; vlan_filtering: the VID on the uplink port, and while a managed "
        "network is on the VLAN its L3 interface and the VID on the bridge's own port. Its "
        "ports and MAC table: GET /v1/vlans/{id}/ports and /fdb",
    )


class VlanPage(Page[Vlan]):
    """One page of VLANs."""
