"""Render the library's progress updates (:mod:`provenance.progress`) on stderr.

On a terminal: a rich bar per task (percentage, bytes or count, rate, time left, the item
being worked on). Otherwise (CI logs, ``2> file``, a pipe): one plain line every
``PROVENANCE_PROGRESS_SECONDS`` seconds (default 10) and, for a task that ran long enough
to print one, a last line when it ends::

    provenance: quantize 41% 2.7/6.6 GB 180 MB/s ETA 21s
    provenance: quantize done 6.6 GB in 37s (180 MB/s)

so a long run is visibly alive without filling a log with carriage returns. A phase that
reports nothing for a whole interval (a test computed after a pass, the start of the next
one) still gets a line: the task last heard from, and how long ago::

    provenance: lineage vs base.gguf 100% 27.0/27.0 GB, last step 12s ago

so no stretch of a run is silent for more than an interval.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn

from provenance.commands.common import stderr_console
from provenance.commands.process import analysis_starts
from provenance.progress import ProgressCallback, ProgressUpdate
from provenance.textsafe import safe_text

DEFAULT_INTERVAL_S = 10.0
INTERVAL_ENV = "PROVENANCE_PROGRESS_SECONDS"
MIN_HEARTBEAT_S = 1.0
"""The heartbeat wakes at most this often (an interval of 0 prints every update already)."""


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def format_amount(n: float, unit: str) -> str:
    if unit != "B":
        return f"{int(n)} {unit}"
    for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.1f} {name}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _pair(done: int, total: int | None, unit: str) -> str:
    """``2.7/6.6 GB`` (one unit for both), or the amount alone without a total."""
    if total is None:
        return format_amount(done, unit)
    if unit != "B":
        return f"{done}/{total} {unit}"
    scale, name = next(((s, n) for s, n in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")) if total >= s), (1.0, "B"))
    if scale == 1.0:
        return f"{done}/{total} B"
    return f"{done / scale:.1f}/{total / scale:.1f} {name}"


def plain_line(update: ProgressUpdate, elapsed: float) -> str:
    """One progress line, e.g. ``quantize 41% 2.7/6.6 GB 180 MB/s ETA 21s``."""
    parts = [update.task]
    fraction = update.fraction
    if fraction is not None:
        parts.append(f"{fraction * 100:.0f}%")
    parts.append(_pair(update.done, update.total, update.unit))
    rate = update.done / elapsed if elapsed > 0 else 0.0
    if rate > 0:
        parts.append(f"{format_amount(rate, update.unit)}/s")
        if update.total is not None and update.total > update.done:
            parts.append(f"ETA {format_seconds((update.total - update.done) / rate)}")
    return " ".join(parts)


def done_line(update: ProgressUpdate, elapsed: float) -> str:
    rate = f" ({format_amount(update.done / elapsed, update.unit)}/s)" if elapsed > 0 and update.done else ""
    return f"{update.task} done {format_amount(update.done, update.unit)} in {format_seconds(elapsed)}{rate}"


class PlainLines:
    """Plain periodic lines (not a terminal)."""

    def __init__(self, console: Console, interval: float) -> None:
        self.console, self.interval = console, interval
        self.started: dict[str, float] = {}
        self.last: dict[str, ProgressUpdate] = {}
        self.printed: dict[str, float] = {}
        self.heard: dict[str, float] = {}
        """When each task last reported."""
        self.said = time.monotonic()
        """When any line was last printed."""
        self.lock = threading.Lock()  # updates come from worker threads, ticks from the heartbeat

    def _say(self, text: str) -> None:
        self.said = time.monotonic()
        self.console.print(f"provenance: {safe_text(text)}", markup=False, highlight=False, soft_wrap=True)

    def __call__(self, update: ProgressUpdate) -> None:
        with self.lock:
            now = time.monotonic()
            start = self.started.setdefault(update.task, now)
            self.last[update.task] = update
            self.heard[update.task] = now
            if now - self.printed.get(update.task, start) >= self.interval and update.done:
                self.printed[update.task] = now
                self._say(plain_line(update, now - start))

    def tick(self, now: float | None = None) -> None:
        """The heartbeat: when nothing was printed for an interval, a line for the task last
        heard from, saying how long ago that was (a phase without updates of its own)."""
        with self.lock:
            now = time.monotonic() if now is None else now
            if not self.heard or now - self.said < self.interval:
                return
            task = max(self.heard, key=self.heard.__getitem__)
            update = self.last[task]
            self.printed[task] = now
            line = plain_line(update, self.heard[task] - self.started[task])
            self._say(f"{line}, last step {format_seconds(now - self.heard[task])} ago")
            self.said = now

    def close(self) -> None:
        with self.lock:
            now = time.monotonic()
            for task, update in self.last.items():
                if task in self.printed:
                    self._say(done_line(update, now - self.started[task]))


class RichBars:
    """One rich bar per task (a terminal)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.fields[task]}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.description}"),
            console=console, transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, update: ProgressUpdate) -> None:
        task = self.tasks.get(update.task)
        if task is None:
            task = self.tasks[update.task] = self.progress.add_task("", total=update.total, task=update.task,
                                                                  amount="", rate="")
        elapsed = next(t for t in self.progress.tasks if t.id == task).elapsed or 0.0
        rate = f"{format_amount(update.done / elapsed, update.unit)}/s" if elapsed > 0 and update.done else ""
        self.progress.update(task, completed=update.done, total=update.total, description=safe_text(update.item or "", 40),
                             amount=_pair(update.done, update.total, update.unit), rate=rate)


@contextmanager
def progress_display(console: Console = stderr_console) -> Iterator[ProgressCallback]:
    """A callback rendering progress for the duration of the ``with``: rich bars on a
    terminal, plain periodic lines otherwise (closed with one line per finished task)."""
    analysis_starts()  # the command's imports are done: settle the collector (commands/process.py)
    if console.is_terminal:
        bars = RichBars(console)
        with bars.progress:
            yield bars
        return
    lines = PlainLines(console, _interval())
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(max(lines.interval, MIN_HEARTBEAT_S)):
            lines.tick()

    beat = threading.Thread(target=heartbeat, name="provenance-progress", daemon=True)
    beat.start()
    try:
        yield lines
    finally:
        stop.set()
        beat.join()  # its last line, if any, before the done lines
        lines.close()
