"""The tier's self-check: collected only with KVT_CANARY set (tests/kernel/test_tier.py), so that
the host can see a nested pass, failure and skip reported as such."""

from __future__ import annotations

import os

import pytest

CANARY = "KVT-CANARY-7f3a"


def test_canary_passes_inside() -> None:
    assert os.environ.get("KVT_NESTED") == "1"


def test_canary_fails() -> None:
    raise AssertionError(f"deliberate failure {CANARY}")


def test_canary_skips() -> None:
    pytest.skip(f"deliberate skip {CANARY}")


@pytest.mark.parametrize("vid", [10, 20])
def test_canary_parametrized(vid: int) -> None:
    assert vid in (10, 20)
