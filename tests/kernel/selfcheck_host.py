"""Host tests for tests/kernel/test_tier.py's self-checks of the background nested run; not
collected on their own (the name does not match test_*.py): the self-check names this file on
a host pytest's command line, before a nested file, with KVT_RUNS_DIR set to a fresh directory.
Each test first waits until the nested host's qemu runs, which proves that it boots while the
host's tests run, then fails (for `-x`) or waits (for Ctrl-C)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.kernel.vm import qemus_under

RUNS = Path(os.environ.get("KVT_RUNS_DIR", "/nonexistent"))


def wait_for_the_nested_host(seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not qemus_under(RUNS):
        assert time.monotonic() < deadline, f"no qemu under {RUNS} within {seconds:.0f} s"
        time.sleep(0.1)
    print(f"KVT-SELFCHECK: the nested host runs: pids {qemus_under(RUNS)}", flush=True)


def test_fails_while_the_nested_host_runs() -> None:
    wait_for_the_nested_host()
    raise AssertionError("deliberate host failure KVT-SELFCHECK (for -x)")


def test_waits_while_the_nested_host_runs() -> None:
    wait_for_the_nested_host()
    time.sleep(300)  # until the self-check's Ctrl-C
