"""Reading back the files the daemon keeps (pid files, lease files, launch records, the admin
token) without trusting them: one bounded, non-blocking read that never follows a symbolic
link. A file may be missing, a FIFO, a directory, a link planted by an unprivileged user
(the qemu user owns its run directory), huge, or binary; each becomes FileProblem with a
sentence for the owning object's status_reason, never an exception that stops a pass."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from app.host.errors import HostError


class FileProblem(HostError):
    """The file exists but cannot be taken as it is (the message says why)."""


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The content of the regular file `path`, or None when there is no such file. Raises
    FileProblem when it is not a regular file, cannot be read, or is longer than `limit`
    bytes (nothing of it is used then: a truncated record would be read as a wrong one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link; EACCES, ...
        raise FileProblem(f"{path} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileProblem(f"{path} is not a regular file")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise FileProblem(f"{path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileProblem(f"{path} is longer than {limit} bytes")
    return b"".join(chunks)


def remove(path: Path) -> None:
    """Removes whatever is at `path` (a file, link, FIFO, socket, or a directory with its
    content; a link is removed, never followed); nothing there is fine."""
    try:
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
