"""Helpers shared by the end-to-end tests: polling with deadlines, settling resources,
paging, problem+json checks, kernel snapshots and a server-sent-events follower."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import pytest
from httpcore._backends.sync import SyncStream

from tests.daemon import Daemon
from tests.guest.build import Guest
from tests.netns_tools import KernelLink, links

GUEST_DIR = Path(__file__).parents[1] / "guest"

T = TypeVar("T")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:kvmnetd:problem:"
MARK_PREFIX = "kvmnetd:"


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Call `probe` until it returns something truthy or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kernel_link(
    netns: str, name: str, timeout: float, check: Callable[[KernelLink], bool]
) -> KernelLink:
    """Poll the kernel until link `name` exists and satisfies `check`; return it."""

    def probe() -> KernelLink | None:
        link = links(netns).get(name)
        return link if link is not None and check(link) else None

    return wait_for(probe, timeout, f"kernel link {name} in the expected state")


def ok(response: httpx.Response, *statuses: int) -> Any:
    """The JSON body of a response whose status is one of `statuses` (else fail loudly)."""
    assert response.status_code in statuses, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    return response.json()


def is_settled(resource: dict[str, Any]) -> bool:
    return bool(
        resource["status"] in ("active", "error")
        and resource["observed_generation"] == resource["generation"]
    )


def list_all(client: httpx.Client, collection: str, limit: int = 25) -> list[dict[str, Any]]:
    """Every item of /v1/<collection>, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = ok(client.get(f"/v1/{collection}", params=params), 200)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def assert_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx RFC 9457 problem with every field the API promises; returns the body."""
    where = f"{response.request.method} {response.request.url}"
    assert 400 <= response.status_code < 500, f"{where}: {response.status_code} {response.text}"
    if status is not None:
        assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert content_type == PROBLEM_MEDIA_TYPE, f"{where}: content-type {content_type!r}"
    body: dict[str, Any] = response.json()
    assert body["type"].startswith(PROBLEM_TYPE_PREFIX), body
    assert body["title"], body
    assert body["status"] == response.status_code, body
    assert body["detail"], body
    assert body["request_id"], body
    assert body["request_id"] == response.headers.get("x-request-id"), body
    return body


def link_state(link: KernelLink) -> tuple[object, ...]:
    """What must not change about a link when the daemon is told to do nothing to it."""
    return (
        link.index,
        link.kind,
        link.alias,
        link.master,
        link.up,
        link.mtu,
        link.mac,
        tuple(sorted(link.addresses)),
    )


def kernel_snapshot(netns: str) -> dict[str, tuple[object, ...]]:
    return {name: link_state(link) for name, link in links(netns).items()}


def managed_links(netns: str) -> dict[str, KernelLink]:
    """Links of `netns` that carry a kvmnetd ownership mark."""
    return {n: k for n, k in links(netns).items() if (k.alias or "").startswith(MARK_PREFIX)}


class _ClosingUnixBackend(httpcore.SyncBackend):
    """httpcore 1.0.9 leaks the socket when connecting to a unix socket fails (a daemon that
    was just killed, with clients still sending): a ResourceWarning, an error under our
    warning filters. This backend closes it."""

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return SyncStream(sock)


class UnixTransport(httpx.HTTPTransport):
    """httpx over a unix socket, without httpcore's socket leak on failed connects."""

    def __init__(self, path: str) -> None:
        super().__init__(uds=path)
        self._pool = httpcore.ConnectionPool(uds=path, network_backend=_ClosingUnixBackend())


class E2EDaemon(Daemon):
    """tests.daemon.Daemon whose clients do not leak sockets when the daemon is gone."""

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            transport=UnixTransport(str(self.socket)),
            base_url="http://kvmnetd",
            timeout=timeout,
        )


