"""The kernel tier's host side: proxies select like ordinary tests, a nested failure fails the
host's run (with the inner traceback), and the tier's timeout kills the nested host and reports
the serial console. Each case runs the host's pytest as a subprocess on the self-check file
tests/kernel/nested/test_tier_canary.py (collected only with KVT_CANARY set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel.build import TierUnavailable, build_tier
from tests.kernel.conftest import RUNS_DIR, run_tier
from tests.kernel.vm import QEMU

ROOT = Path(__file__).resolve().parents[2]
CANARY = "tests/kernel/nested/test_tier_canary.py"


def host_pytest(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=ROOT,
        env={**os.environ, "KVT_CANARY": "1", **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def qemus_of_this_tier() -> list[int]:
    """Pids of qemu processes whose command line names this worktree's run directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if QEMU.encode() in cmdline and str(RUNS_DIR).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def test_without_qemu_the_tier_is_unavailable_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    tier = run_tier(["tests/kernel/nested/test_features.py::test_x"], ROOT)
    assert tier.unavailable is not None and QEMU in tier.unavailable
    assert tier.run is None


def test_an_uncached_kernel_that_apt_cannot_fetch_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get: as good as offline
    with pytest.raises(TierUnavailable, match="not cached and apt cannot fetch it"):
        build_tier(tmp_path / "cache")


def test_the_pinned_kernel_needs_no_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        built = build_tier()
    except TierUnavailable as exc:
        pytest.skip(f"kernel tier unavailable: {exc}")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert build_tier() == built


def test_nested_tests_are_collected_as_proxies_and_select_with_k() -> None:
    result = host_pytest("--collect-only", "-q", "-k", "fails", CANARY, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CANARY}::test_canary_fails" in result.stdout
    assert "test_canary_passes_inside" not in result.stdout
    assert "1/5 tests collected (4 deselected)" in result.stdout


@pytest.mark.timeout(1260)
def test_a_failing_nested_test_fails_the_host_run() -> None:
    result = host_pytest(CANARY, timeout=1200)
    out = result.stdout
    if "kernel tier unavailable" in out:
        pytest.skip(out[out.index("kernel tier unavailable") :].splitlines()[0])
    assert result.returncode == 1, out + result.stderr
    assert f"PASSED {CANARY}::test_canary_passes_inside" in out
    assert f"FAILED {CANARY}::test_canary_fails" in out
    assert f"PASSED {CANARY}::test_canary_parametrized[20]" in out
    assert f"SKIPPED [1] {CANARY}" in out and "(nested) deliberate skip KVT-CANARY-7f3a" in out
    # the inner traceback, as the nested pytest printed it
    assert "AssertionError: deliberate failure KVT-CANARY-7f3a" in out
    assert "[nested call] AssertionError: deliberate failure KVT-CANARY-7f3a" in out
    assert qemus_of_this_tier() == []


def test_the_tier_timeout_kills_the_nested_host_and_shows_its_console() -> None:
    result = host_pytest(CANARY, timeout=300, KVT_TIER_TIMEOUT="3")
    out = result.stdout
    if "kernel tier unavailable" in out:
        pytest.skip(out[out.index("kernel tier unavailable") :].splitlines()[0])
    assert result.returncode == 1, out + result.stderr
    assert "5 failed" in out  # every canary, none with a result
    assert "the nested host did not finish within 3 s: qemu was killed" in out
    assert "----- serial console (tail) -----" in out
    assert qemus_of_this_tier() == []
