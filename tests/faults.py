"""Kinds of damage a file the daemon reads back can suffer, for the fault matrices of
tests/api/test_file_faults.py and tests/host/test_file_faults.py.

`damage(path, kind, good, stranger)` replaces the file at `path` with that kind of damage:
`good` is what the file held (to truncate it, or to plant a stranger's pid in its place),
`stranger` the pid of an unrelated live process (a `sleep` the test started and checks is
still alive at the end: nothing may signal it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.host.procs import pid_max

# what to put instead of a pid (pid files) or into the pid field (records)
PIDS: dict[str, Callable[[int], str]] = {
    "stale-pid": str,  # an unrelated live process
    "zero": lambda _: "0",  # kill(0, sig) would signal our own process group
    "minus-one": lambda _: "-1",  # kill(-1, sig) would signal every process
    "negative": lambda _: "-4242",  # kill(-N, sig) signals process group N
    "beyond-pid-max": lambda _: str(pid_max() + 1),
    "huge-number": lambda _: "9" * 40,
}
SHAPES = ("empty", "truncated", "binary", "huge", "fifo", "directory", "symlink")
KINDS = (*SHAPES, *PIDS)


def clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def damage(
    path: Path, kind: str, good: bytes, stranger: int, with_pid: Callable[[str], bytes]
) -> None:
    """`with_pid(text)`: the file's content naming the pid `text` (a pid file: the text
    itself; a record: the good record with that pid)."""
    clear(path)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: max(1, len(good) // 2)])
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "huge":
        path.write_bytes(b"7" * (4 << 20))
    elif kind == "fifo":
        os.mkfifo(path)  # a reader without O_NONBLOCK would hang the worker
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":  # the real content, but behind a link the qemu user could plant
        target = path.with_name(path.name + ".target")
        target.write_bytes(good)
        path.symlink_to(target)
    else:
        path.write_bytes(with_pid(PIDS[kind](stranger)))


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process whose pid the tests plant; it must survive."""
    process = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait()
