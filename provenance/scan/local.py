"""The local executor: a pool of worker processes the driver can kill (``--jobs N``).

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop a task that hangs, and a
worker that dies breaks the whole pool. Here each worker is a spawned process on a pipe,
given one task at a time; the driver waits on the pipes and the processes' sentinels with
the nearest deadline as timeout, kills (SIGKILL) a worker whose task ran past its wall-time
limit, reports a worker that died as that task's error row, and starts a fresh worker in
either case. A worker announces itself after its imports, so start-up time never counts
against a model's limit. Workers ignore SIGINT: Ctrl-C reaches the driver, which stops them.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from provenance.scan.executor import Answer, TaskFailure, Work, run_task
from provenance.scan.options import Limits
from provenance.scan.row import worker_name

if TYPE_CHECKING:
    from provenance.scan.model import ScanTask

READY = b"ready"
START_TIMEOUT = 300.0
"""A worker that has not finished its imports by then is replaced."""
MAX_START_FAILURES = 3


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_main(conn: Connection) -> None:
    """A worker's life: warm up, then run tasks until the driver closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from provenance.scan.model import warm_up

    warm_up()
    conn.send_bytes(READY)
    while True:
        try:
            message = conn.recv()  # (work, task, memory) from the driver: the trusted direction
        except (EOFError, OSError):
            return
        if message is None:
            return
        work, task, memory_bytes = message
        conn.send_bytes(run_task(work, task, memory_bytes).encode())


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "its worker stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"its worker process died ({name}; SIGKILL is also how the kernel's out-of-memory killer ends a process)"
    return f"its worker process exited with status {code}"


class _Worker:
    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=worker_main, args=(child,), daemon=True, name="provenance-scan-worker")
        self.process.start()
        child.close()
        self.born = time.monotonic()
        self.ready = False
        self.index: int | None = None
        self.started = 0.0

    @property
    def name(self) -> str:
        return worker_name(self.process.pid)

    def give(self, index: int, message: tuple[Work, ScanTask, int | None]) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send(message)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


class LocalExecutor:
    """``jobs`` worker processes on this machine, each model under ``limits``."""

    name = "local"

    def __init__(self, jobs: int | None = None, limits: Limits | None = None) -> None:
        self.jobs = max(1, jobs or default_jobs())
        self.limits = limits or Limits()
        self.start_failures = 0

    def map(self, work: Work, tasks: Sequence[ScanTask]) -> Iterator[Answer]:
        if not tasks:
            return
        context = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited threads or locks
        queue = deque(range(len(tasks)))
        workers = [_Worker(context) for _ in range(min(self.jobs, len(tasks)))]
        try:
            while queue or any(w.index is not None for w in workers):
                for worker in workers:
                    if worker.ready and worker.index is None and queue:
                        index = queue.popleft()
                        worker.give(index, (work, tasks[index], self.limits.memory_bytes))
                yield from self._collect(workers, context)
        finally:
            for worker in workers:
                worker.kill()

    def _collect(self, workers: list[_Worker], context: Any) -> Iterator[Answer]:
        now = time.monotonic()
        deadlines = [w.started + self.limits.seconds if w.index is not None else w.born + START_TIMEOUT
                     for w in workers if w.index is not None or not w.ready]
        timeout = min(deadlines, default=math.inf) - now
        wait([w.conn for w in workers] + [w.process.sentinel for w in workers],
             timeout=None if math.isinf(timeout) else max(0.0, timeout))
        for position, worker in enumerate(workers):
            index, answer, replace = self._check(worker)
            if index is not None and answer is not None:
                yield index, answer
            if replace:
                self._note_start_failure(worker)
                worker.kill()
                workers[position] = _Worker(context)

    def _note_start_failure(self, worker: _Worker) -> None:
        """A worker that dies before it is ready, again and again, cannot import the package."""
        self.start_failures = 0 if worker.ready else self.start_failures + 1
        if self.start_failures >= MAX_START_FAILURES:
            raise RuntimeError(f"{MAX_START_FAILURES} scan workers in a row died while starting "
                               f"(exit status {worker.process.exitcode}); run `python -c 'import provenance.scan.model'` to see why")

    def _check(self, worker: _Worker) -> tuple[int | None, str | TaskFailure | None, bool]:
        """``(task index, answer, replace the worker)`` for what this worker has to say now."""
        try:
            if worker.conn.poll():
                data = worker.conn.recv_bytes()
                if data == READY:
                    worker.ready = True
                    return None, None, False
                index, worker.index = worker.index, None
                return index, data.decode(), False
        except (EOFError, OSError):  # the pipe broke: the process is gone or going
            worker.process.join(timeout=5)
        elapsed = time.monotonic() - worker.started
        if worker.index is not None and elapsed > self.limits.seconds:
            index, worker.index = worker.index, None
            return index, TaskFailure("timeout", f"stopped after {self.limits.seconds:g} s (the scan's time limit per model)",
                                      worker.name, elapsed), True
        if not worker.process.is_alive():
            worker.process.join(timeout=1)
            index, worker.index = worker.index, None
            return index, TaskFailure("worker-lost", _describe_exit(worker.process.exitcode), worker.name, elapsed), True
        if not worker.ready and time.monotonic() - worker.born > START_TIMEOUT:
            return None, None, True
        return None, None, False
