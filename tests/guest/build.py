"""Builds the small real test guest from Debian packages: a kernel plus a busybox initramfs.

Two variants:
- "virtio": the kernel of `linux-image-cloud-amd64` with the virtio-net driver stack;
- "legacy-nics": the kernel of `linux-image-amd64` with e1000, rtl8139 (8139too/8139cp),
  ne2k-pci and pcnet32 on top of the virtio stack. Its xz bzImage would spend ~3 s of emulated
  CPU unpacking itself under TCG, so the guest gets its ELF vmlinux instead (booted by qemu's
  `-kernel` through PVH, same options).

The packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` (never
installed). The initramfs holds busybox-static, the chosen modules (with the modules they depend
on, from their modinfo) and /init (init.sh next to this file). Results are cached under
tests/.cache/guest/, keyed by the package versions and the guest's own files, so a second build
costs one `apt-cache show` (~0.6 s).

    .venv/bin/python -m tests.guest.build --variant virtio
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE.parent / ".cache" / "guest"
INIT_SCRIPT = HERE / "init.sh"
DHCP_SCRIPT = HERE / "udhcpc.sh"
BUSYBOX_PACKAGE = "busybox-static"
DEFAULT_PORT = 7777
FORMAT = "2"  # bump when the layout of the initramfs changes in a way the files below do not show

VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)
LEGACY_NIC_MODULES = ("mii", "8390", "e1000", "8139too", "8139cp", "ne2k-pci", "pcnet32")
# the ACPI power button as an input device, so that a QMP system_powerdown shuts the guest down
POWER_BUTTON_MODULES = ("button", "evdev")


@dataclass(frozen=True)
class Variant:
    name: str
    kernel_package: str  # the meta package; the real linux-image-6.1.0-NN-... is its dependency
    modules: tuple[str, ...]


VARIANTS = {
    "virtio": Variant("virtio", "linux-image-cloud-amd64", VIRTIO_MODULES + POWER_BUTTON_MODULES),
    "legacy-nics": Variant(
        "legacy-nics",
        "linux-image-amd64",
        LEGACY_NIC_MODULES + VIRTIO_MODULES + POWER_BUTTON_MODULES,
    ),
}


@dataclass
class Guest:
    """A built guest: boot it with `-kernel kernel -initrd initrd -append kernel_cmdline(...)`."""

    variant: str
    kernel: Path
    initrd: Path
    modules: list[str]  # module file names (without .ko) in the order /init inserts them
    packages: dict[str, str]  # Debian package -> version it was built from


class GuestBuildError(RuntimeError):
    """A step of the build failed; the message carries the command and its output."""


# --- running commands ---------------------------------------------------------------------------


def run(argv: Sequence[str], *, cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    """Run argv (never through a shell); its stdout, or GuestBuildError with all its output."""
    try:
        proc = subprocess.run(list(argv), cwd=cwd, input=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise GuestBuildError(f"cannot run {list(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise GuestBuildError(
            f"command failed (exit {proc.returncode}): {list(argv)}\n"
            f"--- stdout ---\n{proc.stdout.decode(errors='replace')[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr.decode(errors='replace')[-4000:]}"
        )
    return proc.stdout


# --- resolving package versions (apt metadata only, works offline) -------------------------------


def apt_show(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """The candidate stanza of each package (`apt-cache show --no-all-versions`), as fields."""
    out = run(["apt-cache", "show", "--no-all-versions", *packages]).decode()
    stanzas: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): ?(.*)$", block, re.MULTILINE))
        if "Package" in fields:
            stanzas[fields["Package"]] = fields
    return stanzas


def candidates(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """Like apt_show, after one `apt-get update` if apt does not know every package yet."""
    try:
        stanzas = apt_show(packages)
    except GuestBuildError:
        stanzas = {}
    if not all(p in stanzas for p in packages):
        run(["apt-get", "update", "-qq"])
        stanzas = apt_show(packages)
    return stanzas


def real_kernel_package(meta: dict[str, str]) -> tuple[str, str]:
    """The linux-image-6.1.0-NN-... package (and version) a kernel meta package depends on."""
    pattern = r"(linux-image-[\w.+-]+)(?:\s*\(=\s*([^)\s]+)\))?"
    match = re.search(pattern, meta.get("Depends", ""))
    if match is None:
        raise GuestBuildError(f"{meta['Package']} depends on no linux-image package: {meta}")
    package, version = match.group(1), match.group(2)
    return package, version or candidates([package])[package]["Version"]


def package_versions(variant: Variant) -> dict[str, str]:
    """The real kernel package and busybox-static, with the versions apt would download."""
    stanzas = candidates([variant.kernel_package, BUSYBOX_PACKAGE])
    kernel, kernel_version = real_kernel_package(stanzas[variant.kernel_package])
    return {kernel: kernel_version, BUSYBOX_PACKAGE: stanzas[BUSYBOX_PACKAGE]["Version"]}


def cache_key(variant: Variant, packages: dict[str, str]) -> str:
    digest = hashlib.sha256(FORMAT.encode())
    digest.update(json.dumps([variant.modules, sorted(packages.items())]).encode())
    for script in (INIT_SCRIPT, DHCP_SCRIPT):
        digest.update(script.read_bytes())
    return digest.hexdigest()[:16]


# --- fetching and unpacking ---------------------------------------------------------------------


def download(packages: dict[str, str], into: Path) -> dict[str, Path]:
    """`apt-get download` each package=version into `into`; the .deb file of each package."""
    into.mkdir()
    into.chmod(0o755)  # apt downloads as the _apt user where it can
    run(["apt-get", "download", "-qq", *(f"{p}={v}" for p, v in packages.items())], cwd=into)
    debs = {}
    for package in packages:
        found = sorted(into.glob(f"{package}_*.deb"))
        if not found:
            raise GuestBuildError(f"apt-get download left no {package}_*.deb in {into}")
        debs[package] = found[0]
    return debs


def unpack(deb: Path, into: Path) -> Path:
    run(["dpkg-deb", "-x", str(deb), str(into)])
    return into


def kernel_release(root: Path, package: str) -> str:
    """The kernel release (lib/modules/RELEASE) a linux-image package ships."""
    releases = [p.name for p in (root / "lib" / "modules").glob("*") if p.is_dir()]
    if len(releases) != 1:
        raise GuestBuildError(f"{package} ships lib/modules/{releases}, expected one release")
    return releases[0]


# --- choosing modules ---------------------------------------------------------------------------


def module_name(path_or_name: str) -> str:
    """The kernel's name of a module: file name without .ko[.xz], dashes as underscores."""
    name = path_or_name.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", name)
    return name.replace("-", "_")


