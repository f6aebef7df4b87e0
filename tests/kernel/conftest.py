"""The kernel test tier's host side: nested tests become proxy items, run in one nested VM.

On the host, every test function that pytest collects from tests/kernel/nested/test_*.py is
replaced by a `NestedTest` proxy with the same node id, name, markers and keywords (so `-k`,
`-m` and `file.py::test` select as usual); the real function never runs on the host. As soon
as collection ends with proxies selected, a background thread boots the nested host once for
the whole session (tests/kernel/vm.py) and runs pytest there on every selected proxy's node
id, with tests/kernel/report.py writing each inner report as a JSON line into the writable
share: the nested host's one vCPU works while the host's tests run on the other core. Each
proxy waits for that run, then passes, fails (with the inner traceback and captured output),
skips or xfails as its inner test did. A proxy without an inner result fails with the reason
(timeout, crash) and the serial console's tail. A proxy marked `kvt_expect(outcome, pattern)`
(the tier's canaries) instead passes when its inner test's outcome is `outcome` and the
proxy's own report (what a plain proxy would raise) matches `pattern`.

When the session ends (also early: `-x`, Ctrl-C, an internal error; or at interpreter exit)
the nested host is killed and reaped.

Under pytest-xdist (`make test` runs `-n 2`) the controller, which collects nothing itself,
runs the session's one nested run (`XdistTier`, registered by tests/conftest.py): it starts as
soon as the first worker reports its collection and publishes its `TierRun` as one JSON file;
a proxy on a worker waits for that file (bounded like the run) instead of booting a nested host
of its own. The summary prints in the controller.

Inside the nested host (KVT_NESTED=1) this plugin does nothing: the tests run as written.

Environment: KVT_TIER_TIMEOUT (s, default 1500) bounds the whole nested run; KVT_RUNS_DIR (a
directory outside /tmp, default tests/.cache/kernel-runs) holds the runs' results; every KVT_*
variable is passed on to the nested pytest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.build import TierUnavailable, build_tier
from tests.kernel.vm import QEMU, RUNS_DIR, Cancel, NestedRun, run_nested

HERE = Path(__file__).resolve().parent
NESTED_DIR = HERE / "nested"
INSIDE = os.environ.get("KVT_NESTED") == "1"
TIER_TIMEOUT = float(os.environ.get("KVT_TIER_TIMEOUT", "1500"))
# markers that act while a test runs: they belong to the inner run, not to the host's proxy
INNER_MARKERS = {"skip", "skipif", "xfail", "usefixtures", "parametrize", "filterwarnings"}
INNER_MARKERS |= {"timeout"}
TAIL = 6000
CANARY_FILE = "nested/test_tier_canary.py"
CANARY_NOTE = " (the canaries, which ride along, fail and xfail on purpose)"
# how long a proxy waits for the run beyond the tier's timeout (building the tier's cache,
# reading the results); then the run is cancelled and the proxy fails
WAIT_MARGIN = 120.0
# plugins the nested run leaves out: importing them costs ~40 s of the nested host's ~12x
# slower Python (schemathesis pulls in hypothesis), and no nested test needs them
SKIPPED_PLUGINS = ("schemathesis", "hypothesispytest", "xdist", "xdist.looponfail")
# the checkout's own code, compiled to bytecode on the host before the boot (precompile)
PRECOMPILED = ("app", "migrations", "tests")


class NestedFailure(Exception):
    """The inner test failed, or has no result; the message is the whole report."""


@dataclass
class TierRun:
    """The session's one nested run: its inner reports by node id, or why there are none."""

    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    collect_errors: list[dict[str, Any]] = field(default_factory=list)
    run: NestedRun | None = None
    unavailable: str | None = None
    error: str | None = None  # the host side of the run failed (its exception)
    tests: int = 0
    release: str = ""
    waited: float = 0.0  # s the proxies spent waiting for the run (the rest overlapped)


