"""Pure rules of projects and tokens (app.domain.projects): names, quotas, VLAN ranges,
token expiry and state, and who may manage tokens."""

from __future__ import annotations

import datetime as dt

import pytest

from app.domain.errors import InvalidInput
from app.domain.projects import (
    TOKEN_LIFETIME_MAX_S,
    TokenState,
    expiry,
    token_action_refusal,
    token_state,
    validate_project_name,
    validate_quotas,
    validate_vlan_ranges,
)
from app.domain.tenancy import ADMIN_BY_SOCKET, Principal, Role, Via

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("name", ["a", "acme", "Team-7", "a" * 63])
def test_project_names_that_are_host_name_labels(name: str) -> None:
    assert validate_project_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a.b", "é", "a" * 64, "a b"])
def test_project_names_that_are_not(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_project_name(name)


def test_quotas_keep_the_limited_ones_and_name_the_allowed_keys() -> None:
    assert validate_quotas({"vms": 0, "taps": None, "memory_mib": 512}) == {
        "vms": 0,
        "memory_mib": 512,
    }
    with pytest.raises(InvalidInput, match="vms, vcpus, memory_mib"):
        validate_quotas({"disks": 1})
    for bad in (-1, True, 1.5, "3", 2**31):
        with pytest.raises(InvalidInput):
            validate_quotas({"vms": bad})


def test_vlan_ranges_are_sorted_and_never_overlap() -> None:
    assert validate_vlan_ranges([[300, 399], [1, 10]]) == [[1, 10], [300, 399]]
    assert validate_vlan_ranges([[4094, 4094]]) == [[4094, 4094]]
    for bad in ([[0, 1]], [[1, 4095]], [[5, 4]], [[1, 10], [10, 20]], [[1, 100], [50, 60]]):
        with pytest.raises(InvalidInput):
            validate_vlan_ranges(bad)


def test_token_state_revoked_wins_and_expiry_is_inclusive() -> None:
    assert token_state(None, None, NOW) is TokenState.ACTIVE
    assert token_state(NOW + dt.timedelta(microseconds=1), None, NOW) is TokenState.ACTIVE
    assert token_state(NOW, None, NOW) is TokenState.EXPIRED
    assert token_state(NOW + dt.timedelta(days=1), NOW, NOW) is TokenState.REVOKED
    assert token_state(NOW - dt.timedelta(days=1), NOW, NOW) is TokenState.REVOKED


def test_expiry_in_the_future_within_ten_years_one_way_only() -> None:
    assert expiry(None, None, NOW) is None
    assert expiry(None, 60, NOW) == NOW + dt.timedelta(seconds=60)
    assert expiry(NOW + dt.timedelta(hours=1), None, NOW) == NOW + dt.timedelta(hours=1)
    for at in (
        NOW,
        NOW - dt.timedelta(seconds=1),
        NOW + dt.timedelta(seconds=TOKEN_LIFETIME_MAX_S + 1),
    ):
        with pytest.raises(InvalidInput):
            expiry(at, None, NOW)
    with pytest.raises(InvalidInput, match="not both"):
        expiry(NOW + dt.timedelta(hours=1), 60, NOW)


def test_who_may_manage_tokens() -> None:
    member = Principal("p", Role.MEMBER, Via.TOKEN, "t")
    reader = Principal("p", Role.READER, Via.TOKEN, "t")
    assert token_action_refusal(ADMIN_BY_SOCKET, Role.ADMIN) is None
    assert token_action_refusal(member, Role.MEMBER) is None
    assert token_action_refusal(member, Role.READER) is None
    assert token_action_refusal(member) is None  # list, get, revoke
    assert token_action_refusal(member, Role.ADMIN) is not None
    assert token_action_refusal(reader) is not None
    assert token_action_refusal(reader, Role.READER) is not None
