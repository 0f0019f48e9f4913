"""Progress of a scan as the driver sees it: models done of total, bytes, throughput, ETA.

The driver updates it as answers arrive, so a local pool and a Ray cluster show the same
bar. :class:`RichProgress` draws it on stderr; notebooks may pass their own
:class:`ScanProgress`.
"""
from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from provenance.scan.row import ModelRow


class ScanProgress(Protocol):
    def start(self, models: int, total_bytes: int, executor: str) -> None: ...

    def advance(self, row: ModelRow) -> None: ...

    def stop(self) -> None: ...


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _Throughput(ProgressColumn):
    """Bytes done of total, bytes per second and models per minute since the start."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done, total = task.fields.get("bytes_done", 0), task.fields.get("bytes_total", 0)
        rate = f" {_size(done / elapsed)}/s {60 * task.completed / elapsed:.0f}/min ETA" if elapsed > 0 else " ETA"
        return Text(f"{_size(done)}/{_size(total)}{rate}")


class RichProgress:
    """A rich progress bar on stderr (drawn live on a terminal, once at the end otherwise)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, markup=False, emoji=False)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=10), MofNCompleteColumn(), _Throughput(),
                                 TimeRemainingColumn(), console=self.console, transient=False)
        self.counts = {"pass": 0, "violation": 0, "error": 0}
        self.task_id: int | None = None
        self.started = 0.0

    def start(self, models: int, total_bytes: int, executor: str) -> None:
        self.started = time.monotonic()
        self.task_id = self.progress.add_task(f"scan ({executor})", total=models, bytes_done=0, bytes_total=total_bytes)
        self.progress.start()

    def advance(self, row: ModelRow) -> None:
        assert self.task_id is not None
        self.counts[row.status] = self.counts.get(row.status, 0) + 1
        task = self.progress.tasks[self.task_id]
        description = f"{self.counts['pass']} ok {self.counts['violation']} flagged {self.counts['error']} err"
        self.progress.update(self.task_id, advance=1, bytes_done=task.fields["bytes_done"] + row.bytes, description=description)

    def stop(self) -> None:
        self.progress.stop()