class TierJob:
    """The session's one nested run, in a background thread started when collection ends."""

    def __init__(
        self,
        nodeids: list[str],
        rootdir: Path,
        timeout: float = TIER_TIMEOUT,
        publish: Path | None = None,
    ) -> None:
        self.nodeids, self.rootdir, self.timeout = nodeids, rootdir, timeout
        self.publish = publish  # where the result is written for xdist's workers (JSON)
        self.cancel = Cancel()
        self.result: TierRun | None = None
        self.thread = threading.Thread(target=self.run, name="kernel-tier", daemon=True)

    def start(self) -> TierJob:
        LIVE_JOBS.add(self)
        self.thread.start()
        return self

    def run(self) -> None:
        try:
            self.result = run_tier(self.nodeids, self.rootdir, self.timeout, self.cancel)
        except Exception as exc:  # reported by every proxy (a thread's exception goes nowhere)
            self.result = TierRun(tests=len(self.nodeids), error=f"{exc!r}")
        finally:
            LIVE_JOBS.discard(self)
            if self.publish is not None:
                publish(
                    self.result or TierRun(tests=len(self.nodeids), error="no result"), self.publish
                )

    def wait(self) -> TierRun:
        """The run's result; bounded by the tier's timeout (and a margin), then cancelled."""
        started = time.monotonic()
        self.thread.join(self.timeout + WAIT_MARGIN)
        if self.thread.is_alive():
            self.stop(f"no result within {self.timeout + WAIT_MARGIN:.0f} s")
        result = self.result or TierRun(tests=len(self.nodeids), error="the run thread hung")
        result.waited += time.monotonic() - started
        return result

    def stop(self, reason: str) -> None:
        """Kill the nested host now (if it runs) and wait for the thread (bounded)."""
        self.cancel(reason)
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(30)


LIVE_JOBS: set[TierJob] = set()
TIER_JOB = pytest.StashKey[TierJob]()
TIER_RUN = pytest.StashKey[TierRun]()


@atexit.register
def stop_live_jobs() -> None:
    """Last resort (the session ended without pytest_sessionfinish): no qemu outlives us."""
    for job in list(LIVE_JOBS):
        job.stop("the host's pytest exited")


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
        item.add_marker(pytest.mark.timeout(TIER_TIMEOUT + WAIT_MARGIN + 60))
        item.lineno = function.reportinfo()[1]
        return item

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.lineno, self.name

    def runtest(self) -> None:
        tier = tier_run(self.session)
        if tier.unavailable is not None:
            pytest.skip(f"kernel tier unavailable: {tier.unavailable}")
        expect = self.get_closest_marker("kvt_expect")
        nodeid = base_nodeid(self.nodeid)
        if published_file(self.config) is not None:  # for the controller's summary
            self.user_properties.append((WAITED_PROPERTY, tier.waited))
        if expect is None:
            outcome(nodeid, tier)
        else:
            expected(nodeid, tier, *expect.args)

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


def base_nodeid(nodeid: str) -> str:
    """The node id without the `@group` suffix that xdist's `--dist loadgroup` appends on its
    workers (the nested pytest knows the plain id)."""
    at = nodeid.rfind("@")
    return nodeid[:at] if at > nodeid.rfind("]") else nodeid


def start_job(session: pytest.Session) -> TierJob:
    nodeids = [base_nodeid(i.nodeid) for i in session.items if isinstance(i, NestedTest)]
    job = TierJob(nodeids, Path(str(session.config.rootpath))).start()
    session.config.stash[TIER_JOB] = job
    return job


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Proxies run last (in their order): the host's tests run while the nested host works,
    and by the time the proxies run, their results are (mostly) in."""
    if not INSIDE:
        items.sort(key=lambda item: isinstance(item, NestedTest))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the nested run as soon as the selection is final (after -k, -m, --lf, ...)."""
    if INSIDE or session.config.option.collectonly or TIER_JOB in session.config.stash:
        return
    if published_file(session.config) is not None:
        return  # an xdist worker: the controller runs the tier (XdistTier)
    if any(isinstance(i, NestedTest) for i in session.items):
        start_job(session)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The session ends (also early: -x, Ctrl-C): the nested host must not outlive it."""
    job = session.config.stash.get(TIER_JOB, None)
    if job is None or TIER_RUN in session.config.stash:
        return
    if job.thread.is_alive():
        job.stop("the host's pytest session ended before the nested run finished")
    session.config.stash[TIER_RUN] = job.wait()


def tier_run(session: pytest.Session) -> TierRun:
    """The session's nested run, for every selected proxy: waits for its end."""
    tier = session.config.stash.get(TIER_RUN, None)
    if tier is None:
        shared = published_file(session.config)
        if shared is not None:
            tier = wait_published(shared, TIER_TIMEOUT + WAIT_MARGIN)
        else:
            job = session.config.stash.get(TIER_JOB, None) or start_job(session)
            tier = job.wait()
        session.config.stash[TIER_RUN] = tier
    return tier


