"""The README's own ```sh blocks, run in order against a fresh daemon, exactly as written.

The daemon runs in a throwaway namespace with the directories `make run` uses, relative to
the blocks' working directory (`./var/run/kvmnetd/kvmnetd.sock`, `./var/lib/kvmnetd`), so
the README's `S=...` and `alias k=...` lines point at it unchanged. What the test changes
or adds, and nothing else:
- `/path/to/vmlinuz` and `/path/to/initrd` become the test guest's kernel and initrd
  (tests/guest/, built or taken from tests/.cache/guest/);
- `curl` is wrapped to report each request's HTTP status on stderr, and a streaming
  `curl -N` is cut after a few seconds (a user ends it with Ctrl-C);
- the namespace has the README's `eth0`: a veth whose peer is in a "LAN" namespace with
  the gateway, as on a host with a wired uplink (tests/e2e/test_uplink.py does the same);
- a block preceded by `<!-- readme-test: skip -->` (`make run`, `make test`) is not run.
Every command must exit 0, every HTTP status must be 2xx, and no resource may end in
`error` (a settled failure answers 2xx too).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import E2EDaemon
from tests.guest.build import build_guest
from tests.netns_tools import ip, throwaway_netns

README = Path(__file__).resolve().parents[2] / "README.md"
SKIP_MARK = "<!-- readme-test: skip -->"
GATEWAY, HOST = "10.61.0.1", "10.61.0.10"  # the LAN (no clash with the README's subnets)
STATUS = re.compile(r"^KVT-HTTP (\d{3}) (\S+) (\S+)$", re.MULTILINE)

# Runs before the blocks: the README's commands unchanged, curl reporting each status.
PRELUDE = r"""
shopt -s expand_aliases
curl() {
    local cut=() rc=0 arg
    for arg in "$@"; do
        case "$arg" in -N | --no-buffer) cut=(--max-time 3) ;; esac
    done
    command curl "${cut[@]}" -w '%{stderr}KVT-HTTP %{http_code} %{method} %{url_effective}\n' \
        "$@" || rc=$?
    echo
    # 28: the time limit of a streaming curl -N (the stream itself answered 200)
    if [ "$rc" -ne 0 ] && ! { [ "$rc" -eq 28 ] && [ "${#cut[@]}" -gt 0 ]; }; then
        return "$rc"
    fi
}
"""


def readme_blocks(text: str) -> list[str]:
    """The ```sh blocks to run, in order (without those marked skip on the line before)."""
    blocks: list[str] = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if line != "```sh" or (n > 0 and lines[n - 1].strip() == SKIP_MARK):
            continue
        end = lines.index("```", n + 1)
        blocks.append("\n".join(lines[n + 1 : end]) + "\n")
    return blocks


@pytest.fixture
def host_with_uplink() -> Iterator[str]:
    """The daemon's namespace with an `eth0` to a LAN namespace holding the gateway."""
    with throwaway_netns() as host, throwaway_netns() as lan:
        ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lan)
        ip(lan, "addr", "add", f"{GATEWAY}/24", "dev", "lan0")
        ip(lan, "link", "set", "lan0", "up")
        ip(host, "addr", "add", f"{HOST}/24", "dev", "eth0")
        ip(host, "link", "set", "eth0", "up")
        ip(host, "route", "add", "default", "via", GATEWAY)
        yield host


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kvt-", dir="/tmp"))  # short QMP socket paths
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def make_run_daemon(netns: str, workdir: Path) -> Iterator[E2EDaemon]:
    """The daemon with `make run`'s directories under `workdir`."""
    daemon = E2EDaemon(netns, workdir)
    daemon.state_dir = workdir / "var" / "lib" / "kvmnetd"
    daemon.run_dir = workdir / "var" / "run" / "kvmnetd"
    daemon.socket = daemon.run_dir / "kvmnetd.sock"
    try:
        yield daemon.start()
    finally:
        daemon.kill()


def test_readme_blocks_run_in_order_on_a_fresh_daemon(host_with_uplink: str, workdir: Path) -> None:
    guest = build_guest()
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 4, "the README's API blocks were not found"
    script = PRELUDE + "\n".join(
        f"echo '--- README block {n}' >&2\n{body}" for n, body in enumerate(blocks, 1)
    )
    script = script.replace("/path/to/vmlinuz", str(guest.kernel))
    script = script.replace("/path/to/initrd", str(guest.initrd))
    with make_run_daemon(host_with_uplink, workdir) as daemon:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
        )
        transcript = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
        if done.returncode != 0:
            print(f"--- daemon log ---\n{daemon.logs()[-10000:]}")
    statuses = STATUS.findall(done.stderr)
    assert done.returncode == 0, f"a README command failed ({done.returncode})\n{transcript}"
    failed = [s for s in statuses if not s[0].startswith("2")]
    assert not failed, f"non-2xx answers: {failed}\n{transcript}"
    assert len(statuses) >= 25, transcript  # every request was made and reported
    assert done.stderr.count("--- README block") == len(blocks)
    errors = re.findall(r'"status": ?"error".{0,300}', done.stdout)
    assert not errors, f"a resource ended in error: {errors}"  # a settled error is a 2xx too
    print("\n".join(" ".join(s) for s in statuses))
    print(done.stdout)