def module_files(moddir: Path) -> dict[str, Path]:
    return {module_name(p.name): p for p in (moddir / "kernel").rglob("*.ko*")}


def builtin_modules(moddir: Path) -> set[str]:
    builtin = moddir / "modules.builtin"
    lines = builtin.read_text().split() if builtin.exists() else []
    return {module_name(line) for line in lines}


def module_bytes(path: Path) -> bytes:
    """The module's ELF image; .ko.xz is decompressed (busybox insmod may not read xz)."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko"):
        return path.read_bytes()
    raise GuestBuildError(f"cannot decompress module {path}")


def module_depends(image: bytes) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", image)
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def load_order(wanted: Sequence[str], files: dict[str, Path], builtin: set[str]) -> list[str]:
    """`wanted` in its order, each preceded by the modules it depends on; built-ins left out."""
    order: list[str] = []

    def visit(name: str) -> None:
        key = module_name(name)
        if key in builtin or key in order:
            return
        if key not in files:
            raise GuestBuildError(f"the kernel has no module {name} (neither file nor built-in)")
        for dep in module_depends(module_bytes(files[key])):
            visit(dep)
        order.append(key)

    for name in wanted:
        visit(name)
    return order


# --- the kernel ---------------------------------------------------------------------------------

XZ_MAGIC = b"\xfd7zXZ\x00"


def guest_kernel(kroot: Path, release: str, out_dir: Path) -> Path:
    """The kernel qemu boots fastest under TCG. A bzImage that unpacks itself from xz spends
    ~3 s of emulated CPU on that; if the kernel supports PVH boot (CONFIG_PVH), its ELF vmlinux
    (xz-decompressed here, by Python) boots with the same -kernel option without that cost."""
    bzimage = kroot / "boot" / f"vmlinuz-{release}"
    config = (kroot / "boot" / f"config-{release}").read_text()
    image = bzimage.read_bytes()
    start = image.find(XZ_MAGIC)
    if "CONFIG_KERNEL_XZ=y" in config and "CONFIG_PVH=y" in config and start >= 0:
        vmlinux = lzma.LZMADecompressor().decompress(image[start:])
        if vmlinux.startswith(b"\x7fELF"):
            install(vmlinux, out_dir / "vmlinux", 0o644)
            return out_dir / "vmlinux"
    shutil.copyfile(bzimage, out_dir / "vmlinuz")
    return out_dir / "vmlinuz"


# --- the initramfs ------------------------------------------------------------------------------


def stage_initramfs(
    stage: Path, busybox: Path, modules: list[str], files: dict[str, Path]
) -> list[str]:
    """Lay out the initramfs tree; the module file names (without .ko) in load order."""
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "lib/modules", "proc", "sys"):
        (stage / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("dev", "run", "tmp"):
        (stage / sub).mkdir(exist_ok=True)
    install(busybox.read_bytes(), stage / "bin" / "busybox", 0o755)
    install(INIT_SCRIPT.read_bytes(), stage / "init", 0o755)
    install(DHCP_SCRIPT.read_bytes(), stage / "etc" / "udhcpc.sh", 0o755)
    names = []
    for key in modules:
        name = re.sub(r"\.ko(\.\w+)?$", "", files[key].name)
        install(module_bytes(files[key]), stage / "lib" / "modules" / f"{name}.ko", 0o644)
        names.append(name)
    install(("\n".join(names) + "\n").encode(), stage / "etc" / "kvt-modules", 0o644)
    return names


def install(data: bytes, path: Path, mode: int) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def pack_initramfs(stage: Path, busybox: Path, out: Path) -> None:
    """`busybox cpio -o -H newc` of the tree (with the guest's own busybox), gzipped."""
    entries = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
    archive = run(
        [str(busybox), "cpio", "-o", "-H", "newc"], cwd=stage, stdin="\n".join(entries).encode()
    )
    out.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))


