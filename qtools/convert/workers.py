"""Worker processes that never outlive the process that started them.

`run_jobs` runs `work(job, on_bytes)` for every job in a few worker processes, handing each worker its next job
only when it finishes one, and returns the results. A worker asks the kernel to SIGKILL it when its parent dies
(Linux `PR_SET_PDEATHSIG`; elsewhere a thread polls the parent's pid), so a `kill -9` of the parent leaves nothing
converting queued shards, racing a rerun or holding memory. Workers ignore SIGINT: on Ctrl-C, as on any error,
the parent stops them before it re-raises. Only queues and pipes owned by the parent connect them (no manager
process).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Generic, TypeVar

from qtools.errors import QtoolsError

J = TypeVar("J")
R = TypeVar("R")
_PR_SET_PDEATHSIG = 1
# Progress is sent in batches: one message per 64 MB read keeps the queue quiet at any shard size.
_PROGRESS_BATCH_BYTES = 64 << 20
_POLL_SECONDS = 0.5


class WorkerTraceback(Exception):
    """The traceback of an unexpected error in a worker process, attached as the re-raised error's cause."""


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_POLL_SECONDS)
    os._exit(1)


def _die_with_parent(parent_pid: int) -> None:
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    # A parent that died before the request took effect is never signalled for: check once by hand.
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _sendable(error: BaseException) -> tuple[BaseException, str | None]:
    """The error and, unless it is a QtoolsError (a message for the user), its traceback text; an error that
    cannot be pickled becomes a RuntimeError naming it."""
    text = None if isinstance(error, QtoolsError) else "".join(traceback.format_exception(error))
    try:
        pickle.dumps(error)
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    return error, text


def _worker_main(work: Callable, parent_pid: int, jobs, results) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    unsent = 0

    def on_bytes(nbytes: int) -> None:
        nonlocal unsent
        unsent += nbytes
        if unsent >= _PROGRESS_BATCH_BYTES:
            results.put(("bytes", None, unsent))
            unsent = 0

    while (item := jobs.get()) is not None:
        key, job = item
        results.put(("start", key, os.getpid()))
        try:
            result = work(job, on_bytes)
        except BaseException as error:
            results.put(("failed", key, _sendable(error)))
            continue
        results.put(("bytes", None, unsent))
        unsent = 0
        results.put(("done", key, result))


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back Ctrl-C while workers start, then deliver it: a fork inherits the holding handler, not the
    default one, so a Ctrl-C that lands while a worker starts cannot print its traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _: arrived.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if arrived:
            signal.raise_signal(signal.SIGINT)


class _Pool(Generic[J, R]):
    def __init__(self, work: Callable[[J, Callable[[int], None]], R], workers: int, start_method: str):
        context = get_context(start_method)
        self.jobs, self.results = context.Queue(), context.Queue()
        self.processes = [
            context.Process(target=_worker_main, args=(work, os.getpid(), self.jobs, self.results), daemon=True)
            for _ in range(workers)
        ]
        self.running: dict[int, str] = {}

    def start(self) -> None:
        with _sigint_deferred():
            for process in self.processes:
                process.start()

    def check_alive(self) -> None:
        for process in self.processes:
            if process.exitcode not in (None, 0):
                shard = self.running.get(process.pid, "no job")
                how = f"signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
                raise QtoolsError(f"a worker process died ({how}; out of memory?) while working on {shard}")

    def stop(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                process.terminate()
        for process in self.processes:
            if process.pid is not None:
                process.join()
        for channel in (self.jobs, self.results):
            channel.close()
            channel.cancel_join_thread()


def run_jobs(
    work: Callable[[J, Callable[[int], None]], R],
    jobs: dict[str, J],
    workers: int,
    start_method: str,
    on_bytes: Callable[[int], None] | None = None,
    on_done: Callable[[str, R], None] | None = None,
) -> dict[str, R]:
    """Run `work(job, on_bytes)` for every job (key -> job) in `workers` processes; returns key -> result.

    `work` and the jobs must pickle (a module-level function and plain data) when `start_method` is "spawn".
    The first error in any worker stops them all and is raised here, as is KeyboardInterrupt; either way no
    worker is left running when this returns or raises.
    """
    pool: _Pool[J, R] = _Pool(work, workers, start_method)
    waiting = iter(jobs.items())
    results: dict[str, R] = {}
    try:
        pool.start()
        for _ in pool.processes:
            pool.jobs.put(next(waiting, None))
        while len(results) < len(jobs):
            try:
                kind, key, value = pool.results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                pool.check_alive()
                continue
            if kind == "bytes":
                if on_bytes and value:
                    on_bytes(value)
            elif kind == "start":
                pool.running[value] = key
            elif kind == "failed":
                error, text = value
                raise error from (WorkerTraceback(text) if text else None)
            else:
                results[key] = value
                if on_done:
                    on_done(key, value)
                pool.jobs.put(next(waiting, None))
        for process in pool.processes:
            process.join()
    finally:
        pool.stop()
    return results
