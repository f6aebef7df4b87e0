"""Shared API shapes: problem details, pages, status, validated scalar types."""

from __future__ import annotations

import datetime as dt
import inspect
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    JsonValue,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from app.domain.names import (
    LINK_NAME_MAX,
    LINK_NAME_PATTERN,
    MAC_PATTERN,
    MAX_ADDRESSES,
    MTU_MAX,
    MTU_MIN,
    TUN_OWNER_MAX,
    VM_NAME_MAX,
    VM_NAME_PATTERN,
    validate_addresses,
    validate_interface_address,
    validate_link_name,
    validate_mac,
    validate_vm_name,
)
from app.domain.status import Status

# The patterns and limits in json_schema_extra only describe; the validators decide (and
# explain why, e.g. "never truncated"). Patterns stay out of pydantic itself: its regex engine
# has no lookahead. Name validators check the length first, so no pydantic max_length runs
# before them (it would state its own, wrong, limit).
LinkNameStr = Annotated[
    str,
    Field(
        min_length=1,
        description=f"Kernel link name: 1-{LINK_NAME_MAX} characters of [A-Za-z0-9_.-], not "
        "'.', '..', 'all' or 'default'; never truncated.",
        examples=["br0"],
        json_schema_extra={"maxLength": LINK_NAME_MAX, "pattern": LINK_NAME_PATTERN},
    ),
    AfterValidator(validate_link_name),
]
VmNameStr = Annotated[
    str,
    Field(
        min_length=1,
        description=f"VM name, also its DNS and DHCP host name on managed networks: 1-"
        f"{VM_NAME_MAX} letters, digits and '-', neither first nor last '-' (an RFC 1123 host "
        "name label); unique without regard to case (RFC 4343), else 409 name-taken; never "
        "truncated.",
        examples=["web"],
        json_schema_extra={"maxLength": VM_NAME_MAX, "pattern": VM_NAME_PATTERN},
    ),
    AfterValidator(validate_vm_name),
]
MacStr = Annotated[
    str,
    Field(
        max_length=64,
        description="Unicast (lowest bit of the first octet clear), non-zero Ethernet MAC; "
        "':' or '-' between octets, any case; answered in lower case with ':'",
        examples=["52:54:00:12:34:56"],
        json_schema_extra={"maxLength": len("52:54:00:12:34:56"), "pattern": MAC_PATTERN},
    ),
    AfterValidator(validate_mac),
]
InterfaceAddressStr = Annotated[
    str,
    Field(max_length=64, description="Address with prefix length", examples=["192.168.105.1/24"]),
    AfterValidator(validate_interface_address),
]
Mtu = Annotated[int, Field(ge=MTU_MIN, le=MTU_MAX, examples=[1500])]
Addresses = Annotated[
    list[InterfaceAddressStr],
    Field(
        max_length=MAX_ADDRESSES,
        description="Host addresses on the link (IPv4/IPv6 with prefix), each at most once",
        json_schema_extra={"uniqueItems": True},
    ),
    AfterValidator(validate_addresses),  # no repeats, at most MAX_ADDRESSES
]
# uid/gid: a tap owned by it must work (app.domain.names.TUN_OWNER_MAX)
Id = Annotated[int, Field(ge=0, le=TUN_OWNER_MAX)]


# control characters (Cc) and Unicode's own line and paragraph separators (Zl: U+2028, Zp:
# U+2029), which break a line as a newline does (Unicode Standard Annex #14)
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})


def _one_line_of_text(value: str) -> str:
    bad = next((c for c in value if unicodedata.category(c) in _LINE_BREAKING), None)
    if bad is not None:
        what = "control character" if unicodedata.category(bad) == "Cc" else "line separator"
        raise ValueError(
            f"contains the {what} {bad!r}: a description is one line of text "
            "(no NUL, newline, tab or other C0/C1 control, no U+2028 or U+2029 separator)"
        )
    return value


# the same rule for clients (JSON Schema `pattern`, ECMA-262): no U+0000-U+001F, U+007F-U+009F,
# U+2028, U+2029
ONE_LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"