@contextlib.contextmanager
def running_daemon(
    netns: str,
    workdir: Path,
    request: pytest.FixtureRequest | None = None,
    reconcile_interval: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[E2EDaemon]:
    """A started daemon with its own work dir (`extra_env`: more KVMNETD_* settings); killed
    afterwards. Its log is printed when the body raises (used inside a test) or, with
    `request` (used in a fixture), when the test (for a wider fixture scope: any test
    meanwhile) failed."""
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = E2EDaemon(netns, workdir, reconcile_interval=reconcile_interval)
    if extra_env:
        daemon.extra_env = dict(extra_env)
    failures_before = request.session.testsfailed if request is not None else 0
    failed = False
    try:
        daemon.start()  # raises with the log when the daemon does not come up
        try:
            yield daemon
        except BaseException:
            failed = True
            raise
    finally:
        daemon.kill()
        if failed or (request is not None and _failed_since(request, failures_before)):
            print(f"--- daemon log ({daemon.log}) ---\n{daemon.logs()[-20000:]}")


def _failed_since(request: pytest.FixtureRequest, failures_before: int) -> bool:
    if request.scope == "function":
        report = getattr(request.node, "rep_call", None)
        return bool(report is not None and report.failed)
    return request.session.testsfailed > failures_before


class EventFollower:
    """Follows GET /v1/events in a thread (like `curl -N`) and keeps every event it saw.

    Reads time out every `poll` seconds so the thread notices stop(); it then reconnects with
    Last-Event-ID, so the daemon replays anything published in between.
    """

    def __init__(self, daemon: Daemon, poll: float = 0.5) -> None:
        self.daemon = daemon
        self.poll = poll
        self.events: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._last_id = "0"
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sse-follower", daemon=True)

    def __enter__(self) -> EventFollower:
        self._thread.start()
        assert self._connected.wait(10), "could not connect to /v1/events"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        timeout = httpx.Timeout(10, read=self.poll)
        with self.daemon.client() as client:
            while not self._stop.is_set():
                try:
                    self._follow(client, timeout)
                except httpx.ReadTimeout:
                    continue
                except httpx.HTTPError as exc:  # daemon gone: keep the error for the test
                    self.errors.append(exc)
                    return

    def _follow(self, client: httpx.Client, timeout: httpx.Timeout) -> None:
        headers = {"Last-Event-ID": self._last_id}
        with client.stream("GET", "/v1/events", headers=headers, timeout=timeout) as response:
            response.raise_for_status()
            self._connected.set()
            data: list[str] = []
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line.startswith("id:"):
                    self._last_id = line[3:].strip()
                elif not line and data:
                    self._add(json.loads("\n".join(data)))
                    data = []

    def _add(self, event: dict[str, Any]) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def last_id(self) -> int:
        with self._changed:
            return max((e["id"] for e in self.events), default=0)

    def wait_for(self, timeout: float, after: int = 0, **fields: Any) -> dict[str, Any]:
        """The first event newer than id `after` whose fields equal `fields`."""

        def match() -> dict[str, Any] | None:
            for event in self.events:
                if event["id"] > after and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        deadline = time.monotonic() + timeout
        with self._changed:
            while (found := match()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(e["id"], e["type"], e["name"]) for e in self.events]
                    raise AssertionError(f"no event {fields} after id {after}; saw {seen}")
                self._changed.wait(remaining)
            return found


def overlay_initrd(guest: Guest, hook: str, scripts: dict[str, str], out: Path) -> Path:
    """The shared guest's initrd followed by an archive with /init (the guest's init.sh with
    `hook` in place of its final `shell_forever`) and the executable `scripts` (name ->
    text); Linux unpacks concatenated initramfs archives in order, later files replacing
    earlier ones. Written to `out` (readable by the qemu user); returns it."""
    init = (GUEST_DIR / "init.sh").read_text()
    assert init.rstrip().endswith("shell_forever"), "tests/guest/init.sh changed its ending"
    files = {"init": init.rstrip()[: -len("shell_forever")] + hook, **scripts}
    stage = out.parent / f"{out.name}.overlay"
    stage.mkdir()
    for name, text in files.items():
        (stage / name).write_text(text)
        (stage / name).chmod(0o755)
    archive = subprocess.run(
        ["busybox", "cpio", "-o", "-H", "newc"],
        cwd=stage,
        input="".join(f"{name}\n" for name in files).encode(),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    out.write_bytes(guest.initrd.read_bytes() + gzip.compress(archive, mtime=0))
    out.chmod(0o644)
    return out
