"""What to launch: the LaunchSpec and the part of qemu's command line this package owns
(identity, run-directory files, hardening). The machine, boot source and NICs come from
app.domain.qemu_argv; the options listed in RESERVED_OPTIONS only ever come from here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.domain.qemu_argv import qemu_value
from app.host.qemu.rundir import RunPaths

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
QMP_CHARDEV = "kvmnetd-qmp"
CONSOLE_CHARDEV = "kvmnetd-console"
# Options this module adds (or that would defeat it); the argv builder must not pass them.
RESERVED_OPTIONS = frozenset(
    {
        "-qmp",
        "-qmp-pretty",
        "-monitor",
        "-mon",
        "-pidfile",
        "-serial",
        "-name",
        "-uuid",
        "-daemonize",
        "-sandbox",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "-runas",
        "-chroot",
    }
)
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL


@dataclass(frozen=True)
class LaunchSpec:
    """One qemu to start. `argv` is the binary plus machine, devices and netdevs (built
    elsewhere) without the options in RESERVED_OPTIONS, which launch() adds."""

    vm_id: str  # a UUID in canonical form; the VM's identity (-uuid)
    argv: Sequence[str]
    run_dir: Path
    user: int | None = None  # run qemu as this uid/gid; None: as the daemon
    group: int | None = None
    netns: str | None = None  # None: the calling thread's network namespace
    sandbox: bool = True  # qemu's seccomp sandbox (needs qemu started as `user`, not -runas)
    name: str | None = None  # guest name qemu reports (query-name); default: vm_id
    pass_fds: tuple[int, ...] = ()  # descriptors qemu inherits (e.g. taps: -netdev tap,fd=)
    # RLIMIT_MEMLOCK (bytes) qemu starts with; None: the daemon's. VFIO pins guest RAM
    memlock: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        if str(uuid.UUID(self.vm_id)) != self.vm_id:
            raise ValueError(f"vm_id {self.vm_id!r} is not a UUID in canonical form")
        if not self.argv or not self.argv[0]:
            raise ValueError("argv needs at least the qemu binary")
        clashes = sorted(RESERVED_OPTIONS.intersection(_option_names(self.argv[1:])))
        if clashes:
            raise ValueError(f"argv must not contain {', '.join(clashes)}: launch() adds them")
        if any("id=kvmnetd-" in arg for arg in self.argv):
            raise ValueError("ids starting with kvmnetd- are reserved")
        if (self.user is None) != (self.group is None):
            raise ValueError("give both user and group, or neither (qemu would keep gid 0)")
        if not self.run_dir.is_absolute():
            raise ValueError(f"run_dir {self.run_dir} must be absolute")
        socket_path = RunPaths(self.run_dir).qmp_socket
        if len(os.fsencode(socket_path)) > UNIX_PATH_MAX:
            raise ValueError(f"{socket_path} is too long for a unix socket")

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)


def _option_names(args: Sequence[str]) -> set[str]:
    # qemu accepts -opt and --opt alike
    return {"-" + arg.lstrip("-") for arg in args if arg.startswith("-")}


def process_name(vm_id: str) -> str:
    """The qemu thread name (/proc/PID/comm, at most 15 chars): kvm-<first 8 hex digits>."""
    return f"kvm-{vm_id[:8]}"


def launch_argv(spec: LaunchSpec) -> list[str]:
    """The full command: the spec's argv plus identity, run-directory files and hardening."""
    paths = spec.paths
    argv = [
        *spec.argv,
        "-name",
        f"guest={qemu_value(spec.name or spec.vm_id)},process={process_name(spec.vm_id)}",
        "-uuid",
        spec.vm_id,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-pidfile",
        str(paths.pidfile),
        "-chardev",
        f"socket,id={QMP_CHARDEV},path={qemu_value(str(paths.qmp_socket))},server=on,wait=off",
        "-mon",
        f"chardev={QMP_CHARDEV},mode=control",
        "-chardev",
        f"file,id={CONSOLE_CHARDEV},path={qemu_value(str(paths.console_log))}",
        "-serial",
        f"chardev:{CONSOLE_CHARDEV}",
    ]
    if spec.sandbox:
        argv += ["-sandbox", SANDBOX]
    return argv


def option_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None