class _OneLine:
    """Pydantic annotation: `_one_line_of_text` after the string's own validation, and its
    rule as the JSON Schema `pattern` (so generated clients and fuzzers know it)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_one_line_of_text, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = ONE_LINE_PATTERN
        return json_schema


# Free text about a resource, shown to people (descriptions): one line, no control
# characters (Unicode category Cc: a NUL cuts it short in C tools, a newline forges a log
# line). `Annotated[str, Field(max_length=...), ONE_LINE]`.
ONE_LINE = _OneLine()


# A reference to one of our resources: its id (a UUID) or its name (found in any case).
# Never empty: "" names nothing, and is a 422 like any malformed field, not a 404.
Ref = Annotated[str, Field(min_length=1, max_length=64)]

# a create's project (issue 11): only an admin may name one; fixed after creation
ProjectIdIn = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=64,
        description="The project (its id, or its name) to create the resource in; the "
        "resource keeps its id. Null or omitted: the "
        "caller's own project. Only an admin may name another one; 404 for an unknown "
        "project, and for a member naming any project but its own.",
        examples=["00000000-0000-4000-8000-000000000000"],
    ),
]


def _not_a_vid(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f"a VLAN is referenced by its name or id (UUID), not the VID: {value} would be "
            "the VLAN's `vlan_id`; name the VLAN (GET /v1/vlans lists them)"
        )
    return value


# A reference to a VLAN (`vlan` on taps, VM NICs, networks): a number is the VID, which
# is not a reference (a VID is used once per trunk, not once per host).
VlanRef = Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(_not_a_vid)]


def exactly_one_of(*fields: str, also: Sequence[JsonValue] = ()) -> list[JsonValue]:
    """JSON Schema for "exactly one of these fields is a non-null string, the others absent
    or null" (or one of the branches `also` names instead), which a model validator of the
    same model (or the domain's validation) checks and explains. Goes into the model's
    allOf: a oneOf there keeps SDK generators making one model with every field (a
    top-level oneOf makes them generate one class per branch)."""
    branches: list[JsonValue] = [
        {"required": [name], "properties": {name: {"type": "string"}}} for name in fields
    ]
    return [{"oneOf": [*branches, *also]}]


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    return value


class RequestModel(BaseModel):
    """Request bodies: strict types (no '1' for 1), unknown fields refused.

    JSON does not tell 1.0 from 1 and JSON Schema calls both integers (2020-12 core 6.3), so
    an integral number is taken as the integer it is (strict pydantic would refuse 1.0 for
    an int field); float fields take it all the same."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _json_integers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: _integral_floats_as_ints(value) for key, value in data.items()}
        return data


def _omitted_means_unchanged(schema: dict[str, Any]) -> None:
    """A PATCH field left out changes nothing: its schema states no default (a default
    would tell SDKs that leaving it out sends that value)."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


def _refusal(message: str) -> BeforeValidator:
    def refuse(value: object) -> None:
        # a custom error: its message is the detail as it stands (no "Value error, "), and
        # its type names the rule; the message has no braces (it is a template)
        raise PydanticCustomError("fixed_at_creation", message)

    return BeforeValidator(refuse)


def _sent_field() -> Any:
    """The annotation of a fixed field that holds what a PATCH sent, for the route to compare
    with the resource's value: absent from the schema, never dumped."""
    return SkipJsonSchema[JsonValue]  # type: ignore[misc]


def _fixed_field(message: str) -> Any:
    """The annotation of a field a PATCH names only to be told `message` (422 at that field):
    absent from the schema, never dumped."""
    # built at run time, one per field (mypy knows Annotated only as a static form)
    return Annotated[SkipJsonSchema[None], _refusal(message)]  # type: ignore[misc]


class UpdateModel(RequestModel):
    """Partial updates (PATCH). A field left out is unchanged. What `null` means is decided
    here, per field, and stated in its description: a field whose type admits null resets to
    what the field is when left out at creation; a field whose type does not admit null
    refuses it with 422 naming the field. `changes()` hands services only decided values.

    Fields fixed at creation: `class XUpdate(UpdateModel, created_by=XCreate, instead=...)`
    makes every field of XCreate that XUpdate lacks one that a PATCH may not send, refused
    with 422 "<field> cannot change: it is fixed at creation; <instead>" at that field (not
    pydantic's "Extra inputs are not permitted", which reads as if the field did not exist).
    `elsewhere` maps a field that another request changes to that request ("<field> is not
    changed by PATCH: <elsewhere[field]>"). Such fields stay out of the schema (an unknown
    field to clients) and out of `changes()`."""

    model_config = ConfigDict(json_schema_extra=_omitted_means_unchanged)

    # the fields __init_subclass__ added for `created_by` (each one only refuses)
    fixed_at_creation: ClassVar[frozenset[str]] = frozenset()
    # with `shown_by`: each fixed field's refusal, given by the route when the value sent is
    # not the one the resource has (fixed_sent)
    fixed_messages: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(
        cls,
        *,
        created_by: type[BaseModel] | None = None,
        instead: str = "",
        elsewhere: Mapping[str, str] | None = None,
        shown_by: type[BaseModel] | None = None,
        **kwargs: Any,
    ) -> None:
        # Runs inside pydantic's metaclass before it collects the fields from the class's
        # annotations, so the fields added here are fields like any other.
        super().__init_subclass__(**kwargs)
        if created_by is None:
            return
        annotations = inspect.get_annotations(cls)  # this class's own (a copy)
        inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "model_fields", {})}
        messages: dict[str, str] = {}
        for name in created_by.model_fields:
            if name in annotations or name in inherited:
                continue
            if elsewhere is not None and name in elsewhere:
                messages[name] = f"{name} is not changed by PATCH: {elsewhere[name]}"
            else:
                messages[name] = f"{name} cannot change: it is fixed at creation; {instead}"
        for name in shown_by.model_fields if shown_by is not None else ():
            if name not in annotations and name not in inherited and name not in messages:
                messages[name] = f"{name} is the daemon's to say, never set; {instead}"
        for name, message in messages.items():
            # with `shown_by`, a fixed field holds what was sent: the same value as the
            # resource's (a resource read back and sent again) is no change
            annotations[name] = _sent_field() if shown_by is not None else _fixed_field(message)
            setattr(cls, name, Field(None, exclude=True))
        cls.__annotations__ = annotations
        cls.fixed_at_creation = frozenset(messages)
        cls.fixed_messages = messages if shown_by is not None else {}

    def fixed_sent(self) -> dict[str, JsonValue]:
        """The fields fixed at creation this PATCH sent, with their values (`shown_by`
        models: the route compares them with the resource as shown)."""
        sent = self.fixed_at_creation & self.model_fields_set
        return {name: getattr(self, name) for name in sent}

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, each with the value it means (null already resolved
        by `resolve_nulls`)."""
        return self.resolve_nulls(self.model_dump(exclude_unset=True))

    def resolve_nulls(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Turn each null into what it means; a model overrides this for its own fields."""
        return changes


