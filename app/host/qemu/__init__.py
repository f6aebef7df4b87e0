"""qemu processes: launch, identity, exit detection, re-adoption and the shutdown ladder.

The package, by concern: errors (QemuError and its kinds), argv (LaunchSpec and the options
this package adds), rundir (the run directory's files), identity (the launch record and the
proof that a pid is our qemu), process (QemuProcess: a qemu held through a pidfd), launch,
adopt, shutdown (the ladder). Everything callers use is re-exported here.

One run directory per VM (0700, owned by the user qemu runs as) holds everything of one qemu:
  qemu.pid     written and locked by qemu itself: a second copy of the same VM dies at once
               with "Cannot lock pid file", before it touches the QMP socket;
  qmp.sock     the QMP monitor (app.host.qmp);
  console.log  the guest's serial port;
  qemu.log     qemu's own stdout and stderr (the previous run's is kept as qemu.log.1);
  launch.json  the daemon's record of what it started (LaunchRecord), written right after
               the spawn, before anything is awaited.

Identity: a pid alone is never trusted. A process is ours when /proc/PID/cmdline is exactly
the argv the record holds, carries `-uuid VM_ID` and this directory's pidfile, and its start
time (/proc/PID/stat field 22) is the recorded one: a recycled pid belongs to a process that
started later. Every process is held through a pidfd opened *before* that check and confirmed
alive after it, so the check and every later signal concern that very process even if it
exits and its pid is reused meanwhile (signals go through pidfd_send_signal).

Exit detection never depends on reaping: a pidfd becomes readable when the process exits,
zombie or not, so a re-adopted qemu that is not our child is seen at once too (PID 1 on these
machines reaps orphans only every ~1.7 s). Only our own child's exit status is known; an
adopted qemu's status goes to its real parent, and the tail of qemu.log is the evidence.

Network namespace: a qemu for a named namespace is forked from a short-lived thread that
entered it; the child inherits the forking thread's namespace. `ip netns exec` cannot start
an unprivileged qemu: Popen drops privileges before exec, and `ip` running as that user may
not setns.
"""

from app.host.qemu.adopt import Adoption, adopt, adopt_from
from app.host.qemu.argv import (
    CONSOLE_CHARDEV,
    QMP_CHARDEV,
    RESERVED_OPTIONS,
    SANDBOX,
    UNIX_PATH_MAX,
    LaunchSpec,
    launch_argv,
    process_name,
)
from app.host.qemu.errors import (
    QemuAlreadyRunning,
    QemuError,
    QemuLaunchError,
    QemuShutdownError,
    QemuUnresponsive,
    describe_returncode,
)
from app.host.qemu.identity import RECORD_LIMIT, LaunchRecord, find_running, remove_runtime_files
from app.host.qemu.launch import EXIT_GRACE, QEMU_UMASK, REAP_GRACE, launch
from app.host.qemu.process import QemuExit, QemuProcess, reap_detached
from app.host.qemu.rundir import (
    LOG_MODE,
    OUTPUT_TAIL_BYTES,
    OUTPUT_TAIL_LINES,
    RunPaths,
    output_tail,
)
from app.host.qemu.shutdown import DEFAULT_DEADLINES, ShutdownDeadlines, ShutdownStep, shutdown

__all__ = [
    "CONSOLE_CHARDEV",
    "DEFAULT_DEADLINES",
    "EXIT_GRACE",
    "LOG_MODE",
    "OUTPUT_TAIL_BYTES",
    "OUTPUT_TAIL_LINES",
    "QEMU_UMASK",
    "QMP_CHARDEV",
    "REAP_GRACE",
    "RECORD_LIMIT",
    "RESERVED_OPTIONS",
    "SANDBOX",
    "UNIX_PATH_MAX",
    "Adoption",
    "LaunchRecord",
    "LaunchSpec",
    "QemuAlreadyRunning",
    "QemuError",
    "QemuExit",
    "QemuLaunchError",
    "QemuProcess",
    "QemuShutdownError",
    "QemuUnresponsive",
    "RunPaths",
    "ShutdownDeadlines",
    "ShutdownStep",
    "adopt",
    "adopt_from",
    "describe_returncode",
    "find_running",
    "launch",
    "launch_argv",
    "output_tail",
    "process_name",
    "reap_detached",
    "remove_runtime_files",
    "shutdown",
]
