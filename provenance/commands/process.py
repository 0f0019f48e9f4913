"""What the ``provenance`` executable may do to its own process that a library imported into
someone else's must not: how Python's cyclic garbage collector runs (and, :mod:`.heap`, when the
C heap returns freed memory).

The collector walks every container object alive at each full collection, and starts one
each time the objects alive have grown by a quarter. A command imports torch, numba and
scipy (~340k objects, all alive until the process ends), so on ``compare`` of a
270M-parameter GGUF with itself 5 full collections and ~650 younger ones took 0.4-1.0 s
of its 3.8 s (measured with ``gc.callbacks``; docs/benchmarks.md, "Fixed costs per
process"). So the executable, which owns its process (:func:`own_process`, called by
:func:`provenance.cli.main` only):

* collects young objects rarely while it starts (imports make objects that live on, and
  every collection would walk them);
* when the analysis starts (:func:`analysis_starts`: the progress display opens), moves
  every object alive then, the modules above all, out of the collector's reach
  (:func:`gc.freeze`) and restores Python's thresholds: the analysis's own garbage is
  collected as before, and a full collection walks only what the analysis made.

Tests and notebooks that run commands in their own process keep Python's defaults: their
objects are never frozen.
"""
from __future__ import annotations

import gc

from provenance.commands.heap import fix_mmap_threshold

STARTUP_THRESHOLD = 1_000_000
"""Net new container objects between young collections until the analysis starts (Python's
default: 700). Imports make ~400k; at 100k each young collection still walked ~100k of
them (0.2 s in all, measured); a command that never starts an analysis (``identify``)
collects at this bound, a few tens of MB of objects at most."""

_defaults: list[tuple[int, int, int]] = []
"""Python's thresholds while the process is at startup (empty otherwise)."""


def own_process() -> None:
    """The executable's process from here on: collect rarely until the analysis starts; large
    freed arrays go back to the system (:mod:`.heap`)."""
    fix_mmap_threshold()
    if not _defaults:
        _defaults.append(gc.get_threshold())
        gc.set_threshold(STARTUP_THRESHOLD, *_defaults[0][1:])


def analysis_starts() -> None:
    """Freeze what startup made and restore the thresholds (once; nothing unless owned)."""
    if _defaults:
        gc.freeze()
        gc.set_threshold(*_defaults.pop())
