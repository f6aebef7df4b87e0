"""One VM's run directory: where its files are (RunPaths), and reading and creating them
without following anything the qemu user may have planted there."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from app.host.files import remove

log = logging.getLogger(__name__)


OUTPUT_TAIL_BYTES = 8192
OUTPUT_TAIL_LINES = 20
LOG_MODE = 0o640


@dataclass(frozen=True)
class RunPaths:
    """The files of one VM's run directory."""

    run_dir: Path

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def previous_qemu_log(self) -> Path:
        return self.run_dir / "qemu.log.1"

    @property
    def record(self) -> Path:
        return self.run_dir / "launch.json"


def output_tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last lines of a log (qemu's own output), stripped; empty when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block the event loop
            os.close(fd)
            return ""
        with os.fdopen(fd, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - OUTPUT_TAIL_BYTES))
            data = f.read().decode(errors="replace")
    except OSError as exc:  # missing, or a link planted by the qemu user
        log.debug("no output tail from %s: %s", path, exc)
        return ""
    return "\n".join(data.strip().splitlines()[-lines:])


def chown_own_file(path: Path, uid: int, gid: int) -> None:
    """Give a regular file of the run directory to the qemu user; a link planted there is
    removed, never followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError:  # ELOOP: a symbolic link
        path.unlink(missing_ok=True)
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def open_log(paths: RunPaths) -> int:
    # O_EXCL|O_NOFOLLOW: never write through a file or link the qemu user left there
    remove(paths.qemu_log)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC
    return os.open(paths.qemu_log, flags, LOG_MODE)
