"""A work directory an unprivileged qemu can reach, the in-process app over it (in a
throwaway namespace, restartable on the same state), and VM helpers for the API tests.
qemu runs without a guest kernel: SeaBIOS over an empty disk, or a boot sector that powers
the machine off after ~1 s."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.domain.vm_plan import RestartRules
from app.host.qemu import ShutdownDeadlines
from app.main import create_app
from app.settings import Settings
from tests.db_template import seed_state_dir
from tests.host.test_qemu import live_pids_with_uuid

# mov ah,86h; cx:dx = 1 s; int 15h (wait); then ACPI S5 through the PM1a control port of
# q35 (0x604) and of pc (SeaBIOS puts PIIX4's at 0xb004); hlt
POWEROFF_CODE = bytes.fromhex("FBB486B90F00BA4042CD15BA0406B80020EFBA04B0B80020EFF4EBFD")
POWEROFF_BOOT_SECTOR = POWEROFF_CODE.ljust(510, b"\0") + b"\x55\xaa"  # the MBR signature
FAST_RULES = RestartRules(base_delay=0.05, max_delay=0.2, crash_loop_limit=3)
FAST_LADDER = ShutdownDeadlines(powerdown=0.5, quit=2, sigterm=2, sigkill=3)
SLOW_LADDER = ShutdownDeadlines(powerdown=20, quit=2, sigterm=2, sigkill=3)  # for stopping


@dataclass
class Lab:
    """A work directory an unprivileged qemu can reach, and the app(s) over it."""

    netns: str
    base: Path
    vm_ids: set[str] = field(default_factory=set)

    @property
    def settings(self) -> Settings:
        return Settings(
            state_dir=self.base / "state",
            run_dir=self.base / "run",
            listen="",
            reconcile_interval=30,
            probe_kernel=self.base / "no-kernel",
            tenant_images_dir=self.base,  # where disk() writes: members boot from there
        )

    @contextlib.contextmanager
    def app(self, ladder: ShutdownDeadlines = FAST_LADDER) -> Iterator[TestClient]:
        app = create_app(self.settings, token="test-token", host_netns=self.netns)
        with TestClient(app, base_url="http://kvmnetd") as client:
            assert app.state.supervisor.ready.wait(10)
            worker = app.state.vm_worker
            assert worker.ready.wait(15)
            worker.rules, worker.deadlines = FAST_RULES, ladder  # injected, as a clock is
            yield client

    def disk(self, name: str, content: bytes = b"") -> str:
        path = self.base / name
        path.write_bytes(content.ljust(1 << 20, b"\0"))
        path.chmod(0o666)  # qemu runs as kvmnetd-qemu
        return str(path)


@pytest.fixture
def lab(netns: str) -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="kvt-act-", dir="/tmp"))  # short: QMP socket paths
    base.chmod(0o755)
    seed_state_dir(base / "state")
    lab = Lab(netns, base)
    try:
        yield lab
    finally:
        for pid in live_pids_with_uuid(lab.vm_ids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def create(lab: Lab, client: TestClient, disk: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"vm{len(lab.vm_ids)}",
        "memory_mib": 32,
        "boot": {"disk": disk or lab.disk("empty.img")},
        **extra,
    }
    answer = client.post("/v1/vms", json=body)
    assert answer.status_code == 202, answer.text
    vm: dict[str, Any] = answer.json()
    lab.vm_ids.add(vm["id"])
    return vm


def get(client: TestClient, vm_id: str) -> dict[str, Any]:
    answer = client.get(f"/v1/vms/{vm_id}")
    assert answer.status_code == 200, answer.text
    vm: dict[str, Any] = answer.json()
    return vm


def wait_vm(
    client: TestClient, vm_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        vm = get(client, vm_id)
        if check(vm):
            return vm
        if time.monotonic() > deadline:
            raise AssertionError(f"VM never got there in {timeout} s: {vm}")
        time.sleep(0.05)


def settled(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda vm: vm["status"] == status and vm["observed_generation"] == vm["generation"]
