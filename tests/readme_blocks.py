"""The README's ```sh blocks as the README tests run them: which block runs where, the curl
wrapper that reports each request's HTTP status, and the daemon with `make run`'s directories.

A block runs on the host (tests/e2e/test_readme.py) unless the line before its opening fence
is a marker:
- `<!-- readme-test: skip -->`: never run (`make run`, `make test`);
- `<!-- readme-test: nested -->`: run by the kernel tier only
  (tests/kernel/nested/test_readme_vlans.py), on Debian's kernel, which has what this
  machine's lacks (802.1Q, bridge VLAN filtering); the host run skips it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx

from tests.e2e.helpers import E2EDaemon
from tests.netns_tools import ip, throwaway_netns

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_MARK = "<!-- readme-test: skip -->"
NESTED_MARK = "<!-- readme-test: nested -->"
FENCE = "```sh"
STATUS = re.compile(r"^KVT-HTTP (\d{3}) (\S+) (\S+)$", re.MULTILINE)
GATEWAY, HOST = "10.61.0.1", "10.61.0.10"  # the LAN (no clash with the README's subnets)
Tier = Literal["host", "nested"]

# Runs before the blocks: the README's commands unchanged, curl reporting each status.
PRELUDE = r"""
shopt -s expand_aliases
curl() {
    # every request is bounded (KVT_REQUEST_MAX_TIME s, default 300): a hang fails the test
    local cut=(--max-time "${KVT_REQUEST_MAX_TIME:-300}") rc=0 arg
    for arg in "$@"; do
        case "$arg" in -N | --no-buffer) cut=(--max-time 3) ;; esac
    done
    command curl "${cut[@]}" -w '%{stderr}KVT-HTTP %{http_code} %{method} %{url_effective}\n' \
        "$@" || rc=$?
    echo
    # 28: the time limit of a streaming curl -N (the stream itself answered 200)
    if [ "$rc" -ne 0 ] && ! { [ "$rc" -eq 28 ] && [ "${cut[1]}" = 3 ]; }; then
        return "$rc"
    fi
}
"""


def _marked_blocks(text: str) -> Iterator[tuple[str | None, str]]:
    """Every ```sh block, in order, with the marker on the line before it (None: none)."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if line != FENCE:
            continue
        before = lines[n - 1].strip() if n > 0 else ""
        marker = before if before in (SKIP_MARK, NESTED_MARK) else None
        end = lines.index("```", n + 1)
        yield marker, "\n".join(lines[n + 1 : end]) + "\n"


def readme_blocks(text: str, tier: Tier = "host") -> list[str]:
    """The ```sh blocks `tier` runs, in order: on the host the unmarked ones, in the nested
    tier those marked nested."""
    wanted = None if tier == "host" else NESTED_MARK
    return [body for marker, body in _marked_blocks(text) if marker == wanted]


def k_definition(text: str) -> str:
    """The README's own `S=...` and `alias k=...` lines (its first block that defines them),
    for blocks that run without the blocks before them."""
    for _, body in _marked_blocks(text):
        lines = [ln for ln in body.splitlines() if ln.startswith(("S=", "alias k="))]
        if len(lines) == 2:
            return "\n".join(lines) + "\n"
    raise AssertionError("the README defines no `S=` and `alias k=` in one ```sh block")


def script(blocks: list[str], setup: str = "") -> str:
    """One bash script: the curl wrapper, `setup`, then each block after a marker line on
    stderr (`--- README block N at S s`: bash's SECONDS since the script started)."""
    numbered = (
        f'echo "--- README block {n} at $SECONDS s" >&2\n{body}' for n, body in enumerate(blocks, 1)
    )
    return PRELUDE + setup + "\n".join(numbered)


class _PatientDaemon(E2EDaemon):
    """E2EDaemon whose clients wait at least `patience` seconds for an answer: in the nested
    host (Python ~12x slower) the first /readyz once took longer than the 5 s that
    Daemon.wait_ready gives it (httpx.ReadTimeout), while the daemon was still starting."""

    def __init__(self, netns: str, workdir: Path, patience: float) -> None:
        super().__init__(netns, workdir)
        self.patience = patience

    def client(self, timeout: float = 30) -> httpx.Client:
        return super().client(timeout=max(timeout, self.patience))


@contextlib.contextmanager
def make_run_daemon(
    netns: str, workdir: Path, timeout: float = 30, patience: float = 0
) -> Iterator[E2EDaemon]:
    """The real daemon with `make run`'s directories under `workdir` (so the README's
    `S=./var/run/kvmnetd/kvmnetd.sock` points at it from there), ready within `timeout` s,
    its clients waiting at least `patience` s for each answer; killed afterwards."""
    daemon = _PatientDaemon(netns, workdir, patience)
    daemon.state_dir = workdir / "var" / "lib" / "kvmnetd"
    daemon.run_dir = workdir / "var" / "run" / "kvmnetd"
    daemon.socket = daemon.run_dir / "kvmnetd.sock"
    try:
        try:
            daemon.start(timeout=timeout)
        except Exception:
            print(f"--- daemon log (start failed) ---\n{daemon.logs()[-15000:]}")
            raise
        yield daemon
    finally:
        daemon.kill()


@contextlib.contextmanager
def uplinked_host() -> Iterator[tuple[str, str]]:
    """The daemon's namespace with the README's `eth0`: a veth to a LAN namespace (its end
    `lan0`) holding the gateway, as on a host with a wired uplink; yields (host, lan)."""
    with throwaway_netns() as host, throwaway_netns() as lan:
        ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan)
        ip(lan, "addr", "add", f"{GATEWAY}/24", "dev", "lan0")
        ip(lan, "link", "set", "lan0", "up")
        ip(host, "addr", "add", f"{HOST}/24", "dev", "eth0")
        ip(host, "link", "set", "eth0", "up")
        ip(host, "route", "add", "default", "via", GATEWAY)
        yield host, lan


@contextlib.contextmanager
def blocks_workdir() -> Iterator[Path]:
    """The blocks' working directory (`make run`'s `./var/...` lie under it), under /tmp for
    short QMP socket paths; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