def run_tier(
    nodeids: list[str],
    rootdir: Path,
    timeout: float = TIER_TIMEOUT,
    cancel: Cancel | None = None,
    runs_dir: Path = RUNS_DIR,
) -> TierRun:
    """Boot the nested host and run pytest there on `nodeids` (at most `timeout` s; `cancel`
    ends it at once from another thread); its results directory lives in `runs_dir`."""
    if shutil.which(QEMU) is None:
        return TierRun(unavailable=f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    try:
        tier = build_tier()
    except TierUnavailable as exc:
        return TierRun(unavailable=str(exc))
    precompile(rootdir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="run-", dir=runs_dir))
    try:
        report = results / "report.jsonl"
        argv = [sys.executable, "-m", "pytest", "-p", "tests.kernel.report"]
        argv += ["--kvt-report", str(report), "-p", "no:cacheprovider"]
        for plugin in SKIPPED_PLUGINS:
            argv += ["-p", f"no:{plugin}"]
        argv += ["--confcutdir", str(NESTED_DIR), "-q", "-rA", *nodeids]
        run = run_nested(tier, argv, results=results, cwd=rootdir, timeout=timeout, cancel=cancel)
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


def precompile(rootdir: Path) -> None:
    """Bytecode (__pycache__, what Python writes by default) for the checkout's own modules,
    compiled on the host where it is stale (compileall compares each source's mtime and size).
    The nested host runs with PYTHONDONTWRITEBYTECODE (its / is read-only) and, like a host
    with that variable set, would compile every module of app/ and tests/ anew in its ~12x
    slower Python, and every Alembic migration again at each daemon's start (its no-op
    upgrade loads them all). Best effort: a module that does not compile fails its tests."""
    with contextlib.suppress(subprocess.TimeoutExpired):  # then the nested host compiles
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-x", r"/\.cache/", *PRECOMPILED],
            cwd=rootdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
            check=False,
        )


# --- pytest-xdist: the controller runs the tier, its workers' proxies read the result -----------

RESULT_KEY = "kvt_tier_result"  # workerinput: the file the controller publishes the TierRun in
WAITED_PROPERTY = "kvt_tier_waited"  # a proxy's user property: s its worker waited for the run
POLL = 0.5  # s between a worker's looks for the published result


def published_file(config: pytest.Config) -> Path | None:
    """On an xdist worker: the file the controller publishes the session's TierRun in."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or RESULT_KEY not in workerinput:
        return None
    return Path(workerinput[RESULT_KEY])


def publish(tier: TierRun, path: Path) -> None:
    """Write `tier` as JSON, atomically (a reader sees the whole file or none)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(asdict(tier)))
    partial.rename(path)


def load_published(path: Path) -> TierRun:
    data = json.loads(path.read_text())
    run = data.pop("run")
    return TierRun(**data, run=None if run is None else NestedRun(**run))


def wait_published(path: Path, timeout: float) -> TierRun:
    """The TierRun the controller published at `path`, waiting for it at most `timeout` s."""
    started = time.monotonic()
    while not path.exists():
        if time.monotonic() - started > timeout:
            return TierRun(error=f"the xdist controller published no result within {timeout:.0f} s")
        time.sleep(POLL)
    tier = load_published(path)
    tier.waited = time.monotonic() - started
    return tier


