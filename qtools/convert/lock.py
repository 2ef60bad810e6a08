"""One conversion at a time per output directory: an exclusive `flock` on `DST/.qtools/lock`, held for the run.

The holder writes its pid, host and start time into the file, so a second run can say who holds it. The kernel
drops the lock when the holder dies, however it dies, so a killed run never leaves a stale lock behind; the file
itself is removed when a run ends. Forked children (the conversion's workers) close their copy of the lock's file
descriptor at once: the lock belongs to the run's own process, and dies with it even while a killed worker's threads
are still winding down.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qtools.checkpoint.hf import STATE_DIR
from qtools.errors import QtoolsError

LOCK_NAME = "lock"

_held: set[int] = set()


def _close_in_child() -> None:
    # Closing a copy of the descriptor leaves the parent's lock in place (flock belongs to the open file).
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_path(destination: Path) -> Path:
    return Path(destination) / STATE_DIR / LOCK_NAME


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _acquire(path: Path, destination: Path) -> int:
    # A finishing run unlinks the file while it still holds the lock: retry when the locked file is no longer
    # the one at `path`, so two runs can never each hold a lock on a different file.
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise QtoolsError(
                    f"{destination}: another qtools convert is writing here ({holder}); wait for it to finish "
                    "or stop it, then rerun"
                ) from error
            raise QtoolsError(f"{path}: cannot lock ({error.strerror})") from error
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def destination_lock(destination: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of output directory `destination` (created if need be) for the `with` block.

    Raises QtoolsError at once, naming the holder (pid, host, start time), when another process holds it.
    """
    destination = Path(destination)
    path = lock_path(destination)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, destination)
    except OSError as error:
        raise QtoolsError(f"{destination}: cannot write here ({error.strerror})") from error
    _held.add(fd)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        _held.discard(fd)
        os.close(fd)
