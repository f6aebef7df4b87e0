"""Shared fixtures: throwaway namespaces, the in-process app in a namespace, the real daemon."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.daemon import Daemon
from tests.db_template import seed_state_dir
from tests.netns_tools import throwaway_netns

QEMU_USER = "kvmnetd-qemu"  # the daemon's default (settings.qemu_user)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def qemu_user() -> str:
    """Every qemu runs as this system user by default: created when missing, as `make test`
    does (a plain `pytest` on a fresh machine works too)."""
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