class XdistTier:
    """The session's one nested run in xdist's controller, which collects nothing itself: it
    starts when the first worker reports its collection (the selection is the same on every
    worker), on the nested node ids there, and publishes its TierRun in `directory` for the
    workers' proxies. Registered by tests/conftest.py when xdist distributes the session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.directory = Path(tempfile.mkdtemp(prefix="kvt-tier-"))
        self.result = self.directory / "tier.json"
        self.job: TierJob | None = None
        self.waited = 0.0
        prefix = (
            NESTED_DIR.relative_to(config.rootpath)
            if NESTED_DIR.is_relative_to(config.rootpath)
            else NESTED_DIR
        )
        self.prefix = f"{prefix.as_posix()}/"

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RESULT_KEY] = str(self.result)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.job is not None or self.config.option.collectonly:
            return
        nodeids = [base_nodeid(i) for i in ids if i.startswith(self.prefix)]
        if nodeids:
            self.job = TierJob(nodeids, self.config.rootpath, publish=self.result).start()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == WAITED_PROPERTY:
                self.waited = max(self.waited, float(value))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The workers are done: a run still going has no proxy left to wait for it."""
        if self.job is None or TIER_RUN in self.config.stash:
            return
        if self.job.thread.is_alive():
            self.job.stop("the host's pytest session ended before the nested run finished")
        tier = self.job.wait()
        tier.waited = self.waited
        self.config.stash[TIER_RUN] = tier

    def pytest_unconfigure(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        summary(terminalreporter, self.config)


def is_xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("dsession")


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


def expected(nodeid: str, tier: TierRun, want: str, pattern: str) -> None:
    """A canary's check: its inner test ended as `want` ("passed", "failed", "skipped",
    "xfailed") and what a plain proxy reports for it (`outcome`) matches `pattern`."""
    try:
        outcome(nodeid, tier)
        got, text = "passed", ""
    except NestedFailure as exc:
        got, text = "failed", str(exc)
    except pytest.xfail.Exception as exc:
        got, text = "xfailed", exc.msg or ""
    except pytest.skip.Exception as exc:
        got, text = "skipped", exc.msg or ""
    if got != want or re.search(pattern, text) is None:
        raise NestedFailure(
            f"canary {nodeid}: expected the proxy to report {want} matching {pattern!r}, "
            f"it reported {got}:\n{text}"
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
        return f"the nested host did not run: {tier.error or 'no run'}"
    return (
        f"no result for {nodeid} from the nested host: {run.reason} ({run.seconds:.0f} s)\n"
        f"----- nested pytest output (tail) -----\n{run.output[-TAIL:]}\n"
        f"----- serial console (tail) -----\n{run.console_tail(TAIL)}\n"
        f"----- qemu stderr -----\n{run.qemu_errors[-TAIL:]}"
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not is_xdist_controller(config):  # there XdistTier prints it
        summary(terminalreporter, config)


def summary(terminalreporter: Any, config: pytest.Config) -> None:
    tier = config.stash.get(TIER_RUN, None)
    if tier is None or INSIDE:
        return
    terminalreporter.write_sep("-", "kernel tier")
    if tier.unavailable is not None:
        terminalreporter.write_line(f"skipped: {tier.unavailable}")
    elif tier.run is not None:
        terminalreporter.write_line(
            f"{tier.tests} nested tests on Debian's {tier.release} under TCG: "
            f"{tier.run.seconds:.1f} s wall (boot, run, power-off), from the end of "
            f"collection; the proxies waited {tier.waited:.1f} s of it; {tier.run.reason}"
            + (CANARY_NOTE if any(CANARY_FILE in n for n in tier.reports) else "")
        )
        for line in phase_times(tier):
            terminalreporter.write_line(line)


SLOWEST = 12  # nested tests listed with their phases' durations in the summary


def phase_times(tier: TierRun, slowest: int = SLOWEST) -> list[str]:
    """Where the nested run's seconds went: the `slowest` nested tests, slowest first, each
    with its setup, call and teardown durations inside the nested host (fixtures' costs show
    in setup and teardown), as report.py wrote them; then the rest of the run's wall time
    (boot, pytest's start and collection, power-off)."""
    rows = []
    for nodeid, reports in tier.reports.items():
        phases = {r["when"]: float(r["duration"]) for r in reports}
        shown = " + ".join(
            f"{w} {phases[w]:.1f}" for w in ("setup", "call", "teardown") if w in phases
        )
        rows.append((sum(phases.values()), nodeid, shown))
    rows.sort(key=lambda row: -row[0])
    lines = [f"{total:7.1f} s  {nodeid}  ({shown})" for total, nodeid, shown in rows[:slowest]]
    if tier.run is not None and rows:
        rest = tier.run.seconds - sum(row[0] for row in rows)
        lines.append(
            f"{rest:7.1f} s  outside the {len(rows)} tests: boot, pytest's start and "
            "collection, power-off"
        )
    return lines
