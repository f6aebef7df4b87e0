"""Builds the kernel test tier's cache: Debian 12's own kernel, its modules, kmod and an initramfs.

The nested host runs `linux-image-amd64`'s real kernel package (6.1, with 8021q, bridge VLAN
filtering and vhost_net as modules) under QEMU TCG, on the host's own root filesystem shared
read-only over 9p (see tests/kernel/README.md). Everything comes from Debian packages, fetched
with `apt-get download` and unpacked with `dpkg-deb -x`, never installed:

- the kernel package that `apt-cache depends linux-image-amd64` names (its ABI package changes
  with each Debian point release and older ones leave the archive, so it is derived, never
  hard-coded, and pinned by recording it in pin.json once built);
- `kmod`, whose `depmod -b` indexes the unpacked modules and whose `modprobe` the nested kernel
  calls to autoload modules (the host has no kmod);
- `busybox-static`, the initramfs's only program.

The cache is tests/.cache/kernel/<kernel release>_<package version>/ (kernel.json is written
last, so a directory without it is an interrupted build); pin.json names the one in use. With a
pin and its directory present no apt command runs at all (the tier works offline); a new build
(`refresh=True`, `make kernel-tier REFRESH=1`, or no pin yet) runs `apt-get update` first.

    .venv/bin/python -m tests.kernel.build [--refresh]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.guest.build import (
    GuestBuildError,
    candidates,
    download,
    guest_kernel,
    install,
    kernel_release,
    locked,
    pack_initramfs,
    run,
    unpack,
)

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE.parent / ".cache" / "kernel"
INIT_SCRIPT = HERE / "initramfs-init.sh"  # stage 1, inside the initramfs
META_PACKAGE = "linux-image-amd64"
KMOD_PACKAGE = "kmod"
BUSYBOX_PACKAGE = "busybox-static"
# what stage 1 needs to reach the root filesystem: virtio-pci, 9p over virtio, overlayfs
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
KMOD_TOOLS = ("modprobe", "depmod", "insmod", "rmmod", "lsmod", "modinfo")


class TierBuildError(GuestBuildError):
    """A step of the tier's build failed; the message carries the command and its output."""


class TierUnavailable(TierBuildError):
    """The kernel is not cached and apt cannot fetch it (offline): the tier is skipped."""


@dataclass(frozen=True)
class Tier:
    """A built tier: boot `kernel` with `initrd`; `modules` is mounted on /lib/modules and
    `modprobe` is the kmod the nested kernel calls (both paths visible inside through the
    read-only root share)."""

    directory: Path
    kernel: Path
    initrd: Path
    modules: Path  # the unpacked lib/modules (holds <release>/, depmod'ed)
    bin: Path  # kmod's tools (modprobe, depmod, ...) as relative symlinks to the unpacked kmod
    release: str  # e.g. 6.1.0-57-amd64
    packages: dict[str, str]  # Debian package -> version it was built from

    @property
    def modprobe(self) -> Path:
        return self.bin / "modprobe"


# --- which packages -------------------------------------------------------------------------


def kernel_package() -> str:
    """The linux-image-6.1.0-NN-amd64 package the meta package depends on today
    (`apt-cache depends linux-image-amd64`, after `apt-get update`)."""
    run(["apt-get", "update", "-qq"])
    out = run(["apt-cache", "depends", META_PACKAGE]).decode()
    match = re.search(r"^\s*Depends:\s*(linux-image-[\w.+-]+)\s*$", out, re.MULTILINE)
    if match is None:
        raise TierBuildError(f"apt-cache depends {META_PACKAGE} names no linux-image:\n{out}")
    return match.group(1)


def resolve_packages() -> dict[str, str]:
    """The kernel, kmod and busybox-static packages with the versions apt would download."""
    kernel = kernel_package()
    stanzas = candidates([kernel, KMOD_PACKAGE, BUSYBOX_PACKAGE])
    return {p: stanzas[p]["Version"] for p in (kernel, KMOD_PACKAGE, BUSYBOX_PACKAGE)}


def directory_name(release: str, version: str) -> str:
    return re.sub(r"[^\w.+-]", "_", f"{release}_{version}")


# --- the build ------------------------------------------------------------------------------


def boot_modules(tools: Path, root: Path, release: str) -> list[Path]:
    """The module files stage 1 inserts, in order: what unpacked kmod's
    `modprobe --show-depends` lists for BOOT_MODULES (each once, dependencies first)."""
    argv = [str(tools / "modprobe"), "-d", str(root), "-S", release, "-a", "--show-depends"]
    out = run([*argv, *BOOT_MODULES]).decode()
    files: list[Path] = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod" and Path(words[1]) not in files:
            files.append(Path(words[1]))
    if not files:
        raise TierBuildError(f"modprobe --show-depends listed no modules:\n{out}")
    return files


def kmod_tools(root: Path, into: Path) -> Path:
    """bin/ with kmod's tool names as symlinks to the unpacked kmod (the package's own
    /sbin/modprobe -> /bin/kmod links are absolute, so they point at the host's missing kmod);
    kmod picks the tool by the name it was called by."""
    into.mkdir()
    for tool in KMOD_TOOLS:
        (into / tool).symlink_to(os.path.relpath(root / "bin" / "kmod", into))
    return into


