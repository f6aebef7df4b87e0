"""The kernel test tier's host side: nested tests become proxy items, run in one nested VM.

On the host, every test function that pytest collects from tests/kernel/nested/test_*.py is
replaced by a `NestedTest` proxy with the same node id, name, markers and keywords (so `-k`,
`-m` and `file.py::test` select as usual); the real function never runs on the host. The
first proxy that runs boots the nested host once for the whole session (tests/kernel/vm.py)
and runs pytest there on every selected proxy's node id, with tests/kernel/report.py writing
each inner report as a JSON line into the writable share. Each proxy then passes, fails (with
the inner traceback and captured output), skips or xfails as its inner test did. A proxy
without an inner result fails with the reason (timeout, crash) and the serial console's tail.

Inside the nested host (KVT_NESTED=1) this plugin does nothing: the tests run as written.

Environment: KVT_TIER_TIMEOUT (s, default 900) bounds the whole nested run; every KVT_*
variable is passed on to the nested pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.build import TierUnavailable, build_tier
from tests.kernel.vm import QEMU, NestedRun, run_nested

HERE = Path(__file__).resolve().parent
NESTED_DIR = HERE / "nested"
RUNS_DIR = HERE.parent / ".cache" / "kernel-runs"
INSIDE = os.environ.get("KVT_NESTED") == "1"
TIER_TIMEOUT = float(os.environ.get("KVT_TIER_TIMEOUT", "900"))
# markers that act while a test runs: they belong to the inner run, not to the host's proxy
INNER_MARKERS = {"skip", "skipif", "xfail", "usefixtures", "parametrize", "filterwarnings"}
INNER_MARKERS |= {"timeout"}
TAIL = 6000
# plugins the nested run leaves out: importing them costs ~40 s of the nested host's ~12x
# slower Python (schemathesis pulls in hypothesis), and no nested test needs them
SKIPPED_PLUGINS = ("schemathesis", "hypothesispytest")


class NestedFailure(Exception):
    """The inner test failed, or has no result; the message is the whole report."""


@dataclass
class TierRun:
    """The session's one nested run: its inner reports by node id, or why there are none."""

    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    collect_errors: list[dict[str, Any]] = field(default_factory=list)
    run: NestedRun | None = None
    unavailable: str | None = None
    tests: int = 0
    release: str = ""


TIER_RUN = pytest.StashKey[TierRun]()


def is_nested(path: Path) -> bool:
    return NESTED_DIR in path.parents


# --- collection: proxies in place of the nested functions --------------------------------------


class NestedTest(pytest.Item):
    """A test of tests/kernel/nested/, run in the nested host; this item reports its result."""

    lineno: int | None = None

    @classmethod
    def proxy(cls, function: pytest.Function) -> NestedTest:
        parent = function.parent
        assert parent is not None, "a test function always has a module or class"
        item: NestedTest = cls.from_parent(parent, name=function.name)
        for mark in function.own_markers:
            if mark.name not in INNER_MARKERS:
                item.own_markers.append(mark)
                item.keywords[mark.name] = mark
        item.extra_keyword_matches.update(function.extra_keyword_matches)
        # the first proxy carries the whole nested run
        item.add_marker(pytest.mark.timeout(TIER_TIMEOUT + 120))
        item.lineno = function.reportinfo()[1]
        return item

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.lineno, self.name

    def runtest(self) -> None:
        tier = tier_run(self.session)
        if tier.unavailable is not None:
            pytest.skip(f"kernel tier unavailable: {tier.unavailable}")
        outcome(self.nodeid, tier)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, NestedFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, Any]:
    result = yield
    if INSIDE or result is None or not is_nested(collector.path):
        return result
    nodes = result if isinstance(result, list) else [result]
    return [NestedTest.proxy(n) if isinstance(n, pytest.Function) else n for n in nodes]


# --- the one nested run ------------------------------------------------------------------------


def tier_run(session: pytest.Session) -> TierRun:
    """The session's nested run, done now on first use, for every selected proxy."""
    tier = session.config.stash.get(TIER_RUN, None)
    if tier is None:
        nodeids = [i.nodeid for i in session.items if isinstance(i, NestedTest)]
        tier = run_tier(nodeids, Path(str(session.config.rootpath)))
        session.config.stash[TIER_RUN] = tier
    return tier


