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
- a block preceded by `<!-- readme-test: skip -->` (`make run`, `make test`) is not run,
  nor one preceded by `<!-- readme-test: nested -->` (VLANs: this kernel has no 802.1Q and
  no VLAN filtering; the kernel tier runs those, tests/kernel/nested/test_readme_vlans.py).
The blocks are read by tests/readme_blocks.py, shared with the kernel tier.
Every command must exit 0, every HTTP status must be 2xx, and no resource may end in
`error` (a settled failure answers 2xx too).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.build import build_guest
from tests.readme_blocks import (
    README,
    STATUS,
    blocks_workdir,
    make_run_daemon,
    readme_blocks,
    uplinked_host,
)
from tests.readme_blocks import script as readme_script


@pytest.fixture
def host_with_uplink() -> Iterator[str]:
    """The daemon's namespace with an `eth0` to a LAN namespace holding the gateway."""
    with uplinked_host() as (host, _):
        yield host


@pytest.fixture
def workdir() -> Iterator[Path]:
    with blocks_workdir() as path:
        yield path


def test_readme_blocks_run_in_order_on_a_fresh_daemon(host_with_uplink: str, workdir: Path) -> None:
    guest = build_guest()
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 4, "the README's API blocks were not found"
    script = readme_script(blocks)
    script = script.replace("/path/to/vmlinuz", str(guest.kernel))
    script = script.replace("/path/to/initrd", str(guest.initrd))
    with make_run_daemon(host_with_uplink, workdir, patience=60) as daemon:
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