def initramfs(busybox: Path, modules: list[Path], stage: Path, out: Path) -> None:
    """busybox-static, the boot modules (file names listed in load order in /etc/kvt-modules)
    and /init (initramfs-init.sh)."""
    for sub in ("bin", "dev", "proc", "sys", "etc", "lib/modules", "newroot", "lower", "upper"):
        (stage / sub).mkdir(parents=True, exist_ok=True)
    install(busybox.read_bytes(), stage / "bin" / "busybox", 0o755)
    install(INIT_SCRIPT.read_bytes(), stage / "init", 0o755)
    for module in modules:
        install(module.read_bytes(), stage / "lib" / "modules" / module.name, 0o644)
    listing = "".join(f"{m.name}\n" for m in modules)
    install(listing.encode(), stage / "etc" / "kvt-modules", 0o644)
    pack_initramfs(stage, busybox, out)


def init_key() -> str:
    return hashlib.sha256(INIT_SCRIPT.read_bytes()).hexdigest()[:12]


def fetch(work: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The packages to build from and their downloaded .deb files."""
    try:
        packages = resolve_packages()
        return packages, download(packages, work / "debs")
    except GuestBuildError as exc:
        raise TierUnavailable(f"the kernel is not cached and apt cannot fetch it: {exc}") from exc


def assemble(packages: dict[str, str], debs: dict[str, Path], work: Path, cache_dir: Path) -> Path:
    """Unpack everything into a new cache directory; its path."""
    kernel = next(iter(packages))
    root = unpack(debs[kernel], work / "root")
    unpack(debs[KMOD_PACKAGE], root)
    release = kernel_release(root, kernel)
    tools = kmod_tools(root, work / "bin")
    run([str(tools / "depmod"), "-b", str(root), release])
    built = work / "out"
    built.mkdir()
    guest_kernel(root, release, built)
    # the tree is kept: its lib/modules is shared into the guest, its kmod runs there
    root.rename(built / "root")
    tools.rename(built / "bin")
    (built / "root" / "boot").joinpath(f"vmlinuz-{release}").unlink()
    broot = unpack(debs[BUSYBOX_PACKAGE], work / "busybox")
    shutil.copyfile(broot / "bin" / "busybox", built / "busybox")
    (built / "busybox").chmod(0o755)
    meta = {"release": release, "packages": packages}
    (built / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
    target = cache_dir / directory_name(release, packages[kernel])
    if target.exists():
        shutil.rmtree(target)
    built.rename(target)
    return target


def ensure_initrd(directory: Path, release: str) -> Path:
    """The initramfs for the current initramfs-init.sh (rebuilt when the script changes)."""
    initrd = directory / f"initrd-{init_key()}.gz"
    if initrd.exists():
        return initrd
    tools, root = directory / "bin", directory / "root"
    modules = boot_modules(tools, root, release)
    with tempfile.TemporaryDirectory(prefix="initrd-", dir=directory) as stage:
        partial = Path(stage) / "initrd.gz"
        initramfs(directory / "busybox", modules, Path(stage) / "tree", partial)
        for old in directory.glob("initrd-*.gz"):
            old.unlink()
        partial.rename(initrd)
    return initrd


def load(directory: Path) -> Tier | None:
    """The tier built into `directory`; None unless its build completed."""
    meta_file = directory / "kernel.json"
    if not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    kernel = next((directory / n for n in ("vmlinux", "vmlinuz") if (directory / n).exists()), None)
    if kernel is None:
        return None
    return Tier(
        directory=directory,
        kernel=kernel,
        initrd=ensure_initrd(directory, meta["release"]),
        modules=directory / "root" / "lib" / "modules",
        bin=directory / "bin",
        release=meta["release"],
        packages=dict(meta["packages"]),
    )


def pinned(cache_dir: Path) -> Tier | None:
    """The tier pin.json names, if it was built (no apt command runs)."""
    pin = cache_dir / "pin.json"
    if not pin.exists():
        return None
    return load(cache_dir / json.loads(pin.read_text())["directory"])


def prune(cache_dir: Path, keep: Path) -> None:
    """Remove other builds and the work directories of interrupted ones (hold the lock)."""
    for old in cache_dir.iterdir():
        if old.is_dir() and old != keep:
            shutil.rmtree(old, ignore_errors=True)


def build_tier(cache_dir: Path = CACHE_DIR, *, refresh: bool = False) -> Tier:
    """The pinned tier from the cache, or built now (~20 s and a 72 MB download; the
    unpacked tree takes ~400 MB)."""
    with locked(cache_dir):
        tier = None if refresh else pinned(cache_dir)
        if tier is not None:
            return tier
        with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as work:
            packages, debs = fetch(Path(work))
            target = assemble(packages, debs, Path(work), cache_dir)
        tier = load(target)
        if tier is None:
            raise TierBuildError(f"the build left no kernel.json in {target}")
        pin = {"directory": target.name, "packages": packages}
        (cache_dir / "pin.json").write_text(json.dumps(pin, indent=2) + "\n")
        prune(cache_dir, keep=target)
        return tier


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--refresh", action="store_true", help="derive the kernel package anew")
    args = parser.parse_args(argv)
    tier = build_tier(args.cache_dir, refresh=args.refresh)
    print(f"kernel={tier.kernel}")
    print(f"initrd={tier.initrd}")
    print(f"release={tier.release}")
    print(f"packages={','.join(f'{p}={v}' for p, v in tier.packages.items())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