def run_tier(nodeids: list[str], rootdir: Path) -> TierRun:
    if shutil.which(QEMU) is None:
        return TierRun(unavailable=f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    try:
        tier = build_tier()
    except TierUnavailable as exc:
        return TierRun(unavailable=str(exc))
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR))
    try:
        report = results / "report.jsonl"
        argv = [sys.executable, "-m", "pytest", "-p", "tests.kernel.report"]
        argv += ["--kvt-report", str(report), "-p", "no:cacheprovider"]
        for plugin in SKIPPED_PLUGINS:
            argv += ["-p", f"no:{plugin}"]
        argv += ["--confcutdir", str(NESTED_DIR), "-q", "-rA", *nodeids]
        run = run_nested(tier, argv, results=results, cwd=rootdir, timeout=TIER_TIMEOUT)
        lines = report.read_text().splitlines() if report.exists() else []
    finally:
        shutil.rmtree(results, ignore_errors=True)
    out = TierRun(run=run, tests=len(nodeids), release=tier.release)
    for line in lines:
        data = json.loads(line)
        if data["when"] == "collect":
            out.collect_errors.append(data)
        else:
            out.reports.setdefault(data["nodeid"], []).append(data)
    return out


# --- one proxy's outcome -----------------------------------------------------------------------


def captured(reports: list[dict[str, Any]]) -> str:
    return "".join(
        f"\n----- {title} -----\n{content}" for r in reports for title, content in r["sections"]
    )


def outcome(nodeid: str, tier: TierRun) -> None:
    """Pass, or raise the outcome of the inner test `nodeid`."""
    reports = tier.reports.get(nodeid)
    if not reports:
        raise NestedFailure(no_result(nodeid, tier))
    failed = [r for r in reports if r["outcome"] == "failed"]
    if failed:
        # the first line is what the short test summary shows
        phases = "\n".join(
            f"[nested {r['when']}] {r.get('message', '')}\n{r['longrepr']}" for r in failed
        )
        raise NestedFailure(f"{phases}\n{captured(reports)}")
    xfailed = [r for r in reports if r["wasxfail"] is not None and r["outcome"] == "skipped"]
    if xfailed:
        pytest.xfail(xfailed[0]["wasxfail"])
    skipped = [r for r in reports if r["outcome"] == "skipped"]
    if skipped:
        # reported at the nested test's own location, as for a skip marker
        raise pytest.skip.Exception(
            f"(nested) {skipped[0]['skip_reason']}", _use_item_location=True
        )


def no_result(nodeid: str, tier: TierRun) -> str:
    """Why `nodeid` has no inner result: its file failed to collect, or the run broke off."""
    path = nodeid.split("::", 1)[0]
    for error in tier.collect_errors:
        if error["nodeid"] in (path, "") or path.startswith(error["nodeid"] + "/"):
            return (
                f"collecting {error['nodeid'] or 'the nested tests'} failed:\n{error['longrepr']}"
            )
    run = tier.run
    if run is None:
        return "the nested host did not run"
    return (
        f"no result for {nodeid} from the nested host: {run.reason} ({run.seconds:.0f} s)\n"
        f"----- nested pytest output (tail) -----\n{run.output[-TAIL:]}\n"
        f"----- serial console (tail) -----\n{run.console_tail(TAIL)}\n"
        f"----- qemu stderr -----\n{run.qemu_errors[-TAIL:]}"
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tier = config.stash.get(TIER_RUN, None)
    if tier is None or INSIDE:
        return
    terminalreporter.write_sep("-", "kernel tier")
    if tier.unavailable is not None:
        terminalreporter.write_line(f"skipped: {tier.unavailable}")
    elif tier.run is not None:
        terminalreporter.write_line(
            f"{tier.tests} nested tests on Debian's {tier.release} under TCG: "
            f"{tier.run.seconds:.1f} s wall (boot, run, power-off); {tier.run.reason}"
        )
