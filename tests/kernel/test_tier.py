"""The kernel tier's host side, checked cheaply: proxies select like ordinary tests (collection
only); the nested run starts in the background when collection ends and is killed when the host
session ends early (`-x`, Ctrl-C); the tier's timeout kills the nested host and reports its
serial console (a boot cut off after 2 s; run_command's timeout likewise); no qemu or no
fetchable kernel makes the tier unavailable. That a nested failure, skip or xfail reaches the
host as such is proven by the canaries of nested/test_tier_canary.py, which ride in the
session's one nested run.

The subprocess checks run the host's pytest with KVT_RUNS_DIR set to a fresh directory, so the
qemu they look for is theirs, not the session's own nested run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.build import TierUnavailable, build_tier
from tests.kernel.conftest import (
    RUNS_DIR,
    NestedFailure,
    TierRun,
    base_nodeid,
    outcome,
    phase_times,
    publish,
    run_tier,
    wait_published,
)
from tests.kernel.vm import QEMU, NestedRun, qemus_under, run_command

ROOT = Path(__file__).resolve().parents[2]
CANARY = "tests/kernel/nested/test_tier_canary.py"
SELFCHECK = "tests/kernel/selfcheck_host.py"
# the host pytest's plugins the subprocess checks do not need (their import alone costs seconds)
LEAN = ("-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest")


def host_pytest_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *LEAN, "-rA", *args]


def host_pytest(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        host_pytest_argv(*args),
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def runs() -> Iterator[Path]:
    """A fresh runs directory (outside /tmp: the nested host mounts its own /tmp)."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="selfcheck-", dir=RUNS_DIR))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tier_or_skip() -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"kernel tier unavailable: {QEMU} is not installed")
    try:
        build_tier()
    except TierUnavailable as exc:
        pytest.skip(f"kernel tier unavailable: {exc}")


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


def test_nested_tests_are_collected_as_proxies_and_select_with_k(runs: Path) -> None:
    result = host_pytest(
        "--collect-only", "-q", "-k", "canary_fails", CANARY, timeout=120, KVT_RUNS_DIR=str(runs)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CANARY}::test_canary_fails" in result.stdout
    assert "test_canary_passes_inside" not in result.stdout
    assert "1/6 tests collected (5 deselected)" in result.stdout
    assert list(runs.iterdir()) == []  # collecting boots nothing


def test_the_tier_timeout_kills_the_nested_host_and_shows_its_console(runs: Path) -> None:
    tier_or_skip()
    nodeid = f"{CANARY}::test_canary_passes_inside"
    started = time.monotonic()
    tier = run_tier([nodeid], ROOT, timeout=2, runs_dir=runs)
    assert time.monotonic() - started < 30
    assert tier.run is not None and tier.run.timed_out and tier.run.exit_code is None
    assert qemus_under(runs) == []
    with pytest.raises(NestedFailure) as failure:
        outcome(nodeid, tier)
    report = str(failure.value)
    assert report.startswith(f"no result for {nodeid} from the nested host: ")
    assert "the nested host did not finish within 2 s: qemu was killed" in report
    assert "----- serial console (tail) -----" in report
    assert list(runs.iterdir()) == []  # the results directory is gone too


def test_run_command_is_bounded_by_its_timeout_and_leaves_nothing(runs: Path) -> None:
    """vm.run_command (the entry point of bench/vlans.py) kills its qemu at the timeout,
    says so, and removes its results directory."""
    tier_or_skip()
    started = time.monotonic()
    run = run_command(["true"], timeout=2, runs_dir=runs)
    assert time.monotonic() - started < 30
    assert run.timed_out and run.exit_code is None, run
    assert run.reason == "the nested host did not finish within 2 s: qemu was killed"
    assert qemus_under(runs) == []
    assert list(runs.iterdir()) == []


