"""Progress of long work: the library reports it through a callback, the CLI renders it.

A long-running function takes ``progress: ProgressCallback | None`` and calls it with a
:class:`ProgressUpdate` (units done so far, the total when known, what is being worked on)
as it goes; it never prints. :class:`Meter` is the small helper that keeps the count.
:mod:`provenance.commands.progress` renders the updates: a rich bar on a terminal, plain
periodic lines (``provenance: quantize 41% 2.7/6.6 GB 180 MB/s ETA 21s``) otherwise.
Notebooks pass their own callback, or none.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressUpdate:
    """Where one task stands."""

    task: str
    """What runs, e.g. ``quantize``, ``quantcheck``."""
    done: int
    """Units done so far (bytes unless ``unit`` says otherwise)."""
    total: int | None
    """Units in all, when known."""
    unit: str = "B"
    """``B`` (bytes: rendered as kB/MB/GB and a rate) or a count's noun (``tensors``)."""
    item: str | None = None
    """What is being worked on now (a tensor name: file-derived text, escape it to print)."""

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None


ProgressCallback = Callable[[ProgressUpdate], None]


class Meter:
    """Counts units for one task and reports each step to ``callback`` (if any)."""

    def __init__(self, callback: ProgressCallback | None, task: str, total: int | None, unit: str = "B") -> None:
        self.callback, self.task, self.total, self.unit = callback, task, total, unit
        self.done = 0
        self.item: str | None = None

    def advance(self, n: int, item: str | None = None) -> None:
        self.done += n
        if item is not None:
            self.item = item
        if self.callback is not None:
            self.callback(ProgressUpdate(self.task, self.done, self.total, self.unit, self.item))

    def start_item(self, item: str) -> None:
        """A new item begins (reported with no units added)."""
        self.advance(0, item)
