"""The tier's canaries: they ride in the session's one nested run with the real nested tests
and prove, at no extra boot, that the plumbing reports each inner outcome as such. Each is
marked `kvt_expect(outcome, pattern)`: inside, it passes, fails, skips or xfails on purpose;
on the host its proxy (tests/kernel/conftest.py) computes what a plain proxy would report and
passes only when that is `outcome` with a report matching `pattern` (for a failure: the inner
traceback), so the host's run stays green while proving a nested failure would fail it."""

from __future__ import annotations

import os

import pytest

CANARY = "KVT-CANARY-7f3a"


@pytest.mark.kvt_expect("passed", "^$")
def test_canary_passes_inside() -> None:
    assert os.environ.get("KVT_NESTED") == "1"


# a plain proxy fails with the failure's one-line message first (what pytest's short summary
# shows), then the inner traceback with its source line, then the captured output
@pytest.mark.kvt_expect(
    "failed",
    rf"^\[nested call\] AssertionError: deliberate failure {CANARY}\n"
    rf"(?s:.*)>\s+raise AssertionError\(f\"deliberate failure \{{CANARY\}}\"\)"
    rf"(?s:.*)----- Captured stdout call -----\nprinted before failing {CANARY}",
)
def test_canary_fails() -> None:
    print(f"printed before failing {CANARY}")
    raise AssertionError(f"deliberate failure {CANARY}")


@pytest.mark.kvt_expect("skipped", rf"^\(nested\) deliberate skip {CANARY}$")
def test_canary_skips() -> None:
    pytest.skip(f"deliberate skip {CANARY}")


@pytest.mark.kvt_expect("xfailed", rf"^deliberate xfail {CANARY}$")
@pytest.mark.xfail(reason=f"deliberate xfail {CANARY}", strict=True)
def test_canary_xfails() -> None:
    raise AssertionError("expected to fail")


@pytest.mark.kvt_expect("passed", "^$")
@pytest.mark.parametrize("vid", [10, 20])
def test_canary_parametrized(vid: int) -> None:
    assert vid in (10, 20)