class FieldError(BaseModel):
    """One invalid field of a request."""

    loc: list[str | int] = Field(examples=[["body", "name"]])
    msg: str
    type: str | None = None


class DependentOut(BaseModel):
    """One dependent of a deleted resource and what the forced delete did to it."""

    model_config = ConfigDict(title="Dependent")

    kind: Literal[
        "vm", "vm_nic", "tap", "network", "uplink", "port_forward", "vlan", "bridge", "port"
    ]
    id: str
    name: str = Field(description="A VM NIC is `<vm name>/<nic index>`", examples=["web/0"])
    vm_id: str | None = Field(default=None, description="The VM of a `vm_nic`")
    action: Literal["removed", "stopped", "detached", "deleted", "address_released"] | None = Field(
        default=None,
        description="removed: the NIC left its VM; stopped: its VM was running and was "
        "stopped; detached: a tap left the bridge; deleted; address_released: the NIC "
        "lost its fixed address",
    )


class MissingFeature(BaseModel):
    """One thing the host lacks for a request (problem type host-lacks-feature), as GET
    /v1/host/capabilities names it."""

    feature: str = Field(
        description="The capability: vlan_8021q, vlan_filtering, port_isolation, macvtap, "
        "vhost_net, sriov, ...",
        examples=["vhost_net"],
    )
    description: str | None = Field(None, examples=["vhost-net"])
    kernel_config: str | None = Field(
        None, description="The kernel option that provides it; null: none (hardware)"
    )
    module: str | None = Field(None, description="The kernel module that provides it")
    reason: str | None = Field(None, description="What the probe or the check found")


class Problem(BaseModel):
    """RFC 9457 problem details. Extension members may follow (e.g. `dependents`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="Stable per error kind", examples=["urn:kvmnetd:problem:name-taken"]
    )
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = Field(None, description="Fields of a validation problem")
    dependents: list[DependentOut] | None = Field(
        None, description="With type in-use: what depends on the resource (kind, id, name)"
    )
    quota: str | None = Field(
        None, description="With type over-quota: the quota (vms, vcpus, memory_mib, taps, ...)"
    )
    limit: int | None = Field(None, description="With type over-quota: the project's limit")
    usage: int | None = Field(
        None, description="With type over-quota: what the project uses before this request"
    )
    requested: int | None = Field(
        None, description="With type over-quota: how much more the request asked for"
    )
    vlan_ranges: list[list[int]] | None = Field(
        None,
        description="With types vlan-id-outside-ranges and vlan-ranges-exhausted: the "
        "project's VLAN id ranges, [first, last] pairs",
    )
    missing_features: list[MissingFeature] | None = Field(
        None,
        description="With type host-lacks-feature (409: the request is valid, but this "
        "host's kernel or hardware cannot carry it, e.g. a VLAN without 8021q or bridge VLAN "
        "filtering, `vhost: on` without vhost-net, an sriov NIC without an SR-IOV physical "
        "function): each missing feature; nothing was stored",
    )


class ResourceState(BaseModel):
    """Observed state every reconciled resource carries."""

    id: str = Field(examples=["9b1f7c55-4a3e-4d8e-9a57-0c8b1d2e3f40"])
    name: str
    project_id: str = Field(
        description="The project the resource belongs to (fixed at creation; Neutron's project_id)",
        examples=["00000000-0000-4000-8000-000000000000"],
    )
    status: Status
    status_reason: str | None = None
    generation: int = Field(description="Bumped on every accepted change of desired state")
    observed_generation: int = Field(description="The generation the supervisor last applied")
    created_at: dt.datetime
    updated_at: dt.datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page")


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": desc}
    for code, desc in {
        400: "Bad request",
        401: "Missing or wrong bearer token",
        403: "The token's role may not do this (a reader's change, an admin-only route)",
        404: "Not found",
        409: "Conflict with the current state; `host-lacks-feature` (urn:kvmnetd:problem:"
        "host-lacks-feature): the host cannot carry the request, `missing_features` say why",
        413: "Body too large",
        422: "Invalid input",
    }.items()
}
