"""The Ray executor (``--ray local|auto|ADDRESS``): each model is one Ray task.

Tasks carry paths and options only; workers read the models from the shared filesystem,
so no model byte travels through the driver or the object store. Each task asks for one
CPU and the scan's memory limit as a Ray resource (so a node never runs more models than
fit), runs with ``max_retries=0`` (a model that crashed a worker is reported, not retried
into another crash) and under the same RLIMIT_DATA as the local executor. The driver keeps
as many tasks in flight as the cluster has slots (re-read every few seconds, so nodes that
join are used), waits with ``ray.wait`` until the nearest deadline, and cancels a task past
its wall-time limit with ``ray.cancel(force=True)``, which kills its worker process.
A worker or node that dies turns its task into an error row; the others go on.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from provenance.errors import UsageProblem
from provenance.scan.executor import Answer, TaskFailure, Work, run_task
from provenance.scan.options import Limits

if TYPE_CHECKING:
    from provenance.scan.model import ScanTask

SLOT_REFRESH_SECONDS = 5.0
WARM_TIMEOUT = 300.0


class RayUnavailable(UsageProblem):
    """Ray is not installed, or the cluster cannot be reached or cannot run the tasks (exit 64)."""


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs the ray package: pip install 'provenance[ray]'") from None
    return ray


def ray_task(work: Work, task: ScanTask, memory_bytes: int | None) -> str:
    """What a Ray worker runs for one model (imports first: see ``warm_up``; a no-op once done)."""
    from provenance.scan.model import warm_up

    warm_up()
    return run_task(work, task, memory_bytes)


def warm_task() -> int:
    """Import what every model needs, so the first models' time limits do not pay for it."""
    import os

    from provenance.scan.model import warm_up

    warm_up()
    return os.getpid()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class RayExecutor:
    """Run the scan on a Ray cluster.

    ``address``: ``"local"`` starts a private single-machine Ray for this scan (``jobs`` CPUs);
    ``"auto"`` joins the cluster this machine belongs to (``ray start``); anything else is
    passed to ``ray.init(address=...)``; ``None`` uses the Ray the caller already initialised.
    """

    name = "ray"

    def __init__(self, address: str | None = "auto", limits: Limits | None = None, jobs: int | None = None) -> None:
        self.address = address
        self.limits = limits or Limits()
        self.jobs = jobs

    def _connect(self, ray: Any) -> bool:
        """Initialise Ray if needed; True when this executor owns the Ray instance it started."""
        if ray.is_initialized():
            return False
        if self.address is None:
            raise RayUnavailable("Ray is not initialised (call ray.init() or pass an address)")
        common = {"log_to_driver": False, "logging_level": logging.WARNING, "include_dashboard": False}
        try:
            if self.address == "local":
                ray.init(num_cpus=self.jobs, **common)
            else:
                ray.init(address=self.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"cannot connect to Ray at {self.address!r}: {_first_line(exc)}") from None
        return True

    def _slots(self, ray: Any) -> int:
        """Tasks that can run at once: per live node, its CPUs, or fewer when memory is the limit."""
        total, biggest = 0, 0.0
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources", {})
            cpus = int(resources.get("CPU", 0))
            biggest = max(biggest, float(resources.get("memory", 0)))
            if self.limits.memory_bytes:
                cpus = min(cpus, int(resources.get("memory", 0) // self.limits.memory_bytes))
            total += cpus
        if total == 0:
            raise RayUnavailable(f"no Ray node has a CPU and {self.limits.memory_bytes} bytes of memory for a task "
                                 f"(largest node memory {biggest:.0f} bytes): lower --memory")
        return total

    def _warm(self, ray: Any, slots: int) -> None:
        refs = [ray.remote(warm_task).options(num_cpus=1, max_retries=0).remote() for _ in range(slots)]
        ray.wait(refs, num_returns=len(refs), timeout=WARM_TIMEOUT)

    def map(self, work: Work, tasks: Sequence[ScanTask]) -> Iterator[Answer]:
        if not tasks:
            return
        ray = require_ray()
        owned = self._connect(ray)
        pending: dict[Any, tuple[int, float]] = {}
        try:
            slots, refreshed = self._slots(ray), time.monotonic()
            self._warm(ray, slots)
            remote = ray.remote(ray_task).options(num_cpus=1, max_retries=0, memory=self.limits.memory_bytes or None)
            queue = iter(range(len(tasks)))
            next_index = next(queue, None)
            while next_index is not None or pending:
                if time.monotonic() - refreshed > SLOT_REFRESH_SECONDS:
                    slots, refreshed = self._slots(ray), time.monotonic()
                while next_index is not None and len(pending) < slots:
                    ref = remote.remote(work, tasks[next_index], self.limits.memory_bytes)
                    pending[ref] = (next_index, time.monotonic())
                    next_index = next(queue, None)
                yield from self._collect(ray, pending)
        finally:
            for ref in pending:  # interrupted: stop what still runs
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            if owned:
                ray.shutdown()

    def _collect(self, ray: Any, pending: dict[Any, tuple[int, float]]) -> Iterator[Answer]:
        nearest = min(started for _, started in pending.values()) + self.limits.seconds
        timeout = min(max(0.05, nearest - time.monotonic()), SLOT_REFRESH_SECONDS)
        ray.wait(list(pending), num_returns=1, timeout=timeout)
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in ready:
            index, started = pending.pop(ref)
            yield index, self._result(ray, ref, time.monotonic() - started)
        now = time.monotonic()
        for ref, (index, started) in list(pending.items()):
            if now - started > self.limits.seconds:
                del pending[ref]
                ray.cancel(ref, force=True)
                yield index, TaskFailure("timeout", f"stopped after {self.limits.seconds:g} s (the scan's time limit per model)",
                                         "ray", now - started)

    @staticmethod
    def _result(ray: Any, ref: Any, seconds: float) -> str | TaskFailure:
        errors = ray.exceptions
        try:
            value = ray.get(ref)
        except errors.OutOfMemoryError as exc:  # Ray's memory monitor killed the worker
            return TaskFailure("out-of-memory", _first_line(exc), "ray", seconds)
        except errors.RayTaskError as exc:  # raised inside the task: a bug, since the task catches what models raise
            return TaskFailure("internal", _first_line(exc), "ray", seconds)
        except errors.RayError as exc:  # the worker or its node died, or the task was cancelled
            return TaskFailure("worker-lost", _first_line(exc), "ray", seconds)
        if not isinstance(value, str):
            return TaskFailure("internal", f"a worker answered {type(value).__name__}, not text", "ray", seconds)
        return value