# --- the build ----------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(cache_dir: Path) -> Iterator[None]:
    """One build at a time per cache directory (pytest, benchmarks and the CLI may race)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_guest(target: Path) -> Guest | None:
    """The guest built into `target`; None unless its build completed (guest.json is last)."""
    meta = target / "guest.json"
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return Guest(
        variant=data["variant"],
        kernel=target / data["kernel"],
        initrd=target / "initrd.gz",
        modules=list(data["modules"]),
        packages=dict(data["packages"]),
    )


def assemble(variant: Variant, packages: dict[str, str], work: Path, target: Path) -> None:
    """Download, unpack and pack into `target` (which must not exist yet)."""
    debs = download(packages, work / "debs")
    kernel_package = next(p for p in packages if p != BUSYBOX_PACKAGE)
    kroot = unpack(debs[kernel_package], work / "kernel")
    broot = unpack(debs[BUSYBOX_PACKAGE], work / "busybox")
    release = kernel_release(kroot, kernel_package)
    moddir = kroot / "lib" / "modules" / release
    files = module_files(moddir)
    order = load_order(variant.modules, files, builtin_modules(moddir))
    busybox = broot / "bin" / "busybox"
    modules = stage_initramfs(work / "stage", busybox, order, files)
    built = work / "out"
    built.mkdir()
    kernel = guest_kernel(kroot, release, built)
    pack_initramfs(work / "stage", busybox, built / "initrd.gz")
    meta = {"variant": variant.name, "kernel": kernel.name, "modules": modules}
    (built / "guest.json").write_text(json.dumps({**meta, "packages": packages}, indent=2) + "\n")
    built.rename(target)


def prune(cache_dir: Path, variant: Variant, keep: Path) -> None:
    """Remove this variant's older builds (other package versions) and the work directories of
    interrupted builds (call it holding the lock)."""
    for old in [*cache_dir.glob(f"{variant.name}-*"), *cache_dir.glob("build-*")]:
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def build_guest(variant: str = "virtio", cache_dir: Path = CACHE_DIR) -> Guest:
    """The guest of `variant`, from the cache or built now (virtio: ~4 s and a 27 MB download;
    legacy-nics: ~6 s and 72 MB)."""
    if variant not in VARIANTS:
        raise GuestBuildError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    packages = package_versions(spec)
    target = cache_dir / f"{variant}-{cache_key(spec, packages)}"
    with locked(cache_dir):
        guest = load_guest(target)
        if guest is None:
            with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as work:
                assemble(spec, packages, Path(work), target)
            prune(cache_dir, spec, keep=target)
            guest = load_guest(target)
    if guest is None:
        raise GuestBuildError(f"the build left no guest.json in {target}")
    return guest


# --- booting it ---------------------------------------------------------------------------------


def kernel_cmdline(
    *,
    ip: str | None = None,
    gw: str | None = None,
    dhcp: bool = False,
    iface: str | None = None,
    port: int = DEFAULT_PORT,
    echo: int | None = None,
    fetch: str | Sequence[str] = (),
    resolve: str | Sequence[str] = (),
    dns: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The -append string: a static `ip` ("A.B.C.D/NN", optional `gw`) or `dhcp`, not both.

    Optional guest behaviours (see init.sh): `echo` a TCP echo server on that port; `fetch`
    one or more "HOST:PORT" to connect to after READY (console: KVT-FETCH HOST:PORT <first line>
    or KVT-FETCH-FAILED HOST:PORT); `resolve` one or more names to look up after READY
    (KVT-RESOLVED NAME A.B.C.D or KVT-RESOLVE-FAILED NAME), through the DHCP lease's DNS server,
    else `dns`."""
    if (ip is None) == (not dhcp):
        raise ValueError("give exactly one of ip= or dhcp=True")
    # no_timer_check: under host load the emulated timer can look broken to the kernel's
    # IO-APIC check ("IO-APIC + timer doesn't work!": a panic at boot, seen on CI under TCG)
    words = ["console=ttyS0", "no_timer_check"]
    if ip is not None:
        if "/" not in ip:
            raise ValueError(f"ip needs a prefix length, e.g. {ip}/24")
        words.append(f"kvt.ip={IPv4Interface(ip).with_prefixlen}")
    if gw is not None:
        words.append(f"kvt.gw={IPv4Address(gw)}")
    if dhcp:
        words.append("kvt.dhcp=1")
    if iface is not None:
        words.append(f"kvt.iface={iface}")
    if port != DEFAULT_PORT:
        words.append(f"kvt.port={int(port)}")
    if echo is not None:
        words.append(f"kvt.echo={tcp_port(echo)}")
    for target in [fetch] if isinstance(fetch, str) else fetch:
        host, colon, target_port = target.rpartition(":")
        if not colon or not re.fullmatch(r"[^\s:]+", host) or not target_port.isdigit():
            raise ValueError(f"fetch target must be HOST:PORT, not {target!r}")
        tcp_port(int(target_port))
        words.append(f"kvt.fetch={target}")  # verbatim: the console line repeats it
    for name in [resolve] if isinstance(resolve, str) else resolve:
        if not re.fullmatch(r"[^\s=]+", name):
            raise ValueError(f"not a name to resolve: {name!r}")
        words.append(f"kvt.resolve={name}")
    if dns is not None:
        words.append(f"kvt.dns={IPv4Address(dns)}")
    return " ".join([*words, *extra])


def tcp_port(port: int) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port}")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="virtio")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    args = parser.parse_args(argv)
    guest = build_guest(args.variant, args.cache_dir)
    print(f"kernel={guest.kernel}")
    print(f"initrd={guest.initrd}")
    print(f"modules={','.join(guest.modules)}")
    print(f"packages={','.join(f'{p}={v}' for p, v in guest.packages.items())}")
    print(f"cmdline={kernel_cmdline(dhcp=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
