"""The outer qemu that boots the nested host: QEMU 10 from bookworm-backports, unpacked.

QEMU >= 8.0 emulates Intel's igb NIC with SR-IOV (Debian's kernel drives it with igb and its
VFs with igbvf); this machine's qemu is 7.2. Only the qemu that boots the nested host uses it
(tests/kernel/vm.py); the project's own tests and the daemon keep the system qemu, inside the
nested host too.

`qemu-system-x86` and `qemu-system-data` are fetched with `apt-get download` through a private
apt state: its own sources list naming bookworm-backports only, its own package lists and
archive cache under tests/.cache/qemu/apt (the `-o Dir::...` options below). Nothing under
/etc/apt changes and nothing is installed. The binary uses the host's libraries (bookworm's are
what the backport was built against) and `-L <unpacked>/usr/share/qemu` for its ROMs (pvh.bin,
linuxboot_dma.bin; bios-256k.bin links to the host's seabios). The cache is
tests/.cache/qemu/<version>/ with qemu.json written last; pin.json names the one in use, and with
it present no apt command runs (offline). No QEMU 10 (offline, no cache): `outer_qemu()` says
why, the nested host boots on the system qemu without igb, and the SR-IOV tests skip with that
reason.

    .venv/bin/python -m tests.kernel.outer_qemu
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.guest.build import GuestBuildError, locked, run, unpack

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE.parent / ".cache" / "qemu"
SUITE = "bookworm-backports"
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES = ("qemu-system-x86", "qemu-system-data")
MIN_MAJOR = 8  # the first QEMU with the igb device


@dataclass(frozen=True)
class OuterQemu:
    """An unpacked qemu-system-x86_64 that emulates igb; `datadir` is its -L."""

    binary: Path
    datadir: Path
    version: str  # the Debian package version, e.g. 1:10.0.2+ds-2+deb13u1~bpo12+1


def apt_options(state: Path) -> list[str]:
    """apt options for a private state under `state`: only bookworm-backports as a source,
    its own lists and cache; the host's dpkg status is only read (apt needs one)."""
    sources = state / "sources.list"
    if not sources.exists():
        state.mkdir(parents=True, exist_ok=True)
        sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n")
    for sub in ("lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    return [
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        f"Dir::State::Lists={state / 'lists'}",
        "-o",
        f"Dir::Cache={state / 'cache'}",
        "-o",
        "APT::Sandbox::User=root",  # the cache is root's; the _apt user could not write there
    ]


def resolve(options: list[str]) -> str:
    """The version of qemu-system-x86 in bookworm-backports (after `apt-get update`)."""
    run(["apt-get", *options, "update", "-qq"])
    out = run(["apt-cache", *options, "show", "--no-all-versions", PACKAGES[0]]).decode()
    match = re.search(r"^Version: (\S+)$", out, re.MULTILINE)
    if match is None:
        raise GuestBuildError(f"{SUITE} has no {PACKAGES[0]}:\n{out}")
    major = re.match(r"(?:\d+:)?(\d+)\.", match.group(1))
    if major is None or int(major.group(1)) < MIN_MAJOR:
        raise GuestBuildError(f"{SUITE}'s {PACKAGES[0]} is {match.group(1)}, not >= {MIN_MAJOR}")
    return match.group(1)


def load(directory: Path) -> OuterQemu | None:
    meta = directory / "qemu.json"
    if not meta.exists():
        return None
    version = json.loads(meta.read_text())["version"]
    root = directory / "root"
    return OuterQemu(
        binary=root / "usr" / "bin" / "qemu-system-x86_64",
        datadir=root / "usr" / "share" / "qemu",
        version=version,
    )


def check(qemu: OuterQemu) -> None:
    """It runs on this host's libraries and knows the igb device. (Not `-device help`: that
    loads every loadable module, and it finds the host's 7.2 modules, which refuse to load
    into it; the nested host's boot needs none of them.)"""
    argv = [str(qemu.binary), "-L", str(qemu.datadir), "-device", "igb,help"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "igb options" not in proc.stdout:
        why = f"(exit {proc.returncode}) lists no igb: {proc.stderr[-2000:]}"
        raise GuestBuildError(f"{argv} {why}")


def fetch(cache_dir: Path) -> OuterQemu:
    options = apt_options(cache_dir / "apt")
    version = resolve(options)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as work:
        debs = Path(work) / "debs"
        debs.mkdir()
        wanted = [f"{p}={version}" for p in PACKAGES]
        run(["apt-get", *options, "download", "-qq", *wanted], cwd=debs)
        root = Path(work) / "out" / "root"
        root.mkdir(parents=True)
        for deb in sorted(debs.glob("*.deb")):
            unpack(deb, root)
        (root.parent / "qemu.json").write_text(json.dumps({"version": version}) + "\n")
        target = cache_dir / re.sub(r"[^\w.+-]", "_", version)
        if target.exists():
            shutil.rmtree(target)
        root.parent.rename(target)
    qemu = load(target)
    if qemu is None:
        raise GuestBuildError(f"the build left no qemu.json in {target}")
    check(qemu)
    (cache_dir / "pin.json").write_text(json.dumps({"directory": target.name}) + "\n")
    return qemu


def build_outer_qemu(cache_dir: Path = CACHE_DIR) -> OuterQemu:
    """The pinned QEMU from the cache, or fetched now (~1 s and a 12 MB download; 85 MB
    unpacked). Raises GuestBuildError with the reason when it cannot be had."""
    with locked(cache_dir):
        pin = cache_dir / "pin.json"
        if pin.exists():
            qemu = load(cache_dir / json.loads(pin.read_text())["directory"])
            if qemu is not None:
                return qemu
        return fetch(cache_dir)


def outer_qemu(cache_dir: Path = CACHE_DIR) -> tuple[OuterQemu | None, str]:
    """QEMU 10 for the outer qemu, or None and why not (the reason the SR-IOV tests print)."""
    try:
        return build_outer_qemu(cache_dir), ""
    except (GuestBuildError, OSError, subprocess.SubprocessError) as exc:
        return None, f"no QEMU >= {MIN_MAJOR} for the nested host (igb with SR-IOV): {exc}"


def main() -> int:
    qemu = build_outer_qemu()
    print(f"binary={qemu.binary}\ndatadir={qemu.datadir}\nversion={qemu.version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
