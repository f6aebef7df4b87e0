"""Reading a bridge's or tap's stored desired state defensively.

The database's constraints and the API's validation keep bad values out, but a row written
by hand, by an older version, or with the constraints switched off can still hold one (a JSON
`null` for addresses, text in a number column). Such a row must not break the pass for every
other link, nor the API's list/get/delete: `read_link_settings` checks each stored value with
the same validators the API uses and hands back usable values (a bad one replaced by its
default) plus what was wrong, which the worker and the API report on that row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.domain.errors import InvalidInput
from app.domain.names import (
    MTU_MAX,
    MTU_MIN,
    STP_FORWARD_DELAY_CS,
    validate_addresses,
    validate_bridge_timers,
    validate_mac,
)

ID_MAX = 2**32 - 2  # (uid_t)-1 means "nobody" to the kernel
STP_DEFAULT_FORWARD_DELAY_CS = 1500  # the kernel's own default while STP runs


def default_forward_delay_cs(stp: bool) -> int:
    """The forward delay a bridge gets when none is given: 0 s without STP, 15 s with it."""
    return STP_DEFAULT_FORWARD_DELAY_CS if stp else 0


def _int_in(low: int, high: int, nullable: bool) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        if value is None:
            return nullable
        return type(value) is int and low <= value <= high

    return ok


def _mac(value: Any) -> bool:
    if value is None:
        return True
    try:
        return isinstance(value, str) and validate_mac(value) == value
    except InvalidInput:
        return False


def _addresses(value: Any) -> bool:
    if type(value) is not list or not all(isinstance(a, str) for a in value):
        return False
    try:
        return validate_addresses(value) == value
    except InvalidInput:
        return False


def _flag(value: Any) -> bool:
    return type(value) is bool


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    default: Any


COMMON_RULES: dict[str, Rule] = {
    "mtu": Rule(_int_in(MTU_MIN, MTU_MAX, nullable=True), None),
    "mac": Rule(_mac, None),
    "addresses": Rule(_addresses, []),
}
BRIDGE_RULES: dict[str, Rule] = {
    **COMMON_RULES,
    "stp": Rule(_flag, False),
    "forward_delay_cs": Rule(_int_in(0, STP_FORWARD_DELAY_CS[1], nullable=False), None),
}
TAP_RULES: dict[str, Rule] = {
    **COMMON_RULES,
    "owner_uid": Rule(_int_in(0, ID_MAX, nullable=True), None),
    "owner_gid": Rule(_int_in(0, ID_MAX, nullable=True), None),
    "multi_queue": Rule(_flag, False),
    "vnet_hdr": Rule(_flag, False),
    "isolated": Rule(_flag, False),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_link_settings(
    stored: Mapping[str, Any], is_bridge: bool
) -> tuple[dict[str, Any], str | None]:
    """The settings of a stored bridge (or tap), each bad value replaced by its default, and
    a sentence naming every bad one (None when all are good)."""
    rules = BRIDGE_RULES if is_bridge else TAP_RULES
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, rule in rules.items():
        value = stored.get(name)
        if rule.ok(value):
            values[name] = value
        else:
            values[name] = rule.default
            problems.append(f"{name} is {_shown(value)}")
    if is_bridge:
        if values["forward_delay_cs"] is None:
            values["forward_delay_cs"] = default_forward_delay_cs(values["stp"])
        else:
            try:
                validate_bridge_timers(values["stp"], values["forward_delay_cs"])
            except InvalidInput as exc:
                problems.append(str(exc))
                values["forward_delay_cs"] = default_forward_delay_cs(values["stp"])
    if not problems:
        return values, None
    return values, (
        "stored settings cannot be used: "
        + "; ".join(problems)
        + " (set them again with PATCH, or delete the resource)"
    )
