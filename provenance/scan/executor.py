"""What every executor promises (docs/scan.md, "Executors").

An executor runs ``work(task)`` for each task in a worker it can kill, under the scan's
:class:`~provenance.scan.options.Limits`, and yields ``(index, answer)`` pairs in completion
order: the worker's JSON text, or a :class:`TaskFailure` when the task ran out of time,
its worker died or could not run it. A failing task never stops the others, and the
driver (the caller) never runs a task itself.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from provenance.scan.limits import memory_limit

if TYPE_CHECKING:
    from provenance.scan.model import ScanTask

Work = Callable[["ScanTask"], str]
"""The per-model function (:func:`provenance.scan.model.scan_task`): module level, so it pickles by name."""


@dataclass(frozen=True)
class TaskFailure:
    kind: str
    """``timeout``, ``out-of-memory``, ``worker-lost`` or ``internal``."""
    message: str
    worker: str | None = None
    seconds: float = 0.0


Answer = tuple[int, "str | TaskFailure"]


class Executor(Protocol):
    name: str

    def map(self, work: Work, tasks: Sequence[ScanTask]) -> Iterator[Answer]:
        """Run every task; yield each index once, as soon as its answer is known."""
        ...


def run_task(work: Work, task: ScanTask, memory_bytes: int | None) -> str:
    """Inside a worker: one task under the memory limit. ``work`` catches what a model can
    raise; a ``MemoryError`` outside it (encoding a huge result) still becomes an error row."""
    from provenance.scan.row import encode, failure_result

    try:
        with memory_limit(memory_bytes):
            return work(task)
    except MemoryError:
        message = f"ran out of memory (limit {memory_bytes} bytes above the worker's own)"
        return encode(failure_result(task.unit, task.options_key, "out-of-memory", message, 0.0))
