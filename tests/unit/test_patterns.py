"""The patterns the OpenAPI schema states accept exactly what the validators accept, so that
clients, generators and fuzzers agree with the server (item 0 of issue 9). Checked with
strings drawn from each pattern, arbitrary strings, and the edge cases by hand."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.cursors import CURSOR_PATTERN, decode_cursor, encode_cursor
from app.domain.errors import InvalidInput
from app.domain.names import (
    LINK_NAME_PATTERN,
    MAC_PATTERN,
    VM_NAME_PATTERN,
    validate_link_name,
    validate_mac,
    validate_vm_name,
)
from app.domain.networks import DOMAIN_PATTERN, validate_domain


def ecma(pattern: str) -> re.Pattern[str]:
    """The pattern as JSON Schema (ECMA-262) reads it: `$` only at the very end, where
    Python's `$` also matches before a final newline."""
    return re.compile(pattern.replace("$", r"\Z"))


def accepts(validator: Callable[[str], object], value: str) -> bool:
    try:
        validator(value)
    except InvalidInput:
        return False
    return True


CASES = [
    (LINK_NAME_PATTERN, validate_link_name),
    (MAC_PATTERN, validate_mac),
    (DOMAIN_PATTERN, validate_domain),
    (CURSOR_PATTERN, decode_cursor),
    (VM_NAME_PATTERN, validate_vm_name),
]
IDS = ["link-name", "mac", "domain", "cursor", "vm-name"]
# characters that matter to these patterns, plus anything else
TEXT = st.text(st.sampled_from("aAfF09zZ_.-:~ \n\u212a/") | st.characters(), max_size=24)


@pytest.mark.parametrize(("pattern", "validator"), CASES, ids=IDS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_string_the_pattern_allows_is_accepted(
    pattern: str, validator: Callable[[str], object], data: st.DataObject
) -> None:
    value = data.draw(st.from_regex(ecma(pattern)))
    assert accepts(validator, value), value


@pytest.mark.parametrize(("pattern", "validator"), CASES, ids=IDS)
@settings(max_examples=500, deadline=None)
@given(value=TEXT)
def test_the_validator_accepts_only_what_the_pattern_allows(
    pattern: str, validator: Callable[[str], object], value: str
) -> None:
    assert accepts(validator, value) == bool(ecma(pattern).search(value)), value


@pytest.mark.parametrize(
    ("pattern", "validator", "value"),
    [
        (LINK_NAME_PATTERN, validate_link_name, "br0"),
        (LINK_NAME_PATTERN, validate_link_name, "a" * 15),
        (LINK_NAME_PATTERN, validate_link_name, "a" * 16),
        (LINK_NAME_PATTERN, validate_link_name, "."),
        (LINK_NAME_PATTERN, validate_link_name, ".."),
        (LINK_NAME_PATTERN, validate_link_name, "..."),
        (LINK_NAME_PATTERN, validate_link_name, "all"),
        (LINK_NAME_PATTERN, validate_link_name, "default"),
        (LINK_NAME_PATTERN, validate_link_name, "br0\n"),
        (VM_NAME_PATTERN, validate_vm_name, "web"),
        (VM_NAME_PATTERN, validate_vm_name, "W"),
        (VM_NAME_PATTERN, validate_vm_name, "9-a"),
        (VM_NAME_PATTERN, validate_vm_name, "a" * 15),
        (VM_NAME_PATTERN, validate_vm_name, "a" * 16),
        (VM_NAME_PATTERN, validate_vm_name, "-h"),
        (VM_NAME_PATTERN, validate_vm_name, "h-"),
        (VM_NAME_PATTERN, validate_vm_name, "-"),
        (VM_NAME_PATTERN, validate_vm_name, "a.b_c"),
        (VM_NAME_PATTERN, validate_vm_name, "web\n"),
        (VM_NAME_PATTERN, validate_vm_name, "\u212avm"),
        (VM_NAME_PATTERN, validate_vm_name, ""),
        (MAC_PATTERN, validate_mac, "52:54:00:12:34:56"),
        (MAC_PATTERN, validate_mac, "52-54-00-AB-cd-56"),
        (MAC_PATTERN, validate_mac, "01:00:5e:00:00:01"),  # multicast
        (MAC_PATTERN, validate_mac, "00:00:00:00:00:00"),
        (MAC_PATTERN, validate_mac, "00-00-00-00-00-00"),
        (MAC_PATTERN, validate_mac, " 52:54:00:12:34:56"),
        (MAC_PATTERN, validate_mac, "52:54:00:12:34:56\n"),
        (DOMAIN_PATTERN, validate_domain, "kvm.internal."),
        (DOMAIN_PATTERN, validate_domain, "kvm.internal.."),
        (DOMAIN_PATTERN, validate_domain, "\u212avm"),  # Kelvin sign: lower() makes it 'k'
        (DOMAIN_PATTERN, validate_domain, ""),
        (CURSOR_PATTERN, decode_cursor, "1796063271543730.829ee766-9069-467a-8d14-2a6907ed59b7"),
        (CURSOR_PATTERN, decode_cursor, "9" * 16 + ".x"),
        (CURSOR_PATTERN, decode_cursor, ""),
        (CURSOR_PATTERN, decode_cursor, "0" * 300),
    ],
)
def test_edges(pattern: str, validator: Callable[[str], object], value: str) -> None:
    assert accepts(validator, value) == bool(ecma(pattern).search(value))


def test_a_cursor_round_trips() -> None:
    created = dt.datetime(2026, 11, 30, 18, 27, 51, 543730, tzinfo=dt.UTC)
    cursor = encode_cursor(created, "829ee766-9069-467a-8d14-2a6907ed59b7")
    assert ecma(CURSOR_PATTERN).search(cursor)
    assert decode_cursor(cursor) == (created, "829ee766-9069-467a-8d14-2a6907ed59b7")


def test_integral_json_numbers_are_integers() -> None:
    """JSON Schema calls 1500.0 an integer (2020-12 core 6.3); strict typing still refuses
    fractions, strings and booleans."""
    from pydantic import ValidationError

    from app.schemas.links import TapCreate

    assert TapCreate.model_validate_json('{"name": "t", "mtu": 1500.0}').mtu == 1500
    for bad in ("1500.5", '"1500"', "true"):
        with pytest.raises(ValidationError):
            TapCreate.model_validate_json(f'{{"name": "t", "mtu": {bad}}}')
