"""Shared fixtures: throwaway namespaces, the in-process app in a namespace, the real daemon.

`make test` runs the session on two pytest-xdist workers (`-n 2 --dist loadgroup`): each test
works in namespaces of its own, the caches it shares (the test guest, the kernel tier, the
qemu user) are built under a file lock, and the database template is one per process. The
hooks here keep a module's tests on one worker where they share a fixture wider than a test
(a guest or daemon booted once per module) and hand the long tests out first; the kernel
tier's one nested run belongs to xdist's controller (tests/kernel/conftest.py, XdistTier).
"""

from __future__ import annotations

import fcntl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.daemon import Daemon
from tests.db_template import seed_state_dir
from tests.kernel.conftest import NestedTest, XdistTier, is_xdist_controller
from tests.netns_tools import throwaway_netns

QEMU_USER = "kvmnetd-qemu"  # the daemon's default (settings.qemu_user)
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "tests" / ".cache"
# fixtures wider than a test that every worker may set up for itself (cheap, idempotent)
PER_WORKER_FIXTURES = {"qemu_user"}
# the order tests are handed to the workers: the long ones first, so that no long test starts
# when the other worker has nothing left (the nested tier's proxies last: they wait for its run)
ORDER = ("tests/e2e/", "tests/guest/", "tests/host/", "tests/kernel/", "tests/api/", "tests/fuzz/")


@pytest.hookimpl(trylast=True)  # after xdist's own, which registers its controller
def pytest_configure(config: pytest.Config) -> None:
    if is_xdist_controller(config):
        config.pluginmanager.register(XdistTier(config), "kvt-xdist-tier")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker turns the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=rank)
    if getattr(config.option, "loadgroup", False):
        for item in items:
            group = shared_setup_group(item)
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))


def rank(item: pytest.Item) -> int:
    if isinstance(item, NestedTest):
        return len(ORDER) + 1
    path = item.nodeid
    return next((i for i, prefix in enumerate(ORDER) if path.startswith(prefix)), len(ORDER))


def shared_setup_group(item: pytest.Item) -> str | None:
    """The test's module, when the test uses a fixture wider than one test (module, class,
    package or session scope) defined in the test suite: its tests stay on one worker, which
    sets that fixture up once."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name, ())
        if not definitions or name in PER_WORKER_FIXTURES:
            continue
        last = definitions[-1]
        if last.scope != "function" and last.baseid:  # baseid "": a plugin's fixture
            return item.nodeid.split("::", 1)[0]
    return None


@pytest.fixture(scope="session", autouse=True)
def qemu_user() -> str:
    """Every qemu runs as this system user by default: created when missing, as `make test`
    does (a plain `pytest` on a fresh machine works too; xdist's workers one at a time)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "qemu-user.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(
            [str(ROOT / "deploy" / "ensure-qemu-user"), QEMU_USER],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
    return QEMU_USER


@pytest.fixture
def netns() -> Iterator[str]:
    with throwaway_netns() as name:
        yield name


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=seed_state_dir(tmp_path / "state"),
        run_dir=tmp_path / "run",
        listen="",
        reconcile_interval=30,
        probe_kernel=tmp_path / "no-kernel",
    )


@pytest.fixture
def api(netns: str, settings: Settings) -> Iterator[TestClient]:
    """The app in this process, acting on the kernel of a fresh namespace."""
    app = create_app(settings, token="test-token", host_netns=netns)
    with TestClient(app, base_url="http://kvmnetd") as client:
        assert app.state.supervisor.ready.wait(10)
        yield client


@pytest.fixture
def daemon(netns: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """The real daemon as a subprocess in a fresh namespace; its log is printed on failure."""
    d = Daemon(netns, tmp_path).start()
    try:
        yield d
    finally:
        d.kill()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- daemon log ({d.log}) ---\n{d.logs()[-20000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