def test_x_stops_the_nested_host_that_runs_beside_the_host_tests(runs: Path) -> None:
    tier_or_skip()
    started = time.monotonic()
    # the host test fails only once the nested host's qemu runs, i.e. during the host's tests
    result = host_pytest(
        "-x", SELFCHECK, CANARY, "-k", "fails", timeout=180, KVT_RUNS_DIR=str(runs)
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert f"FAILED {SELFCHECK}::test_fails_while_the_nested_host_runs" in out
    assert "KVT-SELFCHECK: the nested host runs" in out
    assert "stopping after 1 failures" in out
    assert "the host's pytest session ended before the nested run finished" in out
    assert "test_canary_fails" not in out  # no proxy ran
    assert qemus_under(runs) == []
    assert time.monotonic() - started < 120  # the session did not wait for the nested run


@contextlib.contextmanager
def host_pytest_beside_a_nested_host(runs: Path) -> Iterator[subprocess.Popen[str]]:
    """A host pytest whose host test waits while its nested host runs (yielded once that qemu
    runs: it booted during the host's tests); killed at the end if still alive."""
    argv = host_pytest_argv(SELFCHECK, CANARY, "-k", "waits or passes_inside")
    with subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "KVT_RUNS_DIR": str(runs)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            # the host test gives up after 60 s; a nested host that starts later is too late
            deadline = time.monotonic() + 45
            while not qemus_under(runs):
                assert proc.poll() is None and time.monotonic() < deadline, "no nested host"
                time.sleep(0.2)
            time.sleep(1)
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_ctrl_c_kills_the_nested_host_that_runs_beside_the_host_tests(runs: Path) -> None:
    tier_or_skip()
    with host_pytest_beside_a_nested_host(runs) as proc:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to the host pytest only
        # a bound on its exit (it stops its nested qemu first): 60 s was passed at load 10
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "selfcheck_host.py:" in out and "KeyboardInterrupt" in out  # in the host test
    assert qemus_under(runs) == []


def test_a_sigkilled_host_pytest_leaves_no_nested_host(runs: Path) -> None:
    tier_or_skip()
    with host_pytest_beside_a_nested_host(runs) as proc:
        proc.kill()  # no finalizer runs: the kernel's parent-death signal must end qemu
        proc.wait()
    deadline = time.monotonic() + 10
    while qemus_under(runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemus_under(runs) == []


def test_the_summary_shows_where_the_nested_seconds_went() -> None:
    """pytest_terminal_summary's lines after the tier's wall time: the slowest nested tests
    with their phases (fixtures' costs show in setup), then the time outside the tests."""

    def report(nodeid: str, when: str, duration: float) -> dict[str, Any]:
        return {"nodeid": nodeid, "when": when, "outcome": "passed", "duration": duration}

    quick, slow = "nested/test_a.py::test_quick", "nested/test_b.py::test_slow"
    reports = {
        quick: [report(quick, "setup", 0.1), report(quick, "call", 1.0)],
        slow: [report(slow, "setup", 40.0), report(slow, "call", 20.0)],
    }
    run = NestedRun(0, "", "", "", seconds=100.0, timed_out=False, reason="the command exited 0")
    tier = TierRun(reports=reports, run=run, tests=2)
    assert phase_times(tier) == [
        f"   60.0 s  {slow}  (setup 40.0 + call 20.0)",
        f"    1.1 s  {quick}  (setup 0.1 + call 1.0)",
        "   38.9 s  outside the 2 tests: boot, pytest's start and collection, power-off",
    ]
    assert phase_times(tier, slowest=1)[0].endswith("(setup 40.0 + call 20.0)")
    assert len(phase_times(tier, slowest=1)) == 2


def test_an_xdist_worker_reads_the_controllers_run_as_it_was(tmp_path: Path) -> None:
    """Under pytest-xdist the controller publishes the session's one run (publish) and each
    worker's proxies read it (wait_published): every field a proxy or the summary uses comes
    back as it was, and a proxy's outcome from it is the same."""
    nodeid = "tests/kernel/nested/test_a.py::test_fails"
    failed = {
        "nodeid": nodeid,
        "when": "call",
        "outcome": "failed",
        "duration": 2.5,
        "message": "AssertionError: inner",
        "longrepr": "assert 1 == 2",
        "sections": [["Captured stdout call", "printed inside"]],
        "wasxfail": None,
    }
    run = NestedRun(1, "output", "console", "qemu", seconds=9.5, timed_out=False, reason="done")
    tier = TierRun(reports={nodeid: [failed]}, run=run, tests=1, release="6.1.0-57-amd64")
    tier.collect_errors.append({"nodeid": "tests/kernel/nested/test_b.py", "longrepr": "E"})
    published = tmp_path / "tier.json"
    publish(tier, published)
    assert [p.name for p in tmp_path.iterdir()] == ["tier.json"]  # no partial file left

    read = wait_published(published, timeout=5)
    assert 0 <= read.waited < 5
    read.waited = tier.waited
    assert read == tier
    with pytest.raises(NestedFailure, match=r"\[nested call\] AssertionError: inner"):
        outcome(nodeid, read)


def test_an_xdist_worker_waits_for_the_published_run_within_its_bound(tmp_path: Path) -> None:
    started = time.monotonic()
    tier = wait_published(tmp_path / "never.json", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert tier.run is None and "published no result within 0 s" in str(tier.error)
    with pytest.raises(NestedFailure, match="the nested host did not run: the xdist controller"):
        outcome("tests/kernel/nested/test_a.py::test_x", tier)


@pytest.mark.parametrize(
    ("nodeid", "base"),
    [
        (
            "tests/kernel/nested/test_a.py::test_x@kernel-tier",
            "tests/kernel/nested/test_a.py::test_x",
        ),
        (
            "tests/kernel/nested/test_a.py::test_x[a@b]",
            "tests/kernel/nested/test_a.py::test_x[a@b]",
        ),
        (
            "tests/kernel/nested/test_a.py::test_x[a@b]@g",
            "tests/kernel/nested/test_a.py::test_x[a@b]",
        ),
        ("tests/kernel/nested/test_a.py::test_x", "tests/kernel/nested/test_a.py::test_x"),
    ],
)
def test_the_nested_run_gets_node_ids_without_xdists_group_suffix(nodeid: str, base: str) -> None:
    assert base_nodeid(nodeid) == base
